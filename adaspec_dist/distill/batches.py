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
from typing import Iterator, Sequence

import numpy as np
import torch

from adaspec_dist.data.batch import TokenBatch, collate  # noqa: F401  (TokenBatch: re-exported, the stream's batch)


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
