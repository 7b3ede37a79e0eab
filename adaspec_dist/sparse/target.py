"""Sparse forms of a teacher's next-token distribution: top-k and importance-sampled ids.

Contract
--------
* :class:`SparseTarget` holds, for ``N`` supervised positions (packed row-major), ``K`` vocabulary
  ids per row, the teacher's log-probabilities at those ids **normalised over the full
  vocabulary** (so for ``topk`` the tail mass ``1 - sum(exp(logp))`` is implied), and for
  ``sampled`` the weight of each id.
* ``topk_targets(logits_NV, k)``: the ``k`` most likely ids, sorted by decreasing probability.
  ``weights`` is ``None``.
* ``sampled_targets(logits_NV, draws, generator, temperature)``: ``draws`` ids drawn i.i.d.
  per row from the proposal ``q = softmax(logits / temperature)``; duplicates are merged, so a
  row holds the unique ids (sorted by id) padded to the widest row with id 0, weight 0.
  At ``temperature == 1`` (the proposal is the teacher ``p``) ``weight = count / draws``,
  which is exactly unbiased: ``E[sum_i w_i f(x_i)] = E_p[f]`` for any ``f``.
  At another temperature the weights are self-normalised importance weights
  ``w_i ∝ count_i * p(x_i) / q(x_i)`` (rows sum to 1): consistent, and unbiased only in the
  limit of many draws. Padding entries always have weight 0 (and a finite ``logp``).
  Sampled targets also carry ``counts`` (draws per id) and ``plogp = sum_i w_i logp_i`` per row
  (an unbiased estimate of ``-H(p)``); a compact cache stores ids, counts and ``plogp`` and
  hands the trainer ``logp = None`` (forward KL only needs ``plogp``: ``sparse.divergence``).
* Sampling uses inverse-CDF lookup of uniforms drawn on the CPU from ``generator``, so the
  same seed yields the same ids on any device, and a vocab-parallel (tensor-parallel)
  implementation can reproduce it from per-shard cumulative sums without gathering ``V``.
* ``encode_values`` / ``decode_values`` turn log-probs into the stored value dtype
  (``fp16``, ``bf16`` or ``int8``: 8-bit square-root companded ``-logp`` on ``[0, 24]`` nats;
  worst-case absolute error ``sqrt(24 * |logp|) / 255`` nats, i.e. 0.6 % of probability
  at p = 0.9, 1.9 % at p = 0.37; values below ``-24`` are clipped).

Shapes: ``N`` supervised positions, ``V`` vocabulary, ``K`` ids kept per position.

The encoders read ``logits_NV`` only through ``.shape`` and row slices ``logits_NV[rows]``, chunk
by chunk: lazy logits (``models.head.ChunkedLogits``, the head applied per chunk) give the same
output without N × V ever existing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch

Scheme = Literal["topk", "sampled"]
SCHEMES: tuple[Scheme, ...] = get_args(Scheme)
ValueDtype = Literal["fp16", "bf16", "int8"]
VALUE_DTYPES: tuple[ValueDtype, ...] = get_args(ValueDtype)
INT8_LOGP_RANGE = 24.0
"""``int8`` values cover log-probs in ``[-24, 0]`` (p >= 4e-11); lower ones are clipped."""


@dataclass
class SparseTarget:
    """Packed sparse teacher distributions: one row per supervised position."""

    ids: torch.Tensor  # (N, K) int64
    logp: torch.Tensor | None  # (N, K) float32, log-probs over the FULL vocabulary; None: see plogp
    weights: torch.Tensor | None  # (N, K) float32 rows summing to 1 (sampled) | None (topk)
    scheme: str  # "topk" | "sampled"
    plogp: torch.Tensor | None = None
    """(N,) sampled only: ``sum_i w_i * logp_i``, an unbiased estimate of ``sum_x p log p = -H(p)``.
    A compact cache (format 2, ``store_logp: false``) keeps only this number per row instead of
    ``logp``: forward KL needs nothing else (``sparse.divergence``)."""
    counts: torch.Tensor | None = None
    """(N, K) int64 sampled only: draws per id (0 on padding); what a compact cache stores."""

    def __post_init__(self) -> None:
        assert self.scheme in SCHEMES, self.scheme
        assert self.ids.dim() == 2, self.ids.shape
        if self.logp is None:
            assert self.scheme == "sampled" and self.plogp is not None, "a target without logp needs plogp"
        else:
            assert self.ids.shape == self.logp.shape, (self.ids.shape, self.logp.shape)
        assert (self.weights is None) == (self.scheme == "topk")

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    def _map(self, fn) -> "SparseTarget":
        opt = lambda t: None if t is None else fn(t)  # noqa: E731
        return SparseTarget(ids=fn(self.ids), logp=opt(self.logp), weights=opt(self.weights), scheme=self.scheme,
                            plogp=opt(self.plogp), counts=opt(self.counts))

    def __getitem__(self, index: Any) -> "SparseTarget":
        """Row selection (slice, index tensor or bool mask); always returns a SparseTarget."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self._map(lambda t: t[index])

    def to(self, device: Any) -> "SparseTarget":
        return self._map(lambda t: t.to(device))

    def tail_mass(self) -> torch.Tensor:
        """(N,) teacher mass outside the kept ids (top-k only; clamped at 0 against rounding)."""
        assert self.scheme == "topk", "tail mass is defined for top-k targets"
        return (1.0 - self.logp.exp().sum(-1)).clamp_min(0.0)

    @staticmethod
    def cat(parts: list["SparseTarget"], scheme: str | None = None) -> "SparseTarget":
        """Concatenate rows; sampled rows of different widths are padded (id 0, weight 0, count 0)."""
        parts = [p for p in parts]
        if not parts:
            assert scheme is not None, "scheme needed to concatenate zero targets"
            z = torch.zeros(0, 1)
            return SparseTarget(ids=z.long(), logp=z, weights=None if scheme == "topk" else z.clone(),
                                scheme=scheme)
        scheme = parts[0].scheme
        width = max(p.k for p in parts)
        if scheme == "topk" and any(p.k != width for p in parts):
            raise ValueError("cannot concatenate top-k targets of different k")

        def padded(p: "SparseTarget", t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else torch.nn.functional.pad(t, (0, width - p.k))

        def joined(values: list) -> torch.Tensor | None:  # a field some parts lack is dropped
            return None if any(v is None for v in values) else torch.cat(values)

        # Padding log-prob: a copy of the row's first value keeps everything finite.
        logp = [None if p.logp is None else torch.cat([p.logp, p.logp[:, :1].expand(-1, width - p.k)], 1)
                if width > p.k else p.logp for p in parts]
        return SparseTarget(ids=torch.cat([padded(p, p.ids) for p in parts]), logp=joined(logp),
                            weights=joined([padded(p, p.weights) for p in parts]), scheme=scheme,
                            plogp=joined([p.plogp for p in parts]), counts=joined([padded(p, p.counts) for p in parts]))


def _row_chunks(n: int, v: int, max_elems: int):
    step = max(1, max_elems // max(v, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def topk_targets(logits_NV: torch.Tensor, k: int, *, max_elems: int = 1 << 24) -> SparseTarget:
    """The ``k`` most likely ids per row with fp32 full-vocabulary log-probs.

    Rows are processed in chunks of at most ``max_elems`` fp32 elements so a long batch at a
    large vocabulary does not materialise a second N x V fp32 tensor.
    """
    n, v = logits_NV.shape
    if not 1 <= k <= v:
        raise ValueError(f"top_k={k} must be between 1 and the vocabulary size {v}")
    ids, logp = [], []
    for rows in _row_chunks(n, v, max_elems):
        lp_nv = torch.log_softmax(logits_NV[rows].float(), dim=-1)
        val, idx = lp_nv.topk(k, dim=-1, sorted=True)
        ids.append(idx)
        logp.append(val)
    if not ids:
        return SparseTarget(ids=torch.zeros(0, k, dtype=torch.long), logp=torch.zeros(0, k),
                            weights=None, scheme="topk")
    return SparseTarget(ids=torch.cat(ids).long(), logp=torch.cat(logp), weights=None, scheme="topk")


def merge_draws(draws_ND: torch.Tensor, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise unique ids and their counts, padded: -> ids (N, U) int64, counts (N, U) int64.

    Ids in a row are sorted ascending; padding has id 0 and count 0.
    """
    n, d = draws_ND.shape
    if n == 0:
        return torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long)
    rows = torch.arange(n, device=draws_ND.device).unsqueeze(1)
    keys, counts = torch.unique(rows * vocab + draws_ND.long(), sorted=True, return_counts=True)
    row_of = keys // vocab
    per_row = torch.bincount(row_of, minlength=n)  # (N,) unique ids per row
    starts = torch.cumsum(per_row, 0) - per_row
    col = torch.arange(keys.numel(), device=keys.device) - starts[row_of]
    width = int(per_row.max())
    ids = torch.zeros(n, width, dtype=torch.long, device=keys.device)
    cnt = torch.zeros(n, width, dtype=torch.long, device=keys.device)
    ids[row_of, col] = keys % vocab
    cnt[row_of, col] = counts
    return ids, cnt


def draw_uniforms(n: int, draws: int, generator: torch.Generator) -> torch.Tensor:
    """(N, D) float64 uniforms on the CPU: the only randomness of the sampled scheme."""
    return torch.rand(n, draws, generator=generator, dtype=torch.float64)


def sampled_targets(logits_NV: torch.Tensor, draws: int, generator: torch.Generator,
                    temperature: float = 1.0, *, max_elems: int = 1 << 24) -> SparseTarget:
    """``draws`` ids per row from ``softmax(logits / temperature)``, merged with weights (see module doc)."""
    n, v = logits_NV.shape
    if draws < 1:
        raise ValueError(f"draws={draws} must be at least 1")
    if temperature <= 0:
        raise ValueError(f"sampling temperature {temperature} must be > 0")
    u_ND = draw_uniforms(n, draws, generator)
    parts = []
    for rows in _row_chunks(n, v, max_elems):
        z_nv = logits_NV[rows].float()  # one head call per chunk when the logits are lazy
        lp_nv = torch.log_softmax(z_nv, dim=-1)
        lq_nv = lp_nv if temperature == 1.0 else torch.log_softmax(z_nv / temperature, -1)
        # Inverse CDF in float64: cumulative sums of 50k fp32 terms would drift.
        cdf_nv = torch.cumsum(lq_nv.double().exp(), dim=-1)
        u = u_ND[rows].to(cdf_nv.device) * cdf_nv[:, -1:]  # scale by the total to absorb rounding
        x_nd = torch.searchsorted(cdf_nv, u, right=True).clamp_max(v - 1)
        ids, counts = merge_draws(x_nd, v)
        logp = lp_nv.gather(1, ids)
        w = counts.float() / draws
        if temperature != 1.0:
            w = w * (logp - lq_nv.gather(1, ids)).exp()
            w = w / w.sum(-1, keepdim=True)
        parts.append(SparseTarget(ids=ids, logp=logp, weights=w, scheme="sampled", plogp=(w * logp).sum(-1),
                                  counts=counts))
    return SparseTarget.cat(parts, scheme="sampled")


# ----------------------------------------------------------------------------- stored values


def id_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned integer type that holds every id of the vocabulary."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def encode_values(logp: torch.Tensor, value_dtype: str) -> np.ndarray:
    """float32 log-probs -> the stored numpy array (bf16 is kept as its raw uint16 bits)."""
    logp = logp.detach().float().cpu()
    if value_dtype == "fp16":
        return logp.clamp_min(-65000.0).to(torch.float16).numpy()
    if value_dtype == "bf16":
        return logp.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    if value_dtype == "int8":
        x = (-logp).clamp(0.0, INT8_LOGP_RANGE) / INT8_LOGP_RANGE
        return torch.round(x.sqrt() * 255.0).to(torch.uint8).numpy()
    raise ValueError(f"value dtype '{value_dtype}' must be one of {VALUE_DTYPES}")


def decode_values(stored: np.ndarray, value_dtype: str) -> torch.Tensor:
    """Inverse of :func:`encode_values` -> float32 log-probs."""
    arr = torch.from_numpy(np.array(stored, copy=True))  # memmaps are read-only
    if value_dtype == "fp16":
        return arr.float()
    if value_dtype == "bf16":
        return arr.view(torch.int16).view(torch.bfloat16).float()
    if value_dtype == "int8":
        return -(arr.float() / 255.0).square() * INT8_LOGP_RANGE
    raise ValueError(f"value dtype '{value_dtype}' must be one of {VALUE_DTYPES}")
