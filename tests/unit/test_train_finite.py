"""distill/finite.py on a stub run: a NaN/inf loss or gradient norm is one line naming the step and the shards."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from adaspec_dist.distill.finite import NonFiniteError, check_grad_norm, check_loss
from adaspec_dist.distill.state import Progress


def _run(fp16: bool = False):
    from adaspec_dist.distill.batches import TokenStream

    stream = TokenStream([object()] * 4, batch_size=2)
    return SimpleNamespace(stream=stream, progress=Progress(step=6), ps=SimpleNamespace(dp_size=1),
                           cfg=SimpleNamespace(cache_dir=None), engine=SimpleNamespace(fp16_enabled=lambda: fp16))


def test_finite_values_pass():
    batch = SimpleNamespace(seq_ids=torch.tensor([0, 3]))
    check_loss(_run(), batch, torch.tensor(1.5))
    check_grad_norm(_run(), batch, 3.0)
    check_grad_norm(_run(), batch, None)  # not known: nothing to check


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_grad_norm_names_the_step_and_the_examples(value):
    batch = SimpleNamespace(seq_ids=torch.tensor([0, 3]))
    with pytest.raises(NonFiniteError, match=rf"^step 7: the global gradient norm is {value} \(micro-batch from "
                                             r"data example 0, example 3\)"):
        check_grad_norm(_run(), batch, value)
    check_grad_norm(_run(fp16=True), batch, value)  # fp16: the loss scaler skips the step itself


def test_a_nan_loss_is_refused_before_backward():
    with pytest.raises(NonFiniteError, match="step 7: the loss is nan"):
        check_loss(_run(), SimpleNamespace(seq_ids=torch.tensor([1])), torch.tensor(float("nan")))
