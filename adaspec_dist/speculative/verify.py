"""Batched speculative verification: pure tensor functions, no model calls.

Contract
--------
``verify(draft_probs_BGV, target_probs_BG1V, draft_tokens_BG, generator)
-> (accepted_len_B, next_token_B)``

* row b proposed ``draft_tokens[b, :G]`` sampled from ``draft_probs[b, i]`` (q); the target
  scored the same prefix giving ``target_probs[b, i]`` (p) for i = 0..G (G+1 rows: the last one
  is the distribution after all G drafts);
* draft token i is accepted with probability min(1, p(x)/q(x)), tested left to right; the
  accepted length n is the count before the first rejection;
* n < G: the next token is sampled from norm(max(0, p_n - q_n)) (the residual); n == G: the
  bonus token is sampled from p_G. Either way every row gains n + 1 tokens whose
  distribution is exactly the target's (Leviathan et al. 2023; Chen et al. 2023).
* Greedy decoding is the case of one-hot p and q (see sampling.py): it accepts iff the
  argmaxes agree and the residual is the target's argmax, so no extra branch exists.

The pieces (``token_probs``, ``accept_lengths``, ``next_token_weights``) are separate functions
so a vocab-parallel implementation (tensor-parallel target, vocabulary sharded across ranks)
can replace the ones that touch V: p(x) of the drafted ids is a gather on the owning shard,
the residual/bonus draw a sharded multinomial.

Legend: B batch rows, G = gamma (drafted tokens per step), V vocabulary.
"""
from __future__ import annotations

from typing import Callable

import torch

VerifyFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Generator | None"],
                    "tuple[torch.Tensor, torch.Tensor]"]


def token_probs(probs_BGV: torch.Tensor, tokens_BG: torch.Tensor) -> torch.Tensor:
    """``probs[b, i, tokens[b, i]]`` -> (B, G)."""
    return probs_BGV.gather(-1, tokens_BG.unsqueeze(-1)).squeeze(-1)


def accept_lengths(p_x_BG: torch.Tensor, q_x_BG: torch.Tensor, uniform_BG: torch.Tensor) -> torch.Tensor:
    """Number of leading accepted drafts per row; token i accepted iff u_i < p(x_i)/q(x_i)."""
    # u * q < p avoids dividing by q; q(x) > 0 for any sampled x, and a p(x) of 0 always rejects.
    accepted = uniform_BG * q_x_BG < p_x_BG
    return accepted.long().cumprod(dim=1).sum(dim=1)


def next_token_weights(target_probs_BG1V: torch.Tensor, draft_probs_BGV: torch.Tensor,
                       n_B: torch.Tensor) -> torch.Tensor:
    """Unnormalised distribution of the token after the n accepted ones: residual or bonus (B, V)."""
    B, G = draft_probs_BGV.shape[:2]
    rows = torch.arange(B, device=n_B.device)
    p_n = target_probs_BG1V[rows, n_B]
    q_n = draft_probs_BGV[rows, n_B.clamp(max=G - 1)]
    residual = (p_n - q_n).clamp_min(0.0)
    bonus = n_B == G
    # A rejection implies p(x) < q(x), so the residual has positive mass in exact arithmetic;
    # if rounding leaves none (p ~= q), p itself is the correct limit.
    empty = residual.sum(-1) <= 0
    return torch.where((bonus | empty).unsqueeze(-1), p_n, residual)


def verify(draft_probs_BGV: torch.Tensor, target_probs_BG1V: torch.Tensor, draft_tokens_BG: torch.Tensor,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative rejection sampling for a batch: ``(accepted_len_B, next_token_B)``."""
    B, G, V = draft_probs_BGV.shape
    assert target_probs_BG1V.shape == (B, G + 1, V), (target_probs_BG1V.shape, draft_probs_BGV.shape)
    assert draft_tokens_BG.shape == (B, G)
    p_x = token_probs(target_probs_BG1V[:, :G], draft_tokens_BG)
    q_x = token_probs(draft_probs_BGV, draft_tokens_BG)
    u = torch.rand((B, G), generator=generator, device=draft_probs_BGV.device)
    n = accept_lengths(p_x, q_x, u)
    weights = next_token_weights(target_probs_BG1V, draft_probs_BGV, n)
    next_token = torch.multinomial(weights, 1, generator=generator).squeeze(-1)
    return n, next_token
