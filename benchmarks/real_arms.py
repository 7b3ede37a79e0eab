"""Claim: on the real pair the three arms of ``make real`` (DistillSpec = the kd reference, AdaSPEC,
and the compute control DistillSpec-wide) differ in α_logits and in speculative acceptance on
HumanEval, at every draft length γ = 1..6 and at temperature 0 and 1.

Runs the package's eval job (``speculative.evaluate.evaluate`` with an ``EvalConfig``: target
SmolLM2-135M-Instruct, the three drafts ``RUN/{reference,adaspec,distillspec_wide}/final``, data =
HumanEval rendered with the target's chat template) once per temperature; each writes its own
eval.json, kept as benchmarks/results/real_arms/T{0,1}/eval.json. Collects α_logits, acceptance rate,
τ, τ(α), per-position acceptance and (T = 0) the share of prompts whose SD output equals the
target's greedy output into benchmarks/results/real_arms.json, and plots acceptance vs γ per arm at
both temperatures (benchmarks/results/real_arms.png). The printed ratio: each arm's acceptance ÷
DistillSpec's (the reference arm, measured in the same eval job, on the same prompts).

Speed numbers of eval.json are kept but are not the claim here (2 shared CPU cores; see
real_spec.py for speed). Needs the drafts of a finished ``make real`` run (--run-dir, default
/tmp/real/run1); --smoke uses the untrained 2-layer from_target draft under all three names.

    nice -n 5 python benchmarks/real_arms.py [--run-dir /tmp/real/run1]   # ~14 min on 2 shared cores
    python benchmarks/real_arms.py --smoke                                # seconds; results to a temp dir
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_common as rc  # noqa: E402
import results_io  # noqa: E402
from results_io import write_result  # noqa: E402

TEMPERATURES = (0.0, 1.0)


def drafts_of(args, work: Path) -> dict[str, str]:
    """Display name -> draft directory: the run's three arms, or (--smoke) one from_target draft."""
    if args.smoke:
        from adaspec_dist.models.load import save_hf

        d = work / "from_target_draft"
        save_hf(rc.from_target_draft(2), d, rc.tokenizer())
        return {name: str(d) for name in rc.ARMS}
    found = {name: rc.trained_draft_dir(args.run_dir, name) for name in rc.ARMS}
    missing = [f"{Path(args.run_dir) / stage / 'final'}" for name, stage in rc.ARMS.items() if found[name] is None]
    if missing:
        raise SystemExit(f"no trained draft in {', '.join(missing)}: run `make real` (or the pipeline of "
                         f"configs/smollm2-135m-code.yaml with run_dir={args.run_dir}) first")
    return {name: str(path) for name, path in found.items()}


def ratio(x) -> str:
    return "n/a" if x is None else f"{x:.3f}x"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adaspec_dist.speculative.report import draft_colors

    temps = list(summary["by_temperature"])
    fig, axes = plt.subplots(1, len(temps), figsize=(5.2 * len(temps), 4), sharey=True)
    colors = draft_colors(list(next(iter(summary["by_temperature"].values()))["arms"]))
    for ax, t in zip(axes if len(temps) > 1 else [axes], temps):
        arms = summary["by_temperature"][t]["arms"]
        for name, arm in arms.items():
            g = [int(x) for x in arm["by_gamma"]]
            ax.plot(g, [arm["by_gamma"][str(x)]["acceptance_rate"] for x in g], "o-", color=colors[name],
                    label=f"{name} (α {arm['alpha_logits']:.3f})")
        ax.set_title(f"SmolLM2-135M → 2-layer draft, HumanEval, T = {t}")
        ax.set_xlabel("γ (draft tokens per target call)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    (axes[0] if len(temps) > 1 else axes).set_ylabel("acceptance rate (accepted / drafted)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    args = rc.parser(__doc__).parse_args(argv)
    rc.setup(args)
    from adaspec_dist.data.tasks import DataConfig
    from adaspec_dist.models.load import ModelConfig
    from adaspec_dist.speculative.evaluate import EvalConfig, evaluate

    if args.smoke:
        sizes = dict(num_prompts=1, max_new_tokens=4, gammas=[1, 2], batch_size=1, max_prompt_tokens=48)
        max_length = 128
    else:
        sizes = dict(num_prompts=8, max_new_tokens=32, gammas=[1, 2, 3, 4, 5, 6], batch_size=8, max_prompt_tokens=448)
        max_length = 512
    out_root = Path(results_io.RESULTS)
    with tempfile.TemporaryDirectory(prefix="real-arms-") as tmp:
        drafts = drafts_of(args, Path(tmp))
        print("drafts: " + ", ".join(f"{k} = {v}" for k, v in drafts.items()))
        summary = {"by_temperature": {}}
        for t in TEMPERATURES:
            cfg = EvalConfig(target=ModelConfig(name_or_path=rc.SMOLLM2), drafts=drafts,
                             data=DataConfig(task="humaneval", split="test", chat_template="target",
                                             max_length=max_length),
                             temperature=t, device="cpu", seed=0,
                             out_dir=str(Path(tmp) / f"eval-T{t:g}"), **sizes)
            t0 = rc.clock()
            res = evaluate(cfg)
            secs = rc.clock() - t0
            kept = out_root / "real_arms" / f"T{t:g}" / "eval.json"   # the job's own file (plots, tb: not kept)
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(cfg.out_dir) / "eval.json", kept)
            arms = {}
            for name, d in res["drafts"].items():
                arms[name] = {"alpha_logits": d["alpha_logits"], "alpha_positions": d["alpha_positions"],
                              "cost_ratio": d["cost_ratio"], "by_gamma": {
                                  g: {k: r.get(k) for k in ("acceptance_rate", "tau", "tau_theory", "per_position",
                                                            "matches_target", "speedup", "speedup_spread",
                                                            "timing_error", "speedup_bound")}
                                  for g, r in d["by_gamma"].items()}}
            ref = arms["distillspec"]
            for name, arm in arms.items():
                arm["alpha_over_distillspec"] = arm["alpha_logits"] / ref["alpha_logits"] if ref["alpha_logits"] else None
                arm["acceptance_over_distillspec"] = {
                    g: r["acceptance_rate"] / ref["by_gamma"][g]["acceptance_rate"]
                    if ref["by_gamma"][g]["acceptance_rate"] else None for g, r in arm["by_gamma"].items()}
            summary["by_temperature"][f"{t:g}"] = {"arms": arms, "eval_seconds": round(secs, 1),
                                                   "eval_json": str(kept.relative_to(out_root)),
                                                   "target_tokens_per_s": res["target"]["tokens_per_s"]}
            g4 = str(4 if 4 in cfg.gammas else cfg.gammas[-1])
            print(f"T = {t:g} ({secs:.0f} s): arm, alpha_logits (÷ distillspec), acceptance at gamma "
                  f"{', '.join(map(str, cfg.gammas))} (÷ distillspec at gamma {g4}), tau at gamma {g4} vs tau(alpha)")
            for name, arm in arms.items():
                acc = [arm["by_gamma"][str(g)]["acceptance_rate"] for g in cfg.gammas]
                print(f"    {name:17s} α {arm['alpha_logits']:.4f} ({ratio(arm['alpha_over_distillspec'])})  acceptance "
                      + " ".join(f"{a:.3f}" for a in acc)
                      + f"  ({ratio(arm['acceptance_over_distillspec'][g4])})  τ {arm['by_gamma'][g4]['tau']:.3f} vs "
                      f"{arm['by_gamma'][g4]['tau_theory']:.3f}"
                      + (f"  matches target {arm['by_gamma'][g4]['matches_target']:.2f}" if t == 0 else ""))
    png = out_root / "real_arms.png"
    plot(summary, png)
    path = write_result("real_arms", rc.json_safe({
        "claim": "alpha_logits and SD acceptance (gamma 1-6, T 0 and 1) of DistillSpec, AdaSPEC and DistillSpec-wide "
                 "drafts of SmolLM2-135M-Instruct on HumanEval, through the package's eval job",
        "smoke": args.smoke, "drafts": drafts,
        "sizes": {**sizes, "held_out": "alpha on the same HumanEval problems' canonical solutions (+ <|im_end|>)",
                  "held_out_max_length": max_length},
        "torch_threads": args.threads, "plot": str(png), **summary,
        "note": "acceptance = accepted drafts / drafted (speculative.metrics.summarize); ratios vs the distillspec "
                "(kd reference) arm of the same eval job; speedups are on a shared 2-core CPU and not the claim"}))
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
