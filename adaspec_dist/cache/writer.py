"""Write one cache shard (sequences + their sparse targets) atomically, and recognise finished ones.

Contract
--------
* ``write_shard(cache_dir, index, seq_ids=..., input_ids=..., loss_masks=..., target=...,
  vocab_size=..., value_dtype=...)`` writes ``shards/shard-{index}.safetensors`` and then its
  sidecar ``.json``; returns the sidecar dict. Same inputs -> same bytes (no timestamps,
  sorted names), which is what makes a resumed job byte-identical to an uninterrupted one.
* ``write_shard`` refuses a target holding NaN / +inf log-probs or non-finite weights (one-line
  CacheError naming the shard), before writing anything.
* ``finished_shard(cache_dir, index)`` -> the sidecar dict when the shard is complete and its
  bytes still hash to the recorded sha256, else ``None`` (a killed job redoes that shard).

Shard arrays (S sequences, L tokens in total, N supervised positions, K ids per row):
``tokens`` (L,) ids; ``seq_offsets`` (S+1,) int64; ``loss_mask`` (L,) uint8;
``row_offsets`` (S+1,) int64 (target rows of sequence s are ``row_offsets[s]:row_offsets[s+1]``);
``seq_ids`` (S,) int64 global sequence indices; top-k: ``ids`` (N, K); ``logp`` (N, K) fp16 | bf16 | uint8.
Sampled (format 2, compact): ``ids`` (M,), ``counts`` (M,), ``row_nnz`` (N,), ``plogp`` (N,) float32 and,
with ``store_logp``, ``logp`` (M,) (:func:`compact_arrays`); format 1 wrote sampled rows padded to
(N, K) with ``weights`` (N, K) float32 (``draws=None`` still writes that layout).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from adaspec_dist.cache.format import (shard_paths, sha256_file, atomic_write_json,
                                       read_json, write_safetensors, CacheError)
from adaspec_dist.sparse.target import SparseTarget, encode_values, id_dtype

_VALUE_ST = {"fp16": "F16", "bf16": "BF16", "int8": "U8"}


def write_shard(cache_dir: str | os.PathLike, index: int, *, seq_ids: Sequence[int],
                input_ids: Sequence[np.ndarray], loss_masks: Sequence[np.ndarray], target: SparseTarget,
                vocab_size: int, value_dtype: str, draws: int | None = None, store_logp: bool = True,
                compression: str = "none") -> dict:
    """Write shard ``index``; ``target`` rows are the supervised positions of all sequences, in order.

    ``draws`` given (sampled targets): the compact rows of format 2 (:func:`compact_arrays`);
    ``draws=None``: fixed-width rows (top-k; sampled as format 1 wrote them). ``compression="zlib"``:
    the whole file DEFLATE-compressed (the sidecar's bytes and sha256 are the compressed file's)."""
    paths = shard_paths(cache_dir, index)
    paths["data"].parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(x) for x in input_ids], dtype=np.int64)
    masks = [np.asarray(m, dtype=bool) for m in loss_masks]
    rows = np.array([int(m.sum()) for m in masks], dtype=np.int64)
    n = int(rows.sum())
    assert len(target) == n, f"target has {len(target)} rows for {n} supervised positions"
    check_target_finite(target, paths["data"])
    tok_dt = id_dtype(vocab_size)
    arrays = {
        "tokens": np.concatenate([np.asarray(x, dtype=np.int64) for x in input_ids]).astype(tok_dt)
        if len(input_ids) else np.zeros(0, tok_dt),
        "seq_offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "loss_mask": (np.concatenate(masks) if masks else np.zeros(0, bool)).astype(np.uint8),
        "row_offsets": np.concatenate([[0], np.cumsum(rows)]).astype(np.int64),
        "seq_ids": np.asarray(seq_ids, dtype=np.int64),
    }
    entries = None
    if target.scheme == "sampled" and draws is not None:
        compact = compact_arrays(target, vocab_size=vocab_size, value_dtype=value_dtype, draws=draws,
                                 store_logp=store_logp)
        arrays.update(compact)
        entries = int(compact["ids"].shape[0])
    else:
        arrays["ids"] = target.ids.cpu().numpy().astype(id_dtype(vocab_size))
        arrays["logp"] = encode_values(target.logp, value_dtype)
        if target.weights is not None:
            arrays["weights"] = target.weights.detach().float().cpu().numpy()
    write_safetensors(paths["data"], arrays, dtypes={"logp": _VALUE_ST[value_dtype]}, compression=compression,
                      metadata={"format": "adaspec-dist-cache", "scheme": target.scheme,
                                "value_dtype": value_dtype})
    meta = {"index": index, "file": paths["data"].name, "sequences": len(input_ids),
            "tokens": int(lengths.sum()), "supervised": n, "k": int(target.k),
            "first_seq": int(seq_ids[0]) if len(seq_ids) else None,
            "bytes": paths["data"].stat().st_size, "sha256": sha256_file(paths["data"]), "complete": True}
    if entries is not None:
        meta["entries"] = entries
    atomic_write_json(paths["meta"], meta)
    return meta


def check_target_finite(target: SparseTarget, path: os.PathLike) -> None:
    """Refuse, before anything is written, the values no healthy target produces: NaN or +inf
    log-probs (−inf is a zero probability, legitimate), non-finite weights or Σ w log p. Written,
    they would train to NaN weights; refused, the job stops naming the shard and the cause."""
    bad = {}
    if target.logp is not None:
        lp = target.logp.detach()
        bad["log-probs"] = int((lp.isnan() | lp.isposinf()).sum())
    for name, t in (("weights", target.weights), ("plogp", target.plogp)):
        if t is not None:
            bad[name] = int((~torch.isfinite(t.detach())).sum())
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        what = ", ".join(f"{v} {k}" for k, v in bad.items())
        raise CacheError(f"the target's distribution for '{path}' holds non-finite values ({what} NaN or inf); "
                         "nothing was written: the target's logits overflow or its weights are damaged "
                         "(check the model; a float16 target often overflows: set model.dtype=float32)")


def count_dtype(draws: int) -> np.dtype:
    """The narrowest unsigned type for draw counts and row lengths (both <= draws)."""
    return np.dtype(np.uint8 if draws < 1 << 8 else np.uint16 if draws < 1 << 16 else np.uint32)


def compact_arrays(target: SparseTarget, *, vocab_size: int, value_dtype: str, draws: int,
                   store_logp: bool) -> dict[str, np.ndarray]:
    """Format-2 sampled rows: ``ids`` (M,) the unique drawn ids of all rows concatenated (ascending
    in a row), ``counts`` (M,) their draw counts, ``row_nnz`` (N,) unique ids per row, ``plogp``
    (N,) float32 ``Σ_i w_i log p_i``, and ``logp`` (M,) only with ``store_logp``."""
    if target.counts is not None:
        counts = target.counts.detach().cpu().long()
    else:  # weights = count / draws (temperature 1)
        counts = torch.round(target.weights.detach().cpu().double() * draws).long()
    live = counts > 0
    if len(target) and not bool((counts.sum(-1) == draws).all()):
        raise ValueError(f"sampled target rows do not hold {draws} draws each; the cache's draws setting differs")
    cdt = count_dtype(draws)
    plogp = target.plogp if target.plogp is not None else (target.weights * target.logp).sum(-1)
    out = {"ids": target.ids.cpu()[live].numpy().astype(id_dtype(vocab_size)),
           "counts": counts[live].numpy().astype(cdt),
           "row_nnz": live.sum(-1).numpy().astype(cdt),
           "plogp": plogp.detach().float().cpu().numpy()}
    if store_logp:
        out["logp"] = encode_values(target.logp.cpu()[live], value_dtype)
    return out


def finished_shard(cache_dir: str | os.PathLike, index: int) -> dict | None:
    """The sidecar of a complete, intact shard, or ``None`` if it must be (re)written."""
    paths = shard_paths(cache_dir, index)
    if not paths["meta"].exists() or not paths["data"].exists():
        return None
    try:
        meta = read_json(paths["meta"], "shard sidecar")
    except CacheError:
        return None
    if not meta.get("complete") or paths["data"].stat().st_size != meta.get("bytes"):
        return None
    if sha256_file(paths["data"]) != meta.get("sha256"):
        return None
    return meta
