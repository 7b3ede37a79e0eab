"""Logits where they are needed: ``masked_logits(model, input_ids, attention_mask, mask) -> (N, V)``,
the model's logits at the positions ``mask`` selects, row-major (``full_logits[mask]``).

When the model's forward takes ``logits_to_keep`` (most HF causal LMs since transformers 4.50; also
through a DeepSpeed engine, which passes keyword arguments on), the head runs only at the sequence
positions some row selects. A real vocabulary's head is most of a small draft's cost and a large
share of a target's, and a chat template's prompt (system turn included) is often half the sequence:
the cache job and every training step skip that work. Otherwise the full logits are computed and
indexed. Either way the result equals ``full_logits[mask]`` (tests/unit/test_supervised_logits.py).
"""
from __future__ import annotations

import inspect

from torch import Tensor


def takes_logits_to_keep(model) -> bool:
    """Whether the HF model (or the one a DeepSpeed engine wraps) accepts ``logits_to_keep``."""
    module = getattr(model, "module", model)
    try:
        return "logits_to_keep" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def masked_logits(model, input_ids: Tensor, attention_mask: Tensor, mask: Tensor, **kwargs) -> Tensor:
    """(N, V) logits at ``mask`` (see the module contract); ``kwargs`` go to the forward."""
    mask = mask.to(input_ids.device)
    if takes_logits_to_keep(model):
        keep = mask.any(dim=0).nonzero().squeeze(1)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, **kwargs).logits
        return logits[mask[:, keep]]
    return model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits[mask]
