"""What a cache holds, and (``verify``) whether it is intact: the library side of ``adaspec-dist inspect``.

``summarise(cache_dir, verify=False, max_rows=200_000)`` -> dict: sequences, tokens, supervised
tokens, bytes on disk, bytes per supervised token, scheme and params, mean tail mass (top-k),
top-1 agreement (how often the target's most likely cached id is the actual next token) and
mean L_ref when a reference column exists. Statistics come from the first ``max_rows``
supervised positions; ``verify`` re-hashes every shard (and reference file) first.

``check_invariants(reader, max_rows)`` -> warning lines (also ``summarise(...)["warnings"]``): the
numbers no intact cache can hold, each naming the file and the fix. Counts against the manifest
for every shard (sequences, tokens, supervised rows, ids per row, reference rows); on up to
``max_rows`` rows spread over the shards: ids inside the vocabulary, finite log-probabilities
<= 0 (probabilities in [0, 1]), top-k mass <= 1 + eps (eps: the stored value type's rounding),
sampled weights >= 0, and L_ref finite and, for top-k caches, >= 0 (the top-k + rest divergence
is a proper divergence; the sampled estimator may dip below 0 per token). A checksum can only
tell a file changed since it was written; these catch what was wrong when it was.
"""
from __future__ import annotations

import torch

import numpy as np

from adaspec_dist.cache import format as fmt
from adaspec_dist.cache.reader import CacheReader
from adaspec_dist.sparse.target import decode_values

# How far past 1 rounding can push a stored top-k mass (fp16 / bf16: 8+ bits of mantissa on each
# log-prob; int8: its companding error, docs/cache-format.md).
_MASS_EPS = {"fp16": 0.02, "bf16": 0.02, "int8": 0.05}
_REF_EPS = 1e-4  # a divergence computed in float32 can round a hair below 0


def summarise(cache_dir, *, verify: bool = False, max_rows: int = 200_000) -> dict:
    reader = CacheReader(cache_dir, batch_size=64, shuffle=False, prefetch=0,
                         verify="full" if verify else "none")
    man = reader.manifest
    shard_dir = reader.cache_dir / fmt.SHARD_DIR
    n_bytes = sum((shard_dir / sh["file"]).stat().st_size for sh in man["shards"])
    tail, agree, refs, rows = [], [], [], 0
    for batch in reader:
        t = batch.target
        # Next tokens of the supervised positions, row-major like the targets.
        nxt = torch.zeros_like(batch.input_ids)
        nxt[:, :-1] = batch.input_ids[:, 1:]
        labels = nxt[batch.loss_mask]
        score = t.logp if t.logp is not None else t.weights  # compact sampled rows: the most drawn id
        top1 = t.ids.gather(1, score.argmax(-1, keepdim=True)).squeeze(1)
        agree.append((top1 == labels).float())
        if t.scheme == "topk":
            tail.append(t.tail_mass())
        if batch.ref_loss is not None:
            refs.append(batch.ref_loss)
        rows += len(t)
        if rows >= max_rows:
            break
    out = {
        "cache_dir": str(reader.cache_dir), "scheme": man["scheme"], "params": man["params"],
        "format_version": man["format_version"], "divergences": list(fmt.supported_divergences(man)),
        "vocab_size": man["vocab_size"], "sequences": man["num_sequences"], "tokens": man["num_tokens"],
        "supervised_tokens": man["num_supervised"], "shards": len(man["shards"]), "bytes": n_bytes,
        "bytes_per_supervised_token": n_bytes / max(man["num_supervised"], 1),
        "top1_agreement": float(torch.cat(agree).mean()) if agree else None,
        "mean_tail_mass": float(torch.cat(tail).mean()) if tail else None,
        "target": man.get("target"), "data": man.get("data"),
        "reference": None if not man.get("reference") else {
            k: man["reference"][k] for k in ("model", "divergence", "beta")},
        "mean_ref_loss": float(torch.cat(refs).mean()) if refs else None,
        "stats_rows": rows, "verified": verify,
        "warnings": check_invariants(reader, max_rows),
    }
    return out


def _fix_shard(reader: CacheReader, what: str) -> str:
    return (f"{what}: the shard is damaged; run `adaspec-dist inspect --verify {reader.cache_dir}`, then delete "
            "the shard (and its .json) and rerun the cache job (same command) to recompute it")


def _fix_ref(reader: CacheReader, what: str) -> str:
    return (f"{what}: the reference column is damaged; run `adaspec-dist inspect --verify {reader.cache_dir}`, then "
            f"recompute it with `adaspec-dist cache --add-reference REF_MODEL {reader.cache_dir} --replace`")


def check_invariants(reader: CacheReader, max_rows: int = 200_000) -> list[str]:
    """Warning lines for impossible numbers in the cache (see the module docstring); [] when none."""
    ref = reader.manifest.get("reference") or None
    per_shard = max(1, max_rows // max(1, len(reader.shards)))
    out = _manifest_totals(reader)
    for s, sh in enumerate(reader.shards):
        name = f"{fmt.SHARD_DIR}/{sh['file']}"
        a = reader._shard(s)
        counts, wrong = _shard_structure(reader, sh, a)
        if wrong:
            out.append(f"warning: {_fix_shard(reader, name + ' holds ' + ', '.join(wrong))}")
            continue
        n = min(counts["supervised"], per_shard)
        bad = _impossible_values(reader, a, n)
        if bad:
            out.append(f"warning: {_fix_shard(reader, name + ' holds ' + '; '.join(bad))}")
        if ref and sh["file"] in ref.get("shards", {}):
            out += _check_ref(reader, ref["shards"][sh["file"]]["file"], counts["supervised"], n)
    return out


def _manifest_totals(reader: CacheReader) -> list[str]:
    """The manifest's totals against the sum of its shards' counts: [] or one warning line."""
    man = reader.manifest
    totals = {"num_sequences": "sequences", "num_tokens": "tokens", "num_supervised": "supervised"}
    wrong = [f"{k} {man[k]} but its shards hold {sum(sh[v] for sh in reader.shards)}"
             for k, v in totals.items() if man[k] != sum(sh[v] for sh in reader.shards)]
    if not wrong:
        return []
    return [f"warning: {fmt.manifest_path(reader.cache_dir)} says {', '.join(wrong)}: it was edited or is "
            "damaged; delete it and rerun the cache job (same command) to rewrite it"]


def _shard_structure(reader: CacheReader, sh: dict, a: dict) -> tuple[dict[str, int], list[str]]:
    """One shard's counts (sequences, tokens, supervised) from its own offsets, and what disagrees:
    with its manifest entry, among its arrays, ids per row (or per compact row entry)."""
    counts = {"sequences": len(a["seq_offsets"]) - 1, "tokens": int(a["seq_offsets"][-1]),
              "supervised": int(a["row_offsets"][-1])}
    wrong = [f"{k} {v} (manifest: {sh[k]})" for k, v in counts.items() if v != sh[k]]
    rows_held = a["row_nnz"].shape[0] if reader.compact else a["ids"].shape[0]
    if len(a["tokens"]) != counts["tokens"] or int(np.asarray(a["loss_mask"], dtype=np.int64).sum()) != \
            counts["supervised"] or rows_held != counts["supervised"]:
        wrong.append("its arrays disagree with its own offsets")
    if reader.compact:
        entries = int(a["entry_offsets"][-1])
        if a["ids"].shape != (entries,) or a["counts"].shape != (entries,) or entries != sh.get("entries", entries):
            wrong.append(f"{a['ids'].shape[0]} ids for {entries} row entries (manifest: {sh.get('entries')})")
    elif a["ids"].ndim != 2 or a["ids"].shape[1] != sh["k"]:
        wrong.append(f"{a['ids'].shape[-1]} ids per row (manifest: {sh['k']})")
    return counts, wrong


def _impossible_values(reader: CacheReader, a: dict, n: int) -> list[str]:
    """What no intact cache holds among a shard's first ``n`` rows: draw counts and row constants
    (compact rows), ids, log-probabilities, top-k mass, sampling weights."""
    vocab = int(reader.manifest["vocab_size"])
    m = int(a["entry_offsets"][n]) if reader.compact else n  # the first n rows' entries
    ids = np.asarray(a["ids"][:m])
    logp = decode_values(a["logp"][:m], reader.value_dtype).numpy() if "logp" in a else np.zeros(0, np.float32)
    bad = _compact_row_problems(reader, a, n, m) if reader.compact else []
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        bad.append(f"ids outside the vocabulary [0, {vocab}) (max {int(ids.max())})")
    bad += _logp_problems(reader, logp)
    if "weights" in a:
        w = np.asarray(a["weights"][:n])
        if not np.isfinite(w).all() or (w.size and w.min() < 0):
            bad.append("negative or non-finite sampling weights")
    return bad


def _compact_row_problems(reader: CacheReader, a: dict, n: int, m: int) -> list[str]:
    """Compact sampled rows: every row's draw counts sum to ``draws``; its constant is a log-probability."""
    bad = []
    draws = np.asarray(a["counts"][:m], dtype=np.int64)
    per_row = np.add.reduceat(draws, a["entry_offsets"][:n]) if n and m else np.zeros(0, np.int64)
    if draws.size and draws.min() < 1 or (per_row != reader.draws).any():
        bad.append(f"rows whose draw counts do not sum to draws={reader.draws}")
    plogp = np.asarray(a["plogp"][:n], dtype=np.float64)
    if not np.isfinite(plogp).all() or (plogp.size and plogp.max() > _MASS_EPS.get("fp16", 0.02)):
        bad.append("row constants (plogp) that are not finite log-probabilities <= 0")
    return bad


def _logp_problems(reader: CacheReader, logp: np.ndarray) -> list[str]:
    """Stored log-probabilities: finite, <= 0 up to the value type's rounding, top-k mass <= 1 + eps
    (the first problem found only: each one implies the next check is meaningless)."""
    eps = _MASS_EPS.get(reader.value_dtype, 0.05)
    if not np.isfinite(logp).all():
        return [f"{int((~np.isfinite(logp)).sum())} non-finite log-probabilities"]
    if logp.size and logp.max() > eps:
        return [f"probabilities above 1 (largest log-prob {float(logp.max()):.3g})"]
    if reader.scheme == "topk" and logp.size:
        mass = np.exp(logp.astype(np.float64)).sum(-1)
        if mass.max() > 1 + eps:
            return [f"{int((mass > 1 + eps).sum())} rows whose top-k mass exceeds 1 (max {mass.max():.3f})"]
    return []


def _check_ref(reader: CacheReader, file: str, supervised: int, n: int) -> list[str]:
    """The reference column of one shard: one row per supervised position, finite, a divergence."""
    name = f"{fmt.SHARD_DIR}/{file}"
    col = np.load(reader.cache_dir / name, mmap_mode="r")
    vals = np.asarray(col[:n], dtype=np.float64)
    if col.shape != (supervised,):
        problem = f"{name} has {col.shape[0]} rows for {supervised} supervised positions"
    elif not np.isfinite(vals).all():
        problem = f"{name} holds {int((~np.isfinite(vals)).sum())} non-finite L_ref values"
    elif reader.scheme == "topk" and vals.size and vals.min() < -_REF_EPS:
        problem = (f"{name} holds {int((vals < -_REF_EPS).sum())} negative L_ref values (min {vals.min():.4g}), "
                   "impossible for a divergence")
    else:
        return []
    return [f"warning: {_fix_ref(reader, problem)}"]
