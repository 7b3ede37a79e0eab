"""Claim: cached adaspec training runs at >= 0.9x the tokens/s of plain sft of the same draft on
the same data (the sparse loss, the selection and the cache streaming cost <= 10%).

Both runs: demo-draft, world size 1, DeepSpeed ZeRO-1 fp32 on CPU, micro-batch 8, same sequences
in the same order; sft reads tokenized examples from memory, adaspec streams the top-64 cache
(with the reference column). Steps are interleaved in one process (see
``train_common.interleaved_rates``); 3 warm-up steps each are not counted.
Usage: python benchmarks/train_adaspec_vs_sft.py
"""
from __future__ import annotations

import logging

from train_common import DATA, config, interleaved_rates, setup, write_result

STEPS = 40


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    paths = setup()
    rate, tokens = interleaved_rates({"sft": config(paths, "sft", STEPS, objective="sft", cache_dir=None, data=DATA),
                                      "adaspec": config(paths, "adaspec", STEPS)}, STEPS)
    ratio = rate["adaspec"] / rate["sft"]
    print(f"sft {rate['sft']:.0f} tok/s, cached adaspec {rate['adaspec']:.0f} tok/s, ratio {ratio:.3f} (goal >= 0.9)")
    write_result("train_adaspec_vs_sft", {"claim": "cached adaspec tokens/s / sft tokens/s >= 0.9", "ratio": ratio,
                                          "tokens_per_s": rate, "tokens": tokens, "steps": STEPS - 3,
                                          "micro_batch": 8, "draft": "demo-draft", "vocab": paths["vocab"],
                                          "top_k": 64, "method": "interleaved steps, same process"})


if __name__ == "__main__":
    main()
