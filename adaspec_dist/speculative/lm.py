"""The model interface the decoder drives, and its adapter for Hugging Face causal LMs.

The decoder never calls a model directly: it calls ``CausalLM.forward``. A tensor-parallel
target (models/tensor_parallel.py) plugs in by implementing the same four members:

* ``vocab_width`` -- number of logit columns (may include padded ids);
* ``new_cache()`` -- an empty KV cache object supporting ``batch_select_indices(rows)``;
* ``forward(input_ids_BQ, position_ids_BQ, attention_mask_B1QK, cache, logits_to_keep)``
  -> logits (B, logits_to_keep or Q, V), appending Q slots to ``cache``;
  ``attention_mask`` is boolean (True = attend), K = cached slots + Q;
* ``device``.

Legend: B rows, Q new tokens, K key slots, V vocabulary width.
"""
from __future__ import annotations

import inspect
from typing import Any, Protocol

import torch


class CausalLM(Protocol):
    vocab_width: int
    device: torch.device

    def new_cache(self) -> Any: ...

    def forward(self, input_ids_BQ: torch.Tensor, position_ids_BQ: torch.Tensor,
                attention_mask_B1QK: torch.Tensor, cache: Any, logits_to_keep: int = 0) -> torch.Tensor: ...


class HFCausalLM:
    """Adapter: a ``transformers`` causal LM (GPTNeoX, Llama, ...) driven with explicit masks."""

    def __init__(self, model):
        self.model = model.eval()
        self.vocab_width = int(model.get_output_embeddings().weight.shape[0])
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        # eager attention adds a float mask; sdpa/flex take the boolean one as-is.
        self._additive = getattr(model.config, "_attn_implementation", "sdpa") == "eager"
        # transformers >= 5.2x names the KV cache argument `cache`; older releases `past_key_values`.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    @torch.inference_mode()
    def forward(self, input_ids_BQ, position_ids_BQ, attention_mask_B1QK, cache, logits_to_keep: int = 0):
        mask = attention_mask_B1QK
        if self._additive:
            mask = torch.zeros(mask.shape, dtype=self.dtype, device=mask.device).masked_fill_(
                ~mask, torch.finfo(self.dtype).min)
        out = self.model(input_ids=input_ids_BQ, position_ids=position_ids_BQ, attention_mask=mask,
                         use_cache=True, **{self._cache_kw: cache}, logits_to_keep=logits_to_keep)
        return out.logits


def as_causal_lm(model) -> CausalLM:
    """Wrap an HF model; pass through anything already implementing ``CausalLM``."""
    if hasattr(model, "new_cache") and hasattr(model, "vocab_width"):
        return model
    return HFCausalLM(model)
