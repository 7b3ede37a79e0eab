"""Per-token losses without N × V logits: the draft's head and the loss fused over row chunks.

Legend: N supervised positions (row-major), d hidden size, V vocabulary, C rows per chunk.

Contract
--------
* ``fused_token_losses(objective, model, batch, ...) -> TokenLosses``: the same per-token losses
  as ``objectives.token_losses(objective, supervised_logits(model, batch), batch, ...)`` (and the
  same L_ref), within fp32 rounding, gradients included (tests/unit/test_fused_head.py). Only the
  hidden states at the supervised positions (N × d) are kept; the head runs on C rows at a time,
  each chunk's logits are reduced to its per-token losses and dropped, and backward recomputes a
  chunk (``torch.utils.checkpoint``, non-reentrant: the recomputation is part of the one backward
  graph, so a tied embedding's two gradients meet in one accumulation and DeepSpeed's gradient
  hooks fire once per parameter, as on the plain path). Peak beyond the model: O(C × V + N × d).
  The online teacher and reference run the same way (their hidden states, their head per chunk,
  no grad); a teacher chunk's logits are recomputed with the draft's in backward.
* Selection (adaspec) needs every L_draft before it knows which tokens train. Two passes:
  1. no grad, all N rows: L_draft (and L_ref when it is computed online) per chunk;
  2. ``TokenLosses.attach(keep_N)`` (called by ``objectives.objective`` after selection): the kept
     rows only, checkpointed chunks with grad; their values replace pass 1's in the returned
     vector, the dropped rows keep pass 1's values, detached.
  Cost in head GEMMs (plain = 3: forward, two in backward): 1 + 3·k (k = the kept fraction;
  2.2 at the paper's 0.4), against 4 for checkpointing all rows and masking, whose backward
  recomputes and differentiates the dropped rows just to multiply them by zero. sft / kd train
  every row: one checkpointed pass (4).
* Collectives: every head call is an all-gather under ZeRO-3, so every data-parallel rank calls
  the head equally often: each pass pads its chunk list with empty chunks to the group's largest
  count (one small all-reduce per pass; ``models.head.global_chunk_count``).
* ``use_fused(mode, model, n_rows, group)``: ``off`` / ``on``, or ``auto``: on when the group's
  largest micro-batch has more than ``AUTO_ELEMS`` = 2^27 supervised logits (512 MiB in fp32),
  decided on the group's maximum so that every rank takes the same path.
"""
from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from adaspec_dist.distill.engine import FUSED_HEAD_MODES
from adaspec_dist.distill.objectives import TokenLosses, next_tokens
from adaspec_dist.models.head import (chunk_rows, fusable, global_chunk_count, head_vocab, masked_hidden,
                                      output_head, row_chunks)
from adaspec_dist.sparse.divergence import dense_divergence, per_token_divergence

AUTO_ELEMS = 1 << 27
"""``fused_head: auto`` turns on above this many supervised logits (N × V) per micro-batch."""


def use_fused(mode: str, model, n_rows: int, group=None, device=None) -> bool:
    """Whether this micro-batch takes the fused path (see the module contract; collective for auto)."""
    if mode not in FUSED_HEAD_MODES:
        raise ValueError(f"engine.fused_head '{mode}' must be one of {list(FUSED_HEAD_MODES)}")
    if mode == "off":
        return False
    why = fusable(model)
    if why is not None:
        if mode == "on":
            raise ValueError(f"engine.fused_head is on, but {why}; set engine.fused_head: off")
        return False
    if mode == "on":
        return True
    return global_chunk_count(n_rows, group, device) * head_vocab(model) > AUTO_ELEMS


def supervised_hidden(model, batch) -> Tensor:
    """(N, d) head inputs at ``batch.loss_mask``; an empty batch runs the same one-token forward as
    ``objectives.supervised_logits`` (ZeRO-3 gathers on every rank) and returns (0, d), attached."""
    if batch.input_ids.shape[0] == 0:
        dummy = torch.zeros(1, 1, dtype=torch.long, device=batch.input_ids.device)
        return masked_hidden(model, dummy, torch.ones_like(dummy), torch.zeros_like(dummy, dtype=torch.bool),
                             use_cache=False)
    return masked_hidden(model, batch.input_ids, batch.attention_mask, batch.loss_mask, use_cache=False)


@dataclass
class _Scorer:
    """What one chunk of draft logits is scored against (rows are indices into the N positions)."""

    objective: str
    kind: str
    beta: float
    labels_N: Tensor | None  # sft
    target: object | None  # SparseTarget (cache / tensor-parallel teacher)
    teacher_h: Tensor | None  # online teacher: (N, d_t) hidden states, no grad
    teacher_head: torch.nn.Module | None

    def teacher_logits(self, rows) -> Tensor:
        with torch.no_grad():
            return self.teacher_head(self.teacher_h[rows])

    def __call__(self, z: Tensor, rows) -> Tensor:
        if self.objective == "sft":
            return F.cross_entropy(z.float(), self.labels_N[rows], reduction="none")
        if self.teacher_h is not None:
            return dense_divergence(z, self.teacher_logits(rows), self.kind, self.beta)
        return per_token_divergence(z, self.target[rows], self.kind, self.beta)


def _chunk_losses(head: torch.nn.Module, score: _Scorer, h_C: Tensor, rows) -> Tensor:
    return score(head(h_C), rows)


def _padding_chunk(head: torch.nn.Module, h_1: Tensor) -> Tensor:
    # square saves its input, so backward recomputes this chunk before the head's own backward hooks
    # run, in the same order as a real chunk's loss (every one of which saves the logits or their
    # log-softmax): ZeRO-3 then gathers the weight at the same points on every rank.
    return head(h_1).float().square().sum() * 0.0


def _checkpointed(head, score: _Scorer, h_N: Tensor, index: Tensor, rows: int, group) -> Tensor:
    """Losses (with grad) of the rows ``index`` selects, chunk by chunk, each chunk recomputed in backward.

    A rank with fewer chunks than the group's most runs padding chunks: one zero row through the
    head, weighted 0 but attached to the graph, so that its backward (recompute and gradient) also
    calls the head; an empty chunk would skip backward and leave ZeRO-3's all-gathers out of step.
    """
    n = int(index.shape[0])
    real = row_chunks(n, rows)
    count = global_chunk_count(len(real), group, h_N.device)
    parts = [checkpoint(_chunk_losses, head, score, h_N[index[sl]], index[sl], use_reentrant=False) for sl in real]
    out = torch.cat(parts) if parts else h_N.new_zeros(0, dtype=torch.float32)
    for _ in range(count - len(real)):
        zero_row = h_N.sum(0, keepdim=True) * 0.0  # attached to the graph even when this rank has no rows
        out = out + checkpoint(_padding_chunk, head, zero_row, use_reentrant=False)
    return out


@torch.no_grad()
def _no_grad_pass(head, score: _Scorer, h_N: Tensor, rows: int, group, ref: tuple | None) -> tuple[Tensor, Tensor | None]:
    """(L_draft (N,), L_ref (N,) | None) without grad; ``ref`` = (ref hidden, ref head) computes L_ref."""
    n = int(h_N.shape[0])
    count = global_chunk_count(len(row_chunks(n, rows)), group, h_N.device)
    l_draft, l_ref = [], []
    for sl in row_chunks(n, rows, count):
        l_draft.append(_chunk_losses(head, score, h_N[sl], sl).float())
        if ref is not None:
            l_ref.append(_chunk_losses(ref[1], score, ref[0][sl], sl).float())
    cat = (lambda xs: torch.cat(xs) if xs else h_N.new_zeros(0, dtype=torch.float32))  # noqa: E731
    return cat(l_draft), (cat(l_ref) if ref is not None else None)


def fused_token_losses(objective: str, model, batch, *, kind: str = "fkl", beta: float = 0.5,
                       teacher=None, reference=None, rows: int | None = None, group=None) -> TokenLosses:
    """Per-token losses of one micro-batch through the chunked head (see the module contract).

    ``model``: the draft (or its DeepSpeed engine); ``teacher``: the online target model (dense
    divergences) or None (cached / tensor-parallel rows in ``batch.target``); ``reference``: the
    online reference draft for adaspec without a cached L_ref column; ``rows``: rows per chunk
    (None = ``models.head.chunk_rows(V)``); ``group``: the data-parallel group.
    """
    h_N = supervised_hidden(model, batch)
    head = output_head(model)
    rows = rows or chunk_rows(head_vocab(model))
    teacher_h = teacher_head = None
    if objective != "sft":
        if teacher is not None:
            with torch.no_grad():
                teacher_h, teacher_head = supervised_hidden(teacher, batch), output_head(teacher)
        elif batch.target is None:
            raise ValueError(f"objective {objective} with teacher_mode=cached needs cache_dir "
                             f"(or use teacher_mode=online)")
    score = _Scorer(objective, kind, beta, next_tokens(batch) if objective == "sft" else None,
                    None if batch.target is None else batch.target.to(h_N.device), teacher_h, teacher_head)
    everything = torch.arange(h_N.shape[0], device=h_N.device)
    if objective != "adaspec":
        return TokenLosses(_checkpointed(head, score, h_N, everything, rows, group), None)

    ref = None
    cached_ref = batch.ref_loss if teacher is None else None
    if cached_ref is None:
        assert reference is not None, "adaspec without a cached reference column needs a reference model"
        with torch.no_grad():
            ref = (supervised_hidden(reference, batch), output_head(reference))
    l_draft, l_ref = _no_grad_pass(head, score, h_N, rows, group, ref)
    if cached_ref is not None:
        l_ref = cached_ref.to(h_N.device).float()

    def attach(keep_N: Tensor) -> Tensor:
        index = keep_N.nonzero().squeeze(1)
        trained = _checkpointed(head, score, h_N, index, rows, group)
        return l_draft.index_put((index,), trained.float())

    return TokenLosses(l_draft, l_ref, attach)
