"""The model interface the decoder drives, and its adapter for Hugging Face causal LMs.

Contract
--------
The decoder and ``alpha_logits`` never call a model directly: they call ``CausalLM.forward``.

* :class:`CausalLM` -- the four members every model implements:

  * ``vocab_width`` -- number of logit columns (may include padded ids);
  * ``new_cache()`` -- an empty KV cache object supporting ``batch_select_indices(rows)``;
  * ``forward(input_ids_BQ, position_ids_BQ, attention_mask_B1QK, cache, logits_to_keep)``
    -> logits (B, logits_to_keep or Q, V), appending Q slots to ``cache``;
    ``attention_mask`` is boolean (True = attend), K = cached slots + Q;
  * ``device``.

* :class:`ShardedVocabLM` -- a ``CausalLM`` whose ``forward`` returns only THIS rank's slice
  of the vocabulary (a tensor-parallel target, ``models.tp_target.TPTargetLM``;
  ``vocab_width`` is the full, unsharded width). Full-vocabulary softmaxes are impossible on
  one rank, so it also supplies the three steps that need them, each returning the same
  value on every rank of its group:

  * ``verify_logits(logits_BG1V, draft_probs_BGV, draft_tokens_BG, vocab, sampling, generator)``
    -> ``(accepted_len_B, next_token_B)``: replaces ``probs_from_logits`` + ``verify.verify``;
  * ``next_token(logits_BV, vocab, sampling, generator)`` -> ``(B,)``: the autoregressive
    baseline's pick (replaces ``probs_from_logits`` + sample / argmax);
  * ``overlap(logits_NV, draft_probs_NV, vocab, sampling)`` -> ``(N,)``: Σ_x min(p, q), the
    term of α_logits.

  ``vocab`` is the decoder's real vocabulary (ids at or above it never win); ``sampling`` a
  ``SamplingConfig``. :func:`is_sharded_vocab` is the one capability check callers use.

models/ sits below speculative/ and never imports it: ``TPTargetLM`` satisfies these
protocols structurally (tests/unit/test_lm_protocol.py checks its members and signatures).

Legend: B rows, Q new tokens, K key slots, V vocabulary width (this rank's slice for a
``ShardedVocabLM``), G gamma, N positions.
"""
from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

import torch

from adaspec_dist.speculative.sampling import SamplingConfig


@runtime_checkable
class CausalLM(Protocol):
    vocab_width: int
    device: torch.device

    def new_cache(self) -> Any: ...

    def forward(self, input_ids_BQ: torch.Tensor, position_ids_BQ: torch.Tensor,
                attention_mask_B1QK: torch.Tensor, cache: Any, logits_to_keep: int = 0) -> torch.Tensor: ...


@runtime_checkable
class ShardedVocabLM(CausalLM, Protocol):
    """A ``CausalLM`` with vocab-parallel logits (see the module doc)."""

    def verify_logits(self, logits_BG1V: torch.Tensor, draft_probs_BGV: torch.Tensor,
                      draft_tokens_BG: torch.Tensor, vocab: int, sampling: SamplingConfig,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def next_token(self, logits_BV: torch.Tensor, vocab: int, sampling: SamplingConfig,
                   generator: torch.Generator | None = None) -> torch.Tensor: ...

    def overlap(self, logits_NV: torch.Tensor, draft_probs_NV: torch.Tensor, vocab: int,
                sampling: SamplingConfig) -> torch.Tensor: ...


def is_sharded_vocab(lm: Any) -> bool:
    """True iff ``lm`` returns vocab-sharded logits and supplies the steps that need all of them."""
    return isinstance(lm, ShardedVocabLM)


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
    if isinstance(model, CausalLM):
        return model
    return HFCausalLM(model)
