"""A batch of tokenized sequences: the one padding and loss-mask rule of the package.

Contract: ``loss_mask_from_labels(labels)``: position t is supervised iff ``labels[t+1] != -100``.
``collate(examples)`` right-pads ``TokenizedExample``-likes (``input_ids``, ``labels``)
into a :class:`TokenBatch` — ``input_ids`` padded with 0, ``attention_mask`` 1 on real tokens,
``loss_mask[b, t]`` true iff token t+1 is supervised (``labels[t+1] != -100``: position t predicts
it). The cache job, the trainer's token stream and the benchmarks batch through it, so a
supervised row means the same position everywhere.

Legend: B batch, T time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from adaspec_dist.data.tokenize import IGNORE


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
        mask[i, :n] = torch.from_numpy(loss_mask_from_labels(e.labels)[:n])
    return TokenBatch(input_ids=ids, attention_mask=attn, loss_mask=mask, seq_ids=torch.zeros(b, dtype=torch.long))


def loss_mask_from_labels(labels: Sequence[int]) -> np.ndarray:
    """(L,) bool: position t carries the target of token t+1 when that token is supervised
    (next-token alignment: the last position never does)."""
    lab = np.asarray(labels, dtype=np.int64)
    mask = np.zeros(lab.shape[0], dtype=bool)
    if lab.shape[0] > 1:
        mask[:-1] = lab[1:] != IGNORE
    return mask
