"""Claim: a top-64 cache of a 50k-vocabulary model costs <= 200 B per supervised token, >= 500x less
than dense fp16 logits (50304 x 2 B = 100.6 kB per token), the baseline.

Builds real caches with the cache job (a random-weight tiny-neox at vocab 50304: bytes do not
depend on the weights) for k = 8, 32, 64 with fp16 and int8 values, and sampled with 32 draws,
and divides every byte of the shard files by the supervised tokens. Prints each ratio against
dense fp16; writes benchmarks/results/cache_bytes_per_token.json.

    python benchmarks/cache_bytes_per_token.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_common import task_sequences, write_result  # noqa: E402

VOCAB = 50304


def main() -> None:
    import torch
    from adaspec_dist.cache.produce import JobSpec, hf_target_fn, write_cache
    from adaspec_dist.models.load import build_preset

    torch.set_num_threads(1)
    model = build_preset("tiny-neox", VOCAB)
    # 32 sequences of 128 tokens with a 32-token prompt: 3040 supervised positions.
    seqs = task_sequences(32, 128, 32, VOCAB)
    dense = VOCAB * 2
    rows = []
    settings = [("topk", k, 0, vd) for k in (8, 32, 64) for vd in ("fp16", "int8")] + [("sampled", 0, 32, "fp16")]
    for scheme, k, draws, vd in settings:
        with tempfile.TemporaryDirectory() as tmp:
            spec = JobSpec(scheme=scheme, top_k=k or 1, draws=draws or 1, value_dtype=vd, batch_size=8,
                           shard_size=16, vocab_size=VOCAB)
            fn = hf_target_fn(model, scheme=scheme, top_k=spec.top_k, draws=spec.draws)
            man = write_cache(seqs, fn, spec, Path(tmp) / "c", tensorboard_dir=str(Path(tmp) / "tb"))
            total = sum(sh["bytes"] for sh in man["shards"])
            per_tok = total / man["num_supervised"]
            rows.append({"scheme": scheme, "k": k or None, "draws": draws or None, "value_dtype": vd,
                         "supervised_tokens": man["num_supervised"], "total_bytes": total,
                         "bytes_per_token": round(per_tok, 1), "ratio_vs_dense_fp16": round(dense / per_tok, 1),
                         "stored_width": man["shards"][0]["k"]})
            label = f"{scheme} k={k}" if scheme == "topk" else f"sampled draws={draws} (width {rows[-1]['stored_width']})"
            print(f"{label:34s} {vd}: {per_tok:8.1f} B/token   {dense / per_tok:7.1f}x smaller than dense fp16")
    k64 = [r for r in rows if r["k"] == 64]
    best = min(r["bytes_per_token"] for r in k64)
    print(f"dense fp16 baseline: {dense} B/token; goal at k=64: <= 200 B/token -> best {best} B/token "
          f"({'met' if best <= 200 else 'NOT met'})")
    path = write_result("cache_bytes_per_token", {
        "claim": "top-64 cache <= 200 B/supervised token (>= 500x smaller than dense fp16 logits) at vocab 50304",
        "vocab_size": VOCAB, "dense_fp16_bytes_per_token": dense, "rows": rows,
        "note": "bytes = every byte of the shard files (tokens, masks, offsets, ids, values, weights) / "
                "supervised tokens; 32 sequences x 128 tokens, 32-token prompts"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
