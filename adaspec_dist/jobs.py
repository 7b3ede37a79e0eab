"""The sharded-job skeleton: claim a directory, resume, fill it shard by shard across ranks, seal it.

Contract
--------
The cache job, the generate job and the reference column (``cache/produce.py``,
``speculative/generate.py``, ``cache/reference.py``) have one shape, written here once. A job is a
:class:`ShardedJob`: it says how to compute and write one shard, how a finished shard is
recognised, what its manifest holds and whether the directory is its own. :func:`run_sharded`
does everything else, the same way for all three:

1. ``job.completed()`` -> the manifest of this very job, finished and intact: returned at once
   (nothing is claimed or written; the manifest on the main rank, None elsewhere).
2. The claim (per JOB, not per process): global rank 0 locks the directory
   (``files.DirectoryClaim``, held until the job ends) and calls ``job.admit()`` — its check
   that the directory is its own and its record of that (:class:`JobFile`: a ``job.json``
   fingerprint) — then deletes the temp files a killed run left. Every rank gets rank 0's
   answer (``Roles.share``), so a refusal is the same one-line ``ValueError`` on every rank.
3. The rank-owned shard loop: shard ``j`` belongs to data-parallel rank ``j % dp_size``; shards
   with ``job.finished(j)`` not None are skipped (a resume: the log says how many), the rest are
   computed in order by ``job.run_shard(j, writes=..., advance=...)``. Only ``Roles.writes`` ranks
   (TP rank 0 of a replica) write. Main-rank progress: a tqdm bar in ``job.unit`` (the job calls
   ``advance(n)``, e.g. per batch) and, when ``job.tensorboard_dir`` is set, tensorboard scalars
   per shard (the rate, and what ``run_shard`` returns).
4. A barrier, ``job.write_manifest()`` on the main rank, a barrier; the claim is released.

Since shard ``j``'s bytes depend only on ``j`` (each job seeds per shard and batches within a
shard in order), a job run on any number of ranks, or killed and rerun, ends byte-identical.

``job_roles(ps)`` -> :class:`Roles`: this process's part in a data-parallel job (``ps=None``: one
process, every role, no barrier).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

from adaspec_dist.dist import barrier as dist_barrier
from adaspec_dist.dist import broadcast_object
from adaspec_dist.files import DirectoryClaim, atomic_write_text, remove_stale_tmp

logger = logging.getLogger(__name__)

JOB_FILE = "job.json"


@dataclass(frozen=True)
class Roles:
    """This process's part in a data-parallel sharded job (see :func:`job_roles`)."""

    dp_rank: int
    dp_size: int
    is_main: bool
    """Global rank 0: claims the directory, writes the manifest, shows progress."""
    writes: bool
    """TP rank 0 of its replica: writes that replica's shards."""
    barrier: Callable[[], None]
    share: Callable[[Any], Any] = lambda obj: obj
    """The main rank's value of ``obj`` on every rank (a broadcast; one process: ``obj`` itself)."""


def _no_barrier() -> None:
    return None


def job_roles(ps: Any = None) -> Roles:
    """The roles of a ``dist.ParallelState``; ``None`` = a single process (no process group needed)."""
    if ps is None:
        return Roles(dp_rank=0, dp_size=1, is_main=True, writes=True, barrier=_no_barrier)
    return Roles(dp_rank=ps.dp_rank, dp_size=ps.dp_size, is_main=ps.is_main, writes=ps.is_tp_leader,
                 barrier=dist_barrier, share=broadcast_object)


def read_json_object(path: Path, what: str) -> dict:
    """A JSON file's object, or a one-line ValueError naming the file and the fix."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} '{path}' cannot be read ({getattr(err, 'msg', None) or err}); "
                         "delete it and rerun the same command") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} '{path}' is not a JSON object; delete it and rerun the same command")
    return obj


@dataclass(frozen=True)
class JobFile:
    """``job.json``: which job owns a directory (the fingerprint of what determines its bytes).

    ``what`` names the directory in errors ("cache directory"), ``other_job`` says what another
    job's directory holds ("holds a cache made with different settings or data"), ``kind`` is the
    job ("cache"). ``legacy``: fingerprints an earlier version wrote for the same job (accepted,
    and rewritten with today's). ``fresh_ok``: entries a not-yet-claimed directory may hold."""

    directory: Path
    fingerprint: str
    what: str
    kind: str
    other_job: str
    legacy: Collection[str] = ()
    fresh_ok: Collection[str] = (".lock",)
    shard_dir: str = "shards"

    @property
    def path(self) -> Path:
        return self.directory / JOB_FILE

    def recorded(self) -> str | None:
        """The fingerprint ``job.json`` records (None when there is no ``job.json``)."""
        return read_json_object(self.path, "job file").get("fingerprint") if self.path.exists() else None

    def admit(self) -> None:
        """Refuse another job's directory (or a non-empty one holding no job), else record ours."""
        if self.path.exists():
            found = self.recorded()
            if found != self.fingerprint and found in self.legacy:
                self.record()
                logger.info("%s: written by an earlier adaspec-dist version for the same job; updated", self.path)
            elif found != self.fingerprint:
                raise ValueError(f"{self.what} '{self.directory}' {self.other_job} (see {self.path}); choose a new "
                                 "out_dir or delete that directory")
        elif any(p.name not in self.fresh_ok for p in self.directory.iterdir()):
            raise ValueError(f"directory '{self.directory}' is not empty and holds no {self.kind} job; "
                             "choose a new out_dir")
        else:
            (self.directory / self.shard_dir).mkdir(parents=True, exist_ok=True)
            self.record()

    def finished_manifest(self, manifest: Path, finished: Callable[[int], Any],
                          accepted: Collection[str] | None = None) -> dict | None:
        """The manifest at ``manifest`` when ``job.json`` records one of ``accepted`` (default: this
        job's fingerprint or a legacy one), the manifest says complete, and every shard it lists is
        still ``finished`` (re-hashed, as a resume would: a deleted or damaged shard is redone)."""
        accepted = {self.fingerprint, *self.legacy} if accepted is None else set(accepted)
        if not (self.path.is_file() and manifest.is_file()) or self.recorded() not in accepted:
            return None
        done = read_json_object(manifest, "manifest")
        if not done.get("complete"):
            return None
        return done if all(finished(sh["index"]) is not None for sh in done.get("shards", [])) else None

    def record(self) -> None:
        atomic_write_text(self.path, json.dumps({"fingerprint": self.fingerprint}, indent=1, sort_keys=True) + "\n")


class ShardedJob:
    """What a job says about itself; :func:`run_sharded` does the rest (module contract).

    Subclasses set ``directory``, ``what`` (the directory in messages: "cache directory"),
    ``name`` (progress and tensorboard tag prefix), ``n_shards``, and implement ``finished``,
    ``run_shard``, ``write_manifest``, ``completed`` and ``admit``."""

    directory: Path
    what: str = "directory"
    name: str = "job"
    unit: str = "shards"
    """The progress bar's unit (what ``run_shard`` passes to ``advance``)."""
    n_shards: int
    tensorboard_dir: str | None = None

    def completed(self) -> dict | None:
        """The manifest when this very job is already finished and intact (nothing to do), else None."""
        raise NotImplementedError

    def admit(self) -> None:
        """On the main rank, under the claim: refuse a directory that is not this job's (one-line
        ValueError) and record that it is."""
        raise NotImplementedError

    def finished(self, index: int) -> dict | None:
        """Shard ``index``'s record when it is complete and intact, else None (to compute)."""
        raise NotImplementedError

    def work(self, index: int) -> int:
        """Shard ``index``'s size in ``unit`` (the progress bar's total)."""
        return 1

    def run_shard(self, index: int, *, writes: bool, advance: Callable[[int], None]) -> dict[str, float] | None:
        """Compute shard ``index``; write it when ``writes``. Call ``advance(n)`` as work is done.
        May return per-shard scalars for tensorboard (main rank)."""
        raise NotImplementedError

    def write_manifest(self) -> dict:
        """On the main rank after every shard is written: the manifest, written last."""
        raise NotImplementedError


def run_sharded(job: ShardedJob, me: Roles) -> dict | None:
    """Run ``job`` (module contract); the manifest on the main rank, None elsewhere."""
    done = job.completed()
    if done is not None:
        logger.info("%s %s is already complete (%d shards); nothing to do", job.name, job.directory, job.n_shards)
        return done if me.is_main else None
    claim = claim_job(job, me)
    try:
        _run_shards(job, me)
        me.barrier()
        manifest = job.write_manifest() if me.is_main else None
        me.barrier()
        return manifest
    finally:
        if claim is not None:
            claim.release()


def claim_job(job: ShardedJob, me: Roles) -> DirectoryClaim | None:
    """The main rank claims ``job.directory`` and admits the job; every rank hears the answer."""
    claim, refusal = None, None
    if me.is_main:
        try:
            claim = DirectoryClaim.acquire(job.directory, what=job.what,
                                           fix="wait for it to finish or choose another out_dir")
            job.admit()
            remove_stale_tmp(job.directory)  # no writer runs: the claim excludes other jobs, ours waits
        except (ValueError, OSError) as err:  # every rank must hear the answer, whatever it is
            if claim is not None:
                claim.release()
                claim = None
            refusal = str(err)
    refusal = me.share(refusal)
    if refusal:
        raise ValueError(refusal)
    return claim


def owned_shards(n_shards: int, me: Roles) -> list[int]:
    """The shards data-parallel rank ``me.dp_rank`` computes: ``j % dp_size == dp_rank``."""
    return [j for j in range(n_shards) if j % me.dp_size == me.dp_rank]


def _run_shards(job: ShardedJob, me: Roles) -> None:
    mine = owned_shards(job.n_shards, me)
    todo = [j for j in mine if job.finished(j) is None]
    if len(todo) < len(mine):
        logger.info("%s rank %d: %d of its %d shards are already complete; resuming", job.name, me.dp_rank,
                    len(mine) - len(todo), len(mine))
    with _Progress(job, todo, enabled=me.is_main) as progress:
        for j in todo:
            scalars = job.run_shard(j, writes=me.writes, advance=progress.advance)
            progress.shard_done(j, scalars)
            logger.debug("%s shard %d/%d done (rank %d)", job.name, j + 1, job.n_shards, me.dp_rank)


class _Progress:
    """The main rank's tqdm bar and tensorboard scalars (inert elsewhere)."""

    def __init__(self, job: ShardedJob, todo: list[int], *, enabled: bool):
        self.job, self.todo, self.enabled = job, todo, enabled
        self.bar = self.tb = self._redirect = None
        self.done = 0
        self.t0 = time.perf_counter()

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            total = sum(self.job.work(j) for j in self.todo)
            self.bar = tqdm(total=total, unit=self.job.unit, unit_scale=True, desc=f"{self.job.name} (rank 0)",
                            dynamic_ncols=True)
            self._redirect = logging_redirect_tqdm()  # log lines go above the bar, not onto its line
            self._redirect.__enter__()
            if self.job.tensorboard_dir:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(self.job.tensorboard_dir)
        return self

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def shard_done(self, index: int, scalars: dict[str, float] | None) -> None:
        if self.tb is None:
            return
        rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
        self.tb.add_scalar(f"{self.job.name}/{self.job.unit}_per_s_rank0", rate, index)
        for tag, value in (scalars or {}).items():
            self.tb.add_scalar(tag, value, index)

    def __exit__(self, *exc) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(*exc)
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
