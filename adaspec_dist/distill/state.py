"""The live training run, typed: its parts (``Run``), its counters (``Progress``), the hooks
the loop calls (``TrainCallback``) and the every-N cadence of evaluations and checkpoints.

Contract
--------
* ``Run`` is built once by ``distill.setup.setup(cfg)`` and is what every step of the loop
  reads; only ``Run.progress`` changes while training (and the engine's own state).
* ``Progress`` is exactly what a checkpoint's client state holds besides the reader position
  and the RNG: its fields are the checkpoint's keys.
* ``TrainCallback``: ``train(cfg, callbacks=[...])`` calls, on every rank, ``after_step`` after
  every optimiser step, ``after_checkpoint`` after every checkpoint (periodic, final, or the one
  a stop signal asks for) and ``after_train`` once the run is done (after the export). Subclass
  it and override what you need; the others do nothing. Tests use it to kill a run right after
  a checkpoint (tests/helpers_kill.py).
* ``Every(n).due(step)``: True every ``n`` optimiser steps; ``n = 0`` never.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from adaspec_dist.cache.reader import CacheReader
from adaspec_dist.dist import ParallelState
from adaspec_dist.distill.batches import TokenStream
from adaspec_dist.distill.budget import Budget
from adaspec_dist.distill.config import TrainConfig
from adaspec_dist.distill.engine import Engine
from adaspec_dist.files import DirectoryClaim
from adaspec_dist.models.tp_target import OnlineTPTeacher

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter
    from transformers import PreTrainedTokenizerBase

DataStream = CacheReader | TokenStream
"""The training batches: a sparse-target cache, or tokenized task data (sft / online teacher)."""


@dataclass
class Progress:
    """Where the run is; saved in (and restored from) every checkpoint."""

    step: int = 0
    """Optimiser steps taken."""
    micro_step: int = 0
    """Micro-batches consumed (``step · grad_accum`` at a step boundary)."""
    tokens_seen: int = 0
    """Tokens (attention mask) of this rank's micro-batches."""
    trained_tokens: int = 0
    """Supervised tokens that carried loss on this rank (the kept ones for adaspec)."""


@dataclass
class Run:
    """One training run's parts (see ``distill.setup``) and its progress."""

    cfg: TrainConfig
    ps: ParallelState
    engine: Engine
    """DeepSpeed engine around the draft."""
    stream: DataStream
    eval_reader: CacheReader | None
    """Held-out cache (``eval.cache_dir``), else None: no evaluation."""
    target: torch.nn.Module | None
    """Frozen online teacher (dense, one per rank)."""
    reference: torch.nn.Module | None
    """Frozen reference draft, when L_ref is computed online."""
    tokenizer: PreTrainedTokenizerBase | None
    writer: SummaryWriter | None
    """Tensorboard on the main rank, else None."""
    total_steps: int
    budget: Budget
    tp_teacher: OnlineTPTeacher | None = None
    """The target sharded over ``target_tp`` ranks (online teacher with target_tp > 1)."""
    claim: DirectoryClaim | None = None
    """This job's exclusive claim on ``run_dir`` (main rank; ``adaspec_dist.files``), released when
    the job ends."""
    progress: Progress = field(default_factory=Progress)

    @property
    def passes(self) -> float:
        """Passes over the training data so far (micro-batches / batches per pass)."""
        return self.progress.micro_step / max(1, len(self.stream))


class TrainCallback(Protocol):
    """Hooks of the training loop (see the module contract). Every rank calls them."""

    def after_step(self, step: int, run: Run) -> None:
        """After optimiser step ``step`` (its logging, before its evaluation and checkpoint)."""

    def after_checkpoint(self, step: int, run: Run) -> None:
        """After the checkpoint of step ``step`` (this rank's part is on disk; call
        ``adaspec_dist.dist.barrier()`` before relying on the other ranks' parts)."""

    def after_train(self, run: Run) -> None:
        """Once the run is done: final evaluation, checkpoint and export are behind it."""


@dataclass(frozen=True)
class Every:
    """A cadence in optimiser steps: ``due(step)`` every ``n`` steps; ``n = 0`` is never."""

    n: int

    def due(self, step: int) -> bool:
        return bool(self.n) and step % self.n == 0
