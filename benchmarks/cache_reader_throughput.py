"""Claim: the cache reader streams and decodes training batches >= 20x faster than the draft's
training step consumes them, so it is never the bottleneck.

Builds real caches (top-64 fp16, and format-2 sampled rows at 32 and 16 draws, and zlib-compressed
shards of top-64 and sampled 16; vocab 50304,
64 sequences x 256 tokens, 64-token prompts) with the cache job, then measures in one run:
* reader: tokens/s of 5 epochs of ``CacheReader`` (batch 8, shuffled, background prefetch,
  sha256 verified on open) decoded into training tensors (int64 ids, masks, fp32 log-probs);
* baseline: tokens/s of the draft's training step on those batches — the ``demo-draft`` preset
  (a real LlamaForCausalLM) forward + sparse forward KL (the package's ``token_losses`` + ``objective``) + backward +
  AdamW step, one thread, on batches already in memory.
Prints reader / training; writes benchmarks/results/cache_reader_throughput.json.

    python benchmarks/cache_reader_throughput.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_common import task_sequences, write_result  # noqa: E402

VOCAB = 50304


def main() -> None:
    import torch
    from adaspec_dist.cache.produce import JobSpec, hf_target_fn, write_cache
    from adaspec_dist.cache.reader import CacheReader
    from adaspec_dist.distill import objectives as obj
    from adaspec_dist.models.load import build_preset

    torch.set_num_threads(1)
    seqs = task_sequences(64, 256, 64, VOCAB)
    target = build_preset("tiny-neox", VOCAB)
    readers = {}
    for name, kw in (("topk64_fp16", dict(scheme="topk", top_k=64)), ("sampled32_format2", dict(scheme="sampled", draws=32)),
                     ("sampled16_format2", dict(scheme="sampled", draws=16)),
                     ("sampled16_format2_zlib", dict(scheme="sampled", draws=16, compression="zlib")),
                     ("topk64_fp16_zlib", dict(scheme="topk", top_k=64, compression="zlib"))):
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "c"
            spec = JobSpec(**kw, value_dtype="fp16", batch_size=8, shard_size=16, vocab_size=VOCAB)
            write_cache(seqs, hf_target_fn(target, scheme=spec.scheme, top_k=spec.top_k, draws=spec.draws), spec,
                        cache, tensorboard_dir=str(Path(tmp) / "tb"))
            reader = CacheReader(cache, batch_size=8, seed=0, prefetch=2, verify="open")
            t0 = time.perf_counter()
            batches = list(reader)  # epoch 0 (also opens, verifies and, zlib, decompresses every shard once)
            cold = sum(int(b.attention_mask.sum()) for b in batches) / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            tokens = 0
            for epoch in range(1, 6):  # 5 timed epochs, reshuffled each time
                reader.set_epoch(epoch)
                tokens += sum(int(b.attention_mask.sum()) for b in reader)
            read_s = time.perf_counter() - t0
            readers[name] = {"reader_tokens_per_s": round(tokens / read_s), "batches": batches,
                             "cold_epoch_tokens_per_s": round(cold)}
            print(f"reader {name}: {tokens / read_s:,.0f} tokens/s ({tokens} tokens in {read_s:.2f} s); first epoch "
                  f"(open + sha256 + decompress) {cold:,.0f} tokens/s")

    draft = build_preset("demo-draft", VOCAB).train()
    opt = torch.optim.AdamW(draft.parameters(), lr=1e-3)

    def step(b):
        logits = obj.supervised_logits(draft, b)
        loss, _ = obj.objective("kd", obj.token_losses("kd", logits, b))  # the trainer's sparse forward KL
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    out = {}
    for name, r in readers.items():  # the training step on that cache's own batches
        batches = r["batches"]
        step(batches[0])  # warm-up
        timed = batches[1:5]
        t0 = time.perf_counter()
        for b in timed:
            step(b)
        train_s = time.perf_counter() - t0
        train_tps = sum(int(b.attention_mask.sum()) for b in timed) / train_s
        ratio = r["reader_tokens_per_s"] / train_tps
        out[name] = {"reader_tokens_per_s": r["reader_tokens_per_s"], "train_tokens_per_s": round(train_tps),
                     "ratio": round(ratio, 1), "cold_epoch_tokens_per_s": r["cold_epoch_tokens_per_s"],
                     "cold_ratio": round(r["cold_epoch_tokens_per_s"] / train_tps, 1)}
        print(f"{name}: reader {r['reader_tokens_per_s']:,} tok/s, draft training step {train_tps:,.0f} tok/s: "
              f"{ratio:.1f}x, first epoch {out[name]['cold_ratio']}x (goal >= 20x: "
              f"{'met' if min(ratio, out[name]['cold_ratio']) >= 20 else 'NOT met'})")
    path = write_result("cache_reader_throughput", {
        "claim": "reader tokens/s >= 20x the draft training step's tokens/s",
        **out["topk64_fp16"], "caches": out,
        "setup": "top-64 fp16 and format-2 sampled (32 and 16 draws; zlib: compression zlib; fkl-only rows; random-weight target: every draw "
                 "a different id, the widest rows), vocab 50304, 64 x 256-token sequences, batch 8; draft = "
                 "demo-draft preset, AdamW, 1 thread"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
