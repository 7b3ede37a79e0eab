"""Add AdaSPEC's reference-loss column L_ref to an existing cache, without rewriting its shards.

Contract
--------
``add_reference(cache_dir, ref_model, divergence="fkl", beta=0.5, batch_size=8, device="cpu",
ps=None, identity=None)``: for every supervised position of every shard,
``L_ref = sparse.divergence.per_token_divergence(ref_logits_NV, cached_target, kind=divergence)``
— the very estimator the trainer applies to the draft, against the same cached sparse target,
so ``ΔL = L_draft − L_ref`` compares like with like. Results go to new files
``shards/shard-{j}.ref.npy`` ((N,) float32, row order = the shard's target rows) and
``.ref.json`` sidecars; rank 0 then records them in ``manifest["reference"]`` (divergence, beta,
model identity, per-shard sha256). Data-parallel like the cache job (shard j -> DP rank
j % dp_size); a killed run resumes by skipping shards whose column is complete. A cache that
already carries a reference from another model or divergence is refused.

Shapes: B batch, T time, V vocabulary, N supervised positions.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaspec_dist.cache import format as fmt
from adaspec_dist.cache.reader import CacheReader
from adaspec_dist.dist import barrier as dist_barrier
from adaspec_dist.sparse.divergence import check_kind, per_token_divergence

logger = logging.getLogger(__name__)


def _finished(cache_dir: Path, index: int) -> dict | None:
    paths = fmt.shard_paths(cache_dir, index)
    if not (paths["ref_meta"].exists() and paths["ref"].exists()):
        return None
    meta = fmt.read_json(paths["ref_meta"], "reference sidecar")
    ok = paths["ref"].stat().st_size == meta.get("bytes") and fmt.sha256_file(paths["ref"]) == meta.get("sha256")
    return meta if ok else None


@torch.no_grad()
def reference_column(reader: CacheReader, ref_model, shard: int, *, divergence: str, beta: float,
                     batch_size: int, device: Any) -> np.ndarray:
    """(N,) float32 L_ref of one shard's supervised positions, in the shard's row order."""
    lo, hi = reader.shard_span(shard)
    out = []
    for b0 in range(lo, hi, batch_size):
        batch = reader.load_batch(np.arange(b0, min(hi, b0 + batch_size))).to(device)
        logits_BTV = ref_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logits_NV = logits_BTV[batch.loss_mask]
        out.append(per_token_divergence(logits_NV, batch.target, kind=divergence, beta=beta).float().cpu())
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros(0, np.float32)


def add_reference(cache_dir: str | Path, ref_model, *, divergence: str = "fkl", beta: float = 0.5,
                  batch_size: int = 8, device: Any = "cpu", ps=None, identity: str | None = None) -> dict | None:
    """Compute and record the reference column (see module docstring); returns the manifest on rank 0."""
    check_kind(divergence, beta)
    cache_dir = Path(cache_dir)
    identity = identity or getattr(getattr(ref_model, "config", None), "_name_or_path", None) or "unknown"
    manifest = fmt.load_manifest(cache_dir)
    vocab = int(ref_model.get_output_embeddings().weight.shape[0])
    fmt.check_vocab(manifest, vocab, str(cache_dir))
    wanted = {"divergence": divergence, "beta": beta, "model": identity}
    have = manifest.get("reference")
    if have and {k: have.get(k) for k in wanted} != wanted:
        raise ValueError(f"cache '{cache_dir}' already has a reference column ({have['model']}, {have['divergence']}); "
                         "copy the cache without *.ref.* files and its manifest's 'reference' to add another")
    dp_rank, dp_size = (ps.dp_rank, ps.dp_size) if ps else (0, 1)
    is_main, writes = (ps.is_main, ps.is_tp_leader) if ps else (True, True)
    barrier = dist_barrier if ps else (lambda: None)
    # The reader decodes the cached targets exactly as training will (and verifies the shards).
    reader = CacheReader(cache_dir, batch_size=batch_size, shuffle=False, prefetch=0, verify="open")
    reader.drop_reference()
    ref_model.eval()
    n_shards = len(manifest["shards"])
    mine = [j for j in range(n_shards) if j % dp_size == dp_rank]
    for j in mine:
        if _finished(cache_dir, manifest["shards"][j]["index"]) is not None:
            continue
        col = reference_column(reader, ref_model, j, divergence=divergence, beta=beta,
                               batch_size=batch_size, device=device)
        assert col.shape[0] == manifest["shards"][j]["supervised"]
        if writes:
            index = manifest["shards"][j]["index"]
            paths = fmt.shard_paths(cache_dir, index)
            buf = io.BytesIO()
            np.save(buf, col)
            fmt.atomic_write_bytes(paths["ref"], buf.getvalue())
            fmt.atomic_write_json(paths["ref_meta"], {"file": paths["ref"].name, "rows": int(col.shape[0]),
                                                      "bytes": paths["ref"].stat().st_size,
                                                      "sha256": fmt.sha256_file(paths["ref"])})
        logger.info("reference column of shard %d: mean L_ref %.4f over %d positions", j,
                    float(col.mean()) if col.size else 0.0, col.shape[0])
    barrier()
    result = None
    if is_main:
        shards = {}
        for sh in manifest["shards"]:
            meta = _finished(cache_dir, sh["index"])
            if meta is None:
                raise fmt.CacheError(f"reference column of '{sh['file']}' is missing or corrupt after the run; "
                                     "rerun `adaspec-dist cache --add-reference`")
            shards[sh["file"]] = meta
        manifest["reference"] = {**wanted, "shards": shards}
        fmt.atomic_write_json(fmt.manifest_path(cache_dir), manifest)
        result = manifest
    barrier()
    return result
