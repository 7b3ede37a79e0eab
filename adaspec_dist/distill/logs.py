"""What a training run reports: the plan, per-step tensorboard scalars, evaluations, the end.

Contract: the main rank logs (``logging``) and writes tensorboard (``run.writer``); every
function may be called on every rank and does nothing elsewhere. Epoch accounting: "passes"
over the data and, for adaspec, "kept-token epochs" = passes · filter_fraction (the paper's 3
epochs at k = 0.4 is 7.5 passes); passes are what the loop counts, both are logged.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch

from adaspec_dist.distill.config import TrainConfig
from adaspec_dist.distill.engine import current_lr, grad_norm
from adaspec_dist.distill.state import Run
from adaspec_dist.models.load import model_identity

logger = logging.getLogger(__name__)


def epoch_unit(cfg: TrainConfig) -> tuple[str, float]:
    """(name, passes per epoch of that name): kept-token epochs for adaspec, else plain epochs."""
    if cfg.objective == "adaspec":
        return "kept-token epochs", cfg.filter_fraction
    return "epochs", 1.0


def log_plan(run: Run) -> None:
    """One line: steps, batch split, passes and epochs, what is trained on, the budget rule."""
    if not run.ps.is_main:
        return
    cfg, b = run.cfg, run.budget
    unit, frac = epoch_unit(cfg)
    passes = run.total_steps * b.grad_accum / len(run.stream)
    sel = cfg.selection
    group = (f"groups of {sel.threshold_group} sequences" if sel.threshold_group
             else f"per micro-batch of {b.micro_batch}")
    per = "per rank" if sel.threshold_group is None else "per threshold group"
    norm = per if cfg.normalization_scope == "per_rank" else "over all ranks"
    kept = (f"~{b.global_batch * cfg.filter_fraction:.1f} sequences' tokens kept/step (k={cfg.filter_fraction:g}, "
            f"rule {sel.rule}, selection {sel.scope}"
            f"{' ' + group if sel.scope == 'local' else ''}, "
            f"loss / {sel.loss_normalization} tokens counted {norm})"
            if cfg.objective == "adaspec" else f"every supervised token trained (loss / tokens counted {norm})")
    logger.info("%s: %d optimiser steps x %d sequences/step (micro %d x accum %d x %d ranks) = %.2f passes "
                "(%.2f %s); %s; budget %s", cfg.objective, run.total_steps, b.global_batch, b.micro_batch,
                b.grad_accum, run.ps.dp_size, passes, passes * frac, unit, kept, b.rule)
    module = run.engine.module
    params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in module.parameters())
    trained = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in module.parameters() if p.requires_grad)
    logger.info("%s: draft %s, %.1fM parameters (%.1fM trained), vocabulary %d", cfg.objective,
                model_identity(cfg.draft), params / 1e6, trained / 1e6, int(getattr(module.config, "vocab_size", 0)))


PACE_AFTER_STEPS = 3


def log_pace(run: Run, step: int, seconds: float) -> None:
    """After the first few steps: the measured step time and what the whole run will take."""
    per_step = seconds / max(step, 1)
    left = per_step * max(run.total_steps - step, 0)
    logger.info("%s: %.2f s per optimiser step over the first %d steps; the remaining %d steps take ~%d min",
                run.cfg.objective, per_step, step, run.total_steps - step, round(left / 60))


def flat_config(cfg: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
    """A (nested) dataclass as {"engine.lr": 0.003, ...}: the scalar types tensorboard's hparams
    take (None and collections as their text)."""
    out: dict[str, bool | int | float | str] = {}
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            out.update(flat_config(value, key + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            out[key] = "None" if value is None else str(value)
    return out


def log_hparams(run: Run) -> None:
    """The resolved config in tensorboard: the HPARAMS tab (every key, with the held-out α and
    divergence as its metrics, so runs can be compared) and the YAML under TEXT ``config``."""
    w = run.writer
    if w is None:
        return
    import yaml
    from torch.utils.tensorboard.summary import hparams

    # The metric values are the eval/* scalars this run logs under the same tags.
    metrics = {"eval/alpha": 0.0, f"eval/{run.cfg.divergence}": 0.0}
    for summary in hparams(flat_config(run.cfg), metrics):
        w.file_writer.add_summary(summary)
    text = yaml.safe_dump(dataclasses.asdict(run.cfg), sort_keys=False)
    w.add_text("config", "```\n" + text + "```")


def log_step(run: Run, stats: dict[str, Any], rate: float) -> None:
    """Rank-0 tensorboard scalars and the ΔL histogram; a warning when some ΔL was not finite."""
    w, s = run.writer, run.progress.step
    if stats.get("nonfinite_global") and run.ps.is_main:
        logger.warning("step %d: %d of %d supervised tokens had a non-finite ΔL (NaN/inf); they were not selected",
                       s, stats["nonfinite_global"], stats["total_global"])
    if w is None:
        return
    w.add_scalar("train/loss", stats["loss"], s)
    w.add_scalar("train/kept_fraction", stats["kept_global"] / max(1, stats["total_global"]), s)
    w.add_scalar("train/kept_tokens", stats["kept_global"], s)
    w.add_scalar("train/tokens_per_s", rate, s)
    w.add_scalar("train/lr", current_lr(run.engine), s)
    w.add_scalar("train/grad_norm", grad_norm(run.engine, stats.get("grad_norm")), s)
    w.add_scalar("train/passes", run.passes, s)
    if run.cfg.objective == "adaspec":
        w.add_scalar("train/kept_token_epochs", run.passes * run.cfg.filter_fraction, s)
        w.add_scalar("train/nonfinite_delta", stats["nonfinite_global"], s)
        delta = stats["delta"].float().cpu()
        delta = delta[torch.isfinite(delta)]  # the non-finite ones were never kept; counted above
        if delta.numel():
            qs = torch.quantile(delta, torch.tensor([0.1, 0.5, 0.9]))
            for name, v in zip(("p10", "p50", "p90"), qs.tolist()):
                w.add_scalar(f"delta_l/{name}", v, s)
            w.add_scalar("delta_l/threshold", stats["threshold"], s)
            w.add_histogram("delta_l/hist", delta, s)


def log_eval(run: Run, metrics: dict[str, float]) -> None:
    """The eval line and scalars (nothing when there was no evaluation)."""
    if metrics and run.ps.is_main:
        div, step = run.cfg.divergence, run.progress.step
        logger.info("eval at step %d: alpha %.4f (implied tau %.3f at gamma %d), %s %.4f over %d tokens", step,
                    metrics["alpha"], metrics["tau"], run.cfg.eval.gamma, div, metrics[div], metrics["tokens"])
        if run.writer is not None:
            run.writer.add_scalar("eval/alpha", metrics["alpha"], step)
            run.writer.add_scalar(f"eval/tau_gamma{run.cfg.eval.gamma}", metrics["tau"], step)
            run.writer.add_scalar(f"eval/{div}", metrics[div], step)


def log_done(run: Run) -> None:
    if run.ps.is_main:
        unit, frac = epoch_unit(run.cfg)
        logger.info("done: %d steps, %.2f passes (= %.2f %s)", run.progress.step, run.passes, run.passes * frac, unit)


class Throughput:
    """Tokens per second over all ranks since construction (each rank counts its own tokens)."""

    def __init__(self, run: Run):
        self.run, self.t0, self.tokens0 = run, time.perf_counter(), run.progress.tokens_seen

    def rate(self) -> float:
        tokens = (self.run.progress.tokens_seen - self.tokens0) * self.run.ps.dp_size
        return tokens / max(1e-9, time.perf_counter() - self.t0)
