"""A training run's budget: sequences per optimiser step, how they split over ranks, and passes.

Contract
--------
``resolve_budget(...) -> Budget`` is pure (no I/O, no process group); the trainer calls it with
the world size it runs on, a pipeline dry run with the launcher's.

* The base global batch is ``engine.global_batch_size`` when set, else ``micro_batch_size ×
  grad_accum × dp_size`` (what the launcher's world size makes of the per-rank numbers).
* ``kept_token_epochs = None``: the run trains ``passes`` passes at the base batch ("explicit").
* ``kept_token_epochs = E`` counts epochs in *kept* tokens (AdaSPEC trains on the fraction k):
  - ``budget="paper"`` (default: the published AdaSPEC run scripts): the same optimiser steps
    as a reference trained E passes at the base batch, with ``batch / k`` sequences per step —
    so each step keeps about as many tokens as the reference's step trains on. GSM8K,
    Pythia-31M: reference 3 epochs at 16 sequences/step, AdaSPEC 7.5 passes at 40 = both
    ≈ 1,401 steps ("3 epochs, batch 16" in the official README counts kept tokens).
  - ``budget="equal_batch"``: E / k passes at the base batch, i.e. 1/k times the reference's
    optimiser steps (adaspec-dist's reading before it followed the published scripts).
  For ``objective=kd`` the same rule makes the *compute control* ``distillspec_wide``: plain KD
  on every token with AdaSPEC's batch and steps.
* Splitting over ranks: the per-rank ``micro_batch_size`` is an upper bound (memory) and scales
  with the batch under ``paper`` (2 → 5 per device in the official scripts); the gradient
  accumulation is derived so that ``micro × accum × dp_size == global``, taking the largest
  micro-batch ≤ the bound that divides the per-rank share. A ``global_batch_size`` that the
  ranks cannot share evenly is a one-line ValueError; under ``paper`` a batch / k that they
  cannot share (8 / 0.4 = 20 on 8 ranks) is rounded up to a multiple of the ranks (24) and the
  passes follow, so the steps stay the reference's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

BudgetRule = Literal["paper", "equal_batch"]
BUDGETS: tuple[BudgetRule, ...] = get_args(BudgetRule)


@dataclass(frozen=True)
class Budget:
    global_batch: int
    """Sequences per optimiser step over all ranks."""
    micro_batch: int
    """Sequences per rank per micro-step."""
    grad_accum: int
    """Micro-steps per optimiser step."""
    passes: float
    """Passes over the training sequences."""
    rule: str
    """How it was derived, for the run's log line."""

    def steps(self, num_sequences: int, dp_size: int) -> int:
        """Optimiser steps over ``num_sequences`` (each rank holds ceil(n / dp) of them)."""
        per_rank_batches = math.ceil(num_sequences / (self.micro_batch * dp_size))
        return max(1, math.ceil(self.passes * per_rank_batches / self.grad_accum))


def _integral(x: float) -> int:
    """x rounded to an integer, ignoring float noise (16 / 0.4 = 40.000000000000004)."""
    return max(1, round(x)) if abs(x - round(x)) < 1e-6 else max(1, math.ceil(x))


def split_over_ranks(global_batch: int, micro_bound: int, dp_size: int) -> tuple[int, int]:
    """(micro_batch, grad_accum) with micro ≤ micro_bound and micro × accum × dp == global."""
    if global_batch % dp_size:
        raise ValueError(f"engine.global_batch_size={global_batch} cannot be shared by {dp_size} ranks; "
                         f"use a multiple of {dp_size} or another number of ranks")
    per_rank = global_batch // dp_size
    micro = max(d for d in range(1, min(micro_bound, per_rank) + 1) if per_rank % d == 0)
    return micro, per_rank // micro


def resolve_budget(*, passes: float, kept_token_epochs: float | None, budget: str, fraction: float,
                   global_batch_size: int | None, micro_batch_size: int, grad_accum: int,
                   dp_size: int) -> Budget:
    """See the module docstring."""
    if budget not in BUDGETS:
        raise ValueError(f"budget '{budget}' must be one of {list(BUDGETS)} (paper = the published scripts)")
    if global_batch_size is not None and global_batch_size < 1:
        raise ValueError(f"engine.global_batch_size must be a positive number of sequences, got {global_batch_size}")
    base_global = global_batch_size or micro_batch_size * grad_accum * dp_size

    def base_split() -> tuple[int, int]:
        """The base batch's split: derived when a global batch is stated, else as given."""
        return (split_over_ranks(base_global, micro_batch_size, dp_size) if global_batch_size
                else (micro_batch_size, grad_accum))

    if kept_token_epochs is None:
        return Budget(base_global, *base_split(), float(passes), f"{passes:g} passes")
    if kept_token_epochs <= 0:
        raise ValueError(f"kept_token_epochs must be positive, got {kept_token_epochs}")
    if budget == "equal_batch":
        run_passes = kept_token_epochs / fraction
        return Budget(base_global, *base_split(), run_passes,
                      f"equal_batch: {kept_token_epochs:g} kept-token epochs = {run_passes:g} passes at batch "
                      f"{base_global}")
    wide = _integral(base_global / fraction)
    if wide % dp_size:
        # e.g. MBPP: batch 8 / 0.4 = 20 on 8 ranks. Round up to what the ranks can share; the
        # passes follow, so the steps stay those of the reference (the rule's point).
        wide = -(-wide // dp_size) * dp_size
    run_passes = kept_token_epochs * wide / base_global
    micro, accum = split_over_ranks(wide, _integral(micro_batch_size / fraction), dp_size)
    return Budget(wide, micro, accum, run_passes,
                  f"paper: batch {base_global} / k={fraction:g} -> {wide} sequences/step, {kept_token_epochs:g} "
                  f"kept-token epochs = {run_passes:g} passes (the steps of {kept_token_epochs:g} passes at "
                  f"batch {base_global})")
