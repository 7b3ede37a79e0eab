"""Token batches without a cache: the data stream of ``sft`` and of the online teacher mode.

Contract: ``TokenStream`` has the CacheReader's iteration contract (see cache/reader.py) —
``len()`` equal on every dp rank, per-(seed, epoch) permutation cut into global batches of
``B·R`` sequences with rank r taking slice [rB, (r+1)B) (so the last batch may be empty),
``set_epoch``, ``state_dict``/``load_state_dict`` = (epoch, position) — and yields
``TokenBatch`` objects with the CacheBatch field names (``target``/``ref_loss`` are None).

Legend: B batch, T time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

IGNORE = -100


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # (B, T) int64, right-padded with 0
    attention_mask: torch.Tensor  # (B, T) int64
    loss_mask: torch.Tensor  # (B, T) bool: position t predicts token t+1, an answer token
    seq_ids: torch.Tensor  # (B,)
    target: None = None
    ref_loss: None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "TokenBatch":
        return TokenBatch(input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
                          loss_mask=self.loss_mask.to(device), seq_ids=self.seq_ids)


def collate(examples: Sequence) -> TokenBatch:
    """Right-pad ``TokenizedExample``-likes (input_ids, labels) into a TokenBatch."""
    b = len(examples)
    t = max((len(e.input_ids) for e in examples), default=0)
    ids = torch.zeros(b, t, dtype=torch.long)
    attn = torch.zeros(b, t, dtype=torch.long)
    mask = torch.zeros(b, t, dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        attn[i, :n] = 1
        labels = torch.tensor(e.labels, dtype=torch.long)
        mask[i, : n - 1] = labels[1:] != IGNORE  # next-token alignment
    return TokenBatch(input_ids=ids, attention_mask=attn, loss_mask=mask, seq_ids=torch.zeros(b, dtype=torch.long))


class TokenStream:
    """Rank-aware, resumable batches over in-memory tokenized examples (see module docstring)."""

    def __init__(self, examples: Sequence, *, batch_size: int, dp_rank: int = 0, dp_size: int = 1,
                 seed: int = 0, shuffle: bool = True):
        if not examples:
            raise ValueError("no training examples: the data split is empty; check data.task/split/limit")
        self.examples, self.batch_size, self.dp_rank, self.dp_size = list(examples), batch_size, dp_rank, dp_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.position = 0, 0
        self.manifest: dict = {}

    def __len__(self) -> int:
        return math.ceil(len(self.examples) / (self.batch_size * self.dp_size))

    def epoch_order(self, epoch: int) -> np.ndarray:
        n = len(self.examples)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num": len(self.examples)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("num", len(self.examples)) != len(self.examples):
            raise ValueError("the saved data stream had a different number of examples; resume with the same data")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self) -> Iterator[TokenBatch]:
        if self.position >= len(self):
            self.position = 0
        order = self.epoch_order(self.epoch)
        for b in range(self.position, len(self)):
            start = b * self.batch_size * self.dp_size + self.dp_rank * self.batch_size
            idx = order[start:start + self.batch_size]
            batch = collate([self.examples[i] for i in idx])
            batch.seq_ids = torch.as_tensor(idx, dtype=torch.long)
            self.position += 1
            yield batch
