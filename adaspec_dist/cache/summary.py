"""What a cache holds, and (``verify``) whether it is intact: the library side of ``adaspec-dist inspect``.

``summarise(cache_dir, verify=False, max_rows=200_000)`` -> dict: sequences, tokens, supervised
tokens, bytes on disk, bytes per supervised token, scheme and params, mean tail mass (top-k),
top-1 agreement (how often the target's most likely cached id is the actual next token) and
mean L_ref when a reference column exists. Statistics come from the first ``max_rows``
supervised positions; ``verify`` re-hashes every shard (and reference file) first.
"""
from __future__ import annotations

import torch

from adaspec_dist.cache import format as fmt
from adaspec_dist.cache.reader import CacheReader


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
        top1 = t.ids.gather(1, t.logp.argmax(-1, keepdim=True)).squeeze(1)
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
    }
    return out
