"""Batched speculative decoding (and the plain autoregressive baseline in the same engine).

Orchestration only: the math lives in sampling.py (p and q from logits) and verify.py
(rejection sampling); KV bookkeeping in kv_cache.py; model calls go through lm.CausalLM
(a vocab-parallel target, an lm.ShardedVocabLM, verifies and picks tokens itself).

One step for a batch of active rows (G = gamma):
  1. the draft runs G forwards. The first feeds two slots per row ([hole, last] after a
     rejection, or [d_G, bonus] after a fully accepted step, so both cases have one shape);
     each later one feeds the previous draft token. Draft tokens are sampled from q.
  2. the target scores [last, d_1..d_G] in ONE forward (G+1 slots) -> p for G+1 positions.
  3. ``verify`` -> accepted n per row and the next token; rejected slots of both caches
     become holes (SlotCache.keep_last), each row advances by its own n + 1 tokens.
  4. rows that reached max_new_tokens or emitted EOS leave the batch (their caches and
     state rows are dropped), the others continue unchanged.
The only host synchronisation per step is step 4's "did any row finish" (plus a periodic
cache compaction); all per-row state lives in device tensors.

Prompts are left-padded; padding slots are holes, positions are the rows' real positions.
Outputs are the generated ids per prompt (prompt excluded), cut after the first EOS and at
max_new_tokens. ``DecodeStats`` counts every verification a row took part in, including
tokens generated past max_new_tokens in its last step (they were drafted and verified).

Legend: B active rows, G gamma, V real vocabulary, L padded prompt length.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from adaspec_dist.models.head import map_row_chunks
from adaspec_dist.speculative.kv_cache import SlotCache
from adaspec_dist.speculative.lm import CausalLM, as_causal_lm, is_sharded_vocab
from adaspec_dist.speculative.sampling import (SamplingConfig, counter_uniforms, probs_from_logits, real_vocab_size,
                                               sample, sample_with_uniforms)
from adaspec_dist.speculative.verify import VerifyFn, verify

COMPACT_EVERY = 16
"""Steps between cache compactions (dropping slots that are holes in every row)."""


@dataclass
class DecodeStats:
    gamma: int
    """Draft tokens per step (0 for the autoregressive baseline)."""
    accept_hist: list[int] = field(default_factory=list)
    """accept_hist[n] = number of (row, step) verifications that accepted exactly n drafts."""
    generated: int = 0
    """Tokens returned to the caller (after EOS / max_new_tokens cuts)."""
    seconds: float = 0.0

    @property
    def target_calls(self) -> int:
        """Row-level target verifications (one per row per step)."""
        return sum(self.accept_hist) if self.gamma else self.generated


@dataclass
class DecodeOutput:
    sequences: list[list[int]]
    """Generated ids per prompt (prompt excluded), in prompt order."""
    stats: DecodeStats
    accepted: list[list[int]] | None = None
    """Speculative only: per prompt, the number of drafts accepted at each of its steps."""


@dataclass
class _DraftPending:
    """Per row, the two slots the next step's first draft forward feeds: ``[hole, last]`` after a
    rejection, ``[d_G, bonus]`` after a fully accepted step (so both cases have one shape)."""

    tokens_B2: torch.Tensor
    valid_B2: torch.Tensor
    """False = a hole (masked, never attended to)."""

    @classmethod
    def after(cls, full_B: torch.Tensor, last_drafts_B: torch.Tensor, next_B: torch.Tensor,
              pad_id: int) -> "_DraftPending":
        """The pending slots after a step: ``full_B`` rows accepted every draft."""
        return cls(tokens_B2=torch.stack([torch.where(full_B, last_drafts_B, torch.full_like(next_B, pad_id)),
                                          next_B], 1),
                   valid_B2=torch.stack([full_B, torch.ones_like(full_B)], 1))

    def select(self, rows: torch.Tensor) -> "_DraftPending":
        return _DraftPending(tokens_B2=self.tokens_B2[rows], valid_B2=self.valid_B2[rows])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pick(probs_XV: torch.Tensor, greedy: bool, generator) -> torch.Tensor:
    return probs_XV.argmax(-1) if greedy else sample(probs_XV, generator)


class _Batch:
    """Left-padded prompts -> prefilled SlotCaches and per-row state tensors."""

    def __init__(self, lms: list[CausalLM], prompts: list[list[int]], width: int, pad_id: int):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token; drop empty prompts before decoding")
        device = lms[0].device
        B, L = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, L), pad_id, dtype=torch.long)
        valid = torch.zeros((B, L), dtype=torch.bool)
        for b, p in enumerate(prompts):
            ids[b, L - len(p):] = torch.tensor(p, dtype=torch.long)
            valid[b, L - len(p):] = True
        ids, valid = ids.to(device), valid.to(device)
        positions = (valid.long().cumsum(1) - 1).clamp_min(0)
        self.slots = []
        for lm in lms:
            slot = SlotCache(lm.new_cache(), B, device)
            if L > 1:  # the last prompt token is fed by the first decoding step
                lm.forward(ids[:, :-1], positions[:, :-1], slot.attention_mask(valid[:, :-1]), slot.cache,
                           logits_to_keep=1)
                slot.append(valid[:, :-1])
            self.slots.append(slot)
        self.rows = torch.arange(B, device=device)          # original prompt index per active row
        self.last = ids[:, -1]                               # newest token, not yet in the target cache
        self.pos = positions[:, -1]                          # its position
        self.n_out = torch.zeros(B, dtype=torch.long, device=device)
        self.buf = torch.zeros((B, width), dtype=torch.long, device=device)
        # trace[b, k] = drafts accepted by row b at step k (every row takes part from step 0)
        self.trace = torch.zeros((B, width), dtype=torch.long, device=device)
        self.results: list[list[int] | None] = [None] * B
        self.traces: list[list[int]] = [[] for _ in range(B)]

    def retire(self, done_B: torch.Tensor, max_new: int, eos: int | None, steps: int = 0) -> torch.Tensor | None:
        """Store finished rows' outputs and drop them; returns the kept rows' indices (None: all done),
        for the caller to select its own per-row state with."""
        finished = done_B.nonzero().squeeze(-1).tolist()
        n_out = self.n_out.tolist()
        rows = self.rows.tolist()
        for i in finished:
            toks = self.buf[i, : n_out[i]].tolist()[:max_new]
            if eos is not None and eos in toks:
                toks = toks[: toks.index(eos) + 1]
            self.results[rows[i]] = toks
            self.traces[rows[i]] = self.trace[i, :steps].tolist()
        keep = (~done_B).nonzero().squeeze(-1)
        if keep.numel() == 0:
            return None
        for slot in self.slots:
            slot.select_rows(keep)
        for name in ("rows", "last", "pos", "n_out", "buf", "trace"):
            setattr(self, name, getattr(self, name)[keep])
        return keep


def _draft(draft: CausalLM, batch: _Batch, pending: _DraftPending, G: int, V: int, sampling: SamplingConfig,
           generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1: the draft's G tokens ``D_BG`` and the distributions ``q_BGV`` they were drawn from
    (G forwards; the first one feeds the two pending slots)."""
    dslot = batch.slots[1]
    B, device = batch.last.shape[0], batch.last.device
    T, top_p, greedy = sampling.temperature, sampling.top_p, sampling.temperature == 0
    inp, inp_pos, inp_valid = (pending.tokens_B2, torch.stack([batch.pos - 1, batch.pos], 1).clamp_min(0),
                               pending.valid_B2)
    d_tokens, d_probs = [], []
    for j in range(G):
        logits = draft.forward(inp, inp_pos, dslot.attention_mask(inp_valid), dslot.cache, logits_to_keep=1)
        dslot.append(inp_valid)
        q = probs_from_logits(logits[:, -1, :V], T, top_p)
        x = _pick(q, greedy, generator)
        d_tokens.append(x)
        d_probs.append(q)
        inp, inp_pos = x[:, None], (batch.pos + j + 1)[:, None]
        inp_valid = torch.ones((B, 1), dtype=torch.bool, device=device)
    return torch.stack(d_tokens, 1), torch.stack(d_probs, 1)


def _target_verify(target: CausalLM, batch: _Batch, D: torch.Tensor, q: torch.Tensor, arange: torch.Tensor, V: int,
                   sampling: SamplingConfig, generator, verify_fn: VerifyFn) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 2-3: the target scores all G+1 positions in one forward, then verification: the
    number ``n_B`` of accepted drafts per row and the token ``nxt_B`` that follows them."""
    tslot = batch.slots[0]
    B, G = D.shape
    t_in = torch.cat([batch.last[:, None], D], 1)
    t_valid = torch.ones((B, G + 1), dtype=torch.bool, device=D.device)
    logits = target.forward(t_in, batch.pos[:, None] + arange, tslot.attention_mask(t_valid), tslot.cache)
    tslot.append(t_valid)
    if is_sharded_vocab(target):  # vocab-parallel target (models/tp_target.py): p stays sharded
        return target.verify_logits(logits, q, D, V, sampling, generator)
    # row chunks: the tempering / nucleus temporaries of B·(G+1) rows stay O(chunk × V)
    P = map_row_chunks(lambda z: probs_from_logits(z, sampling.temperature, sampling.top_p), logits[..., :V])  # B,G+1,V
    return verify_fn(q, P, D, generator)


def _advance(batch: _Batch, pending: _DraftPending, D: torch.Tensor, n: torch.Tensor, nxt: torch.Tensor,
             arange: torch.Tensor, step: int) -> torch.Tensor:
    """Step 3, after verification: rejected slots of both caches become holes and each row takes its
    n accepted drafts and the next token; returns those G+1 candidate tokens per row (the slots
    past n are not output)."""
    tslot, dslot = batch.slots
    G = D.shape[1]
    tslot.keep_last(arange[None] <= n[:, None])
    dslot.keep_last(torch.cat([pending.valid_B2, arange[None, 1:G] <= n[:, None]], 1))
    cand = torch.cat([D, D[:, :1]], 1).scatter_(1, n[:, None], nxt[:, None])
    batch.buf.scatter_(1, batch.n_out[:, None] + arange[None], cand)
    batch.trace[:, step - 1] = n
    batch.n_out += n + 1
    batch.pos += n + 1
    batch.last = nxt
    return cand


def _finished(batch: _Batch, cand: torch.Tensor, n: torch.Tensor, arange: torch.Tensor, max_new_tokens: int,
              eos_token_id: int | None) -> torch.Tensor:
    """Step 4's test: rows that reached max_new_tokens or emitted EOS among their new tokens."""
    done = batch.n_out >= max_new_tokens
    if eos_token_id is not None:
        done |= ((cand == eos_token_id) & (arange[None] <= n[:, None])).any(1)
    return done


def speculative_generate(target, draft, prompts: list[list[int]], *, gamma: int, max_new_tokens: int,
                         sampling: SamplingConfig | None = None, eos_token_id: int | None = None,
                         generator: torch.Generator | None = None, vocab_size: int | None = None,
                         verify_fn: VerifyFn = verify, pad_id: int = 0) -> DecodeOutput:
    """Speculative decoding of a batch of token-id prompts; lossless w.r.t. the target's sampling."""
    if gamma < 1:
        raise ValueError(f"gamma {gamma} must be >= 1 (draft tokens per target call)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens} must be >= 1")
    sampling = sampling or SamplingConfig()
    sampling.validate()
    target, draft = as_causal_lm(target), as_causal_lm(draft)
    V = vocab_size or real_vocab_size(target.vocab_width, draft.vocab_width)
    G = gamma
    device = target.device
    _sync(device)
    start = time.perf_counter()

    batch = _Batch([target, draft], prompts, max_new_tokens + G + 1, pad_id)
    arange = torch.arange(G + 1, device=device)
    hist = torch.zeros(G + 1, dtype=torch.long, device=device)
    # Before the first step the pending slots are [hole, last prompt token].
    pending = _DraftPending.after(torch.zeros(len(prompts), dtype=torch.bool, device=device), batch.last, batch.last,
                                  pad_id)
    step = 0
    while True:
        step += 1
        D, q = _draft(draft, batch, pending, G, V, sampling, generator)                     # B,G and B,G,V
        n, nxt = _target_verify(target, batch, D, q, arange, V, sampling, generator, verify_fn)
        cand = _advance(batch, pending, D, n, nxt, arange, step)
        hist += torch.nn.functional.one_hot(n, G + 1).sum(0)   # (bincount would sync on CUDA)
        pending = _DraftPending.after(n == G, D[:, -1], nxt, pad_id)
        done = _finished(batch, cand, n, arange, max_new_tokens, eos_token_id)
        if bool(done.any()):
            keep = batch.retire(done, max_new_tokens, eos_token_id, steps=step)
            if keep is None:
                break
            pending = pending.select(keep)
        if step % COMPACT_EVERY == 0:
            for slot in batch.slots:
                slot.compact()
    _sync(device)
    stats = DecodeStats(gamma=G, accept_hist=hist.tolist(), generated=sum(len(r) for r in batch.results),
                        seconds=time.perf_counter() - start)
    return DecodeOutput(sequences=batch.results, stats=stats, accepted=batch.traces)


def autoregressive_generate(model, prompts: list[list[int]], *, max_new_tokens: int,
                            sampling: SamplingConfig | None = None, eos_token_id: int | None = None,
                            generator: torch.Generator | None = None, vocab_size: int | None = None,
                            pad_id: int = 0, row_keys: list[int] | None = None) -> DecodeOutput:
    """One token per forward with the same caches, masks and row drop-out: the SD baseline.

    ``row_keys`` (one 32-bit key per prompt) replaces ``generator`` when sampling: prompt b's token
    number t is drawn with ``sampling.counter_uniforms(key_b, t)``, so each row's output depends on
    its key and its own logits only (not on the batch, the other rows or their retirement)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens} must be >= 1")
    sampling = sampling or SamplingConfig()
    sampling.validate()
    lm = as_causal_lm(model)
    sharded = is_sharded_vocab(lm)  # vocab-parallel target (models/tp_target.py): logits stay sharded
    keys = None
    if row_keys is not None:
        if sharded:
            raise ValueError("row_keys needs a full-vocabulary model (a vocab-parallel one samples with a generator)")
        if len(row_keys) != len(prompts):
            raise ValueError(f"row_keys has {len(row_keys)} keys for {len(prompts)} prompts; give one per prompt")
        keys = torch.tensor(row_keys, dtype=torch.long, device=lm.device)
    V = vocab_size or lm.vocab_width
    device = lm.device
    _sync(device)
    start = time.perf_counter()
    batch = _Batch([lm], prompts, max_new_tokens + 1, pad_id)
    (slot,) = batch.slots
    step = 0
    while True:
        step += 1
        B = batch.last.shape[0]
        valid = torch.ones((B, 1), dtype=torch.bool, device=device)
        logits = lm.forward(batch.last[:, None], batch.pos[:, None], slot.attention_mask(valid), slot.cache,
                            logits_to_keep=1)
        slot.append(valid)
        if sharded:
            x = lm.next_token(logits[:, -1], V, sampling, generator)
        elif keys is not None and sampling.temperature > 0:
            probs = probs_from_logits(logits[:, -1, :V], sampling.temperature, sampling.top_p)
            x = sample_with_uniforms(probs, counter_uniforms(keys[batch.rows], batch.n_out))
        else:
            x = _pick(probs_from_logits(logits[:, -1, :V], sampling.temperature, sampling.top_p),
                      sampling.temperature == 0, generator)
        batch.buf.scatter_(1, batch.n_out[:, None], x[:, None])
        batch.n_out += 1
        batch.pos += 1
        batch.last = x
        done = batch.n_out >= max_new_tokens
        if eos_token_id is not None:
            done |= x == eos_token_id
        if bool(done.any()) and batch.retire(done, max_new_tokens, eos_token_id) is None:
            break
        if step % COMPACT_EVERY == 0:
            slot.compact()
    _sync(device)
    stats = DecodeStats(gamma=0, generated=sum(len(r) for r in batch.results),
                        seconds=time.perf_counter() - start)
    return DecodeOutput(sequences=batch.results, stats=stats)
