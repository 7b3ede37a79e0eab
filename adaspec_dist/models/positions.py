"""A model's position limit, and the one refusal of inputs past it.

Contract: ``position_limit(model)`` -> ``max_position_embeddings`` of an HF model (or of a
tensor-parallel target's HF config, ``model.model.hf_config``), None when unknown.
``check_length(model, length, what=..., whose=...)`` raises one line —
``{what} has {length} tokens, past {whose}'s max_position_embeddings ({limit}); set
data.max_length <= {limit}`` — when ``length`` exceeds it. Inputs are refused, never cut: the
logits past the limit mean nothing, and cutting would change what is cached or measured without
a word. The cache job, the generate job and the evaluation use it.
"""
from __future__ import annotations

from typing import Any


def position_limit(model: Any) -> int | None:
    """``max_position_embeddings`` of an HF model or of a TP target's HF config; None if unknown."""
    for conf in (getattr(model, "config", None), getattr(getattr(model, "model", None), "hf_config", None)):
        limit = getattr(conf, "max_position_embeddings", None)
        if isinstance(limit, int) and limit > 0:
            return limit
    return None


def check_length(model: Any, length: int, *, what: str = "a sequence", whose: str = "the target") -> None:
    """Refuse ``length`` positions past ``model``'s limit (module contract)."""
    limit = position_limit(model)
    if limit is not None and length > limit:
        raise ValueError(f"{what} has {length} tokens, past {whose}'s max_position_embeddings ({limit}); "
                         f"set data.max_length <= {limit}")
