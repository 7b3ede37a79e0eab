"""Claim: cached adaspec training runs at >= 0.9x the tokens/s of plain sft of the same draft on
the same data (the sparse loss, the selection and the cache streaming cost <= 10%).

Both runs: demo-draft, world size 1, DeepSpeed ZeRO-1 fp32 on CPU, micro-batch 8, same sequences;
sft reads tokenized examples from memory, adaspec streams the top-64 cache (with the reference
column). Each is run twice, alternating, and the faster of each pair is kept.
Usage: python benchmarks/train_adaspec_vs_sft.py
"""
from __future__ import annotations

import logging

from train_common import DATA, run_train, setup, write_result


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    paths = setup()
    steps = 24
    rates = {"sft": [], "adaspec": []}
    for rep in range(2):
        s = run_train(paths, f"sft{rep}", steps, objective="sft", cache_dir=None, data=DATA)
        rates["sft"].append(s["tokens_per_s"])
        a = run_train(paths, f"ada{rep}", steps)
        rates["adaspec"].append(a["tokens_per_s"])
    best = {k: max(v) for k, v in rates.items()}
    ratio = best["adaspec"] / best["sft"]
    print(f"sft {best['sft']:.0f} tok/s, cached adaspec {best['adaspec']:.0f} tok/s, "
          f"ratio {ratio:.3f} (goal >= 0.9)")
    write_result("train_adaspec_vs_sft", {"claim": "cached adaspec tokens/s / sft tokens/s >= 0.9",
                                          "ratio": ratio, "tokens_per_s": rates, "steps": steps,
                                          "micro_batch": 8, "draft": "demo-draft", "vocab": paths["vocab"],
                                          "top_k": 64})


if __name__ == "__main__":
    main()
