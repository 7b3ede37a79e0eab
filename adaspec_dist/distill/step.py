"""One training step and the held-out evaluation, on a ``Run``.

Legend: N supervised positions of a micro-batch, V vocabulary.

Contract
--------
* ``compute_loss(run, batch) -> (loss, stats)``: forward the draft (and the online teacher /
  reference) on one micro-batch; the maths is distill/objectives.py; ``engine.fused_head`` picks
  the chunked head (distill/fused_head.py, no N × V logits) or the plain path.
* ``train_step(run, batch) -> stats``: one micro-step (forward, per-token losses, selection,
  backward, DeepSpeed step — the optimiser steps at gradient-accumulation boundaries, which
  ``stats["stepped"]`` tells); advances ``run.progress``. A NaN/inf loss or gradient norm stops
  the run there (distill/finite.py: one line naming the step and the batch's shards).
* ``optimizer_steps(run)``: micro-steps over the stream, epoch after epoch, yielding the stats
  of each optimiser step until ``run.total_steps``; resumes where ``run.progress`` and the
  stream's position say.
* ``evaluate(run) -> metrics``: held-out α = E[Σ min(p, q)] and divergence on the eval cache
  (sparse estimate, exact with K = V), averaged over every supervised token of every rank
  (collective), and ``tau`` = (1 − α^(γ+1)) / (1 − α) at ``cfg.eval.gamma`` (the τ that α implies);
  ``{}`` without an eval cache.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import torch
import torch.distributed as dist

from adaspec_dist.cache.reader import CacheBatch
from adaspec_dist.distill import objectives as obj
from adaspec_dist.distill.batches import TokenBatch
from adaspec_dist.distill.engine import full_grad_norm, raw_grad_norm
from adaspec_dist.distill.finite import check_grad_norm, check_loss
from adaspec_dist.distill.fused_head import fused_token_losses, use_fused
from adaspec_dist.distill.selection import threshold_groups
from adaspec_dist.distill.state import Run
from adaspec_dist.sparse.divergence import per_token_divergence, sparse_alpha
from adaspec_dist.speculative.metrics import theoretical_tau

Batch = CacheBatch | TokenBatch


def compute_loss(run: Run, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
    """Forward the draft (and the online teacher / reference) on one micro-batch."""
    cfg = run.cfg
    if run.tp_teacher is not None:
        # The sharded target's sparse rows stand in for the cache's (called on every rank: collective).
        # A cached reference column was scored against the cache's rows, not these: drop it so that
        # L_ref comes from the online reference against the very same rows (like with like).
        batch = dataclasses.replace(batch, ref_loss=None, target=run.tp_teacher(
            batch.input_ids, batch.attention_mask, batch.loss_mask))
    if use_fused(cfg.engine.fused_head, run.engine, int(batch.loss_mask.sum()), run.ps.dp_group, run.ps.device):
        losses = fused_token_losses(cfg.objective, run.engine, batch, kind=cfg.divergence, beta=cfg.beta,
                                    teacher=run.target, reference=run.reference, rows=cfg.engine.head_chunk_rows,
                                    group=run.ps.dp_group)
    else:  # the plain path: N x V logits (the reference the fused path is tested against)
        draft_NV = obj.supervised_logits(run.engine, batch)
        target_NV = ref_NV = None
        with torch.no_grad():
            if run.target is not None:
                target_NV = obj.supervised_logits(run.target, batch)
            if run.reference is not None:
                ref_NV = obj.supervised_logits(run.reference, batch)
        losses = obj.token_losses(cfg.objective, draft_NV, batch, kind=cfg.divergence, beta=cfg.beta,
                                  target_NV=target_NV, ref_NV=ref_NV)
    sel = cfg.selection
    return obj.objective(cfg.objective, losses, fraction=cfg.filter_fraction, scope=sel.scope,
                         rule=sel.rule, normalization=sel.loss_normalization,
                         normalization_scope=cfg.normalization_scope,
                         groups_N=threshold_groups(batch.loss_mask, sel.threshold_group),
                         group=run.ps.dp_group, dp_size=run.ps.dp_size)


def train_step(run: Run, batch: Batch) -> dict[str, Any]:
    """One micro-step; returns stats (``stepped`` tells whether the optimiser stepped)."""
    batch = batch.to(run.ps.device)
    loss, stats = compute_loss(run, batch)
    check_loss(run, batch, loss)  # collective; before backward, so NaN never reaches the weights
    run.engine.backward(loss)
    boundary = run.engine.is_gradient_accumulation_boundary()
    if boundary:  # ZeRO-0's norm (None under ZeRO 1-3): before step() clips and zeroes the gradients
        stats["grad_norm"] = full_grad_norm(run.engine)
    run.engine.step()
    if boundary:
        check_grad_norm(run, batch, raw_grad_norm(run.engine, stats["grad_norm"]))
    p = run.progress
    p.micro_step += 1
    stepped = p.micro_step % run.budget.grad_accum == 0
    if stepped:
        p.step += 1
    p.tokens_seen += int(batch.attention_mask.sum())
    p.trained_tokens += stats["kept"]
    stats.update(loss=float(loss.detach()) / run.ps.dp_size, stepped=stepped)
    return stats


def optimizer_steps(run: Run) -> Iterator[dict[str, Any]]:
    """The stats of each optimiser step up to ``run.total_steps`` (see the module contract)."""
    per_pass = len(run.stream)
    while run.progress.step < run.total_steps:
        run.stream.set_epoch(run.progress.micro_step // per_pass)
        for batch in run.stream:
            stats = train_step(run, batch)
            if not stats["stepped"]:
                continue
            yield stats
            if run.progress.step >= run.total_steps:
                return


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """Held-out α and divergence, token-averaged over all ranks (collective)."""
    if run.eval_reader is None:
        return {}
    module = run.engine.module
    was_training = module.training
    module.eval()
    # On the run's device: NCCL (CUDA) reduces only device tensors.
    sums = torch.zeros(3, dtype=torch.float64, device=run.ps.device)
    for b, batch in enumerate(run.eval_reader):
        if run.cfg.eval.batches is not None and b >= run.cfg.eval.batches:
            break
        batch = batch.to(run.ps.device)
        logits = obj.supervised_logits(run.engine, batch)  # every rank forwards (ZeRO-3 gathers)
        if logits.shape[0]:
            sums[0] += float(sparse_alpha(logits, batch.target).double().sum())
            div = per_token_divergence(logits, batch.target, run.cfg.divergence, run.cfg.beta)
            sums[1] += float(div.double().sum())
            sums[2] += logits.shape[0]
    run.eval_reader.position = 0
    if dist.is_initialized():
        dist.all_reduce(sums, group=run.ps.dp_group)
    module.train(was_training)
    n = max(1.0, float(sums[2]))
    alpha = float(sums[0]) / n
    return {"alpha": alpha, "tau": theoretical_tau(alpha, run.cfg.eval.gamma), run.cfg.divergence: float(sums[1]) / n,
            "tokens": int(sums[2])}
