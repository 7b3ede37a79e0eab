"""supervised_logits runs the head only where some row is supervised (logits_to_keep), and that is
exactly the full forward's logits at the supervised positions, gradients included."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from adaspec_dist.distill.objectives import supervised_logits
from adaspec_dist.models.logits import takes_logits_to_keep
from adaspec_dist.models.load import build_preset


class _FullLogitsOnly(torch.nn.Module):
    """The same model seen through a forward without logits_to_keep (the fallback path)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_head_only_at_supervised_positions_equals_the_full_forward():
    model = build_preset("tiny-llama", 97, seed=3)
    assert takes_logits_to_keep(model) and not takes_logits_to_keep(_FullLogitsOnly(model))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 97, (3, 12), generator=g)
    attn = torch.ones_like(ids)
    attn[2, 9:] = 0
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, 5:11] = True   # rows supervise different spans; positions 0..3 by none
    mask[1, 7:9] = True
    mask[2, 4:8] = True
    batch = SimpleNamespace(input_ids=ids, attention_mask=attn, loss_mask=mask)
    fast = supervised_logits(model, batch)
    fast.logsumexp(-1).sum().backward()
    grads_fast = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    full = supervised_logits(_FullLogitsOnly(model), batch)
    full.logsumexp(-1).sum().backward()
    assert fast.shape == full.shape == (12, 97)
    assert torch.allclose(fast, full, atol=1e-6)
    for a, p in zip(grads_fast, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)
