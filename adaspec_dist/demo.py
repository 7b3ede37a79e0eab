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
* ``generated=True`` (``adaspec-dist demo --generated``) then trains DistillSpec and AdaSPEC again
  on draft-generated data (:func:`generated_config`: the same target, tokenizer, draft
  initialisation, budgets and eval; the training cache holds samples of the dataset run's
  DistillSpec draft, ``reference/final``, instead of the dataset's answers) in
  ``run_dir/on_draft_data``, and :func:`compare_data` writes ``demo_generated.md``: the arms on
  fixed vs generated data side by side (α_logits and the sampled SD acceptance rate).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from adaspec_dist.configs import shipped
from adaspec_dist.dist import keep_process_group, launch_env
from adaspec_dist.config import merge
from adaspec_dist.pipeline import EXPORT_SUBDIR, PipelineConfig, run_pipeline, target_model, tokenizer_path
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
        vals = [r[key] if r[key] is not None else 0.0 for r in rows]  # a refused speedup: drawn as 0
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


GENERATED_SUBDIR = "on_draft_data"
SUBDIRS = {"draft": GENERATED_SUBDIR, "target": "on_target_data"}


def generated_config(cfg: PipelineConfig, source: str = "draft") -> PipelineConfig:
    """The demo's arms on generated data: the dataset run's target, tokenizer, draft
    initialisation, budgets and eval; the training cache holds one sample per training prompt of
    the dataset run's DistillSpec draft (``source="draft"``) or of the target (``"target"``),
    prompts kept whole, 64 new tokens at temperature 1, unless the recipe's ``generate`` section
    says otherwise. No compute control (two arms)."""
    base = Path(cfg.run_dir)
    defaults = {"data": {"max_length": int(cfg.data.get("max_length", 512)) + 64}, "max_new_tokens": 64,
                "temperature": 1.0}
    return dataclasses.replace(
        cfg, run_dir=str(base / SUBDIRS[source]), train_data=source,
        generate_model=str(base / "reference" / EXPORT_SUBDIR) if source == "draft" else None,
        generate=merge(defaults, cfg.generate),
        tokenizer=tokenizer_path(cfg), tokenizer_train=None, target=target_model(cfg), sft=None,
        distillspec_wide=None)


def compare_data(run_dir: str | Path, gamma: int | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Fixed-data vs generated-data arms side by side (draft- and, where run, target-generated);
    writes ``demo_generated.md``."""
    run_dir = Path(run_dir)
    rows = []
    runs = [("dataset", run_dir)] + [(f"{src}-generated", run_dir / sub) for src, sub in SUBDIRS.items()
                                     if (run_dir / sub / "eval" / "eval.json").is_file()]
    for data, d in runs:
        for r in method_rows(json.loads((d / "eval" / "eval.json").read_text()), gamma):
            if r["method"] in ("distillspec", "adaspec"):
                rows.append({**r, "data": data})
    order = [name for name, _ in runs]
    rows.sort(key=lambda r: (r["method"] != "distillspec", order.index(r["data"])))
    out = ["| draft | training data | α_logits | SD acceptance rate (T = 1) | τ (incl. bonus) | γ |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| {LABELS.get(r['method'], r['method'])} | {r['data']} | {r['alpha_logits']:.4f} | "
                   f"{r['acceptance_rate']:.4f} | {r['tau']:.3f} | {r['gamma']} |")
    table = "\n".join(out)
    (run_dir / "demo_generated.md").write_text(table + "\n")
    return table, rows


def run_demo(cfg: PipelineConfig, *, gamma: int | None = None, echo: Callable[[str], Any] = logger.info,
             train_callbacks: Sequence = (), generated: bool = False) -> tuple[str, list[dict[str, Any]]] | None:
    """Run the demo recipe's pipeline, then summarise it (rank 0); see the module docstring. With
    ``generated`` the returned table is followed by the fixed vs generated data comparison."""
    with keep_process_group():  # one process group for both pipelines (DeepSpeed keeps the first one's groups)
        run_pipeline(cfg, echo=echo, train_callbacks=train_callbacks)
        if generated:
            run_pipeline(generated_config(cfg), echo=echo, train_callbacks=train_callbacks)
    if launch_env().rank != 0:
        return None
    table, rows = summarize(cfg.run_dir, gamma)
    if generated:
        table += "\n\nthe arms on fixed (dataset) vs draft-generated training data:\n" + compare_data(cfg.run_dir, gamma)[0]
    return table, rows
