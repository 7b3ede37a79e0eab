"""Claim: cached adaspec is >= 5x faster than online adaspec (target and reference run every
step, like the published code) when the target has ~30x the draft's parameters.

Models: demo-target widened to 384 x 8 layers (~16M params with the 4096 vocab) vs demo-draft (~0.57M); world size 1, ZeRO-1 fp32
on CPU, micro-batch 8, same sequences. Each mode run twice, alternating; the faster run is kept.
Usage: python benchmarks/train_cached_vs_online.py
"""
from __future__ import annotations

import logging

from train_common import DRAFT, TARGET, run_train, setup, write_result


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    from adaspec_dist.models.load import build_preset, param_count

    paths = setup()
    ratio_params = (param_count(build_preset(TARGET["preset"], paths["vocab"], **TARGET["overrides"]))
                    / param_count(build_preset(DRAFT["preset"], paths["vocab"])))
    steps = 12
    rates = {"cached": [], "online": []}
    for rep in range(2):
        rates["online"].append(run_train(paths, f"online{rep}", steps, teacher_mode="online")["tokens_per_s"])
        rates["cached"].append(run_train(paths, f"cached{rep}", steps)["tokens_per_s"])
    best = {k: max(v) for k, v in rates.items()}
    ratio = best["cached"] / best["online"]
    print(f"target/draft params {ratio_params:.1f}x; online {best['online']:.0f} tok/s, cached "
          f"{best['cached']:.0f} tok/s, speedup {ratio:.2f}x (goal >= 5x)")
    write_result("train_cached_vs_online", {"claim": "cached adaspec tokens/s / online adaspec tokens/s >= 5",
                                            "ratio": ratio, "target_over_draft_params": ratio_params,
                                            "tokens_per_s": rates, "steps": steps, "micro_batch": 8})


if __name__ == "__main__":
    main()
