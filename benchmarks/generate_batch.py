"""Claim: the generate job at batch 32 delivers >= 8x the generated tokens/s of batch 1.

The demo's draft shape (configs/demo.yaml: the 1-layer demo-draft, vocabulary 1024), the job's own
row function (``speculative.generate.generate_rows``: the project's decoder, per-sample
counter-based streams, ragged prompts of 30-90 tokens, temperature 1, 64 new tokens, no EOS so
every row generates the same count); the baseline is the same 64 prompts decoded one at a time
in this run. Both runs produce the same samples (asserted), so the ratio is pure batching.
Writes benchmarks/results/generate_batch.json.

    python benchmarks/generate_batch.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_result  # noqa: E402

DEMO_DRAFT = {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 96, "num_attention_heads": 4,
              "num_key_value_heads": 4}
VOCAB, PROMPTS, NEW = 1024, 64, 64


def run(model, prompts, batch):
    from adaspec_dist.data.tasks import DataConfig
    from adaspec_dist.models.load import ModelConfig
    from adaspec_dist.speculative.generate import GenerateConfig, generate_rows

    cfg = GenerateConfig(data=DataConfig(task="arith", max_length=256), model=ModelConfig(preset="demo-draft"),
                         out_dir="unused", max_new_tokens=NEW, temperature=1.0, batch_size=batch, seed=0)
    t0 = time.perf_counter()
    rows = generate_rows(model, list(enumerate(prompts)), cfg, eos=None, vocab=VOCAB, pad_id=0)
    seconds = time.perf_counter() - t0
    tokens = sum(len(r["input_ids"]) - len(p) for r, p in zip(rows, prompts))
    return tokens / seconds, rows


def main() -> None:
    import torch

    from adaspec_dist.models.load import build_preset

    torch.set_num_threads(1)
    model = build_preset("demo-draft", VOCAB, seed=0, **DEMO_DRAFT)
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(30, 91, (PROMPTS,), generator=gen).tolist()
    prompts = [[2] + torch.randint(4, VOCAB, (n - 1,), generator=gen).tolist() for n in lengths]
    run(model, prompts[:4], 2)  # warm-up
    tps1, rows1 = run(model, prompts, 1)
    tps32, rows32 = run(model, prompts, 32)
    same = [r["input_ids"] for r in rows1] == [r["input_ids"] for r in rows32]
    ratio = tps32 / tps1
    print(f"batch 1: {tps1:.0f} generated tok/s;  batch 32: {tps32:.0f} generated tok/s;  same samples: {same}")
    print(f"batch 32 / batch 1 = {ratio:.2f}x (goal >= 8x: {'met' if ratio >= 8 else 'NOT met'})")
    path = write_result("generate_batch", {
        "claim": "generate at batch 32 >= 8x the generated tokens/s of batch 1 (demo draft shape)",
        "model": {"preset": "demo-draft", "vocab": VOCAB, **DEMO_DRAFT},
        "prompts": PROMPTS, "prompt_tokens": [min(lengths), max(lengths)], "max_new_tokens": NEW, "temperature": 1.0,
        "tokens_per_s_batch1": round(tps1, 1), "tokens_per_s_batch32": round(tps32, 1), "ratio": round(ratio, 2),
        "same_samples_batch1_vs_32": same, "goal_met": ratio >= 8})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
