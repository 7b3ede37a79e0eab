"""AdaSPEC selection (local scope, single process) against an independent reference of the official
rule (official utils.py compute_loss: ``delta >= torch.quantile(delta, 1 - k)``): counts, ties,
N ≡ 3 (mod 5), NaN / inf, threshold groups, the ``exact_k`` option and the errors.
The global scope under a real 2-rank gloo run is in tests/distributed/test_train_selection.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adaspec_dist.distill.selection import (check_selection, keep_mask, n_keep, select_tokens, threshold_groups)


def official_keep(delta, k: float) -> np.ndarray:
    """The official rule written out without torch.quantile: linear interpolation between the
    order statistics around rank (1 − k)·(N − 1), all in float32 as torch computes it
    (q becomes a float32 tensor, the rank a float32 product, lerp switches form at weight 0.5).
    A NaN anywhere makes the official threshold NaN: nothing kept."""
    x = np.asarray(delta, dtype=np.float32)
    if x.size == 0 or np.isnan(x).any():
        return np.zeros(x.shape, dtype=bool)
    ordered = np.sort(x)
    rank = np.float32(1 - k) * np.float32(x.size - 1)
    lo, hi = int(np.floor(rank)), int(np.ceil(rank))
    w, a, b = np.float32(rank - np.float32(lo)), ordered[lo], ordered[hi]
    with np.errstate(invalid="ignore", over="ignore"):
        t = a + w * (b - a) if w < 0.5 else b - (b - a) * (np.float32(1) - w)
    return x >= t


def distinct(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", list(range(1, 42)) + [64, 257, 1000])
@pytest.mark.parametrize("k", [0.1, 0.25, 0.4, 0.5, 0.6, 0.9, 1.0])
def test_quantile_rule_matches_the_official_formula(n, k):
    for seed, delta in enumerate([distinct(n, n), distinct(n, n + 1) * 1e-3 + 7.0,
                                  torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(n)).float()]):
        ours = keep_mask(delta, k).numpy()
        assert (ours == official_keep(delta.numpy(), k)).all(), (n, k, seed)
        # ... and torch.quantile itself, as the official code calls it.
        official = delta >= torch.quantile(delta, 1 - k, dim=0, keepdim=True)
        assert torch.equal(torch.from_numpy(ours), official)


def test_kept_counts_quantile_vs_exact_k():
    """Distinct values, k = 0.4: quantile keeps floor(k(N−1)) + 1, exact_k ceil(kN): one more when N ≡ 3 (mod 5)."""
    got = {n: (int(keep_mask(distinct(n), 0.4).sum()), int(keep_mask(distinct(n), 0.4, "exact_k").sum()))
           for n in (3, 8, 10, 13)}
    assert got == {3: (1, 2), 8: (3, 4), 10: (4, 4), 13: (5, 6)}
    for n in range(1, 101):
        q, e = int(keep_mask(distinct(n, 3), 0.4).sum()), int(keep_mask(distinct(n, 3), 0.4, "exact_k").sum())
        assert e == n_keep(n, 0.4) == math.ceil(round(0.4 * n, 9))
        ideal = math.floor(0.4 * (n - 1)) + 1
        assert q in (ideal, ideal - 1), n  # the float32 rank 0.6·(N − 1) can land just above an integer
        if q == ideal:
            assert e - q == (1 if n % 5 == 3 else 0), n


def test_ties_at_the_threshold_are_all_kept_by_quantile_and_cut_by_position_in_exact_k():
    delta = torch.tensor([1.0, 5.0, 2.0, 2.0, 2.0, 0.0])
    # rank 0.5·5 = 2.5 between the sorted 2.0 and 2.0: threshold 2.0, all three 2.0s kept.
    assert keep_mask(delta, 0.5).tolist() == [False, True, True, True, True, False]
    assert keep_mask(delta, 0.5).tolist() == official_keep(delta.numpy(), 0.5).tolist()
    # exact_k: ceil(0.5·6) = 3: 5.0, then the first two 2.0s.
    assert keep_mask(delta, 0.5, "exact_k").tolist() == [False, True, True, True, False, False]
    assert keep_mask(torch.full((7,), 3.0), 0.4).all()  # all tied: all kept


@pytest.mark.parametrize("rule", ["quantile", "exact_k"])
def test_non_finite_delta_is_never_kept_and_counted(rule):
    delta = distinct(13, 5)
    delta[[2, 7]] = float("nan")
    delta[4] = float("inf")
    delta[9] = -float("inf")
    sel = select_tokens(delta, 0.4, rule=rule)
    finite = torch.isfinite(delta)
    assert not sel.keep_N[~finite].any() and sel.nonfinite_global == 4
    # On the finite values the rule is unchanged (9 finite: quantile keeps floor(0.4·8)+1 = 4, exact_k 4).
    assert torch.equal(sel.keep_N[finite], keep_mask(delta[finite], 0.4, rule))
    assert int(sel.keep_N.sum()) == 4 and sel.total_global == 13
    # The official formula on the same ΔL: a NaN threshold, nothing kept (and a NaN loss downstream).
    assert not official_keep(delta.numpy(), 0.4).any()
    all_nan = select_tokens(torch.full((5,), float("nan")), 0.4, rule=rule)
    assert not all_nan.keep_N.any() and math.isnan(all_nan.threshold) and all_nan.nonfinite_global == 5


def test_threshold_groups_select_each_group_on_its_own():
    """One micro-batch of 8 sequences in groups of 3 = three thresholds (3 + 3 + 2 sequences)."""
    g = torch.Generator().manual_seed(4)
    lengths = [5, 3, 7, 4, 6, 2, 8, 3]
    mask = torch.zeros(8, 10, dtype=torch.bool)
    for r, n in enumerate(lengths):
        mask[r, 1:1 + n] = True
    groups = threshold_groups(mask, 3)
    sizes = [sum(lengths[0:3]), sum(lengths[3:6]), sum(lengths[6:8])]
    assert groups.tolist() == [0] * sizes[0] + [1] * sizes[1] + [2] * sizes[2]
    assert threshold_groups(mask, None) is None
    delta = torch.randn(sum(lengths), generator=g)
    sel = select_tokens(delta, 0.4, groups_N=groups)
    expected = torch.cat([keep_mask(part, 0.4) for part in torch.split(delta, sizes)])
    assert torch.equal(sel.keep_N, expected)
    assert sel.kept_global == sum(math.floor(0.4 * (s - 1)) + 1 for s in sizes)  # 15, 12, 11 tokens: 6 + 5 + 5
    whole = select_tokens(delta, 0.4)
    assert torch.equal(whole.keep_N, keep_mask(delta, 0.4))


def test_exact_k_keeps_exactly_ceil_kn():
    for n in (1, 7, 10, 64, 257):
        for fraction in (0.1, 0.4, 0.5, 1.0):
            delta = distinct(n, n)
            keep = keep_mask(delta, fraction, "exact_k")
            assert int(keep.sum()) == n_keep(n, fraction)
            if 0 < n_keep(n, fraction) < n:
                assert delta[keep].min() >= delta[~keep].max()
    assert n_keep(10, 0.4) == 4 and n_keep(12, 0.4) == 5 and n_keep(3, 0.1) == 1 and n_keep(0, 0.4) == 0


def test_selection_is_detached_and_empty_is_fine():
    delta = torch.randn(5, requires_grad=True)
    assert not select_tokens(delta, 0.4).keep_N.requires_grad
    for rule in ("quantile", "exact_k"):
        sel = select_tokens(torch.zeros(0), 0.4, rule=rule)
        assert sel.keep_N.shape == (0,) and sel.kept_global == 0 and math.isnan(sel.threshold)


@pytest.mark.parametrize("args,match", [
    ((0.0, "local"), "filter_fraction"), ((1.5, "local"), "filter_fraction"), ((0.4, "batch"), "selection.scope"),
    ((0.4, "local", "top_k"), "selection.rule 'top_k'"), ((0.4, "local", "quantile", 0), "threshold_group"),
    ((0.4, "global", "quantile", 5), "threshold_group splits"),
])
def test_bad_settings_are_one_line_errors(args, match):
    with pytest.raises(ValueError, match=match) as err:
        check_selection(*args)
    assert "\n" not in str(err.value)
    if len(args) == 2:
        with pytest.raises(ValueError, match=match):
            select_tokens(torch.randn(4), *args)
