"""Comparisons for tests/gpu that hold on any device and precision: exact where the arithmetic is
the same, tie-aware where a low-precision forward may legitimately pick the other of two (nearly)
equal logits. A real bug (a wrong mask, position or KV slot, a lost probability mass) moves
values far beyond these tolerances, so tie-awareness does not hide it.

Legend: N positions, K ids kept per position, V vocabulary.
"""
from __future__ import annotations

import copy

import torch


def noisy_copy(model, noise: float, seed: int):
    """A draft = the model with seeded Gaussian weight noise (partial agreement with it)."""
    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_((noise * torch.randn(p.shape, generator=gen)).to(p.device, p.dtype))
    return draft


@torch.no_grad()
def greedy_divergences(target, prompts: list[list[int]], got: list[list[int]], ref: list[list[int]]) -> list[dict]:
    """Rows where two greedy decodings of ``target`` differ: the first differing position and the
    target's logit gap there between the two tokens picked (a teacher-forced forward without KV
    cache on the shared prefix: a third, independent computation of the same logits)."""
    device = next(target.parameters()).device
    out = []
    for row, (p, g, r) in enumerate(zip(prompts, got, ref)):
        if g == r:
            continue
        d = next((i for i, (a, b) in enumerate(zip(g, r)) if a != b), min(len(g), len(r)))
        if d >= min(len(g), len(r)):   # one is a prefix of the other: a length bug, never a tie
            out.append({"row": row, "pos": d, "gap": float("inf"), "scale": 1.0})
            continue
        logits = target(torch.tensor([p + g[:d]], device=device)).logits[0, -1].float()
        out.append({"row": row, "pos": d, "gap": float((logits[g[d]] - logits[r[d]]).abs()),
                    "scale": float(logits.abs().max())})
    return out


@torch.no_grad()
def greedy_violations(target, prompts: list[list[int]], seqs: list[list[int]], tie: float) -> list[dict]:
    """Positions where a decoded token is NOT a greedy choice of ``target``: its logit (teacher-forced
    forward without KV cache over prompt + output) is below the largest by more than ``tie`` times
    the largest |logit| there. Empty = every token of every row is the target's argmax up to
    near-ties, i.e. the output is a greedy decoding of the target (checks every position, so one
    flipped near-tie early in a row does not hide the rest of it)."""
    device = next(target.parameters()).device
    out = []
    for row, (p, s) in enumerate(zip(prompts, seqs)):
        if not s:
            continue
        logits = target(torch.tensor([p + s], device=device)).logits[0, len(p) - 1:len(p) - 1 + len(s)].float()
        chosen = logits.gather(1, torch.tensor(s, device=device)[:, None])[:, 0]
        best = logits.max(-1).values
        bad = (best - chosen) > tie * logits.abs().max(-1).values
        out += [{"row": row, "pos": int(i), "gap": float(best[i] - chosen[i])} for i in bad.nonzero()[:, 0].tolist()]
    return out


def check_topk(ids_NK: torch.Tensor, logp_NK: torch.Tensor, full_logp_NV: torch.Tensor) -> dict:
    """How far a stored top-k is from the reference full-vocabulary log-probs ``full_logp_NV``:

    * ``value_err``: max |stored log-prob - reference log-prob of the same id|;
    * ``rank_err``: max |reference log-prob of the i-th stored id - reference i-th largest|: zero
      when the ids are the reference's top-k, small when they differ only by near-ties;
    * ``rows_ids_equal``: share of positions whose K ids are exactly the reference's, in order;
    * ``top1_equal``: share whose first id is the reference argmax.
    """
    ids_NK, logp_NK, full = ids_NK.cpu().long(), logp_NK.cpu().float(), full_logp_NV.cpu().float()
    at_ids = full.gather(1, ids_NK)
    ref_vals, ref_ids = full.topk(ids_NK.shape[1], dim=1)
    return {"value_err": float((logp_NK - at_ids).abs().max()),
            "rank_err": float((ref_vals - at_ids).abs().max()),
            "rows_ids_equal": float((ids_NK == ref_ids).all(1).float().mean()),
            "top1_equal": float((ids_NK[:, 0] == ref_ids[:, 0]).float().mean()),
            "positions": int(ids_NK.shape[0])}
