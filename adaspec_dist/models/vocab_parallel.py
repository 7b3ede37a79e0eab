"""Vocab-parallel distribution math: each rank of a TP group holds one slice of the vocabulary.

Contract
--------
Every function takes this rank's logits slice ``logits_NV`` (``V`` = this shard's width,
global ids ``[vocab_start, vocab_start + V)``), the ``group`` of the tensor-parallel ranks, and
returns results that are *identical on every rank of the group*. Padded vocabulary rows
(ids >= the real vocabulary) must already be ``-inf`` (``TPCausalLM`` does that), so they
never win a top-k, an argmax or a sample and contribute nothing to the normaliser.

The full vocabulary is never materialised on any rank: the only collectives carry O(N),
O(N·K·TP) or O(N·M) values. All math is fp32 and chunked over rows (``chunk_rows``) so a
long batch does not allocate several N×V temporaries at once.

Pure ``torch.distributed``: no megatron import, so it is testable with any gloo group
(a group of size 1 or ``None`` for a single process degenerates to the ordinary math).

Shapes: N rows (positions), V this shard's vocabulary width, K kept ids, M ids asked for.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.distributed as dist


def _size(group: Any) -> int:
    return dist.get_world_size(group) if dist.is_initialized() else 1


def _all_reduce(t: torch.Tensor, op, group: Any) -> torch.Tensor:
    if _size(group) > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


def global_sum(t: torch.Tensor, group: Any = None) -> torch.Tensor:
    """In-place SUM all-reduce over the TP group (a no-op for one rank); returns ``t``."""
    return _all_reduce(t, dist.ReduceOp.SUM, group)


def _all_gather_cat(t: torch.Tensor, group: Any, dim: int) -> torch.Tensor:
    """All-gather equal-shaped tensors and concatenate them along ``dim`` (rank order)."""
    n = _size(group)
    if n == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(n)]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def _chunks(n_rows: int, chunk_rows: int) -> Iterator[slice]:
    for start in range(0, n_rows, max(1, chunk_rows)):
        yield slice(start, min(n_rows, start + chunk_rows))


def shard_range(vocab_size: int, tp_rank: int, tp_size: int) -> tuple[int, int, int]:
    """``(start, end, padded_vocab)``: this rank's slice of a vocabulary padded to a multiple of TP.

    The padded vocabulary is split evenly (megatron's layers require it); ``end - start`` is the
    shard width, and ids ``>= vocab_size`` in the last shard(s) are padding.
    """
    padded = -(-vocab_size // tp_size) * tp_size
    per = padded // tp_size
    return tp_rank * per, (tp_rank + 1) * per, padded


def log_normaliser(logits_NV: torch.Tensor, group: Any = None, *, chunk_rows: int = 4096) -> torch.Tensor:
    """Global ``logsumexp`` over the vocabulary (N,) fp32: all-reduce MAX, then SUM of exp."""
    out = torch.empty(logits_NV.shape[0], dtype=torch.float32, device=logits_NV.device)
    for rows in _chunks(logits_NV.shape[0], chunk_rows):
        x = logits_NV[rows].float()
        m = _all_reduce(x.max(dim=-1).values, dist.ReduceOp.MAX, group)
        # A row that is -inf everywhere cannot occur for a real model; keep the math finite anyway.
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        s = _all_reduce(torch.exp(x - m[:, None]).sum(dim=-1), dist.ReduceOp.SUM, group)
        out[rows] = m + torch.log(s)
    return out


def topk(logits_NV: torch.Tensor, k: int, *, vocab_start: int, group: Any = None,
         chunk_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Global top-k: ``(ids (N,K) int64 global, logp (N,K) fp32 full-vocab-normalised)``, sorted desc.

    Local top-k, all-gather the K·TP candidates (values and global ids), top-k again. Ties
    between shards resolve to the lower global id, like ``torch.topk`` on a full row in
    practice (ties are measure-zero for real logits anyway).
    """
    n, v = logits_NV.shape
    k_local = min(k, v)
    ids_out = torch.empty(n, k, dtype=torch.int64, device=logits_NV.device)
    lp_out = torch.empty(n, k, dtype=torch.float32, device=logits_NV.device)
    for rows in _chunks(n, chunk_rows):
        x = logits_NV[rows].float()
        vals, idx = torch.topk(x, k_local, dim=-1)
        logz = log_normaliser(x, group, chunk_rows=x.shape[0])
        cand_v = _all_gather_cat(vals, group, dim=1)                  # (n, k_local*TP), rank order
        cand_i = _all_gather_cat(idx + vocab_start, group, dim=1)
        if cand_v.shape[1] < k:
            raise ValueError(f"top_k={k} exceeds the vocabulary size {cand_v.shape[1]}; lower top_k")
        best_v, pos = torch.topk(cand_v, k, dim=-1)
        ids_out[rows] = torch.gather(cand_i, 1, pos)
        lp_out[rows] = best_v - logz[:, None]
    return ids_out, lp_out


def gather_logprobs(logits_NV: torch.Tensor, ids_NM: torch.Tensor, *, vocab_start: int, group: Any = None,
                    logz: torch.Tensor | None = None, chunk_rows: int = 4096) -> torch.Tensor:
    """Full-vocab log-probs (N,M) fp32 of global ``ids``: each id is read from its owning shard.

    The owning rank contributes its logit, the others 0; one SUM all-reduce of N×M values.
    """
    n, v = logits_NV.shape
    if logz is None:
        logz = log_normaliser(logits_NV, group, chunk_rows=chunk_rows)
    out = torch.empty(ids_NM.shape, dtype=torch.float32, device=logits_NV.device)
    for rows in _chunks(n, chunk_rows):
        local = ids_NM[rows] - vocab_start
        owned = (local >= 0) & (local < v)
        picked = torch.gather(logits_NV[rows].float(), 1, local.clamp(0, v - 1))
        picked = _all_reduce(torch.where(owned, picked, torch.zeros_like(picked)), dist.ReduceOp.SUM, group)
        out[rows] = picked - logz[rows, None]
    return out


def argmax(scores_NV: torch.Tensor, *, vocab_start: int, group: Any = None) -> torch.Tensor:
    """Distributed argmax (N,) int64 global ids; ties go to the lowest global id like ``torch.argmax``."""
    vals, idx = scores_NV.float().max(dim=-1)
    all_v = _all_gather_cat(vals[:, None], group, dim=1)             # (N, TP)
    all_i = _all_gather_cat((idx + vocab_start)[:, None], group, dim=1)
    # torch.argmax returns the first maximum; shards are in id order, so the first maximal shard wins.
    best = torch.argmax(all_v, dim=1, keepdim=True)
    return torch.gather(all_i, 1, best)[:, 0]


def gumbel_sample(logw_NV: torch.Tensor, *, vocab_start: int, group: Any = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample (N,) global ids with probability ∝ exp(logw) across shards, without gathering V.

    Gumbel-max: add i.i.d. Gumbel noise to each shard's unnormalised log-weights and take the
    distributed argmax. ``generator`` MUST differ per TP rank (e.g. seeded with the rank),
    otherwise the shards' noise is correlated and the sample is biased.
    """
    u = torch.rand(logw_NV.shape, generator=generator, device=logw_NV.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return argmax(logw_NV.double() + gumbel, vocab_start=vocab_start, group=group)


def inverse_cdf_draws(logits_NV: torch.Tensor, u_ND: torch.Tensor, *, vocab_start: int, vocab_size: int,
                      group: Any = None, temperature: float = 1.0, chunk_rows: int = 4096) -> torch.Tensor:
    """Ids (N,D) int64 drawn from softmax(logits / temperature) by inverse CDF of the uniforms ``u_ND``.

    The vocab-parallel twin of ``sparse.target.sampled_targets``' sampler: the global CDF is the
    exclusive prefix of the shards' masses (one all-gather of N×TP values) plus the owning
    shard's local cumulative sum, so with the same uniforms (drawn identically on every TP
    rank) it returns the same ids as the full-vocabulary sampler, up to float64 rounding at
    bucket edges. Each draw is resolved by its owning shard; one SUM all-reduce of N×D ids.
    """
    n, v = logits_NV.shape
    real = max(0, min(v, vocab_size - vocab_start))          # this shard's non-padding width
    me = dist.get_rank(group) if _size(group) > 1 else 0
    out = torch.empty(u_ND.shape, dtype=torch.int64, device=logits_NV.device)
    for rows in _chunks(n, chunk_rows):
        x = logits_NV[rows].float() / temperature
        lq = x - log_normaliser(x, group, chunk_rows=x.shape[0])[:, None]
        cdf = torch.cumsum(lq.double().exp(), dim=-1)                           # (n, V) local
        ends = torch.cumsum(_all_gather_cat(cdf[:, -1:], group, dim=1), dim=1)  # (n, TP) global
        target = u_ND[rows].to(cdf.device) * ends[:, -1:]
        owner = torch.searchsorted(ends, target, right=True).clamp_max(ends.shape[1] - 1)
        offset = torch.gather(ends, 1, owner) - cdf[:, -1:]    # my shard's start if I own the draw
        local = torch.searchsorted(cdf, target - offset, right=True).clamp(0, max(real - 1, 0))
        mine = owner == me
        part = torch.where(mine, local + vocab_start, torch.zeros_like(local))
        out[rows] = _all_reduce(part, dist.ReduceOp.SUM, group)
    return out
