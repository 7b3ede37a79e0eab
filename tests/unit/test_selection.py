"""AdaSPEC selection (local scope, single process): exact counts, ties, rounding, errors.
The global scope under a real 2-rank gloo run is in tests/distributed/test_train_selection.py."""
from __future__ import annotations

import pytest
import torch

from adaspec_dist.distill.selection import n_keep, select_tokens, top_fraction_mask


@pytest.mark.parametrize("n", [1, 7, 10, 64, 257])
@pytest.mark.parametrize("fraction", [0.1, 0.4, 0.5, 1.0])
def test_keeps_exactly_the_top_fraction(n, fraction):
    g = torch.Generator().manual_seed(n)
    delta = torch.randn(n, generator=g)
    keep = top_fraction_mask(delta, fraction)
    k = n_keep(n, fraction)
    assert int(keep.sum()) == k
    # Every kept value is >= every dropped value.
    if 0 < k < n:
        assert delta[keep].min() >= delta[~keep].max()
    sel = select_tokens(delta, fraction, "local")
    assert torch.equal(sel.keep_N, keep) and sel.kept_global == k and sel.total_global == n
    if k:
        assert sel.threshold == float(delta[keep].min())


def test_rounding_rule_is_ceil_without_float_noise():
    assert n_keep(10, 0.4) == 4          # 0.4*10 = 4.000000000000001 in floats
    assert n_keep(12, 0.4) == 5          # ceil(4.8)
    assert n_keep(3, 0.1) == 1           # at least one kept token
    assert n_keep(0, 0.4) == 0


def test_ties_broken_by_earlier_position():
    delta = torch.tensor([1.0, 5.0, 2.0, 2.0, 2.0, 0.0])
    keep = top_fraction_mask(delta, 0.5)  # 3 kept: 5.0, then the first two 2.0s
    assert keep.tolist() == [False, True, True, True, False, False]


def test_selection_is_detached_and_empty_is_fine():
    delta = torch.randn(5, requires_grad=True)
    assert not select_tokens(delta, 0.4).keep_N.requires_grad
    sel = select_tokens(torch.zeros(0), 0.4)
    assert sel.keep_N.shape == (0,) and sel.kept_global == 0


@pytest.mark.parametrize("fraction,scope,match", [(0.0, "local", "filter_fraction"), (1.5, "local", "filter_fraction"),
                                                  (0.4, "batch", "selection_scope")])
def test_bad_fraction_or_scope_is_a_one_line_error(fraction, scope, match):
    with pytest.raises(ValueError, match=match) as err:
        select_tokens(torch.randn(4), fraction, scope)
    assert "\n" not in str(err.value)
