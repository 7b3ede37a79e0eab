"""Per-token divergences D(p_target || q_student) on full logits and on the sparse cache form.

Legend: N supervised positions (rows), V vocabulary, K ids kept per position.

Contract
--------
* ``per_token_divergence(student_logits_NV, target, kind, beta) -> (N,) float32``: the ONE
  estimator used on both sides of AdaSPEC's ΔL = L_draft − L_ref (``cache --add-reference``
  computes L_ref with it, the trainer L_draft), so the two columns are comparable.
* ``dense_divergence(student_logits_NV, teacher_logits_NV, kind, beta) -> (N,)``: the exact
  value on full logits (the online teacher mode and the reference implementation in tests).
* ``kind``: a name in ``DIVERGENCES``, the one list of kinds (``DivergenceKind``: exact over
  buckets, its f-generator, whether a compact sampled cache supports it); ``Divergence`` (the
  configs' type), ``KINDS`` and ``cache.format.supported_divergences`` are derived from it.
  ``fkl`` KL(p‖q) (AdaSPEC / DistillSpec default), ``rkl`` KL(q‖p), ``jsd``
  JSD(β) = β·KL(p‖m) + (1−β)·KL(q‖m) with m = βp + (1−β)q, ``tvd`` ½Σ|p − q|.
* ``sparse_alpha`` / ``dense_alpha`` = Σ_x min(p, q) = 1 − TVD (speculative acceptance).

Estimators on a ``SparseTarget`` (see ``adaspec_dist.sparse.target``)
-------------------------------------------------------------------
* ``topk``: K+1 buckets — the K ids plus one "rest" bucket. The teacher's rest mass is
  1 − Σ exp(logp) (its log-probs are normalised over the full vocabulary); the student's rest
  is the log-sum-exp of its logits OFF those ids, computed directly (no 1 − Σq cancellation).
  Both sides are proper distributions over the same buckets, so the value is the divergence of
  the coarsened distributions: a lower bound of the full f-divergence (data processing
  inequality) and exact when K covers the vocabulary (K = V: the rest bucket is dropped, it is
  empty by definition). Neither side is renormalised alone.
* ``sampled``: every kind is an f-divergence D_f = E_p[f(q/p)] with f(1) = 0; ids drawn from p
  with importance weights w give the unbiased Σ_i w_i f(q_i/p_i). For fkl we use f = −log t
  (the cross-entropy form of the sampled-KD papers): its terms are bounded by the log-ratio of
  the sampled ids. The f'(1) = 0 variant t − 1 − log t would make every row non-negative, but
  its t = q/p term explodes when a draw hits an id the teacher gives ~0 mass and the student
  does not: on the demo's trained transformer pair it made the seed-to-seed std of the summed
  estimate 460 instead of 3 at 64 draws (benchmarks/cache_kl_error_transformer.py). So sampled fkl rows can be < 0;
  their mean is the KL. rkl, jsd and tvd keep their t-proportional terms: those are inherent
  to E_p[f(q/p)] for these divergences (prefer top-k caches for them).
  Padding entries (weight 0) are ignored whatever their ids / log-probs hold.
  A compact sampled cache (format 2, ``store_logp: false``) stores no log-probs but the row
  constant ``plogp = Σ_i w_i log p_i``; fkl is then ``plogp − Σ_i w_i log q_i``: the same number
  as with log-probs (up to fp32 rounding), the same gradient (``from_row_constant``). The other
  kinds refuse such a target in one line (they need p at the ids).

All arithmetic is fp32; the only V-sized tensors are the student's own logits and their
gradient (top-k walks row chunks in a custom autograd function; see ``_SparseLogQ``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

_LOG_FLOOR = math.log(1e-30)


def log1mexp(a: Tensor) -> Tensor:
    """log(1 − exp(a)) for a ≤ 0, stable at both ends (Mächler 2012); a > 0 is clamped to 0."""
    a = a.clamp(max=0.0)
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def _xlogy_ratio(lp: Tensor, lq: Tensor) -> Tensor:
    """p·(log p − log q) elementwise with 0·(anything) = 0 (empty buckets)."""
    p = lp.exp()
    return torch.where(p > 0, p * (lp - lq), torch.zeros_like(p))


# ----------------------------------------------------------------------------- the kinds
# Each kind is two functions of the same divergence: exact over buckets given as (N, M) log-probs
# (lp, lq) -> (N,), and its generator f(t), f(1) = 0, of t = q/p given as log t (any shape).

def _rkl_f(log_t: Tensor, beta: float) -> Tensor:
    t = log_t.exp()
    return t * log_t - t + 1.0


def _jsd_log_m(lp: Tensor, lq: Tensor, beta: float) -> Tensor:
    """log m, m = βp + (1−β)q."""
    return torch.logaddexp(lp + math.log(beta), lq + math.log1p(-beta))


def _jsd_buckets(lp: Tensor, lq: Tensor, beta: float) -> Tensor:
    lm = _jsd_log_m(lp, lq, beta)
    return beta * _xlogy_ratio(lp, lm).sum(-1) + (1 - beta) * _xlogy_ratio(lq, lm).sum(-1)


def _jsd_f(log_t: Tensor, beta: float) -> Tensor:
    # m/p = β + (1−β)t;  β·KL(p‖m) → −β log(β + (1−β)t);  (1−β)·KL(q‖m) → (1−β) t log(t / (m/p)).
    log_m = _jsd_log_m(torch.zeros_like(log_t), log_t, beta)
    return -beta * log_m + (1 - beta) * log_t.exp() * (log_t - log_m)


def _fkl_from_row_constant(plogp: Tensor, w: Tensor, lq_K: Tensor) -> Tensor:
    """Σ w (log p − log q) = plogp − Σ w log q: the same estimate as with log-probs, the same gradient."""
    return plogp - (w * lq_K).sum(-1)


@dataclass(frozen=True)
class DivergenceKind:
    """One divergence D(p‖q): everything the estimators, the caches and the configs need of it."""
    buckets: Callable[[Tensor, Tensor, float], Tensor]
    """Exact D between two distributions given as (N, M) log-probs over the same buckets -> (N,)."""
    f: Callable[[Tensor, float], Tensor]
    """Its f-generator: f(t) with f(1) = 0, of t = q/p given as log t (the sampled estimator)."""
    from_row_constant: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None
    """(plogp (N,), weights (N,K), log q at the ids (N,K)) -> (N,): the estimate on a compact sampled
    row (no log-probs at the ids, only plogp = Σ w log p). None: the kind needs the teacher's
    log-probs at the ids, so a compact sampled cache (``store_logp: false``) cannot train it."""
    uses_beta: bool = False
    """The kind reads ``beta``, which must then lie in (0, 1)."""

    @property
    def needs_logp(self) -> bool:
        return self.from_row_constant is None


DIVERGENCES: dict[str, DivergenceKind] = {
    "fkl": DivergenceKind(buckets=lambda lp, lq, beta: _xlogy_ratio(lp, lq).sum(-1),
                          f=lambda log_t, beta: -log_t, from_row_constant=_fkl_from_row_constant),
    "rkl": DivergenceKind(buckets=lambda lp, lq, beta: _xlogy_ratio(lq, lp).sum(-1), f=_rkl_f),
    "jsd": DivergenceKind(buckets=_jsd_buckets, f=_jsd_f, uses_beta=True),
    "tvd": DivergenceKind(buckets=lambda lp, lq, beta: 0.5 * (lp.exp() - lq.exp()).abs().sum(-1),
                          f=lambda log_t, beta: 0.5 * (log_t.exp() - 1.0).abs()),
}
"""The one list of divergences: a kind added here is accepted by the configs (``Divergence``), the
CLI, every cache that stores log-probs (``cache.format.supported_divergences``) and both estimators."""
KINDS: tuple[str, ...] = tuple(DIVERGENCES)
ROW_CONSTANT_KINDS: tuple[str, ...] = tuple(k for k, d in DIVERGENCES.items() if not d.needs_logp)
"""The kinds a compact sampled cache (no log-probs at the ids) supports."""
Divergence = Literal[KINDS]  # type: ignore[valid-type]  # built from the registry: config.py reads its choices


def check_kind(kind: str, beta: float = 0.5) -> None:
    """Raise a one-line ValueError for an unknown divergence or a β outside (0, 1)."""
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence '{kind}'; choose one of {list(KINDS)}")
    if DIVERGENCES[kind].uses_beta and not 0.0 < beta < 1.0:
        raise ValueError(f"{kind} beta must be in (0, 1), got {beta}; e.g. beta=0.5")


def bucket_divergence(lp: Tensor, lq: Tensor, kind: str, beta: float = 0.5) -> Tensor:
    """Exact divergence between two distributions given as log-probs over the same M buckets.

    ``lp``, ``lq``: (N, M) fp32, each row a distribution (may hold −inf for empty buckets).
    Returns (N,). Used with M = V (dense) and M = K + 1 (top-k + rest).
    """
    check_kind(kind, beta)
    return DIVERGENCES[kind].buckets(lp, lq, beta)


def _f_generator(log_t: Tensor, kind: str, beta: float) -> Tensor:
    """f(t) with f(1) = 0 for each kind, t = q/p given as log t (any shape); see the module docstring."""
    check_kind(kind, beta)
    return DIVERGENCES[kind].f(log_t, beta)


_CHUNK_ELEMS = 1 << 20  # rows per chunk such that a chunk holds ~1M fp32 values (4 MiB)


class _SparseLogQ(torch.autograd.Function):
    """(log q at ids (N,K), log q of the rest bucket (N,)) from logits (N,V), memory-lean.

    Forward and backward walk row chunks, so the only N×V tensor created is the gradient of
    the logits itself (autograd's generic path would keep a log-softmax, a masked copy and
    scatter buffers alive: ~3-4 N×V). Exact: the rest is the log-sum-exp OFF the ids.
    ``distinct``: the ids of a row are distinct (top-k). Then one pass over the vocabulary gives
    both sums (log-sum-exp off the ids, then combined with the K logits at the ids); otherwise
    (sampled rows padded with repeated ids) the rest is not needed and is returned as −inf.
    """

    @staticmethod
    def forward(ctx, z_NV: Tensor, ids_NK: Tensor, distinct: bool):
        n, v = z_NV.shape
        rows = max(1, _CHUNK_ELEMS // max(1, v))
        lse = torch.empty(n, dtype=torch.float32, device=z_NV.device)
        lse_rest = torch.full_like(lse, float("-inf"))
        lq_K = torch.empty(ids_NK.shape, dtype=torch.float32, device=z_NV.device)
        for a in range(0, n, rows):
            sl = slice(a, a + rows)
            zc = z_NV[sl].float()
            z_ids = zc.gather(-1, ids_NK[sl])
            if distinct:
                lse_rest[sl] = torch.logsumexp(zc.scatter(-1, ids_NK[sl], float("-inf")), -1)
                lse[sl] = torch.logaddexp(lse_rest[sl], torch.logsumexp(z_ids, -1))
            else:
                lse[sl] = torch.logsumexp(zc, -1)
            lq_K[sl] = z_ids - lse[sl, None]
        ctx.distinct = distinct
        ctx.save_for_backward(z_NV, ids_NK, lse, lse_rest, lq_K)
        return lq_K, lse_rest - lse

    @staticmethod
    def backward(ctx, g_K: Tensor, g_rest: Tensor):
        # d lq_K[i,j]/dz_x = [x = ids_ij] − q_x ;  d lq_rest[i]/dz_x = [x ∉ ids_i]·q_x/q_rest_i − q_x
        z_NV, ids_NK, lse, lse_rest, lq_K = ctx.saved_tensors
        n, v = z_NV.shape
        rows = max(1, _CHUNK_ELEMS // max(1, v))
        grad = torch.empty(n, v, dtype=z_NV.dtype, device=z_NV.device)
        g_K = g_K.float()
        g_rest = g_rest.float() if ctx.distinct else torch.zeros_like(lse)
        total = g_K.sum(-1) + g_rest  # (N,)
        # Off the ids: q_x·(−total + g_rest/q_rest); rows without a rest (ids cover V) get no term.
        finite = torch.isfinite(lse_rest)
        off = torch.where(finite, g_rest * torch.exp(lse - torch.where(finite, lse_rest, lse)), 0.0) - total
        at_ids = g_K - lq_K.exp() * total[:, None]  # exact values at the ids (no cancellation)
        for a in range(0, n, rows):
            sl = slice(a, a + rows)
            out = (z_NV[sl].float() - lse[sl, None]).exp_().mul_(off[sl, None])
            if ctx.distinct:
                out.scatter_(-1, ids_NK[sl], at_ids[sl])
            else:  # repeated (padding) ids carry zero gradient, so accumulating is exact
                out.scatter_add_(-1, ids_NK[sl], g_K[sl])
            grad[sl] = out
        return grad, None, None


def per_token_divergence(student_logits_NV: Tensor, target, kind: str = "fkl", beta: float = 0.5) -> Tensor:
    """D(p_target ‖ q_student) per supervised position, (N,) float32 (see module docstring)."""
    check_kind(kind, beta)
    n, v = student_logits_NV.shape
    ids = target.ids.to(student_logits_NV.device).long()
    logp = None if target.logp is None else target.logp.to(student_logits_NV.device).float()
    assert ids.shape[0] == n and (logp is None or ids.shape == logp.shape), (ids.shape, student_logits_NV.shape)
    if n == 0:
        return student_logits_NV.float().sum(-1)  # (0,), still attached to the graph
    if target.scheme == "topk":
        # Student: log q at the ids and of the "rest" (log-sum-exp of the logits off the ids).
        lq_K, lq_rest = _SparseLogQ.apply(student_logits_NV, ids, True)
        if ids.shape[1] >= v:
            # The ids cover the vocabulary: the rest bucket is empty on both sides by definition.
            # (Computing it would turn the teacher's storage rounding, |1 − Σp| ~ 1e-3 in fp16,
            # into mass where the student has none: a spurious, huge divergence.)
            return bucket_divergence(logp, lq_K, kind, beta)
        lp_rest = log1mexp(torch.logsumexp(logp, dim=-1))
        # A rest bucket that is empty on one side only by rounding (K ≈ V, fp16 storage) would
        # give 0·log 0 = nan or a spurious inf: floor both rest masses at 1e-30.
        lp_rest, lq_rest = lp_rest.clamp(min=_LOG_FLOOR), lq_rest.clamp(min=_LOG_FLOOR)
        lp = torch.cat([logp, lp_rest[:, None]], dim=-1)
        lq = torch.cat([lq_K, lq_rest[:, None]], dim=-1)
        return bucket_divergence(lp, lq, kind, beta)
    if target.scheme == "sampled":
        if target.weights is None:
            raise ValueError("a sampled SparseTarget needs weights; rebuild the cache with scheme=sampled")
        w = target.weights.to(student_logits_NV.device).float()
        lq_K, _ = _SparseLogQ.apply(student_logits_NV, ids, False)
        if target.logp is None:  # a compact cache: only the stored per-row constant plogp
            from_row_constant = DIVERGENCES[kind].from_row_constant
            if from_row_constant is None:
                supported = ", ".join(ROW_CONSTANT_KINDS)
                raise ValueError(f"divergence '{kind}' needs the teacher's log-probs, which this sampled cache "
                                 f"does not store (supports: {supported}); use divergence {supported} or rebuild "
                                 f"the cache with store_logp: true")
            return from_row_constant(target.plogp.to(student_logits_NV.device).float(), w, lq_K)
        live = w > 0
        # Padding rows may hold -inf/garbage log-probs: neutralise before exp, then weight 0.
        log_t = torch.where(live, lq_K - torch.where(live, logp, torch.zeros_like(logp)), torch.zeros_like(logp))
        return (w * torch.where(live, _f_generator(log_t, kind, beta), torch.zeros_like(log_t))).sum(-1)
    raise ValueError(f"unknown sparse target scheme '{target.scheme}'; expected 'topk' or 'sampled'")


def dense_divergence(student_logits_NV: Tensor, teacher_logits_NV: Tensor, kind: str = "fkl",
                     beta: float = 0.5) -> Tensor:
    """Exact D(p_teacher ‖ q_student) per row on full logits, (N,) float32."""
    check_kind(kind, beta)
    lq = torch.log_softmax(student_logits_NV.float(), dim=-1)
    lp = torch.log_softmax(teacher_logits_NV.float(), dim=-1)
    return bucket_divergence(lp, lq, kind, beta)


def sparse_alpha(student_logits_NV: Tensor, target) -> Tensor:
    """α per position = Σ_x min(p, q) = 1 − TVD, estimated on the sparse target, (N,)."""
    return 1.0 - per_token_divergence(student_logits_NV, target, "tvd")


def dense_alpha(student_logits_NV: Tensor, teacher_logits_NV: Tensor) -> Tensor:
    """Exact α per position on full logits, (N,)."""
    return 1.0 - dense_divergence(student_logits_NV, teacher_logits_NV, "tvd")

