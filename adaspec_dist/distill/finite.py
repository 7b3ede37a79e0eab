"""Stop a run whose loss or gradient norm is not finite, before it checkpoints or exports NaN weights.

Contract
--------
* ``check_loss(run, batch, loss)`` (collective over the data-parallel group): before backward, every
  rank learns whether any rank's micro-batch loss is NaN/inf; if so all of them raise
  :class:`NonFiniteError` (no weight has been touched by that micro-batch).
* ``check_grad_norm(run, batch, norm)`` (after ``engine.step()``, before ``run.progress`` counts it; no collective: the norm is global, the same on every rank):
  after an optimiser step, a NaN/inf global gradient norm raises :class:`NonFiniteError`. Skipped
  under fp16, whose loss scaler treats an overflow as a skipped step (DeepSpeed's own recovery).
* The message is one line: the optimiser step, the value, and the cache shard files (or the data
  examples) of the step's micro-batch on every rank, with what to do. Raised inside the training
  loop, it leaves before the step's checkpoint and the final export: the newest checkpoint on disk
  is the last finite step, and nothing in ``final/`` is written.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from adaspec_dist.cache.reader import CacheReader
from adaspec_dist.distill.state import Run


class NonFiniteError(ValueError):
    """A training step produced a NaN/inf loss or gradient norm (one line: step, value, shards)."""


def batch_sources(run: Run, seq_ids: torch.Tensor) -> list[str]:
    """This rank's part of the step's data: cache shard files, else data example indices."""
    if isinstance(run.stream, CacheReader):
        return run.stream.shard_files(seq_ids.tolist())
    return [f"example {int(i)}" for i in seq_ids.tolist()]


def _all_sources(run: Run, mine: list[str]) -> list[str]:
    """Every rank's sources, de-duplicated in rank order (collective; called only on the failure
    path, which every rank reaches together)."""
    if not dist.is_initialized() or run.ps.dp_size == 1:
        return mine
    gathered: list[Any] = [None] * run.ps.dp_size
    dist.all_gather_object(gathered, mine, group=run.ps.dp_group)
    return list(dict.fromkeys(s for part in gathered for s in part))


def _fail(run: Run, seq_ids: torch.Tensor, what: str, step: int) -> NonFiniteError:
    sources = _all_sources(run, batch_sources(run, seq_ids))
    where = (f"cache '{run.cfg.cache_dir}' shard(s) {', '.join(sources)}" if isinstance(run.stream, CacheReader)
             else f"data {', '.join(sources[:8])}{' ...' if len(sources) > 8 else ''}")
    fix = (f"check them with `adaspec-dist inspect --verify {run.cfg.cache_dir}`; if they are intact the run diverged: "
           if isinstance(run.stream, CacheReader) else "the run diverged: ")
    return NonFiniteError(f"step {step}: {what} (micro-batch from {where}); training stopped before any checkpoint "
                          f"or export of this step; {fix}lower engine.lr (or raise engine.warmup_steps) and train "
                          "again into a new run_dir")


def check_loss(run: Run, batch: Any, loss: torch.Tensor) -> None:
    """Collective: raise on every rank when any rank's micro-batch loss is not finite."""
    bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0], device=loss.device)
    if dist.is_initialized() and run.ps.dp_size > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX, group=run.ps.dp_group)
    if bad.item():
        value = float(loss.detach())
        what = f"the loss is {value}" if not math.isfinite(value) else "the loss is not finite on another rank"
        raise _fail(run, batch.seq_ids, what, run.progress.step + 1)  # the step this micro-batch belongs to


def check_grad_norm(run: Run, batch: Any, norm: float | None) -> None:
    """Raise when the step's global gradient norm is NaN/inf (not under fp16; None = not known)."""
    fp16 = getattr(run.engine, "fp16_enabled", None)
    if norm is None or (callable(fp16) and fp16()):
        return
    if not math.isfinite(norm):
        raise _fail(run, batch.seq_ids, f"the global gradient norm is {norm}", run.progress.step + 1)
