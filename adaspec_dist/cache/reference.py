"""Add AdaSPEC's reference-loss column L_ref to an existing cache, without rewriting its shards.

Contract
--------
``add_reference(cfg: ReferenceConfig, *, model=None, ps=None)`` (the job of ``adaspec-dist cache
--add-reference`` and of the pipeline's ``add_reference`` stage): the reference is ``cfg.model``
(an HF directory or hub id, loaded on this rank's device in the job's own process grid) or,
in-process, an already loaded ``model`` (then ``cfg.model`` only names it). For every supervised
position of every shard,
``L_ref = sparse.divergence.per_token_divergence(ref_logits_NV, cached_target, kind=divergence)``
— the very estimator the trainer applies to the draft, against the same cached sparse target,
so ``ΔL = L_draft − L_ref`` compares like with like (``cfg.divergence``, ``cfg.beta``). Results go to new files
``shards/shard-{j}.ref.npy`` ((N,) float32, row order = the shard's target rows) and
``.ref.json`` sidecars; rank 0 then records them in ``manifest["reference"]`` (divergence, beta,
model identity and weights fingerprint, per-shard sha256). A :class:`ReferenceJob` in the
sharded-job skeleton (``jobs.run_sharded``), like the cache job: one job at a time per cache
directory (the claim), shard j -> DP rank j % dp_size; a killed run resumes by skipping shards
whose column is complete and was computed by the same weights and divergence (each ``.ref.json``
records them); a column already complete is left as it is (nothing is rewritten).
A cache that already carries a reference from other weights or another divergence is refused;
the same weights under another path (relative/absolute, a copy) are the same reference.

Shapes: B batch, T time, V vocabulary, N supervised positions.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from adaspec_dist.cache import format as fmt
from adaspec_dist.cache.reader import CacheReader
from adaspec_dist.dist import init_distributed
from adaspec_dist.jobs import ShardedJob, job_roles, run_sharded
from adaspec_dist.models.load import load_causal_lm, module_fingerprint, weights_fingerprint
from adaspec_dist.sparse.divergence import Divergence, check_kind, per_token_divergence

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ReferenceConfig:
    cache_dir: str
    """The cache that receives the column (written by the cache job)."""
    model: str | None = None
    """The reference draft (the kd-trained one): an HF directory or hub id that the job loads; it is
    also the identity the manifest records (with a model passed in-process: only that name)."""
    divergence: Divergence = "fkl"
    """The per-token divergence of L_ref: the one the AdaSPEC run will train with."""
    beta: float = 0.5
    """β of jsd."""
    batch_size: int = 8
    """Sequences per reference forward."""
    replace: bool = False
    """Delete an existing reference column (another model or divergence, or a damaged one) and
    compute this one; without it such a column is refused and a matching one is resumed."""

    def validate(self) -> None:
        check_kind(self.divergence, self.beta)
        if self.batch_size < 1:
            raise ValueError(f"reference batch_size={self.batch_size} must be >= 1")


def _drop_reference(cache_dir: Path, manifest: dict) -> dict:
    """Delete every shard's reference files and the manifest's record of them (rank 0)."""
    for sh in manifest["shards"]:
        paths = fmt.shard_paths(cache_dir, sh["index"])
        for key in ("ref_meta", "ref"):  # the sidecar first: a half-deleted pair is never 'finished'
            paths[key].unlink(missing_ok=True)
    manifest = {k: v for k, v in manifest.items() if k != "reference"}
    fmt.atomic_write_json(fmt.manifest_path(cache_dir), manifest)
    logger.info("removed the reference column of %s (--replace)", cache_dir)
    return manifest


def _finished(cache_dir: Path, index: int, computed_by: dict) -> dict | None:
    """The shard's reference sidecar when its column is intact and was computed with
    ``computed_by`` (weights fingerprint, divergence, beta); else None (to compute)."""
    paths = fmt.shard_paths(cache_dir, index)
    if not (paths["ref_meta"].exists() and paths["ref"].exists()):
        return None
    meta = fmt.read_json(paths["ref_meta"], "reference sidecar")
    if any(meta.get(k) != v for k, v in computed_by.items()):
        return None  # a killed run of another reference left it: recompute, never mix two references
    ok = paths["ref"].stat().st_size == meta.get("bytes") and fmt.sha256_file(paths["ref"]) == meta.get("sha256")
    return meta if ok else None


def _same_reference(have: dict, wanted: dict) -> bool:
    """Whether an existing column is this job's: same divergence and beta, same weights (columns
    recorded before weights were fingerprinted compare by the model's name)."""
    if (have.get("divergence"), have.get("beta")) != (wanted["divergence"], wanted["beta"]):
        return False
    if "weights" in have:
        return have["weights"] == wanted["weights"]
    return have.get("model") == wanted["model"]


@torch.no_grad()
def reference_column(reader: CacheReader, ref_model, shard: int, *, divergence: str, beta: float,
                     batch_size: int, device: Any, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """(N,) float32 L_ref of one shard's supervised positions, in the shard's row order
    (``on_batch(sequences)`` after each batch)."""
    lo, hi = reader.shard_span(shard)
    out = []
    for b0 in range(lo, hi, batch_size):
        batch = reader.load_batch(np.arange(b0, min(hi, b0 + batch_size))).to(device)
        logits_BTV = ref_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logits_NV = logits_BTV[batch.loss_mask]
        out.append(per_token_divergence(logits_NV, batch.target, kind=divergence, beta=beta).float().cpu())
        if on_batch is not None:
            on_batch(len(batch))
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros(0, np.float32)


def describe_reference(cfg: ReferenceConfig, manifest: dict) -> str:
    """One line on an added column (what ``adaspec-dist cache --add-reference`` prints at its end)."""
    return (f"cache {cfg.cache_dir}: reference column ({cfg.divergence}) of {cfg.model} added to "
            f"{len(manifest['shards'])} shards")


class ReferenceJob(ShardedJob):
    """The reference column in the sharded-job skeleton (``jobs.run_sharded``): it writes into an
    existing cache (whose ``job.json`` is the cache job's), so the directory is its own when the
    cache carries no reference column, this very one, or ``replace`` drops the other one."""

    what, name, unit = "cache directory", "reference", "sequences"

    def __init__(self, cfg: ReferenceConfig, model, manifest: dict, wanted: dict, device: Any):
        self.cfg, self.model, self.manifest, self.wanted, self.device = cfg, model, manifest, wanted, device
        self.directory = Path(cfg.cache_dir)
        self.n_shards = len(manifest["shards"])
        self.computed_by = {k: wanted[k] for k in ("divergence", "beta", "weights")}
        # The reader decodes the cached targets exactly as training will (and verifies the shards).
        # The existing column is not read (with_reference=False): its missing or damaged shards are
        # exactly what this job recomputes (a resume), so they must not stop it from starting.
        self.reader = CacheReader(self.directory, batch_size=cfg.batch_size, shuffle=False, prefetch=0,
                                  verify="open", with_reference=False)

    def completed(self) -> dict | None:
        have = self.manifest.get("reference")
        if self.cfg.replace or not have or not _same_reference(have, self.wanted):
            return None
        return self.manifest if all(self.finished(j) is not None for j in range(self.n_shards)) else None

    def admit(self) -> None:
        have = self.manifest.get("reference")
        if self.cfg.replace:
            self.manifest = _drop_reference(self.directory, self.manifest)
        elif have and not _same_reference(have, self.wanted):
            raise ValueError(f"cache '{self.directory}' already has a reference column ({have['model']}, "
                             f"{have['divergence']}); rerun with --replace to recompute it with this model (or copy "
                             "the cache first)")

    def finished(self, index: int) -> dict | None:
        return _finished(self.directory, self.manifest["shards"][index]["index"], self.computed_by)

    def work(self, index: int) -> int:
        lo, hi = self.reader.shard_span(index)
        return hi - lo

    def run_shard(self, index: int, *, writes: bool, advance: Callable[[int], None]) -> None:
        shard = self.manifest["shards"][index]
        col = reference_column(self.reader, self.model, index, divergence=self.cfg.divergence, beta=self.cfg.beta,
                               batch_size=self.cfg.batch_size, device=self.device, on_batch=advance)
        assert col.shape[0] == shard["supervised"]
        if not np.isfinite(col).all():  # a NaN L_ref would be a NaN ΔL in every AdaSPEC step
            raise fmt.CacheError(f"the reference model {self.wanted['model']} gives non-finite losses on shard "
                                 f"'{shard['file']}' of '{self.directory}'; check its weights (a kd run that diverged "
                                 "exports NaN) and pass a healthy reference")
        if writes:
            write_reference_shard(self.directory, shard["index"], col, self.computed_by)
        logger.info("reference column of shard %d: mean L_ref %.4f over %d positions", index,
                    float(col.mean()) if col.size else 0.0, col.shape[0])

    def write_manifest(self) -> dict:
        manifest = fmt.load_manifest(self.directory)  # as the cache job left it (--replace rewrote it)
        shards = {}
        for sh in manifest["shards"]:
            meta = _finished(self.directory, sh["index"], self.computed_by)
            if meta is None:
                raise fmt.CacheError(f"reference column of '{sh['file']}' is missing or corrupt after the run; "
                                     f"{fmt.reference_fix(self.directory, self.wanted)}")
            shards[sh["file"]] = meta
        manifest["reference"] = {**self.wanted, "shards": shards}
        fmt.atomic_write_json(fmt.manifest_path(self.directory), manifest)
        return manifest


def write_reference_shard(cache_dir: Path, index: int, column: np.ndarray, computed_by: dict) -> None:
    """Shard ``index``'s ``.ref.npy`` and then its ``.ref.json`` sidecar (size, sha256, who computed it)."""
    paths = fmt.shard_paths(cache_dir, index)
    buf = io.BytesIO()
    np.save(buf, column)
    fmt.atomic_write_bytes(paths["ref"], buf.getvalue())
    fmt.atomic_write_json(paths["ref_meta"], {"file": paths["ref"].name, "rows": int(column.shape[0]),
                                              "bytes": paths["ref"].stat().st_size,
                                              "sha256": fmt.sha256_file(paths["ref"]), **computed_by})


def add_reference(cfg: ReferenceConfig, *, model: torch.nn.Module | None = None, ps: Any = None) -> dict | None:
    """Compute and record the reference column (see module docstring); returns the manifest on rank 0.

    ``model`` None: load ``cfg.model`` on this rank's device (``ps``, default: the launched ranks as
    data-parallel ranks). A given ``model`` runs where it is; ``ps`` None = one process."""
    cfg.validate()
    if model is None:
        if not cfg.model:
            raise ValueError("add_reference needs the reference model: an HF directory (the kd-trained draft)")
        ps = ps if ps is not None else init_distributed(1)
        model = load_causal_lm(cfg.model, device=ps.device)
        weights = weights_fingerprint(cfg.model)
    else:
        weights = module_fingerprint(model)
    cache_dir = Path(cfg.cache_dir)
    identity = cfg.model or getattr(getattr(model, "config", None), "_name_or_path", None) or "unknown"
    manifest = fmt.load_manifest(cache_dir)
    fmt.check_vocab(manifest, int(model.get_output_embeddings().weight.shape[0]), str(cache_dir))
    fmt.check_divergence(manifest, cfg.divergence, str(cache_dir))
    wanted = {"divergence": cfg.divergence, "beta": cfg.beta, "model": identity, "weights": weights}
    model.eval()
    job = ReferenceJob(cfg, model, manifest, wanted, next(model.parameters()).device)
    return run_sharded(job, job_roles(ps))
