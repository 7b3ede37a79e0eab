#!/usr/bin/env bash
# Claim: on the embedded demo, AdaSPEC's alpha_logits is above DistillSpec's on every seed.
# Runs the demo for 3 seeds (each a full pipeline: tokenizer, target, caches, reference, AdaSPEC,
# eval; resumable: rerun this script after an interruption), then writes the reproduction report
# (markdown + PNG) and benchmarks/results/reproduce_demo.json (per-seed alphas, the mean ratio
# AdaSPEC / DistillSpec, wall time per seed, machine info).
# Usage: benchmarks/reproduce_demo.sh [SEEDS...]   (default 0 1 2; RUNS=runs to change the root)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUNS=${RUNS:-runs}
SEEDS=("${@:-0 1 2}")
read -r -a SEEDS <<< "${SEEDS[*]}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
dirs=()
times=()
for s in "${SEEDS[@]}"; do
  d="$RUNS/demo-seed$s"
  start=$(date +%s)
  "$BIN/adaspec-dist" demo --seed "$s" --run-dir "$d"
  times+=("$(( $(date +%s) - start ))")
  dirs+=("$d")
done
"$BIN/adaspec-dist" report "${dirs[@]}" --out benchmarks/results/reproduce_demo
"$BIN/python" - "${times[*]}" "${dirs[@]}" <<'PY'
import datetime, json, os, platform, sys
import torch
secs = [int(t) for t in sys.argv[1].split()]
# Seconds the stages themselves took (from the completion markers): the cost of each seed even
# when this script was rerun after an interruption and skipped complete stages.
stage_secs = [round(sum(json.load(open(m))["seconds"] for m in __import__("glob").glob(f"{d}/stages/*.done.json")))
              for d in sys.argv[2:]]
rep = json.load(open("benchmarks/results/reproduce_demo/report.json"))
runs = sorted(rep["runs"], key=lambda r: r["seed"])
ds = [r["methods"]["distillspec"]["alpha_logits"] for r in runs]
ada = [r["methods"]["adaspec"]["alpha_logits"] for r in runs]
out = {
    "claim": "AdaSPEC alpha_logits > DistillSpec alpha_logits on each seed of the embedded demo",
    "comparison": ("the published recipe: AdaSPEC trains as many kept-token epochs as the reference trains "
                   "passes (1/k times the passes); DistillSpec given the same passes is better still at this "
                   "scale (docs/demo-research.md). speedup numbers are wall-clock on a shared CPU: noisy"),
    "seeds": [r["seed"] for r in runs], "distillspec_alpha": ds, "adaspec_alpha": ada,
    "adaspec_wins": sum(a > d for a, d in zip(ada, ds)),
    "ratio_mean_alpha_adaspec_over_distillspec": (sum(ada) / len(ada)) / (sum(ds) / len(ds)),
    "wall_seconds_per_seed_this_invocation": secs,
    "stage_seconds_per_seed": stage_secs,
    "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
}
json.dump(out, open("benchmarks/results/reproduce_demo.json", "w"), indent=2)
print(f"AdaSPEC / DistillSpec mean alpha ratio: {out['ratio_mean_alpha_adaspec_over_distillspec']:.4f} "
      f"({out['adaspec_wins']}/{len(runs)} seeds AdaSPEC above); stage seconds per seed: {stage_secs}")
PY
