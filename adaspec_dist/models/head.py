"""The LM head in row chunks: hidden states at the positions that need logits, and the head applied
to a few rows at a time, so no caller holds N × V logits.

Legend: B batch, T time, N selected positions (row-major), d hidden size, V vocabulary.

Contract
--------
* ``output_head(model)`` -> the head *module* (``get_output_embeddings()``, through a DeepSpeed
  engine's ``.module``). Callers apply the module, never its ``.weight``: under ZeRO-3 the weight is
  partitioned and only the module's hooks gather it.
* ``masked_hidden(model, input_ids, attention_mask, mask, **kw) -> (N, d)``: the head's input at
  the positions ``mask`` selects (``head(masked_hidden(...)) == masked_logits(...)``). The model runs
  its ordinary forward (through the engine, so ZeRO-3's forward hooks run as usual); a forward
  pre-hook on the head captures its input and hands the head zero positions, so the forward's own
  logits are (B, 0, V). Models that post-process logits after the head (a final soft-cap) are refused.
* ``row_chunks(n, rows, count=None)``: slices of ``rows`` rows covering ``range(n)``; ``count``
  pads with empty slices (every rank must call the head equally often under ZeRO-3: each call is an
  all-gather).
* ``chunk_rows(v, max_elems)``: rows per chunk so that a chunk's logits hold at most ``max_elems``.
* ``global_chunk_count(count, group)``: the largest ``count`` over the group (one tiny all-reduce).
* ``map_row_chunks(fn, x_XV, max_elems)``: ``fn`` (row-wise, V -> V) applied to row chunks of
  ``x`` (any leading dims) into one float32 output: the same values as ``fn(x)``, with ``fn``'s
  temporaries (a nucleus filter sorts, an argmax one-hots) bounded by a chunk instead of all rows.
* ``ChunkedLogits(head, hidden_Nd)``: N × V logits that are never held: ``.shape`` is (N, V) and
  ``[rows]`` (a slice or index) runs the head on those rows only. ``sparse.target``'s encoders and
  ``speculative.verify`` walk rows through it, so their outputs are those of the dense logits.
"""
from __future__ import annotations

import torch
from torch import Tensor

from adaspec_dist.models.logits import takes_logits_to_keep

DEFAULT_CHUNK_ELEMS = 1 << 24
"""Logits per chunk by default: 16 M values (64 MiB in fp32), a few hundred rows at V = 50k-128k."""


def output_head(model) -> torch.nn.Module:
    """The head module of an HF causal LM or of the one a DeepSpeed engine wraps."""
    module = getattr(model, "module", model)
    head = module.get_output_embeddings()
    assert head is not None, f"{type(module).__name__} has no output embeddings"
    return head


def head_vocab(model) -> int:
    """Rows of the head (V) without touching its (possibly partitioned) weight."""
    module = getattr(model, "module", model)
    head = output_head(model)
    return int(getattr(head, "out_features", None) or module.config.vocab_size)


def fusable(model) -> str | None:
    """None when the head's output is the model's logits, else why the fused path cannot be used."""
    config = getattr(getattr(model, "module", model), "config", None)
    if getattr(config, "final_logit_softcapping", None):
        return "the model soft-caps its logits after the head"
    return None


def masked_hidden(model, input_ids: Tensor, attention_mask: Tensor, mask: Tensor, **kwargs) -> Tensor:
    """(N, d) head inputs at ``mask`` (see the module contract); ``kwargs`` go to the forward."""
    mask = mask.to(input_ids.device)
    head = output_head(model)
    captured: list[Tensor] = []

    def take_input(_module, args):
        captured.append(args[0])
        return (args[0][..., :0, :],)  # the forward's own logits: zero positions, no N x V

    keep = None
    if takes_logits_to_keep(model):  # the decoder still runs everywhere; this only narrows the slice
        keep = mask.any(dim=0).nonzero().squeeze(1)
        kwargs = {**kwargs, "logits_to_keep": keep}
    handle = head.register_forward_pre_hook(take_input)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    finally:
        handle.remove()
    assert len(captured) == 1, f"the head ran {len(captured)} times in one forward"
    hidden = captured[0]
    return hidden[mask[:, keep]] if keep is not None else hidden[mask]


def chunk_rows(v: int, max_elems: int = DEFAULT_CHUNK_ELEMS) -> int:
    """Rows per chunk such that rows × v ≤ max_elems (at least 1)."""
    return max(1, max_elems // max(1, v))


def row_chunks(n: int, rows: int, count: int | None = None) -> list[slice]:
    """Slices of ``rows`` rows over ``range(n)``, padded with empty slices to ``count``."""
    assert rows >= 1, rows
    out = [slice(a, min(n, a + rows)) for a in range(0, n, rows)]
    if count is not None:
        assert count >= len(out), (count, len(out))
        out += [slice(n, n)] * (count - len(out))
    return out


def global_chunk_count(count: int, group=None, device=None) -> int:
    """max(count) over ``group`` (the data-parallel ranks); ``count`` itself without one."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return count
    t = torch.tensor([count], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return int(t.item())


def map_row_chunks(fn, x_XV: Tensor, max_elems: int = DEFAULT_CHUNK_ELEMS) -> Tensor:
    """``fn(x_XV)`` computed row chunk by row chunk (see the module contract)."""
    flat = x_XV.reshape(-1, x_XV.shape[-1])
    out = torch.empty(flat.shape, dtype=torch.float32, device=x_XV.device)
    for sl in row_chunks(flat.shape[0], chunk_rows(flat.shape[1], max_elems)):
        out[sl] = fn(flat[sl])
    return out.reshape(x_XV.shape)


class ChunkedLogits:
    """Lazy (N, V) logits ``head(hidden_Nd)``: indexing rows runs the head on them (see the contract)."""

    def __init__(self, head: torch.nn.Module, hidden_Nd: Tensor, vocab: int | None = None):
        self.head, self.hidden = head, hidden_Nd
        self.shape = torch.Size((hidden_Nd.shape[0], vocab or int(head.out_features)))
        self.device = hidden_Nd.device

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> Tensor:
        return self.head(self.hidden[rows])


def chunked_logits(model, input_ids: Tensor, attention_mask: Tensor, mask: Tensor, **kwargs) -> ChunkedLogits:
    """``masked_logits(...)`` as :class:`ChunkedLogits`: only N × d hidden states are held."""
    return ChunkedLogits(output_head(model), masked_hidden(model, input_ids, attention_mask, mask, **kwargs),
                         head_vocab(model))
