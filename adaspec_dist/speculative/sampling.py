"""Turning logits into the distributions that speculative decoding compares.

Contract
--------
* ``probs_from_logits(logits_XV, temperature, top_p)`` -> float32 probabilities of the same
  shape. The SAME function is applied to the target's logits (p) and the draft's (q), so the
  lossless guarantee holds for the *tempered / nucleus* target distribution, which is what
  plain decoding with those settings samples from.
* ``temperature == 0`` means greedy: the distribution is the one-hot of the argmax (ties go to
  the lowest id, like ``torch.argmax``). Rejection sampling on one-hot p and q is exactly
  "accept iff the draft's argmax equals the target's", so greedy needs no separate code path.
* ``top_p < 1`` keeps the smallest set of highest-probability ids whose mass reaches top_p
  (the top id always survives) and renormalises.
* ``sample(probs_XV, generator)`` -> ids ``X`` (one draw per row, ``torch.multinomial``; rows
  need not be normalised).
* ``counter_uniforms(keys_B, counters_B)`` -> float64 uniforms in (0, 1), a pure function of
  (key, counter) (a 32-bit integer hash, the same on every device); ``sample_with_uniforms(probs_BV,
  u_B)`` -> the inverse-CDF draw. Together they make a row's sample depend on its own key and
  logits only, never on the batch it shares or on a generator's state (``generate``'s per-sample
  streams; ``decoder.autoregressive_generate(row_keys=...)``).
* ``real_vocab_size`` decides how many logit columns are real tokens when a model pads its
  embedding matrix (e.g. 50277 real ids in a 50304-wide head).

Legend: X = any leading batch shape, V = vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(kw_only=True)
class SamplingConfig:
    temperature: float = 0.0
    """0 = greedy (argmax); > 0 = sample from softmax(logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]; 1 disables it. Applied to target and draft alike."""

    def validate(self) -> None:
        # Written as "not >= 0" so that NaN (which fails every comparison) is refused too.
        if not 0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature {self.temperature} must be a finite number >= 0 (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p {self.top_p} must be in (0, 1]; use 1.0 to disable nucleus sampling")


def probs_from_logits(logits_XV: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0) -> torch.Tensor:
    """Tempered, nucleus-filtered probabilities (float32); one-hot argmax when temperature == 0."""
    logits = logits_XV.float()
    if temperature == 0.0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        probs = _nucleus(probs, top_p)
    return probs


def _nucleus(probs_XV: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_p, order = probs_XV.sort(dim=-1, descending=True)
    # Mass strictly before each id: an id is kept while the mass before it is < top_p, so the
    # top id is always kept and the kept set is the smallest one reaching top_p.
    before = sorted_p.cumsum(-1) - sorted_p
    keep_sorted = before < top_p
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    kept = probs_XV * keep
    return kept / kept.sum(-1, keepdim=True)


def sample(probs_XV: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One id per row of ``probs_XV`` (weights need not sum to 1)."""
    flat = probs_XV.reshape(-1, probs_XV.shape[-1])
    ids = torch.multinomial(flat, 1, generator=generator)
    return ids.reshape(probs_XV.shape[:-1])


_M32 = 0xFFFFFFFF
_MUL = 0x45D9F3B  # < 2**31: a product of it and a 32-bit value fits in int64 (no overflow anywhere)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply) of int64 values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _MUL) & _M32
    x = x ^ (x >> 16)
    x = (x * _MUL) & _M32
    return x ^ (x >> 16)


def counter_uniforms(keys_B: torch.Tensor, counters_B: torch.Tensor) -> torch.Tensor:
    """One float64 uniform in (0, 1) per row, a pure function of (key, counter): 53 bits from two
    hashes of the row's 32-bit key and the counter (e.g. the index of the token being drawn)."""
    k = keys_B.long() & _M32
    c = (counters_B.long() * 2) & _M32
    hi = _mix32(k ^ _mix32(c))
    lo = _mix32(k ^ _mix32((c + 1) & _M32))
    return ((hi << 21) | (lo >> 11)).double() / 2.0 ** 53 + 2.0 ** -54


def sample_with_uniforms(probs_BV: torch.Tensor, u_B: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw per row: the first id whose cumulative mass reaches ``u * total`` (weights
    need not sum to 1; an id of zero mass is never drawn)."""
    cdf = probs_BV.double().cumsum(-1)
    x = (u_B.to(cdf.device) * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, x).squeeze(-1).clamp_max(probs_BV.shape[-1] - 1)


# Heads are commonly padded to a multiple of 64 or 128 for matmul efficiency (Pythia: 50277
# real ids, 50304 columns); a larger gap means the two models were built for different tokenizers.
MAX_VOCAB_PADDING = 128


def real_vocab_size(target_width: int, draft_width: int, tokenizer_len: int | None = None) -> int:
    """The number of real token ids shared by target and draft; columns >= it are ignored.

    With a tokenizer, the real vocabulary is ``len(tokenizer)`` and both heads must be at
    least that wide. Without one it is the smaller head width, and the widths may differ by
    padding only (< MAX_VOCAB_PADDING columns).
    """
    if tokenizer_len is not None:
        small = min(target_width, draft_width)
        if small < tokenizer_len:
            raise ValueError(f"a model's vocabulary ({small} logits) is smaller than the tokenizer's "
                             f"({tokenizer_len} ids); target and draft must use this tokenizer")
        return tokenizer_len
    if abs(target_width - draft_width) >= MAX_VOCAB_PADDING:
        raise ValueError(f"target vocabulary ({target_width}) and draft vocabulary ({draft_width}) differ by more "
                         f"than padding; use a draft trained with the target's tokenizer")
    return min(target_width, draft_width)
