"""The training job: setup -> step -> evaluate, as functions (no god class).

Contract
--------
* ``TrainConfig`` (a recipe YAML + ``--a.b=c`` overrides via ``adaspec_dist.config``).
* ``setup(cfg) -> Run``: process grid, data stream (a ``CacheReader`` over ``cache_dir``, or a
  ``TokenStream`` over ``data`` for sft / online runs without a cache), draft engine, frozen
  target/reference models when needed, tensorboard writer (rank 0). Checks that a cached
  reference column was computed with this run's divergence (else ValueError).
* ``train_step(run, batch) -> dict``: one micro-step (forward, per-token losses, selection,
  backward, DeepSpeed step — the optimiser steps at gradient-accumulation boundaries).
* ``evaluate(run) -> dict``: held-out α = E[Σ min(p, q)] and divergence on the eval cache
  (sparse estimate, exact with K = V), averaged over every supervised token of every rank.
* ``train(cfg) -> dict``: the loop. Checkpoints every ``save_every`` optimiser steps hold the
  engine (module, optimiser, scheduler) plus client state (step, micro-step, RNG, reader
  position), so ``resume`` continues exactly; the final draft is exported in HF format (with
  the tokenizer) to ``run_dir/final``. Epoch accounting: "passes" over the data and, for
  adaspec, "kept-token epochs" = passes · filter_fraction (the paper's 3 epochs at k = 0.4 is
  7.5 passes); ``passes`` is what the loop counts, both are logged.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from adaspec_dist.cache.reader import CacheReader
from adaspec_dist.config import build_config, save_resolved
from adaspec_dist.data.tasks import DataConfig, load_examples
from adaspec_dist.data.tokenize import tokenize_examples
from adaspec_dist.data.tokenizer import load_tokenizer, vocab_fingerprint
from adaspec_dist.dist import barrier, init_distributed
from adaspec_dist.distill import objectives as obj
from adaspec_dist.distill.batches import TokenStream
from adaspec_dist.distill.budget import Budget, resolve_budget
from adaspec_dist.distill.engine import (EngineConfig, build_engine, current_lr, gathered_module, grad_norm,
                                         latest_step, load_checkpoint, save_checkpoint)
from adaspec_dist.distill.selection import check_selection
from adaspec_dist.models.load import ModelConfig, load_causal_lm, save_hf
from adaspec_dist.models.tp_target import OnlineTPTeacher
from adaspec_dist.preemption import Preempted, StopSignal
from adaspec_dist.sparse.divergence import check_kind, per_token_divergence, sparse_alpha

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainConfig:
    objective: str = "adaspec"
    """sft (CE on answers, no cache), kd (divergence on every token: the reference / DistillSpec),
    adaspec (divergence on the filter_fraction of tokens with the largest L_draft - L_ref)."""
    teacher_mode: str = "cached"
    """cached (sparse targets from cache_dir) or online (run target (and reference) each step)."""
    divergence: str = "fkl"
    """fkl, rkl, jsd or tvd (must match the cache's reference column for adaspec)."""
    beta: float = 0.5
    """β of jsd."""
    filter_fraction: float = 0.4
    """AdaSPEC k: fraction of tokens trained on."""
    selection_scope: str = "local"
    """local (per rank per micro-batch, as the paper's code) or global (across dp ranks)."""
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
    reference: ModelConfig | None = None
    """Reference draft (kd-trained), needed for adaspec unless the cache has a reference column."""
    data: Any = None
    """DataConfig (adaspec_dist.data.tasks) for sft and for online runs without a cache."""
    tokenizer: str | None = None
    """Tokenizer path (for data and for the exported draft)."""
    cache_dir: str | None = None
    eval_cache_dir: str | None = None
    """Held-out cache for periodic α / divergence evaluation."""
    run_dir: str = "runs/train"
    max_steps: int | None = None
    """Optimiser steps (None = derived from passes / kept_token_epochs)."""
    passes: float = 1.0
    """Passes over the training sequences."""
    kept_token_epochs: float | None = None
    """Epochs counted in kept tokens (the paper's count for AdaSPEC); how they become steps and
    batch is ``budget``. None = train ``passes`` at the engine's batch."""
    budget: Literal["paper", "equal_batch"] = "paper"
    """With kept_token_epochs: paper = the published scripts (the steps of kept_token_epochs passes
    at the engine's batch, with batch / filter_fraction sequences per step); equal_batch = the
    engine's batch for kept_token_epochs / filter_fraction passes (1/k times the steps). With
    objective kd, paper makes the compute control (DistillSpec at AdaSPEC's batch and steps)."""
    loss_normalization: Literal["supervised", "kept"] = "supervised"
    """adaspec: divide the kept tokens' loss sum by all supervised tokens of the step (published
    code: HF Trainer's num_items_in_batch, so the loss is ~k x the kept mean) or by the kept ones."""
    save_every: int = 0
    """Checkpoint every N optimiser steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept in run_dir/checkpoints (0 = keep all)."""
    eval_every: int = 0
    """Evaluate every N optimiser steps (0 = at the start and the end only)."""
    eval_batches: int | None = None
    """Limit eval to this many batches per rank (None = the whole eval cache)."""
    seed: int = 0
    export: bool = True
    """Write run_dir/final in HF format at the end."""
    kill_after_step: int | None = None
    """Testing aid: after the checkpoint of this step, the process exits abruptly (simulated kill)."""
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = build_config(DataConfig, self.data, prefix="data.")

    def validate(self) -> None:
        if self.objective not in obj.OBJECTIVES:
            raise ValueError(f"unknown objective '{self.objective}'; choose one of {list(obj.OBJECTIVES)}")
        if self.teacher_mode not in obj.TEACHER_MODES:
            raise ValueError(f"teacher_mode '{self.teacher_mode}' must be one of {list(obj.TEACHER_MODES)}")
        check_kind(self.divergence, self.beta)
        check_selection(self.filter_fraction, self.selection_scope)
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
        if self.objective == "adaspec" and self.teacher_mode == "online" and self.reference is None:
            raise ValueError("online adaspec needs a reference model (reference.name_or_path): the kd-trained draft")
        if self.target_tp > 1 and (self.teacher_mode != "online" or self.target is None
                                   or not self.target.name_or_path):
            raise ValueError("target_tp > 1 shards an online teacher: set teacher_mode=online and "
                             "target.name_or_path to an HF model directory")
        if self.passes <= 0 and self.max_steps is None:
            raise ValueError("passes must be positive (or set max_steps)")


@dataclass
class Run:
    cfg: TrainConfig
    ps: Any
    engine: Any
    stream: Any
    eval_reader: Any
    target: Any
    reference: Any
    tokenizer: Any
    writer: Any
    total_steps: int
    budget: Budget
    tp_teacher: Any = None
    step: int = 0
    micro_step: int = 0
    tokens_seen: int = 0
    trained_tokens: int = 0


# ----------------------------------------------------------------------------- setup
def _frozen(cfg: ModelConfig, vocab: int, device):
    model = load_causal_lm(cfg, vocab_size=vocab, device=device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _stream(cfg: TrainConfig, ps, tokenizer, mb: int):
    """The training batches (``mb`` sequences per rank): the cache when there is one, else
    tokenized task data."""
    if cfg.cache_dir:
        fingerprint = None
        if tokenizer is not None:  # refuse a cache built with another tokenizer
            fingerprint = vocab_fingerprint(tokenizer)
        return CacheReader(cfg.cache_dir, batch_size=mb, dp_rank=ps.dp_rank, dp_size=ps.dp_size, seed=cfg.seed,
                           tokenizer_fingerprint=fingerprint)

    if tokenizer is None:
        raise ValueError("training from data needs a tokenizer: set tokenizer: PATH")
    examples = tokenize_examples(load_examples(cfg.data), tokenizer, max_length=cfg.data.max_length)
    return TokenStream(examples, batch_size=mb, dp_rank=ps.dp_rank, dp_size=ps.dp_size, seed=cfg.seed)


def _check_reference_column(cfg: TrainConfig, stream) -> None:
    ref = (getattr(stream, "manifest", None) or {}).get("reference")
    if cfg.objective != "adaspec" or cfg.teacher_mode != "cached":
        return
    if ref:
        if ref.get("divergence") != cfg.divergence or (cfg.divergence == "jsd" and ref.get("beta") != cfg.beta):
            raise ValueError(f"the cache's reference column used divergence={ref.get('divergence')} "
                             f"(beta={ref.get('beta')}) but this run uses {cfg.divergence}; set divergence to match "
                             "or recompute it with `adaspec-dist cache --add-reference`")
    elif cfg.reference is None:
        raise ValueError("adaspec needs L_ref: the cache has no reference column, so set reference.name_or_path "
                         "(or run `adaspec-dist cache --add-reference`)")


def budget_for(cfg: TrainConfig, dp_size: int) -> Budget:
    """This run's batch split and passes on ``dp_size`` ranks (see distill/budget.py)."""
    e = cfg.engine
    return resolve_budget(passes=cfg.passes, kept_token_epochs=cfg.kept_token_epochs, budget=cfg.budget,
                          fraction=cfg.filter_fraction, global_batch_size=e.global_batch_size,
                          micro_batch_size=e.micro_batch_size, grad_accum=e.grad_accum, dp_size=dp_size)


def total_steps_for(cfg: TrainConfig, budget: Budget, batches_per_pass: int) -> int:
    """Optimiser steps: max_steps when set, else the budget's passes over batches_per_pass per rank."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(budget.passes * batches_per_pass / budget.grad_accum))


def setup(cfg: TrainConfig) -> Run:
    cfg.validate()
    ps = init_distributed(tp_size=1)
    torch.manual_seed(cfg.seed)
    tokenizer = None
    if cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer)
    budget = budget_for(cfg, ps.dp_size)
    # The engine runs the resolved split: the micro-batch and accumulation this world size gives.
    engine_cfg = dataclasses.replace(cfg.engine, micro_batch_size=budget.micro_batch,
                                     grad_accum=budget.grad_accum, global_batch_size=None)
    stream = _stream(cfg, ps, tokenizer, budget.micro_batch)
    _check_reference_column(cfg, stream)
    vocab = (stream.manifest or {}).get("vocab_size") or (len(tokenizer) if tokenizer is not None else None)
    draft = load_causal_lm(cfg.draft, vocab_size=vocab, device=ps.device, dtype="float32")
    draft_vocab = int(draft.get_output_embeddings().weight.shape[0])
    if vocab is not None and draft_vocab != int(vocab):
        raise ValueError(f"the draft's vocabulary ({draft_vocab}) differs from the cache/tokenizer's ({vocab}); "
                         "use a draft that shares the target's tokenizer")
    draft.train()
    total = total_steps_for(cfg, budget, len(stream))
    engine = build_engine(draft, cfg=engine_cfg, total_steps=total, device=ps.device)
    need_target = cfg.objective != "sft" and cfg.teacher_mode == "online"
    need_ref = cfg.objective == "adaspec" and (cfg.teacher_mode == "online" or stream_lacks_reference(stream))
    tp_teacher = None
    if need_target and cfg.target_tp > 1:
        # Collective: every rank builds it; groups of target_tp ranks share one sharded target.
        tp_teacher = OnlineTPTeacher(cfg.target.name_or_path, tp_size=cfg.target_tp, top_k=cfg.target_top_k,
                                     device=ps.device, seed=cfg.seed)
        need_target = False
    target = _frozen(cfg.target, vocab, ps.device) if need_target else None
    reference = _frozen(cfg.reference, vocab, ps.device) if need_ref else None
    eval_reader = None
    if cfg.eval_cache_dir:
        eval_reader = CacheReader(cfg.eval_cache_dir, batch_size=budget.micro_batch, dp_rank=ps.dp_rank,
                                  dp_size=ps.dp_size, shuffle=False, prefetch=0, vocab_size=vocab)
    writer = None
    if ps.is_main:
        from torch.utils.tensorboard import SummaryWriter

        save_resolved(cfg, cfg.run_dir)
        writer = SummaryWriter(str(Path(cfg.run_dir) / "tb"))
    return Run(cfg=cfg, ps=ps, engine=engine, stream=stream, eval_reader=eval_reader, target=target,
               reference=reference, tokenizer=tokenizer, writer=writer, total_steps=total, budget=budget,
               tp_teacher=tp_teacher)


def stream_lacks_reference(stream) -> bool:
    return not (getattr(stream, "manifest", None) or {}).get("reference")


# ----------------------------------------------------------------------------- step
def compute_loss(run: Run, batch) -> tuple[torch.Tensor, dict]:
    """Forward the draft (and the online teacher / reference) on one micro-batch."""
    cfg = run.cfg
    if run.tp_teacher is not None:
        # The sharded target's sparse rows stand in for the cache's (called on every rank: collective).
        # A cached reference column was scored against the cache's rows, not these: drop it so that
        # L_ref comes from the online reference against the very same rows (like with like).
        batch = dataclasses.replace(batch, ref_loss=None, target=run.tp_teacher(
            batch.input_ids, batch.attention_mask, batch.loss_mask))
    draft_NV = obj.supervised_logits(run.engine, batch)
    target_NV = ref_NV = None
    with torch.no_grad():
        if run.target is not None:
            target_NV = obj.supervised_logits(run.target, batch)
        if run.reference is not None:
            ref_NV = obj.supervised_logits(run.reference, batch)
    losses = obj.token_losses(cfg.objective, draft_NV, batch, kind=cfg.divergence, beta=cfg.beta,
                              target_NV=target_NV, ref_NV=ref_NV)
    return obj.objective(cfg.objective, losses, fraction=cfg.filter_fraction, scope=cfg.selection_scope,
                         normalization=cfg.loss_normalization, group=run.ps.dp_group, dp_size=run.ps.dp_size)


def train_step(run: Run, batch) -> dict:
    """One micro-step; returns stats (``stepped`` tells whether the optimiser stepped)."""
    batch = batch.to(run.ps.device)
    loss, stats = compute_loss(run, batch)
    run.engine.backward(loss)
    run.engine.step()
    run.micro_step += 1
    stepped = run.micro_step % run.budget.grad_accum == 0
    if stepped:
        run.step += 1
    run.tokens_seen += int(batch.attention_mask.sum())
    run.trained_tokens += stats["kept"]
    stats.update(loss=float(loss.detach()) / run.ps.dp_size, stepped=stepped)
    return stats


# ----------------------------------------------------------------------------- evaluate
@torch.no_grad()
def evaluate(run: Run) -> dict:
    """Held-out α and divergence, token-averaged over all ranks (collective)."""
    import torch.distributed as dist

    if run.eval_reader is None:
        return {}
    module = run.engine.module
    was_training = module.training
    module.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    for b, batch in enumerate(run.eval_reader):
        if run.cfg.eval_batches is not None and b >= run.cfg.eval_batches:
            break
        batch = batch.to(run.ps.device)
        logits = obj.supervised_logits(run.engine, batch)  # every rank forwards (ZeRO-3 gathers)
        if logits.shape[0]:
            sums[0] += float(sparse_alpha(logits, batch.target).double().sum())
            sums[1] += float(per_token_divergence(logits, batch.target, run.cfg.divergence, run.cfg.beta).double().sum())
            sums[2] += logits.shape[0]
    run.eval_reader.position = 0
    if dist.is_initialized():
        dist.all_reduce(sums, group=run.ps.dp_group)
    module.train(was_training)
    n = max(1.0, float(sums[2]))
    return {"alpha": float(sums[0]) / n, run.cfg.divergence: float(sums[1]) / n, "tokens": int(sums[2])}


# ----------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def checkpoint(run: Run) -> None:
    client = {"step": run.step, "micro_step": run.micro_step, "tokens_seen": run.tokens_seen,
              "trained_tokens": run.trained_tokens, "reader": run.stream.state_dict(), "rng": _rng_state()}
    ckpt_dir = Path(run.cfg.run_dir) / "checkpoints"
    save_checkpoint(run.engine, ckpt_dir, run.step, client)
    if run.ps.is_main:
        logger.info("checkpoint at step %d", run.step)
        if run.cfg.keep_checkpoints > 0:  # older tags only: `latest` always points at a kept one
            tags = sorted(p for p in ckpt_dir.glob("step*") if p.is_dir())
            for old in tags[: -run.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)


def resume(run: Run) -> None:
    client = load_checkpoint(run.engine, Path(run.cfg.run_dir) / "checkpoints")
    run.step, run.micro_step = int(client["step"]), int(client["micro_step"])
    run.tokens_seen, run.trained_tokens = int(client["tokens_seen"]), int(client["trained_tokens"])
    run.stream.load_state_dict(client["reader"])
    _set_rng_state(client["rng"])
    logger.info("resumed at step %d (pass %.3f)", run.step, run.micro_step / max(1, len(run.stream)))


def export(run: Run) -> Path:
    """Write the draft in HF format (with its tokenizer) to run_dir/final (collective under ZeRO-3)."""
    out = Path(run.cfg.run_dir) / "final"
    with gathered_module(run.engine) as module:
        if run.ps.is_main:
            if run.tokenizer is None:
                logger.warning("no tokenizer configured: exporting the draft without one (set tokenizer: PATH)")
            save_hf(module, out, tokenizer=run.tokenizer)
    barrier()
    return out


# ----------------------------------------------------------------------------- loop
def _log_step(run: Run, stats: dict, rate: float) -> None:
    """Rank-0 tensorboard scalars and the ΔL histogram."""
    w, s = run.writer, run.step
    if w is None:
        return
    w.add_scalar("train/loss", stats["loss"], s)
    w.add_scalar("train/kept_fraction", stats["kept_global"] / max(1, stats["total_global"]), s)
    w.add_scalar("train/kept_tokens", stats["kept_global"], s)
    w.add_scalar("train/tokens_per_s", rate, s)
    w.add_scalar("train/lr", current_lr(run.engine), s)
    w.add_scalar("train/grad_norm", grad_norm(run.engine), s)
    passes = run.micro_step / max(1, len(run.stream))
    w.add_scalar("train/passes", passes, s)
    if run.cfg.objective == "adaspec":
        w.add_scalar("train/kept_token_epochs", passes * run.cfg.filter_fraction, s)
        delta = stats["delta"]
        if delta.numel():
            qs = torch.quantile(delta.float().cpu(), torch.tensor([0.1, 0.5, 0.9]))
            for name, v in zip(("p10", "p50", "p90"), qs.tolist()):
                w.add_scalar(f"delta_l/{name}", v, s)
            w.add_scalar("delta_l/threshold", stats["threshold"], s)
            w.add_histogram("delta_l/hist", delta.float().cpu(), s)


def _log_eval(run: Run, metrics: dict) -> None:
    if metrics and run.ps.is_main:
        logger.info("eval at step %d: alpha %.4f, %s %.4f over %d tokens", run.step, metrics["alpha"],
                    run.cfg.divergence, metrics[run.cfg.divergence], metrics["tokens"])
        if run.writer is not None:
            run.writer.add_scalar("eval/alpha", metrics["alpha"], run.step)
            run.writer.add_scalar(f"eval/{run.cfg.divergence}", metrics[run.cfg.divergence], run.step)


def train(cfg: TrainConfig, *, resume_run: bool | str = False, keep_run: bool = False) -> dict:
    """The whole job; returns a summary with first/last eval metrics (and the live ``Run`` under
    ``"run"`` when ``keep_run``, for callers that inspect the engine afterwards).

    ``resume_run``: True = continue from the newest checkpoint (an error when there is none);
    ``"auto"`` = continue when there is one, else start fresh (requeued jobs)."""
    # Installed before setup, so a SIGTERM that lands while the job starts up still ends in a
    # checkpoint (after the first step) rather than a death with nothing to resume from.
    stop = StopSignal.install()  # SIGTERM/SIGUSR1 -> checkpoint at a step boundary, exit 143 (launch helper)
    run = setup(cfg)
    ckpt_dir = Path(cfg.run_dir) / "checkpoints"
    if resume_run == "auto":
        resume_run = latest_step(ckpt_dir) is not None
        if not resume_run and run.ps.is_main:
            logger.info("--auto-resume: no checkpoint in '%s' yet; starting from scratch", ckpt_dir)
    if resume_run:
        if latest_step(ckpt_dir) is None:
            raise ValueError(f"--resume: no checkpoint in '{ckpt_dir}'; start without --resume")
        resume(run)
    per_pass = len(run.stream)
    unit = "kept-token epochs" if cfg.objective == "adaspec" else "epochs"
    frac = cfg.filter_fraction if cfg.objective == "adaspec" else 1.0
    if run.ps.is_main:
        b = run.budget
        passes = run.total_steps * b.grad_accum / per_pass
        kept = (f"~{b.global_batch * cfg.filter_fraction:.1f} sequences' tokens kept/step (k={cfg.filter_fraction:g}, "
                f"selection {cfg.selection_scope}, loss / {cfg.loss_normalization} tokens)"
                if cfg.objective == "adaspec" else "every supervised token trained")
        logger.info("%s: %d optimiser steps x %d sequences/step (micro %d x accum %d x %d ranks) = %.2f passes "
                    "(%.2f %s); %s; budget %s", cfg.objective, run.total_steps, b.global_batch, b.micro_batch,
                    b.grad_accum, run.ps.dp_size, passes, passes * frac, unit, kept, b.rule)
    summary: dict = {"eval_start": evaluate(run) if not resume_run else {}}
    _log_eval(run, summary["eval_start"])
    bar = tqdm(total=run.total_steps, initial=run.step, desc=cfg.objective, disable=not run.ps.is_main)
    t0, tok0, last_stats = time.perf_counter(), run.tokens_seen, {}
    while run.step < run.total_steps:
        run.stream.set_epoch(run.micro_step // per_pass)
        for batch in run.stream:
            stats = train_step(run, batch)
            if not stats["stepped"]:
                continue
            rate = (run.tokens_seen - tok0) * run.ps.dp_size / max(1e-9, time.perf_counter() - t0)
            _log_step(run, stats, rate)
            last_stats = stats
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", kept=stats["kept_global"])
            if cfg.eval_every and run.step % cfg.eval_every == 0:
                _log_eval(run, evaluate(run))
            if cfg.save_every and run.step % cfg.save_every == 0:
                checkpoint(run)
                if cfg.kill_after_step == run.step:
                    barrier()  # every rank's partition is on disk before anyone dies
                    logger.warning("kill_after_step=%d: exiting abruptly (simulated kill)", run.step)
                    os._exit(17)
            if stop.requested():  # collective: every rank stops at the same step
                if not cfg.save_every or run.step % cfg.save_every:
                    checkpoint(run)
                logger.warning("stopped by signal after step %d; rerun with --resume to continue", run.step)
                raise Preempted(run.step)
            if run.step >= run.total_steps:
                break
    bar.close()
    stop.restore()
    summary["tokens_per_s"] = (run.tokens_seen - tok0) * run.ps.dp_size / max(1e-9, time.perf_counter() - t0)
    summary["eval_end"] = evaluate(run)
    _log_eval(run, summary["eval_end"])
    if not cfg.save_every or run.step % cfg.save_every:
        checkpoint(run)
    passes = run.micro_step / per_pass
    summary.update(steps=run.step, passes=passes, kept_token_epochs=passes * frac,
                   last_loss=last_stats.get("loss"), trained_tokens=run.trained_tokens)
    if run.ps.is_main:
        logger.info("done: %d steps, %.2f passes (= %.2f %s)", run.step, passes, passes * frac, unit)
    if cfg.export:
        summary["export"] = str(export(run))
    if run.writer is not None:
        run.writer.close()
    if keep_run:
        summary["run"] = run
    return summary
