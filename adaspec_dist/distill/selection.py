"""AdaSPEC token selection: keep the tokens with the largest ΔL = L_draft − L_ref.

Legend: N supervised positions on this rank (rows of the packed loss mask, row-major).

Contract
--------
* ΔL is detached: selection never carries gradient. Tokens where the draft lags the reference
  most are the ones the draft can still learn; AdaSPEC trains on those.
* ``rule="quantile"`` (default, the published code, official ``utils.py`` ``compute_loss``):
  keep ``ΔL >= torch.quantile(ΔL, 1 − k)`` with torch's default linear interpolation, computed
  on the float32 ΔL exactly as the official code does. In exact arithmetic that keeps
  ``floor(k·(N − 1)) + 1`` tokens plus every token tied with the threshold (k = 0.4: N = 3, 8,
  10, 13 keep 1, 3, 4, 5); float32 rounding of the rank (1 − k)·(N − 1) can drop one more when
  that rank is an integer (torch's own behaviour, kept on purpose).
* ``rule="exact_k"``: exactly ``n_keep(N, k) = ceil(k·N)`` tokens (the product rounded to 9
  decimals first, so 0.4 · 10 keeps 4), ties broken by position (the earlier token wins).
  Deterministic, one token more than ``quantile`` whenever N ≡ 3 (mod 5) at k = 0.4.
* Non-finite ΔL (NaN, ±inf) is never selected, under either rule: the rule runs on the finite
  values only (the official code would compute a NaN threshold and keep nothing). How many
  there were is returned (``Selection.nonfinite_global``) so the trainer can log it.
* ``scope="local"``: one threshold per *threshold group* on this rank: ``groups_N`` (N,) gives
  each token's group (``threshold_groups``: consecutive runs of ``threshold_group`` sequences
  of the micro-batch); None = the whole micro-batch, i.e. one threshold per rank per
  micro-step, which is what the paper ran (a quantile per device per step, 5 sequences on each
  of 8 GPUs). ``scope="global"``: ΔL of all data-parallel ranks is all-gathered (in dp rank
  order) and one threshold is applied (no groups), so the kept set does not depend on how
  tokens fall into micro-batches.
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
Rule = Literal["quantile", "exact_k"]
RULES: tuple[Rule, ...] = get_args(Rule)

# torch.quantile refuses larger inputs; past it the same formula is computed by hand.
_TORCH_QUANTILE_MAX = 16_000_000


def check_selection(fraction: float, scope: str, rule: str = "quantile", threshold_group: int | None = None) -> None:
    """One-line ValueErrors for a bad fraction, scope, rule or threshold group."""
    if not (isinstance(fraction, (int, float)) and 0.0 < float(fraction) <= 1.0):
        raise ValueError(f"filter_fraction must be in (0, 1], got {fraction!r}; the paper uses 0.4")
    if scope not in SCOPES:
        raise ValueError(f"selection.scope '{scope}' is not one of {list(SCOPES)}; use local (paper) or global")
    if rule not in RULES:
        raise ValueError(f"selection.rule '{rule}' is not one of {list(RULES)}; use quantile (paper) or exact_k")
    if threshold_group is not None:
        if isinstance(threshold_group, bool) or not isinstance(threshold_group, int) or threshold_group < 1:
            raise ValueError("selection.threshold_group must be a positive number of sequences or null, "
                             f"got {threshold_group!r}")
        if scope == "global":
            raise ValueError("selection.threshold_group splits a rank's micro-batch (selection.scope local); "
                             "selection.scope global takes one threshold over all ranks: unset one of them")


def n_keep(n: int, fraction: float) -> int:
    """``exact_k``: how many of ``n`` tokens to keep: ceil(fraction·n), rounding noise removed."""
    return min(n, math.ceil(round(fraction * n, 9)))


def published_quantile(values_N: Tensor, q: float) -> Tensor:
    """``torch.quantile(values_N, q)`` (linear interpolation) on finite values; 0-d tensor."""
    if values_N.numel() <= _TORCH_QUANTILE_MAX:
        return torch.quantile(values_N, q)
    # torch's algorithm: rank = q·(n − 1) in the values' dtype, lerp between its two neighbours.
    ordered = torch.sort(values_N).values
    rank = torch.tensor(q, dtype=values_N.dtype) * (values_N.numel() - 1)
    below, above = int(rank.floor()), int(rank.ceil())
    return torch.lerp(ordered[below], ordered[above], rank - below)


def _keep_one(delta_N: Tensor, fraction: float, rule: str) -> tuple[Tensor, float]:
    """(N,) keep mask and the threshold of ONE threshold group (see the module contract)."""
    finite = torch.isfinite(delta_N)
    keep = torch.zeros_like(finite)
    n = int(finite.sum())
    if n == 0:
        return keep, float("nan")
    if rule == "quantile":
        threshold = published_quantile(delta_N[finite], 1 - fraction)
        return finite & (delta_N >= threshold), float(threshold)
    # exact_k: a stable descending sort keeps equal values in index order (the tie rule); the
    # non-finite values are pushed to the end and never reached, as k <= the finite count.
    ranked = torch.where(finite, delta_N, torch.full_like(delta_N, -torch.inf))
    order = torch.sort(ranked, descending=True, stable=True).indices
    keep[order[:n_keep(n, fraction)]] = True
    return keep, float(delta_N[keep].min())


def keep_mask(delta_N: Tensor, fraction: float, rule: str = "quantile") -> Tensor:
    """(N,) bool: the tokens ``rule`` keeps when all of ``delta_N`` is one threshold group."""
    return _keep_one(delta_N.detach().float(), fraction, rule)[0]


def threshold_groups(loss_mask_BT: Tensor, threshold_group: int | None) -> Tensor | None:
    """(N,) group id of each supervised position: its row // ``threshold_group`` (None: one group)."""
    if threshold_group is None:
        return None
    rows_N = loss_mask_BT.nonzero(as_tuple=True)[0]  # row-major, the order of logits[loss_mask]
    return torch.div(rows_N, threshold_group, rounding_mode="floor")


def group_sizes(groups_N: Tensor | None, n: int) -> list[int]:
    """Sizes of the consecutive threshold groups (one group of ``n`` when ``groups_N`` is None)."""
    if groups_N is None:
        return [n] if n else []
    return torch.unique_consecutive(groups_N, return_counts=True)[1].tolist()


@dataclass
class Selection:
    """What the filter did on this rank (for the loss and for logging)."""

    keep_N: Tensor
    """(N,) bool mask of kept tokens on this rank."""
    threshold: float
    """The ΔL cut: the quantile (``quantile``) or the smallest kept ΔL (``exact_k``); with several
    threshold groups, their mean. Identical on every rank in global scope; nan when nothing is kept."""
    kept_global: int
    """Kept tokens summed over the dp group (== local count in local scope with dp_size 1)."""
    total_global: int
    """Supervised tokens summed over the dp group."""
    nonfinite_global: int = 0
    """Tokens whose ΔL was NaN or ±inf (never kept), summed over the dp group."""


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


def select_tokens(delta_N: Tensor, fraction: float, scope: str = "local", group=None, *, rule: str = "quantile",
                  groups_N: Tensor | None = None) -> Selection:
    """Choose the tokens to train on. ``group`` (dp group) is used by ``global`` scope and for the
    global counts (None in a single process); ``groups_N`` = ``threshold_groups(...)`` (local only)."""
    check_selection(fraction, scope, rule)
    import torch.distributed as dist

    distributed = group is not None and dist.is_initialized() and dist.get_world_size(group) > 1
    delta = delta_N.detach().float()
    nonfinite = int((~torch.isfinite(delta)).sum())
    if scope == "global":
        assert groups_N is None, "threshold groups apply to local scope only (check_selection refuses both)"
        if distributed:
            parts = _gather_variable(delta, group)
            everything = torch.cat(parts)
            keep_all, threshold = _keep_one(everything, fraction, rule)
            start = sum(p.shape[0] for p in parts[: dist.get_rank(group)])
            keep = keep_all[start:start + delta.shape[0]]
            return Selection(keep_N=keep, threshold=threshold, kept_global=int(keep_all.sum()),
                             total_global=int(everything.shape[0]),
                             nonfinite_global=int((~torch.isfinite(everything)).sum()))
    masks, thresholds = [], []
    for part in torch.split(delta, group_sizes(groups_N, delta.shape[0])):
        m, t = _keep_one(part, fraction, rule)
        masks.append(m)
        thresholds.append(t)
    keep = torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool, device=delta.device)
    finite_t = [t for t in thresholds if math.isfinite(t)]
    threshold = sum(finite_t) / len(finite_t) if finite_t else float("nan")
    counts = torch.tensor([int(keep.sum()), delta.shape[0], nonfinite], dtype=torch.long, device=delta.device)
    if distributed:
        dist.all_reduce(counts, group=group)
    return Selection(keep_N=keep, threshold=threshold, kept_global=int(counts[0]), total_global=int(counts[1]),
                     nonfinite_global=int(counts[2]))
