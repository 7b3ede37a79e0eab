"""``adaspec-dist report RUN_DIR...``: the three arms per task and seed, mean ± std.

Contract
--------
* A run directory is what ``adaspec-dist pipeline`` (or ``demo``) made: ``pipeline.yaml`` (the
  resolved recipe: name, task, seed) and ``eval/eval.json`` (``speculative.evaluate`` result
  with drafts ``distillspec`` and ``adaspec``, and the compute control ``distillspec_wide`` when
  the recipe ran it — older runs without it are reported with two arms).
* The arms, at equal optimiser steps: DistillSpec (the reference: kd on every token at batch B),
  AdaSPEC (the top-k tokens at batch B/k, the paper) and DistillSpec-wide (kd on every token at
  batch B/k: every token of the same batch; only a random-selection arm isolates the ΔL criterion).
* :func:`load_run` -> one flat record per run; :func:`method_rows` -> the demo's table rows
  (α_logits, acceptance rate, τ, speedup at one γ); :func:`aggregate` -> mean ± std per
  (recipe, method) over seeds (sample std, ddof = 1; None for a single seed) and the number of
  seeds on which AdaSPEC's α_logits is above DistillSpec's and above the wide control's;
  :func:`verdict` says it in one line.
* :func:`write_report` writes ``report.md``, ``report.json`` and ``report_alpha.png`` (α per
  recipe and arm, per seed and mean ± std, bars from 0) into ``out_dir`` (default
  :func:`default_out_dir`); the CLI (``adaspec-dist report``) prints the markdown.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import yaml

METHODS = ("distillspec", "adaspec", "distillspec_wide")
REQUIRED = ("distillspec", "adaspec")
LABELS = {"distillspec": "DistillSpec", "adaspec": "AdaSPEC", "distillspec_wide": "DistillSpec-wide (control)"}
COLORS = {"distillspec": "tab:gray", "adaspec": "tab:green", "distillspec_wide": "tab:blue"}
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


def _speedup_cell(speedup: float | None) -> str:
    return "n/a (timing error)" if speedup is None else f"{speedup:.2f}x"


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`method_rows`."""
    out = ["| draft | α_logits | acceptance rate | τ (incl. bonus) | speedup | γ |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| {LABELS.get(r['method'], r['method'])} | {r['alpha_logits']:.4f} | {r['acceptance_rate']:.4f} "
                   f"| {r['tau']:.3f} | {_speedup_cell(r['speedup'])} | {r['gamma']} |")
    return "\n".join(out)


def verdict(rows: list[dict[str, Any]]) -> str:
    """One line: did AdaSPEC's α_logits beat DistillSpec's, and the wide control's (one run)?"""
    by = {r["method"]: r["alpha_logits"] for r in rows}
    if not all(m in by for m in REQUIRED):
        return "verdict: needs both a distillspec and an adaspec draft"
    d = by["adaspec"] - by["distillspec"]
    line = f"AdaSPEC {'beat' if d > 0 else 'did not beat'} DistillSpec (Δα_logits {d:+.4f})"
    if "distillspec_wide" in by:
        w = by["adaspec"] - by["distillspec_wide"]
        line += (f"; {'beat' if w > 0 else 'did not beat'} the compute control DistillSpec-wide (Δα_logits {w:+.4f})"
                 " — one run and no random-selection control, so this compares the arms, not the cause")
    return line


def load_run(run_dir: str | Path, gamma: int | None = None) -> dict[str, Any]:
    """Flat record of one pipeline run: recipe name, task, seed and per-method metrics."""
    run_dir = Path(run_dir)
    recipe, result = run_dir / "pipeline.yaml", run_dir / "eval" / "eval.json"
    for path in (recipe, result):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; is {run_dir} a finished pipeline run directory?")
    cfg = yaml.safe_load(recipe.read_text())
    res = json.loads(result.read_text())
    missing = [m for m in REQUIRED if m not in res["drafts"]]
    if missing:
        raise ValueError(f"{result} has no '{missing[0]}' draft; the report compares {' and '.join(REQUIRED)}")
    rows = {r["method"]: r for r in method_rows(res, gamma)}
    return {"run_dir": str(run_dir), "name": cfg["name"], "task": cfg["task"], "seed": cfg["seed"],
            "methods": {m: rows[m] for m in METHODS if m in rows}}


def _mean_std(xs: list[float]) -> tuple[float, float | None]:
    """Mean and sample std; the std is None for one value (a single seed has no spread to show)."""
    xs = [x for x in xs if x is not None]  # a speedup eval refused as a timing error is None
    if not xs:
        return float("nan"), None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def _arms(group: list[dict[str, Any]]) -> list[str]:
    """The methods every run of the group has (the wide control only when all ran it)."""
    return [m for m in METHODS if all(m in r["methods"] for r in group)]


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per recipe: mean ± std of each metric per method over seeds, and AdaSPEC's α wins."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_name.setdefault(r["name"], []).append(r)
    out = []
    for name, group in sorted(by_name.items()):
        arms = _arms(group)
        rec = {"name": name, "task": group[0]["task"], "seeds": sorted(r["seed"] for r in group), "arms": arms,
               "stats": {}}
        for m in arms:
            rec["stats"][m] = {k: _mean_std([r["methods"][m][k] for r in group]) for k in METRICS}
        for other, key in (("distillspec", "alpha_gain"), ("distillspec_wide", "alpha_gain_wide")):
            if other in arms:
                diffs = [r["methods"]["adaspec"]["alpha_logits"] - r["methods"][other]["alpha_logits"] for r in group]
                rec[key] = _mean_std(diffs)
                rec[key.replace("alpha_gain", "adaspec_wins")] = sum(d > 0 for d in diffs)
        out.append(rec)
    return out


def _pm(t: tuple[float, float | None], f: str = ".4f") -> str:
    """'mean ± std', or the bare mean for a single seed (a std has no sign)."""
    return f"{t[0]:{f}}" if t[1] is None else f"{t[0]:{f}} ± {t[1]:{f.lstrip('+')}}"


def _cell(r: dict[str, Any], m: str, key: str, f: str) -> str:
    return f"{r['methods'][m][key]:{f}}" if m in r["methods"] else "–"


def to_markdown(runs: list[dict[str, Any]], agg: list[dict[str, Any]]) -> str:
    lines = ["# AdaSPEC vs DistillSpec, and the compute control", "",
             "Arms at equal optimiser steps: DistillSpec (kd on every token, batch B), AdaSPEC (the top-k tokens "
             "by L_draft − L_ref, batch B/k: the paper), DistillSpec-wide (kd on every token at batch B/k: "
             "every token of the same B/k batch; only a random-selection arm isolates the ΔL criterion). α_logits = E[Σ_x min(p, q)] on held-out answer positions "
             "(teacher-forced); acceptance rate = accepted / drafted; τ = tokens per target call including the "
             "bonus token; speedup = SD tokens/s over the target alone in the same engine.", "",
             "## Per run", "",
             "| recipe | seed | γ | DistillSpec α | AdaSPEC α | wide α | Δα vs DistillSpec | Δα vs wide "
             "| DistillSpec acc. | AdaSPEC acc. | wide acc. | DistillSpec τ | AdaSPEC τ | wide τ |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(runs, key=lambda r: (r["name"], r["seed"])):
        m = r["methods"]
        a = m["adaspec"]
        dw = f"{a['alpha_logits'] - m['distillspec_wide']['alpha_logits']:+.4f}" if "distillspec_wide" in m else "–"
        lines.append(f"| {r['name']} | {r['seed']} | {a['gamma']} | " + " | ".join(
            [_cell(r, x, "alpha_logits", ".4f") for x in METHODS]
            + [f"{a['alpha_logits'] - m['distillspec']['alpha_logits']:+.4f}", dw]
            + [_cell(r, x, "acceptance_rate", ".4f") for x in METHODS]
            + [_cell(r, x, "tau", ".3f") for x in METHODS]) + " |")
    lines += ["", "## Mean ± std over seeds", "",
              "| recipe | seeds | DistillSpec α | AdaSPEC α | wide α | Δα vs DistillSpec | AdaSPEC above "
              "DistillSpec | Δα vs wide | AdaSPEC above wide |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for g in agg:
        n = len(g["seeds"])
        st = g["stats"]
        alpha = [_pm(st[m]["alpha_logits"]) if m in st else "–" for m in METHODS]
        wide = ([_pm(g["alpha_gain_wide"], "+.4f"), f"{g['adaspec_wins_wide']}/{n}"] if "alpha_gain_wide" in g
                else ["–", "–"])
        lines.append(f"| {g['name']} | {','.join(map(str, g['seeds']))} | " + " | ".join(
            alpha + [_pm(g["alpha_gain"], "+.4f"), f"{g['adaspec_wins']}/{n}"] + wide) + " |")
    lines += ["", "## Verdict", ""] + [f"- {g['name']}: {aggregate_verdict(g)}" for g in agg]
    return "\n".join(lines) + "\n"


def aggregate_verdict(g: dict[str, Any]) -> str:
    """One line per recipe over its seeds."""
    n = len(g["seeds"])
    line = f"AdaSPEC's α_logits above DistillSpec's on {g['adaspec_wins']}/{n} seeds (Δ {_pm(g['alpha_gain'], '+.4f')})"
    if "alpha_gain_wide" in g:
        line += (f"; above the compute control on {g['adaspec_wins_wide']}/{n} seeds "
                 f"(Δ {_pm(g['alpha_gain_wide'], '+.4f')})")
    else:
        line += "; no compute control in these runs, so selection is not isolated"
    return line


def plot_alpha(runs: list[dict[str, Any]], agg: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    arms = [m for m in METHODS if any(m in g["stats"] for g in agg)]
    fig, ax = plt.subplots(figsize=(max(4.5, 2.6 * len(agg)), 3.8))
    width = 0.8 / len(arms)
    for j, m in enumerate(arms):
        xs = [i + (j - (len(arms) - 1) / 2) * width for i in range(len(agg))]
        means = [g["stats"][m]["alpha_logits"][0] if m in g["stats"] else 0.0 for g in agg]
        stds = [(g["stats"][m]["alpha_logits"][1] or 0.0) if m in g["stats"] else 0.0 for g in agg]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=LABELS[m], color=COLORS[m], alpha=0.8)
        for i, g in enumerate(agg):  # the seeds themselves, so a mean never hides a loss
            ys = [r["methods"][m]["alpha_logits"] for r in runs if r["name"] == g["name"] and m in r["methods"]]
            ax.scatter([xs[i]] * len(ys), ys, color="black", s=8, zorder=3)
    ax.set_ylim(0.0, 1.0)  # bars start at 0: differences are read from the labels, not the bar heights
    ax.set_xticks(range(len(agg)), [g["name"] for g in agg], rotation=15, fontsize=8)
    ax.set_ylabel("α_logits (held-out)")
    ax.set_title("α_logits per arm: mean ± std over seeds (dots = seeds)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def default_out_dir(run_dirs: list[str | Path]) -> Path:
    """Where the report goes by default: ``report/`` next to the first run directory."""
    return Path(run_dirs[0]).resolve().parent / "report"


def write_report(run_dirs: list[str | Path], out_dir: str | Path | None = None,
                 gamma: int | None = None) -> tuple[Path, str]:
    """Write report.md, report.json and report_alpha.png into out_dir; returns (md path, markdown)."""
    if not run_dirs:
        raise ValueError("report needs at least one run directory")
    runs = [load_run(d, gamma) for d in run_dirs]
    agg = aggregate(runs)
    out = Path(out_dir) if out_dir is not None else default_out_dir(run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(runs, agg)
    png = plot_alpha(runs, agg, out / "report_alpha.png")
    md += f"\n![alpha]({png.name})\n"
    (out / "report.md").write_text(md)
    (out / "report.json").write_text(json.dumps({"runs": runs, "aggregate": agg}, indent=2))
    return out / "report.md", md


__all__ = ["method_rows", "format_rows", "verdict", "load_run", "aggregate", "to_markdown", "write_report",
           "default_out_dir"]
