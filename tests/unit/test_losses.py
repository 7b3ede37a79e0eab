"""Divergences: zero on equal distributions, non-negative, dense matches a reference written
independently here, top-k with K = V equals dense, top-k ≤ dense, sampled is unbiased."""
from __future__ import annotations

import math

import pytest
import torch

from adaspec_dist.sparse.target import SparseTarget
from adaspec_dist.sparse.divergence import (KINDS, dense_alpha, dense_divergence, per_token_divergence,
                                            sparse_alpha)

N, V = 12, 37


def _logits(seed: int, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, V, generator=g, dtype=torch.float64).float() * scale


def _topk(teacher: torch.Tensor, k: int) -> SparseTarget:
    logp = torch.log_softmax(teacher.float(), -1)
    vals, ids = logp.topk(k, dim=-1)
    return SparseTarget(ids=ids, logp=vals, weights=None, scheme="topk")


def _sampled(teacher: torch.Tensor, draws: int, gen: torch.Generator, pad_to: int) -> SparseTarget:
    """Unique ids drawn from p with weights count/draws, padded with weight-0 garbage."""
    logp = torch.log_softmax(teacher.float(), -1)
    ids = torch.zeros(N, pad_to, dtype=torch.long)
    lps = torch.full((N, pad_to), float("-inf"))
    w = torch.zeros(N, pad_to)
    for n in range(N):
        x = torch.multinomial(logp[n].exp(), draws, replacement=True, generator=gen)
        uniq, counts = x.unique(return_counts=True)
        ids[n, :len(uniq)] = uniq
        lps[n, :len(uniq)] = logp[n, uniq]
        w[n, :len(uniq)] = counts.float() / draws
    return SparseTarget(ids=ids, logp=lps, weights=w, scheme="sampled")


def _reference(student: torch.Tensor, teacher: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """Textbook formulas in float64 on probabilities (independent of the library's log-space code)."""
    p = torch.softmax(teacher.double(), -1)
    q = torch.softmax(student.double(), -1)
    kl = lambda a, b: (a * (a / b).log()).sum(-1)  # noqa: E731
    if kind == "fkl":
        return kl(p, q)
    if kind == "rkl":
        return kl(q, p)
    if kind == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    return 0.5 * (p - q).abs().sum(-1)


@pytest.mark.parametrize("kind", KINDS)
def test_dense_matches_reference_zero_on_equal_and_nonnegative(kind):
    s, t = _logits(0), _logits(1)
    beta = 0.3
    got = dense_divergence(s, t, kind, beta)
    assert got.dtype == torch.float32 and got.shape == (N,)
    torch.testing.assert_close(got.double(), _reference(s, t, kind, beta), rtol=1e-4, atol=1e-5)
    assert (got > 1e-3).all()
    assert dense_divergence(t, t, kind, beta).abs().max() < 1e-5
    # Shifting logits by a constant changes nothing (log-softmax invariance).
    torch.testing.assert_close(dense_divergence(s + 7.0, t, kind, beta), got, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_topk_full_vocab_equals_dense_and_partial_is_lower_bound(kind):
    s, t = _logits(2), _logits(3)
    dense = dense_divergence(s, t, kind)
    full = per_token_divergence(s, _topk(t, V), kind)
    torch.testing.assert_close(full, dense, rtol=1e-4, atol=1e-5)
    previous = torch.zeros(N)
    for k in (1, 4, 16):
        low = per_token_divergence(s, _topk(t, k), kind)
        assert (low >= -1e-6).all(), kind
        assert (low <= dense + 1e-5).all(), (kind, k)
        previous = low
    assert (previous > 0).all()
    # Equal distributions -> 0 for every K.
    for k in (1, 5, V):
        assert per_token_divergence(t, _topk(t, k), kind).abs().max() < 1e-5


def test_topk_gradient_matches_dense_gradient_when_k_covers_vocab():
    s, t = _logits(4), _logits(5)
    a = s.clone().requires_grad_(True)
    b = s.clone().requires_grad_(True)
    per_token_divergence(a, _topk(t, V), "fkl").sum().backward()
    dense_divergence(b, t, "fkl").sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(a.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_sampled_estimator_unbiased_nonnegative_and_zero_on_equal(kind):
    s, t = _logits(6, scale=1.5), _logits(7, scale=1.5)
    gen = torch.Generator().manual_seed(11)
    dense = dense_divergence(s, t, kind)
    reps = [per_token_divergence(s, _sampled(t, 16, gen, pad_to=20), kind) for _ in range(200)]
    est = torch.stack(reps)  # (R, N)
    if kind != "fkl":  # fkl uses the bounded -log t form, whose single rows may dip below 0
        assert (est >= -1e-6).all()
    # Unbiased: |mean − truth| within 4 standard errors for every row (fixed seeds).
    se = est.std(0) / math.sqrt(est.shape[0])
    assert ((est.mean(0) - dense).abs() <= 4 * se + 1e-4).all(), (est.mean(0), dense, se)
    same = per_token_divergence(t, _sampled(t, 16, gen, pad_to=20), kind)
    assert same.abs().max() < 1e-5


def test_alpha_is_one_minus_tvd_and_one_on_equal():
    s, t = _logits(8), _logits(9)
    p, q = torch.softmax(t.double(), -1), torch.softmax(s.double(), -1)
    torch.testing.assert_close(dense_alpha(s, t).double(), torch.minimum(p, q).sum(-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sparse_alpha(s, _topk(t, V)), dense_alpha(s, t), rtol=1e-5, atol=1e-6)
    assert (sparse_alpha(t, _topk(t, 3)) > 1 - 1e-5).all()


def test_empty_rows_and_bf16_student():
    t = _logits(10)
    empty = per_token_divergence(torch.zeros(0, V, requires_grad=True), _topk(t, 4)[0:0], "fkl")
    assert empty.shape == (0,)
    got = per_token_divergence(_logits(12).bfloat16(), _topk(t, 4), "fkl")
    assert got.dtype == torch.float32 and torch.isfinite(got).all()


def test_bad_kind_and_beta_are_one_line_errors():
    s, t = _logits(0), _logits(1)
    with pytest.raises(ValueError, match="unknown divergence 'kll'"):
        per_token_divergence(s, _topk(t, 3), "kll")
    with pytest.raises(ValueError, match="beta"):
        dense_divergence(s, t, "jsd", beta=1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_full_vocab_topk_is_robust_to_fp16_storage(kind):
    """A cache stores log-probs in fp16: with K = V, their rounding (Σp ≠ 1 by ~1e-4) must not
    become spurious mass in an empty 'rest' bucket."""
    s, t = _logits(13, scale=0.3), _logits(14, scale=0.3)  # near-uniform: tiny divergences
    target = _topk(t, V)
    target.logp = target.logp.half().float()
    dense = dense_divergence(s, t, kind)
    got = per_token_divergence(s, target, kind)
    assert (got - dense).abs().max() < 0.05 * dense.abs().max(), (got, dense)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scheme", ["topk", "sampled"])
def test_chunked_custom_backward_matches_plain_autograd(kind, scheme, monkeypatch):
    """The memory-lean autograd function equals the textbook autograd graph (values and grads),
    also when rows are split into several chunks."""
    import adaspec_dist.sparse.divergence as L

    monkeypatch.setattr(L, "_CHUNK_ELEMS", 3 * V)  # 3 rows per chunk: exercises the chunk loop
    s, t = _logits(15), _logits(16)
    target = _topk(t, 5) if scheme == "topk" else _sampled(t, 8, torch.Generator().manual_seed(3), pad_to=10)
    a = s.clone().requires_grad_(True)
    got = per_token_divergence(a, target, kind, 0.3)
    (got * torch.linspace(0.5, 2.0, N)).sum().backward()

    b = s.clone().requires_grad_(True)
    lq = torch.log_softmax(b, -1)
    lq_K = lq.gather(-1, target.ids)
    if scheme == "topk":
        lq_rest = torch.logsumexp(lq.scatter(-1, target.ids, float("-inf")), -1)
        lp_rest = L.log1mexp(torch.logsumexp(target.logp, -1))
        want = L.bucket_divergence(torch.cat([target.logp, lp_rest[:, None]], -1),
                                   torch.cat([lq_K, lq_rest[:, None]], -1), kind, 0.3)
    else:
        live = target.weights > 0
        log_t = torch.where(live, lq_K - torch.where(live, target.logp, 0.0), 0.0)
        want = (target.weights * torch.where(live, L._f_generator(log_t, kind, 0.3), 0.0)).sum(-1)
    (want * torch.linspace(0.5, 2.0, N)).sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_sampled_fkl_stays_tame_when_the_student_covers_a_teacher_near_zero():
    """A draw of an id with p ~ 1e-4 where q = 0.3 must not blow the estimate up (t = q/p = 3000)."""
    V = 50
    p = torch.full((V,), 1e-4)
    p[0] = 1 - (V - 1) * 1e-4
    q = torch.full((V,), 0.7 / (V - 1))
    q[0] = 0.3
    t_logits, s_logits = p.log()[None], q.log()[None]
    truth = float(dense_divergence(s_logits, t_logits, "fkl"))
    gen = torch.Generator().manual_seed(5)
    from adaspec_dist.sparse.target import sampled_targets  # the cache's own sampler

    est = torch.stack([per_token_divergence(s_logits, sampled_targets(t_logits, 64, gen), "fkl")
                       for _ in range(300)])[:, 0]
    assert est.std() < 0.5 * truth, (float(est.std()), truth)
    assert abs(float(est.mean()) - truth) < 4 * float(est.std()) / math.sqrt(len(est)) + 1e-3
