"""``adaspec-dist demo``: the whole method on an embedded recipe, no network, no GPU.

Contract
--------
* Runs :mod:`adaspec_dist.pipeline` on ``configs/demo.yaml`` (or ``--recipe``): a sentencepiece
  tokenizer and a small target trained on the embedded arithmetic corpus, a capacity-limited
  draft distilled with plain KD (the reference = the DistillSpec baseline) and with AdaSPEC,
  then speculative-decoding evaluation of both drafts against the target.
* Three arms at equal optimiser steps (see configs/demo.yaml): DistillSpec, AdaSPEC (batch B/k,
  the paper's budget) and the compute control DistillSpec-wide (kd at batch B/k).
* ``run_demo(cfg, *, gamma=None, echo=..., train_callbacks=()) -> (table, rows) | None``: the
  job: :func:`~adaspec_dist.pipeline.run_pipeline`, then on global rank 0 :func:`summarize`: a
  markdown table (α_logits, acceptance rate, τ, speedup) and its rows (for the one-line
  :func:`~adaspec_dist.report.verdict`: did AdaSPEC beat DistillSpec, and the control?), written
  into the run directory as ``demo_table.md`` with ``demo_summary.png`` (the four numbers side
  by side) next to the eval stage's own plots under ``eval/``. None on the other ranks. The CLI
  (``adaspec-dist demo``) prints the table and the verdict.
* Rerunning the same command continues an interrupted demo (complete stages are skipped).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from adaspec_dist.configs import shipped
from adaspec_dist.dist import launch_env
from adaspec_dist.pipeline import PipelineConfig, run_pipeline
from adaspec_dist.report import COLORS, LABELS, format_rows, method_rows, verdict

logger = logging.getLogger(__name__)

DEFAULT_RECIPE = shipped("demo.yaml")


def plot_summary(rows: list[dict[str, Any]], path: Path) -> Path:
    """Bars of α_logits, acceptance rate, τ and speedup for each draft."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    metrics = [("alpha_logits", "α_logits"), ("acceptance_rate", "acceptance rate"),
               ("tau", "τ (tokens / target call)"), ("speedup", "speedup vs target alone")]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    for ax, (key, title) in zip(axes, metrics):
        names = [LABELS.get(r["method"], r["method"]) for r in rows]
        vals = [r[key] for r in rows]
        bars = ax.bar(range(len(rows)), vals, color=[COLORS.get(r["method"], "tab:orange") for r in rows])
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
        # Bars start at 0 (the value labels carry the differences); rates live in [0, 1].
        ax.set_ylim(0.0, 1.08 if key in ("alpha_logits", "acceptance_rate") else max(vals) * 1.15)
        ax.set_xticks(range(len(rows)), [n.replace(" (control)", "\n(control)") for n in names])
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"demo: the three arms at equal optimiser steps (γ = {rows[0]['gamma']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summarize(run_dir: str | Path, gamma: int | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The demo's final table from ``run_dir/eval/eval.json``; writes demo_table.md and the PNG."""
    run_dir = Path(run_dir)
    result = json.loads((run_dir / "eval" / "eval.json").read_text())
    rows = method_rows(result, gamma)
    table = format_rows(rows)
    (run_dir / "demo_table.md").write_text(table + "\n\n" + verdict(rows) + "\n")
    plot_summary(rows, run_dir / "demo_summary.png")
    return table, rows


def run_demo(cfg: PipelineConfig, *, gamma: int | None = None, echo: Callable[[str], Any] = logger.info,
             train_callbacks: Sequence = ()) -> tuple[str, list[dict[str, Any]]] | None:
    """Run the demo recipe's pipeline, then summarise it (rank 0); see the module docstring."""
    run_pipeline(cfg, echo=echo, train_callbacks=train_callbacks)
    if launch_env().rank != 0:
        return None
    return summarize(cfg.run_dir, gamma)
