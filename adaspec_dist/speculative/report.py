"""Presenting an evaluation result: text table, JSON, PNG plots, tensorboard scalars.

Input is the dict returned by ``evaluate.evaluate_drafts``. Files written by ``write_all``:
``eval.json``, ``per_position_acceptance.png`` (one line per draft and γ, position 1..γ),
``tau_vs_gamma.png`` (measured τ and τ(α_logits, γ) per draft) and tensorboard event files
under ``tb/`` (``{draft}/{metric}`` with γ as the step).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from adaspec_dist.files import atomic_write_text


def _fmt(x: Any, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def format_table(result: dict[str, Any]) -> str:
    """One block per draft: a row per γ. Conventions are printed under the tables."""
    s = result["settings"]
    lines = [f"target alone: {_fmt(result['target']['tokens_per_s'], '.1f')} tokens/s   "
             f"(batch {s['batch_size']}, temperature {s['temperature']}, top_p {s['top_p']}, "
             f"{s['num_prompts']} prompts, max_new_tokens {s['max_new_tokens']}, device {s['device']})"]
    for name, d in result["drafts"].items():
        lines.append("")
        lines.append(f"draft {name}: alpha_logits {_fmt(d['alpha_logits'])} over {d['alpha_positions']} positions, "
                     f"draft alone {_fmt(d['draft_tokens_per_s'], '.1f')} tokens/s, cost ratio c {_fmt(d['cost_ratio'])}")
        head = (f"{'gamma':>5} {'accept':>7} {'tau':>6} {'tau_th':>6} {'tok/s':>8} {'speedup':>8} "
                f"{'bound':>6} {'batch':>5} {'temp':>5}  per-position acceptance")
        lines.append(head)
        lines.append("-" * len(head))
        for g, r in d["by_gamma"].items():
            pos = " ".join(_fmt(x, ".2f") for x in r["per_position"])
            lines.append(f"{g:>5} {_fmt(r['acceptance_rate']):>7} {_fmt(r['tau'], '.2f'):>6} "
                         f"{_fmt(r.get('tau_theory'), '.2f'):>6} {_fmt(r['tokens_per_s'], '.1f'):>8} "
                         f"{_fmt(r['speedup'], '.2f'):>7}x {_fmt(r['speedup_bound'], '.2f'):>6} "
                         f"{s['batch_size']:>5} {s['temperature']:>5}  {pos}")
            spread = r.get("speedup_spread")
            if r.get("timing_error"):
                lines.append(f"      speedup not shown: {r['timing_error']}")
            elif spread and spread[0] != spread[1]:
                lines.append(f"      speedup per batch {spread[0]:.2f}x .. {spread[1]:.2f}x (median shown; "
                             "the target alone timed on the same batches, interleaved)")
    lines.append("")
    lines.append(result["conventions"])
    return "\n".join(lines)


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float as None: strict JSON (jq, JavaScript) has no NaN, and a
    position no step reached has no acceptance rate."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(result: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / "eval.json"
    atomic_write_text(path, json.dumps(json_safe(result), indent=2, allow_nan=False))
    return path


def draft_colors(names) -> dict[str, str]:
    """One colour per draft, the same in every plot (matplotlib's default cycle, by draft order)."""
    palette = [f"C{i}" for i in range(10)]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


_GAMMA_STYLES = ("-", "--", ":", "-.")


def plot_per_position(result: dict[str, Any], ax) -> None:
    """P(accept | previous accepted) at draft positions 1..γ: a draft's colour, a γ's line style."""
    from matplotlib.ticker import MaxNLocator

    colors = draft_colors(result["drafts"])
    for name, d in result["drafts"].items():
        for i, (g, r) in enumerate(d["by_gamma"].items()):
            ax.plot(range(1, len(r["per_position"]) + 1), r["per_position"], marker="o", color=colors[name],
                    linestyle=_GAMMA_STYLES[i % len(_GAMMA_STYLES)], label=f"{name} γ={g}")
    ax.set(xlabel="draft position", ylabel="P(accept | previous accepted)", title="per-position acceptance",
           ylim=(0, 1.05))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # positions are whole numbers
    ax.legend(fontsize=6, ncol=2)


def plot_tau(result: dict[str, Any], ax) -> None:
    """Measured τ per γ (solid) and τ(α_logits, γ) (dashed), one colour per draft; y from 1."""
    from matplotlib.ticker import MaxNLocator

    colors = draft_colors(result["drafts"])
    top = 1.0
    for name, d in result["drafts"].items():
        gs = [int(g) for g in d["by_gamma"]]
        taus = [r["tau"] for r in d["by_gamma"].values()]
        ax.plot(gs, taus, marker="o", color=colors[name], label=f"{name} measured")
        top = max([top, *(t for t in taus if t is not None)])
        if d["alpha_logits"] is not None:
            theory = [r["tau_theory"] for r in d["by_gamma"].values()]
            ax.plot(gs, theory, linestyle="--", color=colors[name], label=f"{name} theory (α={d['alpha_logits']:.2f})")
            top = max([top, *(t for t in theory if t is not None)])
    # τ >= 1 always (the target's own token): the axis starts there, so heights read as gains.
    ax.set(xlabel="γ (draft tokens per target call)", ylabel="τ (tokens per target call)", title="τ vs γ",
           ylim=(1.0, top * 1.05 + 0.05))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)


def write_plots(result: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    paths = []
    for name, plot in (("per_position_acceptance.png", plot_per_position), ("tau_vs_gamma.png", plot_tau)):
        fig, ax = plt.subplots(figsize=(6, 4))
        plot(result, ax)
        fig.tight_layout()
        paths.append(out_dir / name)
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def write_tensorboard(result: dict[str, Any], log_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    try:
        writer.add_scalar("target/tokens_per_s", result["target"]["tokens_per_s"], 0)
        for name, d in result["drafts"].items():
            if d["alpha_logits"] is not None:
                writer.add_scalar(f"{name}/alpha_logits", d["alpha_logits"], 0)
            for g, r in d["by_gamma"].items():
                for key in ("acceptance_rate", "tau", "tau_theory", "tokens_per_s", "speedup", "speedup_bound"):
                    if r.get(key) is not None:
                        writer.add_scalar(f"{name}/{key}", r[key], int(g))
    finally:
        writer.close()


def write_all(result: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_json(result, out), *write_plots(result, out)]
    write_tensorboard(result, out / "tb")
    return paths
