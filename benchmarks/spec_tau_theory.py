"""Claim: measured tokens per target call τ matches the theory τ(α) = (1 - α^(γ+1)) / (1 - α) with α
measured from logits (α_logits on held-out target text), ratio within 0.97-1.03.

Setup (spec_common.py): ~46M-parameter random Llama target, distilled 1-layer demo-draft, vocab 128,
temperature 1, batch 8, 32 random 8-token prompts, 48 new tokens, γ = 2, 4, 6. The baseline of the
ratio is the theoretical τ computed in the same run. Writes benchmarks/results/spec_tau_theory.json.

    python benchmarks/spec_tau_theory.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spec_common import pair, prompts, write_result  # noqa: E402


def main() -> None:
    import torch

    from adaspec_dist.speculative.evaluate import EvalConfig, evaluate_drafts

    torch.set_num_threads(1)
    target, draft, held_out = pair()
    cfg = EvalConfig(gammas=[2, 4, 6], batch_size=8, temperature=1.0, max_new_tokens=48, seed=0)
    res = evaluate_drafts(target, {"distilled": draft}, prompts(32, seed=0), held_out, cfg)
    d = res["drafts"]["distilled"]
    rows = []
    for g, r in d["by_gamma"].items():
        ratio = r["tau"] / r["tau_theory"]
        rows.append({"gamma": int(g), "tau_measured": r["tau"], "tau_theory": r["tau_theory"], "ratio": ratio,
                     "acceptance_rate": r["acceptance_rate"], "per_position": r["per_position"],
                     "target_calls": r["target_calls"]})
        print(f"gamma {g}: tau measured {r['tau']:.3f} / theory {r['tau_theory']:.3f} = {ratio:.3f}   "
              f"(acceptance {r['acceptance_rate']:.3f}, per-position {' '.join(f'{x:.2f}' for x in r['per_position'])})")
    ok = all(0.97 <= r["ratio"] <= 1.03 for r in rows)
    print(f"alpha_logits {d['alpha_logits']:.4f} on {d['alpha_positions']} held-out positions; "
          f"goal 0.97-1.03: {'met' if ok else 'NOT met'}")
    path = write_result("spec_tau_theory", {
        "claim": "measured tau / theoretical tau(alpha_logits) in 0.97-1.03",
        "alpha_logits": d["alpha_logits"], "alpha_positions": d["alpha_positions"], "rows": rows, "goal_met": ok,
        "settings": res["settings"], "conventions": res["conventions"]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
