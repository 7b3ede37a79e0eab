"""AdaSPEC token selection: keep the ``filter_fraction`` of tokens with the largest ΔL.

Legend: N supervised positions on this rank (rows of the packed loss mask).

Contract
--------
* ΔL = L_draft − L_ref per token (detached: selection never carries gradient). Tokens where the
  draft lags the reference most are the ones the draft can still learn; AdaSPEC trains on those.
* ``n_keep(n, fraction) = ceil(fraction · n)`` (at least one token whenever n > 0 and fraction > 0;
  the product is rounded to 9 decimals first so 0.4 · 10 keeps 4, not 5).
* Exactly ``n_keep`` tokens are kept. Ties at the threshold are broken by position: the earlier
  token (lower row index; in global scope lower dp rank first, then row) wins. Deterministic.
* ``scope="local"``: per rank per micro-batch, as the published AdaSPEC code (a quantile per
  device per step). ``scope="global"``: ΔL of all data-parallel ranks is all-gathered (in dp
  rank order) and one threshold is applied, so every rank sees the same kept threshold and the
  global kept count is ``n_keep(Σ_r N_r)``. Default: ``local`` — it is what the paper ran and
  costs no communication; ``global`` removes the dependence on how tokens fall into micro-batches
  (useful with small micro-batches or unequal answer lengths).
Pure functions of tensors; the global variant takes the dp process group as an argument.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

Scope = Literal["local", "global"]
SCOPES: tuple[Scope, ...] = get_args(Scope)


def check_selection(fraction: float, scope: str) -> None:
    """One-line ValueErrors for a bad fraction or scope."""
    if not (isinstance(fraction, (int, float)) and 0.0 < float(fraction) <= 1.0):
        raise ValueError(f"filter_fraction must be in (0, 1], got {fraction!r}; the paper uses 0.4")
    if scope not in SCOPES:
        raise ValueError(f"selection_scope '{scope}' is not one of {list(SCOPES)}; use local (paper) or global")


def n_keep(n: int, fraction: float) -> int:
    """How many of ``n`` tokens to keep: ceil(fraction·n), rounding noise removed."""
    return min(n, math.ceil(round(fraction * n, 9)))


def top_fraction_mask(delta_N: Tensor, fraction: float) -> Tensor:
    """(N,) bool: exactly ``n_keep(N, fraction)`` largest entries, earlier index wins ties."""
    n = delta_N.shape[0]
    keep = torch.zeros(n, dtype=torch.bool, device=delta_N.device)
    k = n_keep(n, fraction)
    if k == 0:
        return keep
    # A stable descending sort keeps equal values in index order, which is the tie rule.
    order = torch.sort(delta_N.detach().float(), descending=True, stable=True).indices
    keep[order[:k]] = True
    return keep


@dataclass
class Selection:
    """What the filter did on this rank (for the loss and for logging)."""

    keep_N: Tensor
    """(N,) bool mask of kept tokens on this rank."""
    threshold: float
    """Smallest kept ΔL (identical on every rank in global scope; nan when nothing is kept)."""
    kept_global: int
    """Kept tokens summed over the dp group (== local count in local scope with dp_size 1)."""
    total_global: int
    """Supervised tokens summed over the dp group."""


def _gather_variable(values_N: Tensor, group) -> list[Tensor]:
    """All-gather 1-D tensors of different lengths (sizes first, then padded values)."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    size = torch.tensor([values_N.shape[0]], dtype=torch.long, device=values_N.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=values_N.dtype, device=values_N.device)
    padded[: values_N.shape[0]] = values_N
    out = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(out, padded, group=group)
    return [o[: int(s.item())] for o, s in zip(out, sizes)]


def select_tokens(delta_N: Tensor, fraction: float, scope: str = "local", group=None) -> Selection:
    """Choose the tokens to train on. ``group`` (dp group) is used by ``global`` scope and for the
    global counts; pass None in a single process."""
    check_selection(fraction, scope)
    import torch.distributed as dist

    distributed = group is not None and dist.is_initialized() and dist.get_world_size(group) > 1
    delta = delta_N.detach().float()
    if scope == "global" and distributed:
        parts = _gather_variable(delta, group)
        everything = torch.cat(parts)
        keep_all = top_fraction_mask(everything, fraction)
        start = sum(p.shape[0] for p in parts[: dist.get_rank(group)])
        keep = keep_all[start:start + delta.shape[0]]
        kept_vals = everything[keep_all]
        threshold = float(kept_vals.min()) if kept_vals.numel() else float("nan")
        return Selection(keep_N=keep, threshold=threshold, kept_global=int(keep_all.sum()),
                         total_global=int(everything.shape[0]))
    keep = top_fraction_mask(delta, fraction)
    threshold = float(delta[keep].min()) if keep.any() else float("nan")
    counts = torch.tensor([int(keep.sum()), delta.shape[0]], dtype=torch.long, device=delta.device)
    if distributed:
        dist.all_reduce(counts, group=group)
    return Selection(keep_N=keep, threshold=threshold, kept_global=int(counts[0]), total_global=int(counts[1]))
