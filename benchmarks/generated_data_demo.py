"""Question: on the embedded demo, does training on draft-generated data raise the SD acceptance
rate of DistillSpec and AdaSPEC drafts over training on the dataset's answers?

Per seed (default 0 1 2): ``adaspec-dist demo --generated`` — the demo (tokenizer, target,
DistillSpec, AdaSPEC, the compute control; trained on the dataset's answers), then the same two
arms trained again from the same initialisation with the same budgets on draft-generated data
(one sample per training prompt of the dataset run's DistillSpec draft at temperature 1, the
target cached on those sequences; ``demo.generated_config``), all evaluated by the same eval
stage (sampled SD at T = 1 against the target on the held-out prompts). Reports per seed and
mean ± std the α_logits and the SD acceptance rate at γ = 4 of each (arm, data), and the paired
differences generated − dataset. With TARGET_ARMS=1 (default) the two arms are also trained on
target-generated data (``generated_config(cfg, "target")``: DistillSpec's other source).
Writes benchmarks/results/generated_data_demo.json.

    python benchmarks/generated_data_demo.py [SEEDS...]     (RUNS=runs to change the root)
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_result  # noqa: E402


def one_seed(s: int, root: Path) -> tuple[dict, int]:
    """The dataset and draft-generated arms of one seed (resumable); (rows + generated-data counts, seconds)."""
    from adaspec_dist.demo import DEFAULT_RECIPE, GENERATED_SUBDIR, compare_data, generated_config, run_demo
    from adaspec_dist.pipeline import load_pipeline_config, run_pipeline

    cfg = load_pipeline_config(DEFAULT_RECIPE, [f"seed={s}", f"run_dir={root / f'gen-exp-seed{s}'}"])
    t0 = time.time()
    run_demo(cfg, generated=True, echo=print)
    if os.environ.get("TARGET_ARMS", "1") == "1":  # the same two arms on target-generated data
        run_pipeline(generated_config(cfg, "target"), echo=print)
    table, rows = compare_data(cfg.run_dir)
    print(f"seed {s}:\n{table}")
    gen = json.loads((Path(cfg.run_dir) / GENERATED_SUBDIR / "generated" / "manifest.json").read_text())
    counts = {k: gen[k] for k in ("num_sequences", "num_generated_tokens", "num_eos")}
    return {"rows": rows, "generated": counts}, round(time.time() - t0)


def main(seeds: list[int]) -> None:
    import torch

    from adaspec_dist.dist import keep_process_group

    torch.set_num_threads(1)
    root = Path(os.environ.get("RUNS", "runs"))
    per_seed, seconds = {}, {}
    with keep_process_group():  # one process group for every seed's pipelines (DeepSpeed keeps the first's)
        for s in seeds:
            per_seed[s], seconds[s] = one_seed(s, root)
    summary = {}
    for method in ("distillspec", "adaspec"):
        datas = sorted({r["data"] for s in seeds for r in per_seed[s]["rows"]}, key=lambda d: d != "dataset")
        for data in datas:
            vals = [next(r for r in per_seed[s]["rows"] if r["method"] == method and r["data"] == data) for s in seeds]
            summary[f"{method}/{data}"] = {
                k: {"mean": statistics.mean(v[k] for v in vals),
                    "std": statistics.stdev(v[k] for v in vals) if len(vals) > 1 else 0.0,
                    "per_seed": [v[k] for v in vals]} for k in ("alpha_logits", "acceptance_rate", "tau")}
        for data in datas[1:]:
            d = [a - b for a, b in zip(summary[f"{method}/{data}"]["acceptance_rate"]["per_seed"],
                                       summary[f"{method}/dataset"]["acceptance_rate"]["per_seed"])]
            summary[f"{method}/{data}/acceptance_gain"] = {"per_seed": d, "mean": statistics.mean(d),
                                                           "wins": sum(x > 0 for x in d), "seeds": len(d)}
    print("\n| draft | training data | α_logits | SD acceptance rate (T = 1, γ = 4) |")
    print("| --- | --- | ---: | ---: |")
    for key, v in summary.items():
        if "gain" in key:
            continue
        method, data = key.split("/")[:2]
        print(f"| {method} | {data} | {v['alpha_logits']['mean']:.4f} ± {v['alpha_logits']['std']:.4f} | "
              f"{v['acceptance_rate']['mean']:.4f} ± {v['acceptance_rate']['std']:.4f} |")
    for key, g in summary.items():
        if key.endswith("acceptance_gain"):
            method, data, _ = key.split("/")
            print(f"{method}: acceptance {data} − dataset = {g['mean']:+.4f} (higher on {g['wins']}/{g['seeds']} seeds)")
    path = write_result("generated_data_demo", {
        "question": "does training on draft-generated data raise the SD acceptance rate (T = 1, γ = 4) of "
                    "DistillSpec and AdaSPEC drafts over the dataset's answers (embedded demo)?",
        "seeds": seeds, "summary": summary, "per_seed": per_seed, "seconds_per_seed": seconds})
    print(f"wrote {path}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [0, 1, 2])
