"""``adaspec-dist report RUN_DIR...``: AdaSPEC vs DistillSpec per task and seed, mean ± std.

Contract
--------
* A run directory is what ``adaspec-dist pipeline`` (or ``demo``) made: ``pipeline.yaml`` (the
  resolved recipe: name, task, seed) and ``eval/eval.json`` (``speculative.evaluate`` result
  with drafts ``distillspec`` and ``adaspec``).
* :func:`load_run` -> one flat record per run; :func:`method_rows` -> the demo's table rows
  (α_logits, acceptance rate, τ, speedup at one γ); :func:`aggregate` -> mean ± std per
  (recipe, method) over seeds (sample std, ddof = 1; 0 for a single seed) and the number of
  seeds on which AdaSPEC's α_logits is above DistillSpec's.
* :func:`write_report` writes ``report.md`` and ``report_alpha.png`` (α per recipe, per seed
  and mean ± std) into ``out_dir``; the CLI prints the markdown.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import yaml

METHODS = ("distillspec", "adaspec")
LABELS = {"distillspec": "DistillSpec", "adaspec": "AdaSPEC"}
METRICS = ("alpha_logits", "acceptance_rate", "tau", "speedup")


def _pick_gamma(entry: dict[str, Any], gamma: int | None) -> str:
    gammas = sorted(entry["by_gamma"], key=int)
    if gamma is None:
        return gammas[-1] if "4" not in gammas else "4"
    if str(gamma) not in gammas:
        raise ValueError(f"gamma {gamma} was not evaluated (have {', '.join(gammas)}); pass --gamma with one of them")
    return str(gamma)


def method_rows(result: dict[str, Any], gamma: int | None = None) -> list[dict[str, Any]]:
    """One row per draft: α_logits and, at one γ, acceptance rate, τ and speedup."""
    rows = []
    for name, entry in result["drafts"].items():
        g = _pick_gamma(entry, gamma)
        r = entry["by_gamma"][g]
        rows.append({"method": name, "gamma": int(g), "alpha_logits": entry["alpha_logits"],
                     "acceptance_rate": r["acceptance_rate"], "tau": r["tau"], "speedup": r["speedup"]})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`method_rows`."""
    out = ["| draft | α_logits | acceptance rate | τ (incl. bonus) | speedup | γ |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| {LABELS.get(r['method'], r['method'])} | {r['alpha_logits']:.4f} | {r['acceptance_rate']:.4f} "
                   f"| {r['tau']:.3f} | {r['speedup']:.2f}x | {r['gamma']} |")
    return "\n".join(out)


def load_run(run_dir: str | Path, gamma: int | None = None) -> dict[str, Any]:
    """Flat record of one pipeline run: recipe name, task, seed and per-method metrics."""
    run_dir = Path(run_dir)
    recipe, result = run_dir / "pipeline.yaml", run_dir / "eval" / "eval.json"
    for path in (recipe, result):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; is {run_dir} a finished pipeline run directory?")
    cfg = yaml.safe_load(recipe.read_text())
    res = json.loads(result.read_text())
    missing = [m for m in METHODS if m not in res["drafts"]]
    if missing:
        raise ValueError(f"{result} has no '{missing[0]}' draft; the report compares {' and '.join(METHODS)}")
    rows = {r["method"]: r for r in method_rows(res, gamma)}
    return {"run_dir": str(run_dir), "name": cfg["name"], "task": cfg["task"], "seed": cfg["seed"],
            "methods": {m: rows[m] for m in METHODS}}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per recipe: mean ± std of each metric per method over seeds, and AdaSPEC's α wins."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_name.setdefault(r["name"], []).append(r)
    out = []
    for name, group in sorted(by_name.items()):
        rec = {"name": name, "task": group[0]["task"], "seeds": sorted(r["seed"] for r in group), "stats": {}}
        for m in METHODS:
            rec["stats"][m] = {k: _mean_std([r["methods"][m][k] for r in group]) for k in METRICS}
        diffs = [r["methods"]["adaspec"]["alpha_logits"] - r["methods"]["distillspec"]["alpha_logits"] for r in group]
        rec["alpha_gain"] = _mean_std(diffs)
        rec["adaspec_wins"] = sum(d > 0 for d in diffs)
        out.append(rec)
    return out


def to_markdown(runs: list[dict[str, Any]], agg: list[dict[str, Any]]) -> str:
    lines = ["# AdaSPEC vs DistillSpec", "",
             "α_logits = E[Σ_x min(p, q)] on held-out answer positions (teacher-forced); acceptance rate = "
             "accepted / drafted; τ = tokens per target call including the bonus token; speedup = SD tokens/s "
             "over the target alone in the same engine.", "",
             "## Per run", "",
             "| recipe | seed | γ | DistillSpec α | AdaSPEC α | Δα | DistillSpec τ | AdaSPEC τ | DistillSpec speedup | AdaSPEC speedup |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(runs, key=lambda r: (r["name"], r["seed"])):
        d, a = r["methods"]["distillspec"], r["methods"]["adaspec"]
        lines.append(f"| {r['name']} | {r['seed']} | {a['gamma']} | {d['alpha_logits']:.4f} | {a['alpha_logits']:.4f} "
                     f"| {a['alpha_logits'] - d['alpha_logits']:+.4f} | {d['tau']:.3f} | {a['tau']:.3f} "
                     f"| {d['speedup']:.2f}x | {a['speedup']:.2f}x |")
    lines += ["", "## Mean ± std over seeds", "",
              "| recipe | seeds | DistillSpec α | AdaSPEC α | Δα | AdaSPEC α above DistillSpec | DistillSpec τ | AdaSPEC τ |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    pm = lambda t, f=".4f": f"{t[0]:{f}} ± {t[1]:{f.lstrip('+')}}"  # noqa: E731  (a std has no sign)
    for g in agg:
        d, a = g["stats"]["distillspec"], g["stats"]["adaspec"]
        lines.append(f"| {g['name']} | {','.join(map(str, g['seeds']))} | {pm(d['alpha_logits'])} | "
                     f"{pm(a['alpha_logits'])} | {pm(g['alpha_gain'], '+.4f')} | {g['adaspec_wins']}/{len(g['seeds'])} "
                     f"| {pm(d['tau'], '.3f')} | {pm(a['tau'], '.3f')} |")
    return "\n".join(lines) + "\n"


def plot_alpha(runs: list[dict[str, Any]], agg: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 2.2 * len(agg)), 3.6))
    width = 0.38
    for j, m in enumerate(METHODS):
        xs = [i + (j - 0.5) * width for i in range(len(agg))]
        means = [g["stats"][m]["alpha_logits"][0] for g in agg]
        stds = [g["stats"][m]["alpha_logits"][1] for g in agg]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=LABELS[m], alpha=0.8)
        for i, g in enumerate(agg):  # the seeds themselves, so a mean never hides a loss
            ys = [r["methods"][m]["alpha_logits"] for r in runs if r["name"] == g["name"]]
            ax.scatter([xs[i]] * len(ys), ys, color="black", s=8, zorder=3)
    lo = min(r["methods"][m]["alpha_logits"] for r in runs for m in METHODS)
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(r["methods"][m]["alpha_logits"] for r in runs for m in METHODS) + 0.03))
    ax.set_xticks(range(len(agg)), [g["name"] for g in agg], rotation=15, fontsize=8)
    ax.set_ylabel("α_logits (held-out)")
    ax.set_title("α_logits: mean ± std over seeds (dots = seeds)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(run_dirs: list[str | Path], out_dir: str | Path, gamma: int | None = None) -> tuple[Path, str]:
    """Write report.md, report.json and report_alpha.png into out_dir; returns (md path, markdown)."""
    if not run_dirs:
        raise ValueError("report needs at least one run directory")
    runs = [load_run(d, gamma) for d in run_dirs]
    agg = aggregate(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(runs, agg)
    png = plot_alpha(runs, agg, out / "report_alpha.png")
    md += f"\n![alpha]({png.name})\n"
    (out / "report.md").write_text(md)
    (out / "report.json").write_text(json.dumps({"runs": runs, "aggregate": agg}, indent=2))
    return out / "report.md", md


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="pipeline/demo run directories (one per task and seed)")
    parser.add_argument("--out", default=None, help="output directory (default: the first run's parent/report)")
    parser.add_argument("--gamma", type=int, default=None, help="γ of the τ/speedup columns (default 4, else the largest)")


def run(args: argparse.Namespace) -> int:
    out = args.out or str(Path(args.run_dirs[0]).resolve().parent / "report")
    path, md = write_report(args.run_dirs, out, args.gamma)
    print(md)
    print(f"wrote {path} and {Path(out) / 'report_alpha.png'}")
    return 0


__all__ = ["method_rows", "format_rows", "load_run", "aggregate", "to_markdown", "write_report"]
