"""A padded KV cache whose rows advance by different amounts: rejected slots become holes.

Why holes instead of cropping: a batch of rows accepts different numbers of drafted tokens
each step. Cropping a shared cache to the slowest row would throw away (and recompute) the
other rows' accepted tokens; per-row caches would lose batching. Instead every step appends
the same number of slots to every row, and the slots a row rejected are marked invalid in a
per-row ``valid`` mask. The models get an explicit 4D attention mask (a query attends to the
valid slots before it and to itself) and explicit ``position_ids`` (the row's real token
positions), so a hole is invisible: the attention weights on it are exactly zero and positions
(hence rotary phases) never count holes. A query always sees at least itself, so no attention
row is fully masked (which would produce NaN in some SDPA kernels).

Contract
--------
* ``SlotCache(model_cache, batch, device)``: ``valid_BS`` starts empty (S = 0).
* ``attention_mask(new_valid_BQ)`` -> bool (B, 1, Q, S + Q) for a forward that appends Q slots.
* ``append(new_valid_BQ)`` records those Q slots after the forward.
* ``keep_last(keep_BQ)`` turns some of the last Q slots into holes (rejections).
* ``select_rows(rows)`` keeps a subset of rows (finished rows drop out of the batch).
* ``compact()`` drops slots that are holes in every row (optional, saves memory and time).

The cache object itself is whatever the model adapter made (an HF ``DynamicCache``); this
class only needs ``batch_select_indices`` and, for ``compact``, its ``layers[i].keys/values``.

Legend: B rows, S cached slots, Q slots appended by one forward.
"""
from __future__ import annotations

from typing import Any

import torch


class SlotCache:
    def __init__(self, model_cache: Any, batch: int, device: torch.device | str):
        self.cache = model_cache
        self.valid_BS = torch.zeros((batch, 0), dtype=torch.bool, device=device)

    @property
    def num_slots(self) -> int:
        return self.valid_BS.shape[1]

    def attention_mask(self, new_valid_BQ: torch.Tensor) -> torch.Tensor:
        """Boolean (B, 1, Q, S+Q): True = may attend."""
        B, Q = new_valid_BQ.shape
        past = self.valid_BS[:, None, :].expand(B, Q, self.num_slots)
        causal = torch.ones((Q, Q), dtype=torch.bool, device=new_valid_BQ.device).tril()
        eye = torch.eye(Q, dtype=torch.bool, device=new_valid_BQ.device)
        new = (causal & new_valid_BQ[:, None, :]) | eye
        return torch.cat([past, new], dim=2).unsqueeze(1)

    def append(self, new_valid_BQ: torch.Tensor) -> None:
        self.valid_BS = torch.cat([self.valid_BS, new_valid_BQ], dim=1)

    def keep_last(self, keep_BQ: torch.Tensor) -> None:
        Q = keep_BQ.shape[1]
        self.valid_BS[:, -Q:] &= keep_BQ

    def select_rows(self, rows: torch.Tensor) -> None:
        if self.num_slots:
            self.cache.batch_select_indices(rows)
        self.valid_BS = self.valid_BS[rows]

    def compact(self) -> int:
        """Drop slot columns that are holes in every row; returns how many were dropped (host sync)."""
        used = self.valid_BS.any(dim=0)
        dropped = int((~used).sum())
        if dropped == 0:
            return 0
        cols = used.nonzero().squeeze(-1)
        for layer in self.cache.layers:
            if getattr(layer, "keys", None) is None:   # a layer not written yet
                continue
            layer.keys = layer.keys.index_select(-2, cols)
            layer.values = layer.values.index_select(-2, cols)
        self.valid_BS = self.valid_BS[:, cols]
        return dropped
