"""Checkpoints of a run: when to resume, save (and prune), restore, and the final export.

Contract
--------
* ``resolve_resume(mode, ckpt_dir) -> bool``: ``False`` = start fresh, ``True`` = continue from
  the newest checkpoint (a one-line ValueError when there is none), ``"auto"`` = continue when
  there is one, else start fresh (requeued jobs that may have died before their first checkpoint).
* ``save(run)`` (collective): the DeepSpeed checkpoint (module, optimiser, scheduler; every
  rank writes its ZeRO partition) tagged by the step, with client state = ``run.progress``'s
  fields + the reader position + the torch / numpy / python RNG states; then the main rank
  keeps the newest ``checkpoint.keep`` tags.
* ``restore(run)``: the inverse, from the newest checkpoint, so the run continues exactly (the
  same batches, random draws and optimiser state as an uninterrupted run).
* ``export(run, summary) -> path``: the draft in HF format with its tokenizer (its chat template
  = the task's prompt) and a model card in ``run_dir/final`` (collective under ZeRO-3).
"""
from __future__ import annotations

import dataclasses
import logging
import random
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from adaspec_dist.dist import barrier
from adaspec_dist.distill.card import apply_prompt, model_card, prompt_info
from adaspec_dist.distill.config import TrainConfig
from adaspec_dist.distill.engine import gathered_module, latest_step, load_checkpoint, save_checkpoint
from adaspec_dist.distill.state import Progress, Run
from adaspec_dist.models.load import save_hf

logger = logging.getLogger(__name__)

ResumeMode = bool | Literal["auto"]


def checkpoint_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.run_dir) / "checkpoints"


def resolve_resume(mode: ResumeMode, ckpt_dir: str | Path) -> bool:
    """Whether this run continues from a checkpoint in ``ckpt_dir`` (see the module contract)."""
    if mode not in (True, False, "auto"):
        raise ValueError(f"resume must be True, False or 'auto', got {mode!r}")
    if mode == "auto":
        return latest_step(ckpt_dir) is not None
    if mode and latest_step(ckpt_dir) is None:
        raise ValueError(f"--resume: no checkpoint in '{ckpt_dir}'; start without --resume")
    return bool(mode)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save(run: Run) -> None:
    """Checkpoint at ``run.progress.step`` on every rank, then prune old tags (main rank)."""
    client = {**dataclasses.asdict(run.progress), "reader": run.stream.state_dict(), "rng": rng_state()}
    ckpt_dir = checkpoint_dir(run.cfg)
    save_checkpoint(run.engine, ckpt_dir, run.progress.step, client)
    if run.ps.is_main:
        logger.info("checkpoint at step %d", run.progress.step)
        prune(ckpt_dir, run.cfg.checkpoint.keep)


def prune(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step tags (0 = keep all). Older tags only: DeepSpeed's
    ``latest`` always points at a kept one."""
    if keep > 0:
        tags = sorted(p for p in ckpt_dir.glob("step*") if p.is_dir())
        for old in tags[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def restore(run: Run) -> None:
    """Engine, progress, reader position and RNG from the newest checkpoint."""
    client = load_checkpoint(run.engine, checkpoint_dir(run.cfg))
    run.progress = Progress(**{f.name: int(client[f.name]) for f in dataclasses.fields(Progress)})
    run.stream.load_state_dict(client["reader"])
    set_rng_state(client["rng"])
    logger.info("resumed at step %d (pass %.3f)", run.progress.step, run.passes)


def export(run: Run, summary: dict[str, Any] | None = None) -> Path:
    """Write the draft in HF format to run_dir/final (collective under ZeRO-3): with its tokenizer,
    carrying the task's prompt as its chat template, and a README.md model card (distill/card.py)
    stating the run and ``summary``'s held-out α."""
    out = Path(run.cfg.run_dir) / "final"
    with gathered_module(run.engine) as module:
        if run.ps.is_main:
            info = prompt_info(run)
            if run.tokenizer is None:
                logger.warning("no tokenizer configured: exporting the draft without one (set tokenizer: PATH)")
            elif apply_prompt(run.tokenizer, info):
                logger.info("export: the tokenizer's chat template renders the %s prompt format", info["task"])
            save_hf(module, out, tokenizer=run.tokenizer,
                    files={"README.md": model_card(run, summary or {}, info)})
    barrier()
    return out
