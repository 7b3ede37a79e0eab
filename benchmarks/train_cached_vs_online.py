"""Claim: cached adaspec is >= 5x faster than online adaspec (target and reference run every
step, like the published code) when the target has ~30x the draft's parameters.

Models: demo-target widened to 384 x 8 layers (~16M params with the 4096 vocab) vs demo-draft
(~0.57M); world size 1, ZeRO-1 fp32 on CPU, micro-batch 8, same sequences in the same order.
Steps are interleaved in one process (see ``train_common.interleaved_rates``); 3 warm-up steps
each are not counted. Usage: python benchmarks/train_cached_vs_online.py
"""
from __future__ import annotations

import logging

from train_common import DRAFT, TARGET, config, interleaved_rates, setup, write_result

STEPS = 16


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    from adaspec_dist.models.load import build_preset, param_count

    paths = setup()
    ratio_params = (param_count(build_preset(TARGET["preset"], paths["vocab"], **TARGET["overrides"]))
                    / param_count(build_preset(DRAFT["preset"], paths["vocab"])))
    rate, tokens = interleaved_rates({"online": config(paths, "online", STEPS, teacher_mode="online"),
                                      "cached": config(paths, "cached", STEPS)}, STEPS)
    ratio = rate["cached"] / rate["online"]
    print(f"target/draft params {ratio_params:.1f}x; online {rate['online']:.0f} tok/s, cached "
          f"{rate['cached']:.0f} tok/s, speedup {ratio:.2f}x (goal >= 5x)")
    write_result("train_cached_vs_online", {"claim": "cached adaspec tokens/s / online adaspec tokens/s >= 5",
                                            "ratio": ratio, "target_over_draft_params": ratio_params,
                                            "tokens_per_s": rate, "tokens": tokens, "steps": STEPS - 3,
                                            "micro_batch": 8, "method": "interleaved steps, same process"})


if __name__ == "__main__":
    main()
