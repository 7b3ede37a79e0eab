"""Acceptance metrics of speculative decoding, with their conventions stated.

Contract
--------
* ``alpha_logits(target, draft, sequences, ...)`` -> α = mean over held-out supervised
  positions of Σ_x min(p(x), q(x)) (= 1 - TVD(p, q)), teacher-forced from logits (no
  decoding), with p, q the tempered / nucleus distributions the decoder would use (a
  tensor-parallel target, an ``lm.ShardedVocabLM``, supplies the per-position term itself: ``overlap``). A
  position t is supervised iff ``labels[t+1] != -100`` (docs/architecture.md). Equals the
  expected acceptance probability of one drafted token at that context.
* ``summarize(stats)`` turns ``DecodeStats`` into acceptance rate (accepted / drafted),
  τ (tokens per target call INCLUDING the bonus/residual token, i.e. mean(n + 1)) and
  per-position acceptance: position i's rate = P(draft i accepted | drafts 1..i-1 accepted).
* ``theoretical_tau(α, γ)`` = (1 - α^(γ+1)) / (1 - α), the i.i.d.-acceptance prediction.
* ``speedup_bound(τ, γ, c)`` = τ / (γ·c + 1), c = draft cost / target cost per forward.

Legend: B rows, T time, V vocabulary.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from adaspec_dist.data.batch import loss_mask_from_labels
from adaspec_dist.speculative.kv_cache import SlotCache
from adaspec_dist.speculative.lm import as_causal_lm, is_sharded_vocab
from adaspec_dist.speculative.sampling import SamplingConfig, probs_from_logits, real_vocab_size


CONVENTIONS = (
    "conventions: alpha_logits = mean over held-out supervised positions of sum_x min(p(x), q(x)) "
    "(teacher-forced, tempered/top-p p and q); acceptance = accepted drafts / drafted tokens; "
    "tau = tokens per target call including the bonus token; per-position i = P(accept i | 1..i-1 accepted); "
    "tau_theory = (1 - alpha^(gamma+1)) / (1 - alpha); speedup = SD tokens/s / target-only tokens/s "
    "(same engine, batch, prompts); bound = tau / (gamma*c + 1), c = draft/target time per forward."
)


def theoretical_tau(alpha: float, gamma: int) -> float:
    """Expected tokens per target call when each draft is accepted independently w.p. alpha."""
    if alpha >= 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def speedup_bound(tau: float, gamma: int, cost_ratio: float) -> float:
    """Walltime speedup of SD over the target alone when target calls cost the same for 1 or γ+1 tokens."""
    return tau / (gamma * cost_ratio + 1.0)


def summarize(stats) -> dict[str, Any]:
    """Acceptance rate, τ and per-position acceptance from ``DecodeStats.accept_hist``."""
    hist, G = stats.accept_hist, stats.gamma
    calls = sum(hist)
    if calls == 0:
        raise ValueError("no speculative steps were run; give at least one prompt")
    accepted = sum(n * c for n, c in enumerate(hist))
    # reached[i] = steps in which draft i+1 was tested (all drafts before it were accepted)
    reached = [sum(hist[i:]) for i in range(G + 1)]
    per_position = [reached[i + 1] / reached[i] if reached[i] else float("nan") for i in range(G)]
    return {"gamma": G, "target_calls": calls, "drafted": G * calls, "accepted": accepted,
            "acceptance_rate": accepted / (G * calls), "tau": (accepted + calls) / calls,
            "per_position": per_position, "accept_hist": list(hist)}


def _as_pair(seq) -> tuple[list[int], list[int]]:
    if hasattr(seq, "input_ids"):
        return list(seq.input_ids), list(seq.labels)
    ids, labels = seq
    return list(ids), list(labels)


@torch.inference_mode()
def alpha_logits(target, draft, sequences: Sequence, *, sampling: SamplingConfig | None = None,
                 batch_size: int = 8, vocab_size: int | None = None) -> dict[str, float]:
    """Teacher-forced α over the supervised positions of ``sequences``.

    ``sequences``: objects with ``input_ids`` and ``labels`` (``data.tokenize.TokenizedExample``)
    or ``(input_ids, labels)`` pairs. Returns ``{"alpha": mean, "positions": count}``.
    """
    sampling = sampling or SamplingConfig()
    sampling.validate()
    target, draft = as_causal_lm(target), as_causal_lm(draft)
    sharded = is_sharded_vocab(target)  # vocab-parallel target (models/tp_target.py): p stays sharded
    V = vocab_size or real_vocab_size(target.vocab_width, draft.vocab_width)
    device = target.device
    pairs = [_as_pair(s) for s in sequences]
    total, count = 0.0, 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        L = max(len(ids) for ids, _ in chunk)
        ids_BT = torch.zeros((len(chunk), L), dtype=torch.long)
        valid_BT = torch.zeros((len(chunk), L), dtype=torch.bool)
        sup_BT = torch.zeros((len(chunk), L), dtype=torch.bool)
        for b, (ids, labels) in enumerate(chunk):
            ids_BT[b, :len(ids)] = torch.tensor(ids)
            valid_BT[b, :len(ids)] = True
            sup_BT[b, :len(ids)] = torch.from_numpy(loss_mask_from_labels(labels))
        ids_BT, valid_BT, sup_BT = ids_BT.to(device), valid_BT.to(device), sup_BT.to(device)
        pos_BT = torch.arange(L, device=device).expand(len(chunk), L)
        mask = SlotCache(None, len(chunk), device).attention_mask(valid_BT)
        q = probs_from_logits(draft.forward(ids_BT, pos_BT, mask, draft.new_cache())[sup_BT][:, :V],
                              sampling.temperature, sampling.top_p)
        logits = target.forward(ids_BT, pos_BT, mask, target.new_cache())[sup_BT]
        if sharded:
            total += float(target.overlap(logits, q, V, sampling).sum())
        else:
            total += float(torch.minimum(probs_from_logits(logits[:, :V], sampling.temperature, sampling.top_p),
                                         q).sum())
        count += int(sup_BT.sum())
    if count == 0:
        raise ValueError("no supervised positions to measure alpha on; labels must mark answer tokens (!= -100)")
    return {"alpha": total / count, "positions": count}
