"""The training job: ``train(cfg, *, resume, callbacks) -> summary``.

Contract
--------
* ``cfg``: a ``TrainConfig`` (distill/config.py). ``resume``: False (fresh), True (continue from
  the newest checkpoint in ``run_dir/checkpoints``, an error when there is none) or ``"auto"``
  (continue when there is one). ``callbacks``: ``TrainCallback`` hooks (distill/state.py).
  A ``run_dir`` holding a run of another config is refused (``force=True`` replaces it).
* The job, as a list of steps: build the run (distill/setup.py); resume (distill/checkpoint.py);
  log the plan; evaluate (not when resuming); train to ``total_steps`` (distill/step.py),
  evaluating every ``eval.every`` (default: ten times per run) and checkpointing every
  ``checkpoint.every`` optimiser steps, and on a stop signal (SIGTERM / SIGUSR1: checkpoint at the
  step boundary, then ``Preempted``, exit 143); evaluate; checkpoint unless this step has one;
  export ``run_dir/final`` in HF format.
* Summary: ``eval_start`` / ``eval_end`` (α and divergence on the eval cache, ``{}`` without
  one), ``tokens_per_s``, ``steps``, ``passes``, ``kept_token_epochs``, ``last_loss``,
  ``trained_tokens`` (this rank's) and ``export`` (the path) when exported.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Sequence

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from adaspec_dist.distill import checkpoint
from adaspec_dist.distill.checkpoint import ResumeMode, checkpoint_dir, resolve_resume
from adaspec_dist.distill.config import TrainConfig, budget_for, eval_interval, total_steps_for
from adaspec_dist.distill.logs import (PACE_AFTER_STEPS, Throughput, epoch_unit, log_done, log_eval, log_hparams, log_pace,
                                      log_plan, log_step)
from adaspec_dist.distill.rundir import check_run_dir, clear_previous
from adaspec_dist.distill.setup import setup
from adaspec_dist.distill.state import Every, Run, TrainCallback
from adaspec_dist.distill.step import evaluate, optimizer_steps, train_step
from adaspec_dist.preemption import Preempted, StopSignal

logger = logging.getLogger(__name__)

# The job's public names, wherever they are defined (callers import them from here).
__all__ = ["train", "TrainConfig", "TrainCallback", "Run", "setup", "train_step", "evaluate", "budget_for",
           "total_steps_for"]


def train(cfg: TrainConfig, *, resume: ResumeMode = False, callbacks: Sequence[TrainCallback] = (),
          force: bool = False) -> dict[str, Any]:
    """The whole job (see the module contract); every rank calls it. ``force``: replace a run of
    another config in ``run_dir`` (distill/rundir.py) instead of refusing it."""
    # Installed before setup, so a SIGTERM that lands while the job starts up still ends in a
    # checkpoint (after the first step) rather than a death with nothing to resume from.
    stop = StopSignal.install()
    try:
        return _train(cfg, resume, callbacks, stop, force)
    finally:
        stop.restore()  # a no-op when the loop already restored them; else (an error) no stale flag


def _train(cfg: TrainConfig, resume: ResumeMode, callbacks: Sequence[TrainCallback], stop: StopSignal,
           force: bool) -> dict:
    # Before setup: a refusal writes nothing.
    check_run_dir(cfg, force=force, resume=resume)
    resumed = resolve_resume(resume, checkpoint_dir(cfg))
    run = setup(cfg)
    try:
        if force:
            clear_previous(run)  # under the run's claim: no other job is using these files
        return _run(run, resumed, resume, callbacks, stop)
    finally:
        _close(run)


def _close(run: Run) -> None:
    """End the job's hold on its resources, however it ends (done, error, or a stop signal):
    flush and close tensorboard (its scalars up to the stop checkpoint are on disk, and its writer
    thread ends) and release the claim on run_dir."""
    if run.writer is not None:
        run.writer.close()
    if run.claim is not None:
        run.claim.release()


def _run(run: Run, resumed: bool, resume: ResumeMode, callbacks: Sequence[TrainCallback], stop: StopSignal) -> dict:
    cfg = run.cfg
    if resume == "auto" and not resumed and run.ps.is_main:
        logger.info("--auto-resume: no checkpoint in '%s' yet; starting from scratch", checkpoint_dir(cfg))
    if resumed:
        checkpoint.restore(run)
    log_plan(run)
    log_hparams(run)
    summary: dict[str, Any] = {"eval_start": {} if resumed else _evaluate(run)}
    throughput = Throughput(run)
    last_stats = _train_loop(run, callbacks, stop, throughput)
    stop.restore()  # from here on a signal ends the process as usual: the run has its steps
    summary["tokens_per_s"] = throughput.rate()
    summary["eval_end"] = _evaluate(run)
    if not Every(cfg.checkpoint.every).due(run.progress.step):
        _checkpoint(run, callbacks)
    unit, frac = epoch_unit(cfg)
    summary.update(steps=run.progress.step, passes=run.passes, kept_token_epochs=run.passes * frac,
                   last_loss=last_stats.get("loss"), trained_tokens=run.progress.trained_tokens)
    log_done(run)
    if cfg.export:
        summary["export"] = str(checkpoint.export(run, summary))
    for cb in callbacks:
        cb.after_train(run)
    return summary


def _train_loop(run: Run, callbacks: Sequence[TrainCallback], stop: StopSignal, throughput: Throughput) -> dict:
    """Optimiser steps to ``run.total_steps``, with the evaluations and checkpoints they are due;
    returns the last step's stats."""
    evals, saves = Every(eval_interval(run.cfg, run.total_steps)), Every(run.cfg.checkpoint.every)
    last_stats: dict[str, Any] = {}
    bar = tqdm(total=run.total_steps, initial=run.progress.step, desc=run.cfg.objective, disable=not run.ps.is_main)
    first, started = run.progress.step, time.perf_counter()
    # Log lines (eval, pace, checkpoints) go above the bar instead of onto its line.
    with bar, logging_redirect_tqdm(), contextlib.closing(optimizer_steps(run)) as steps:
        for stats in steps:
            step = run.progress.step
            if step - first == PACE_AFTER_STEPS and run.ps.is_main:
                log_pace(run, step - first, time.perf_counter() - started)
            log_step(run, stats, throughput.rate())
            last_stats = stats
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", kept=stats["kept_global"])
            for cb in callbacks:
                cb.after_step(step, run)
            if evals.due(step) and step < run.total_steps:  # the last step's evaluation is eval_end
                log_eval(run, evaluate(run))
            if saves.due(step):
                _checkpoint(run, callbacks)
            if stop.requested():  # collective: every rank stops at the same step
                if not saves.due(step):
                    _checkpoint(run, callbacks)
                logger.warning("stopped by signal after step %d; rerun with --resume to continue", step)
                raise Preempted(step)
    return last_stats


def _evaluate(run: Run) -> dict[str, float]:
    metrics = evaluate(run)
    log_eval(run, metrics)
    return metrics


def _checkpoint(run: Run, callbacks: Sequence[TrainCallback]) -> None:
    checkpoint.save(run)
    for cb in callbacks:
        cb.after_checkpoint(run.progress.step, run)
