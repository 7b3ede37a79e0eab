"""``TrainConfig``: what a training run is asked to do, and the budget it resolves to.

Contract
--------
* ``TrainConfig`` is the recipe section of ``adaspec-dist train`` (a YAML mapping + dotted
  overrides through ``adaspec_dist.config``). Choice fields are ``Literal``: the loader rejects
  another value in one line naming the key and the choices; ``validate()`` repeats those checks
  for configs built in code, and checks the combinations (a cache or a teacher for kd/adaspec,
  a reference for online adaspec, ...).
* Grouped by who reads them: ``selection`` (SelectionConfig: adaspec's token selection, the one
  section the compute control drops), ``eval`` (TrainEvalConfig: held-out evaluation),
  ``checkpoint`` (CheckpointConfig), ``engine`` (EngineConfig). The flat keys of earlier versions
  (``selection_rule``, ``eval_every``, ``save_every``, ...) still load, each with one warning
  naming its new key (``TrainConfig.RENAMED``).
* ``budget_for(cfg, dp_size)``: the batch split and passes on ``dp_size`` ranks (distill/budget.py).
* ``total_steps_for(cfg, budget, batches_per_pass)``: the optimiser steps of the run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from adaspec_dist.data.tasks import DataConfig
from adaspec_dist.distill import objectives as obj
from adaspec_dist.distill.budget import Budget, BudgetRule, resolve_budget
from adaspec_dist.distill.engine import EngineConfig
from adaspec_dist.distill.objectives import Normalization, NormalizationScope, Objective, TeacherMode
from adaspec_dist.distill.selection import Rule, Scope, check_selection
from adaspec_dist.models.load import ModelConfig
from adaspec_dist.sparse.divergence import Divergence, check_kind


@dataclass(kw_only=True)
class SelectionConfig:
    """Which tokens an adaspec run trains on and how their loss is divided (recipe section
    ``selection``). Only adaspec reads it; the pipeline's compute control (kd at AdaSPEC's batch and
    steps) drops the whole section. The fraction k itself is ``filter_fraction``, beside it, because
    the budget also reads it (batch B/k) and the compute control keeps it."""

    rule: Rule = "quantile"
    """quantile (the published code: keep ΔL >= torch.quantile(ΔL, 1 - k), linear interpolation, so
    floor(k(N-1)) + 1 tokens plus ties) or exact_k (exactly ceil(kN), ties to the earlier token).
    Non-finite ΔL is never kept under either rule (counted in the logs)."""
    scope: Scope = "local"
    """local (one threshold per threshold group on each rank, as the paper's code) or global
    (one threshold over all dp ranks)."""
    threshold_group: int | None = None
    """Sequences per selection threshold (local scope): null = the per-rank micro-batch (the
    published: one quantile per device per step, 5 sequences on each of 8 GPUs); n splits each
    micro-batch into consecutive groups of n sequences, each its own threshold and, with
    normalization_scope per_rank, its own denominator (one process with micro-batch 40 and
    threshold_group 5 emulates the paper's 8 devices x 5 sequences)."""
    loss_normalization: Normalization = "supervised"
    """Divide the kept tokens' loss sum by all supervised tokens (published code: HF Trainer's
    num_items_in_batch, so the loss is ~k x the kept mean) or by the kept ones."""
    reference: ModelConfig | None = None
    """Reference draft (kd-trained) whose loss L_ref ranks the tokens; needed for online adaspec,
    and for cached adaspec unless the cache has a reference column."""


@dataclass(kw_only=True)
class TrainEvalConfig:
    """Held-out evaluation during training (recipe section ``eval``): α, the divergence and τ."""

    cache_dir: str | None = None
    """Held-out cache (`adaspec-dist cache`) for periodic α / divergence evaluation (None = none)."""
    every: int | None = None
    """Evaluate every N optimiser steps (None = about ten evaluations over the run, every
    ceil(steps / 10), so α has a curve; 0 = at the start and the end only)."""
    batches: int | None = None
    """Limit eval to this many batches per rank (None = the whole eval cache)."""
    gamma: int = 4
    """γ of the τ logged next to held-out α: τ = (1 − α^(γ+1)) / (1 − α), the tokens per target call
    SD would reach if each draft token were accepted independently with probability α."""

    def validate(self) -> None:
        if self.gamma < 1:
            raise ValueError(f"eval.gamma={self.gamma} must be >= 1 (draft tokens per target call)")
        if self.every is not None and self.every < 0:
            raise ValueError(f"eval.every={self.every} must be >= 0 (0 = evaluate at the start and end only)")


@dataclass(kw_only=True)
class CheckpointConfig:
    """Checkpoints of a training run (recipe section ``checkpoint``), in run_dir/checkpoints."""

    every: int = 0
    """Checkpoint every N optimiser steps (0 = only at the end)."""
    keep: int = 2
    """Newest checkpoints kept in run_dir/checkpoints (0 = keep all)."""


@dataclass(kw_only=True)
class TrainConfig:
    RENAMED: ClassVar[dict[str, str]] = {
        "selection_rule": "selection.rule", "selection_scope": "selection.scope",
        "threshold_group": "selection.threshold_group", "loss_normalization": "selection.loss_normalization",
        "reference": "selection.reference", "eval_cache_dir": "eval.cache_dir", "eval_every": "eval.every",
        "eval_batches": "eval.batches", "eval_gamma": "eval.gamma", "save_every": "checkpoint.every",
        "keep_checkpoints": "checkpoint.keep"}
    """The flat keys of earlier versions -> their place now (read with a warning: config.py)."""

    objective: Objective = "adaspec"
    """sft (CE on answers, no cache), kd (divergence on every token: the reference / DistillSpec),
    adaspec (divergence on the filter_fraction of tokens with the largest L_draft - L_ref)."""
    teacher_mode: TeacherMode = "cached"
    """cached (sparse targets from cache_dir) or online (run target (and reference) each step)."""
    divergence: Divergence = "fkl"
    """fkl, rkl, jsd or tvd (must match the cache's reference column for adaspec)."""
    beta: float = 0.5
    """β of jsd."""
    filter_fraction: float = 0.4
    """AdaSPEC k: fraction of tokens trained on (the budget reads it too: batch B/k)."""
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    """How adaspec selects its tokens and divides their loss (the keys below)."""
    draft: ModelConfig
    """The model being trained (its initialisation)."""
    target: ModelConfig | None = None
    """Teacher, needed for teacher_mode=online."""
    target_tp: int = 1
    """Online teacher only: shard the target over groups of this many ranks (megatron-core TP;
    target.name_or_path must be an HF directory). The student stays purely data-parallel; the
    sharded target yields top-k (+ rest) rows, i.e. a cache computed on the fly."""
    target_top_k: int = 64
    """Ids per position the tensor-parallel online teacher keeps (target_tp > 1)."""
    data: DataConfig | None = None
    """The task's data, for sft and for online runs without a cache."""
    tokenizer: str | None = None
    """Tokenizer path (for data and for the exported draft)."""
    cache_dir: str | None = None
    """The training cache (`adaspec-dist cache`): sparse targets, and L_ref for adaspec."""
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)
    """Held-out evaluation during training (the keys below)."""
    run_dir: str = "runs/train"
    """Receives config.yaml, tb/, checkpoints/ and final/ (one run at a time)."""
    max_steps: int | None = None
    """Optimiser steps (None = derived from passes / kept_token_epochs)."""
    passes: float = 1.0
    """Passes over the training sequences."""
    kept_token_epochs: float | None = None
    """Epochs counted in kept tokens (the paper's count for AdaSPEC); how they become steps and
    batch is ``budget``. None = train ``passes`` at the engine's batch."""
    budget: BudgetRule = "paper"
    """With kept_token_epochs: paper = the published scripts (the steps of kept_token_epochs passes
    at the engine's batch, with batch / filter_fraction sequences per step); equal_batch = the
    engine's batch for kept_token_epochs / filter_fraction passes (1/k times the steps). With
    objective kd, paper makes the compute control (DistillSpec at AdaSPEC's batch and steps)."""
    normalization_scope: NormalizationScope = "per_rank"
    """Whose token count divides the loss (every objective): per_rank (published: HF Trainer 4.52.3,
    average_tokens_across_devices False, so each device divides by its own count and DeepSpeed
    averages the ranks; per threshold group when selection.threshold_group is set) or global (one count
    over all ranks: a global token mean, independent of how tokens fall into ranks)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """When checkpoints are written and how many are kept (the keys below)."""
    seed: int = 0
    """Seed of the data order and of torch's RNG; a preset draft's initialisation has its own draft.seed."""
    export: bool = True
    """Write run_dir/final in HF format at the end."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """DeepSpeed engine, optimiser and schedule (distill/engine.py)."""

    def validate(self) -> None:
        if self.objective not in obj.OBJECTIVES:
            raise ValueError(f"unknown objective '{self.objective}'; choose one of {list(obj.OBJECTIVES)}")
        if self.teacher_mode not in obj.TEACHER_MODES:
            raise ValueError(f"teacher_mode '{self.teacher_mode}' must be one of {list(obj.TEACHER_MODES)}")
        check_kind(self.divergence, self.beta)
        sel = self.selection
        check_selection(self.filter_fraction, sel.scope, sel.rule, sel.threshold_group)
        if self.normalization_scope not in obj.NORMALIZATION_SCOPES:
            raise ValueError(f"normalization_scope '{self.normalization_scope}' must be one of "
                             f"{list(obj.NORMALIZATION_SCOPES)}")
        if self.objective == "sft" and self.data is None and not self.cache_dir:
            raise ValueError("objective sft needs data (a task) or cache_dir (its token ids); set data.task")
        if self.objective != "sft":
            if self.teacher_mode == "cached" and not self.cache_dir:
                raise ValueError(f"objective {self.objective} with teacher_mode=cached needs cache_dir; "
                                 "run `adaspec-dist cache` first or use teacher_mode=online")
            if self.teacher_mode == "online" and self.target is None:
                raise ValueError("teacher_mode=online needs a target model (target.name_or_path or target.preset)")
            if self.teacher_mode == "online" and self.data is None and not self.cache_dir:
                raise ValueError("teacher_mode=online needs data (data.task) or cache_dir for its token ids")
        if self.objective == "adaspec" and self.teacher_mode == "online" and sel.reference is None:
            raise ValueError("online adaspec needs a reference model (selection.reference.name_or_path): "
                             "the kd-trained draft")
        if self.target_tp > 1 and (self.teacher_mode != "online" or self.target is None
                                   or not self.target.name_or_path):
            raise ValueError("target_tp > 1 shards an online teacher: set teacher_mode=online and "
                             "target.name_or_path to an HF model directory")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} would export an untrained draft; set max_steps >= 1 "
                             "or remove it to train the budget's passes")
        self.eval.validate()
        if self.passes <= 0 and self.max_steps is None:
            raise ValueError("passes must be positive (or set max_steps)")


def budget_for(cfg: TrainConfig, dp_size: int) -> Budget:
    """This run's batch split and passes on ``dp_size`` ranks (see distill/budget.py)."""
    e = cfg.engine
    return resolve_budget(passes=cfg.passes, kept_token_epochs=cfg.kept_token_epochs, budget=cfg.budget,
                          fraction=cfg.filter_fraction, global_batch_size=e.global_batch_size,
                          micro_batch_size=e.micro_batch_size, grad_accum=e.grad_accum, dp_size=dp_size)


EVALS_PER_RUN = 10


def eval_interval(cfg: TrainConfig, total_steps: int) -> int:
    """Optimiser steps between held-out evaluations (0 = none in between): ``eval.every``, or
    ceil(total_steps / EVALS_PER_RUN) when it is None."""
    if cfg.eval.every is not None:
        return cfg.eval.every
    return max(1, math.ceil(total_steps / EVALS_PER_RUN))


def total_steps_for(cfg: TrainConfig, budget: Budget, batches_per_pass: int) -> int:
    """Optimiser steps: max_steps when set, else the budget's passes over batches_per_pass per rank."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(budget.passes * batches_per_pass / budget.grad_accum))
