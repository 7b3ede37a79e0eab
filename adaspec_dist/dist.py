"""Distributed initialisation: the ONLY module that reads launcher environment variables.

Contract
--------
``launch_env()`` reads, in this order of precedence:

1. torch-style variables set by ``torchrun`` and the ``deepspeed`` launcher:
   ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``;
2. Slurm's ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, ``SLURM_NODEID`` (one task
   per GPU under ``srun``), the master being the first host of ``SLURM_STEP_NODELIST`` /
   ``SLURM_JOB_NODELIST`` and the port derived from ``SLURM_JOB_ID`` unless ``MASTER_*`` set;
3. nothing: a single process (rank 0 of 1, a free local port).

``init_distributed(tp_size)`` initialises ``torch.distributed`` (nccl on CUDA, gloo on CPU;
always, so that a single process runs the same code as a job) and returns a
:class:`ParallelState` with explicit tensor-parallel and data-parallel groups.
Rank layout: ``rank = dp_rank * tp_size + tp_rank`` — TP groups are contiguous ranks, so
they stay inside a node when ``tp_size`` divides the GPUs per node (Megatron's convention).

``grid_groups(tp_size)`` -> :class:`Grid`: the same TP x DP split of the initialised world for a
``tp_size`` other than the job's own, for a component that needs a different split from the
job around it (the online TP teacher of a purely data-parallel trainer). Collective on first
use; cached per ``tp_size`` (and per default process group), so every rank creates each group
once and in the same order as long as all ranks ask for the same sizes in the same order.

Rendezvous: when the launcher variables say ``WORLD_SIZE > 1`` (and torchrun's agent does not host
the store), the ranks meet within ``ADASPEC_RENDEZVOUS_TIMEOUT`` seconds (default 60) or every
rank fails with one line naming the variables and their likely cause (:func:`rendezvous`).

This module is the only creator of process groups. Library code receives groups from here as
arguments; it never reads globals nor calls ``new_group``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from dataclasses import dataclass
from typing import Any, Mapping

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in the job, as the launcher described it."""

    rank: int
    world_size: int
    local_rank: int
    node_rank: int
    master_addr: str
    master_port: int
    source: str  # "torch" | "slurm" | "single"


def first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm nodelist: ``"gpu[03-05,9],cpu1"`` -> ``"gpu03"``."""
    nodelist = nodelist.strip()
    match = re.match(r"^([^,\[]+)(\[([^\]]+)\])?", nodelist)
    if not match:
        raise ValueError(f"cannot parse Slurm nodelist {nodelist!r}; set MASTER_ADDR explicitly")
    prefix, _, ranges = match.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def free_port() -> int:
    """An unused TCP port on localhost (racy by nature; fine for tests and single runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read the launcher's variables (see the module docstring for precedence)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            node_rank=int(env.get("GROUP_RANK", env.get("NODE_RANK", env.get("SLURM_NODEID", 0)))),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            source="torch",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        job_id = int(env.get("SLURM_JOB_ID", "0") or 0)
        return LaunchEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            node_rank=int(env.get("SLURM_NODEID", 0)),
            master_addr=env.get("MASTER_ADDR") or first_slurm_host(nodelist),
            # A per-job port so two jobs sharing a node do not collide.
            master_port=int(env.get("MASTER_PORT") or 20000 + job_id % 20000),
            source="slurm",
        )
    return LaunchEnv(rank=0, world_size=1, local_rank=0, node_rank=0,
                     master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                     master_port=int(env.get("MASTER_PORT") or free_port()), source="single")


@dataclass(frozen=True)
class ParallelState:
    """The process grid of one job. Groups are real ``torch.distributed`` groups."""

    rank: int
    world_size: int
    local_rank: int
    tp_size: int
    tp_rank: int
    dp_size: int
    dp_rank: int
    tp_group: Any
    dp_group: Any
    device: Any  # torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """Global rank 0: the one that logs, shows progress bars and writes manifests."""
        return self.rank == 0

    @property
    def is_tp_leader(self) -> bool:
        """TP rank 0 of its replica: the one that writes that replica's outputs."""
        return self.tp_rank == 0


def grid_position(rank: int, tp_size: int) -> tuple[int, int]:
    """``rank -> (tp_rank, dp_rank)`` for the contiguous-TP layout."""
    return rank % tp_size, rank // tp_size


@dataclass(frozen=True)
class Grid:
    """This rank's TP and DP groups in a ``tp_size`` x ``dp_size`` split of the whole world."""

    tp_size: int
    tp_rank: int
    tp_group: Any
    dp_size: int
    dp_rank: int
    dp_group: Any


def _check_tp(tp_size: int, world_size: int, what: str) -> None:
    if tp_size < 1 or world_size % tp_size:
        raise ValueError(f"{what} {tp_size} does not divide the world size {world_size}; "
                         f"launch a multiple of {tp_size} processes or change it")


def _new_grid(tp_size: int) -> Grid:
    """Create the TP and DP groups of the contiguous-TP layout (collective: every rank creates
    every group, in the same order)."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    dp_size = world // tp_size
    tp_rank, dp_rank = grid_position(rank, tp_size)
    tp_group = dp_group = None
    for d in range(dp_size):
        group = dist.new_group(list(range(d * tp_size, (d + 1) * tp_size)))
        if d == dp_rank:
            tp_group = group
    for t in range(tp_size):
        group = dist.new_group(list(range(t, world, tp_size)))
        if t == tp_rank:
            dp_group = group
    return Grid(tp_size=tp_size, tp_rank=tp_rank, tp_group=tp_group, dp_size=dp_size, dp_rank=dp_rank,
                dp_group=dp_group)


_grids: dict[int, Grid] = {}
_grids_world: Any = None  # the default process group the cached grids belong to


def grid_groups(tp_size: int, *, what: str = "tensor-parallel size") -> Grid:
    """This rank's :class:`Grid` for ``tp_size`` over the initialised world (see the module doc).

    Collective the first time a size is asked for (every rank must call it); later calls return
    the same groups. ``what`` names the setting in the error when ``tp_size`` does not divide
    the world.
    """
    import torch.distributed as dist

    global _grids_world
    if not dist.is_initialized():
        raise RuntimeError("grid_groups needs an initialised process group; call init_distributed first")
    _check_tp(tp_size, dist.get_world_size(), what)
    world_pg = dist.group.WORLD
    if _grids_world is not world_pg:  # a new default group (destroyed and re-initialised): new groups
        _grids.clear()
        _grids_world = world_pg
    if tp_size not in _grids:
        _grids[tp_size] = _new_grid(tp_size)
    return _grids[tp_size]


def check_device(name: str, key: str = "device") -> None:
    """One-line ValueError naming ``key`` when ``name`` is not a device torch knows ("auto" is)."""
    if name == "auto":
        return
    import torch

    try:
        torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"config key '{key}' = {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None


RENDEZVOUS_ENV = "ADASPEC_RENDEZVOUS_TIMEOUT"
"""Seconds every rank waits for the others to meet (default 60); collectives keep their own timeout."""


def rendezvous_timeout_s(environ: Mapping[str, str] | None = None) -> float:
    env = os.environ if environ is None else environ
    raw = env.get(RENDEZVOUS_ENV, "60")
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"{RENDEZVOUS_ENV}={raw!r} must be a positive number of seconds")
    return value


def _launcher_vars(env: LaunchEnv) -> str:
    if env.source == "slurm":
        return f"SLURM_PROCID={env.rank} SLURM_NTASKS={env.world_size}"
    return f"RANK={env.rank} WORLD_SIZE={env.world_size} MASTER_ADDR={env.master_addr} MASTER_PORT={env.master_port}"


def rendezvous(env: LaunchEnv, timeout_s: float, collective_timeout_s: float = 1800) -> Any:
    """The TCP store every rank meets at, or None (torch's own rendezvous: a single process, or
    torchrun, whose agent hosts the store after its own rendezvous).

    Rank 0 hosts it and waits at most ``timeout_s`` for all ``world_size`` ranks to connect; the
    others wait as long for rank 0. Then the store gets the long (collective) timeout back. Without
    this, variables left in a shell by an earlier torchrun / Slurm job (RANK=0 WORLD_SIZE=2) made a
    job wait silently for a peer that never comes, for the full 30-minute collective timeout."""
    if env.world_size == 1 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return None
    import datetime

    import torch.distributed as dist

    try:
        store = dist.TCPStore(env.master_addr, env.master_port, env.world_size, is_master=env.rank == 0,
                              timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=True,
                              multi_tenant=True)
    except (RuntimeError, OSError) as err:  # DistStoreError / DistNetworkError, a refused or timed-out wait
        who = "the other ranks" if env.rank == 0 else f"rank 0 at {env.master_addr}:{env.master_port}"
        raise ValueError(f"rank {env.rank} of {env.world_size} waited {timeout_s:.0f} s for {who} and none came "
                         f"({_launcher_vars(env)} in the environment; {type(err).__name__}); variables left by an "
                         "earlier torchrun/Slurm job? unset RANK WORLD_SIZE LOCAL_RANK MASTER_ADDR MASTER_PORT to run "
                         f"one process, or start every rank (torchrun --nproc_per_node {env.world_size} ...); "
                         f"{RENDEZVOUS_ENV}=SECONDS waits longer") from None
    # Met: later waits on the store (new groups, a rank still loading a model) get the long timeout.
    store.set_timeout(datetime.timedelta(seconds=collective_timeout_s))
    return store


def init_distributed(tp_size: int = 1, *, backend: str | None = None, timeout_s: float = 1800) -> ParallelState:
    """Initialise torch.distributed from the launcher's environment and build the TP x DP grid."""
    import datetime

    import torch
    import torch.distributed as dist

    env = launch_env()
    if tp_size < 1 or env.world_size % tp_size:
        raise ValueError(
            f"tensor-parallel size {tp_size} does not divide the world size {env.world_size}; "
            f"launch a multiple of {tp_size} processes or change --tp"
        )
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")

    if not dist.is_initialized():
        # Export what env:// needs, so that the DeepSpeed/Slurm paths and a bare single process
        # initialise identically; DeepSpeed reads the same variables later.
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        os.environ.setdefault("RANK", str(env.rank))
        os.environ.setdefault("WORLD_SIZE", str(env.world_size))
        os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
        store = rendezvous(env, rendezvous_timeout_s(), timeout_s)
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size, store=store,
                                timeout=datetime.timedelta(seconds=timeout_s))
        logger.info("initialised %s rank %d/%d (from %s launcher env)", backend, env.rank,
                    env.world_size, env.source)
    # Fresh groups on every call, as before (the pipeline re-initialises per stage).
    grid = _new_grid(tp_size)
    return ParallelState(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=env.local_rank,
                         tp_size=tp_size, tp_rank=grid.tp_rank, dp_size=grid.dp_size, dp_rank=grid.dp_rank,
                         tp_group=grid.tp_group, dp_group=grid.dp_group, device=device, backend=backend)


def barrier(group: Any = None) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier(group=group)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Global rank ``src``'s ``obj`` (picklable) on every rank; ``obj`` itself without a process group."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


_keepers = 0  # depth of keep_process_group() blocks in this process


@contextlib.contextmanager
def keep_process_group():
    """Defer :func:`shutdown` to the end of the outermost block.

    Stages run alone tear their process group down when they finish; chained in one process (the
    pipeline), they must share one group, since DeepSpeed caches the group it first saw.
    """
    global _keepers
    _keepers += 1
    try:
        yield
    finally:
        _keepers -= 1
        shutdown()


def shutdown() -> None:
    """Destroy the default process group, unless a :func:`keep_process_group` block holds it."""
    import torch.distributed as dist

    global _grids_world
    if _keepers == 0 and dist.is_initialized():
        dist.destroy_process_group()
        _grids.clear()
        _grids_world = None
