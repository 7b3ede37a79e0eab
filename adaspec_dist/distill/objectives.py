"""Per-token losses and the scalar objective of ``sft``, ``kd`` and ``adaspec``.

Legend: B batch, T time, V vocabulary, N supervised positions (``loss_mask.sum()``, row-major).

Contract
--------
* ``supervised_logits(model, batch) -> (N, V)``: the model's logits at the supervised positions
  (position t predicts token t+1). An empty batch (B = 0, a rank's last batch) still runs a
  one-token forward so every rank takes part in ZeRO-3's parameter gathers; its rows are (0, V)
  but stay attached to the graph so backward's all-reduce lines up.
* ``token_losses(...)`` -> ``TokenLosses(l_draft (N,), l_ref (N,) | None)``:
  - sft: cross-entropy on the next (answer) token;
  - kd / adaspec with a cache: ``per_token_divergence`` on the cached SparseTarget; L_ref from the
    cache's reference column, or — when the cache has none — from reference logits run online
    through the SAME estimator, so both modes agree;
  - online teacher: ``dense_divergence`` against full target logits (and reference logits).
* ``objective(...)`` -> (scalar loss, stats). sft / kd train on every supervised token; adaspec on
  the tokens ``select_tokens`` keeps (distill/selection.py: rule, scope, threshold groups;
  non-finite ΔL never kept). The kept sum is divided by ``normalization``: ``"supervised"`` = all
  supervised tokens (the published code: HF Trainer's ``num_items_in_batch``, so the loss is
  k_eff × the kept mean) or ``"kept"`` = the kept tokens (the plain kept mean); sft / kd always
  divide by the supervised tokens. ``normalization_scope`` says over what the count is taken:
  - ``"per_rank"`` (default, published): each threshold group — by default the rank's
    micro-batch — is divided by its own count and the groups of a micro-batch are averaged with
    equal weight; DeepSpeed's gradient average over ranks then makes the step
    mean_r(Σ_kept,r / N_r). That is HF Trainer 4.52.3 (the official pin), where
    ``average_tokens_across_devices`` defaults to False, so ``num_items_in_batch`` counts one
    device's tokens. With ``threshold_group`` < the micro-batch each group stands for one
    emulated device (one process, micro-batch 40, groups of 5 = 8 devices × 5 sequences).
  - ``"global"``: the count is summed over the dp group and the loss multiplied by dp_size
    (undoing DeepSpeed's average): a global token mean, independent of how tokens fall into
    ranks; an empty rank simply contributes nothing.
  With gradient accumulation each micro-step is normalised by its own count (HF Trainer counts
  the whole accumulated step): equal for equal-sized micro-batches; the official runs use none.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from adaspec_dist.distill.selection import group_sizes, select_tokens
from adaspec_dist.models.logits import masked_logits
from adaspec_dist.sparse.divergence import dense_divergence, per_token_divergence

Objective = Literal["sft", "kd", "adaspec"]
TeacherMode = Literal["cached", "online"]
OBJECTIVES: tuple[Objective, ...] = get_args(Objective)
TEACHER_MODES: tuple[TeacherMode, ...] = get_args(TeacherMode)


def supervised_logits(model, batch) -> Tensor:
    """(N, V) logits of ``model`` at ``batch.loss_mask`` (see module docstring)."""
    if batch.input_ids.shape[0] == 0:
        dummy = torch.zeros(1, 1, dtype=torch.long, device=batch.input_ids.device)
        logits = model(input_ids=dummy, attention_mask=torch.ones_like(dummy), use_cache=False).logits
        return logits[0, :0]  # (0, V), attached to the graph
    return masked_logits(model, batch.input_ids, batch.attention_mask, batch.loss_mask, use_cache=False)


def next_tokens(batch) -> Tensor:
    """(N,) the token each supervised position predicts."""
    labels = torch.zeros_like(batch.input_ids)
    labels[:, :-1] = batch.input_ids[:, 1:]
    return labels[batch.loss_mask]


@dataclass
class TokenLosses:
    l_draft: Tensor  # (N,) with grad (adaspec on the fused path: detached until ``attach``)
    l_ref: Tensor | None  # (N,) detached
    attach: Callable[[Tensor], Tensor] | None = None
    """Fused head only (distill/fused_head.py): ``attach(keep_N)`` -> l_draft with the kept rows'
    values recomputed with grad; ``objective`` calls it once selection is known."""


def token_losses(objective: str, draft_NV: Tensor, batch, *, kind: str = "fkl", beta: float = 0.5,
                 target_NV: Tensor | None = None, ref_NV: Tensor | None = None) -> TokenLosses:
    """Per-token losses of one micro-batch (see module docstring for the sources)."""
    if objective == "sft":
        return TokenLosses(F.cross_entropy(draft_NV.float(), next_tokens(batch), reduction="none"), None)
    if target_NV is not None:  # online teacher: exact divergences on full logits
        l_draft = dense_divergence(draft_NV, target_NV, kind, beta)
        l_ref = None
        if objective == "adaspec":
            assert ref_NV is not None, "online adaspec needs reference logits"
            l_ref = dense_divergence(ref_NV, target_NV, kind, beta)
        return TokenLosses(l_draft, l_ref)
    if batch.target is None:
        raise ValueError(f"objective {objective} with teacher_mode=cached needs cache_dir (or use teacher_mode=online)")
    l_draft = per_token_divergence(draft_NV, batch.target, kind, beta)
    l_ref = None
    if objective == "adaspec":
        if batch.ref_loss is not None:
            l_ref = batch.ref_loss.to(l_draft.device).float()
        else:
            assert ref_NV is not None, "adaspec without a cached reference column needs reference logits"
            l_ref = per_token_divergence(ref_NV, batch.target, kind, beta)
    return TokenLosses(l_draft, None if l_ref is None else l_ref.detach())


def _global_count(n: int, device, group) -> int:
    import torch.distributed as dist

    if group is None or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return n
    t = torch.tensor([n], dtype=torch.long, device=device)
    dist.all_reduce(t, group=group)
    return int(t.item())


Normalization = Literal["supervised", "kept"]
NORMALIZATIONS: tuple[Normalization, ...] = get_args(Normalization)
NormalizationScope = Literal["per_rank", "global"]
NORMALIZATION_SCOPES: tuple[NormalizationScope, ...] = get_args(NormalizationScope)


def _per_group_mean(values_N: Tensor, sizes: list[int], denominators: list[int]) -> Tensor:
    """mean over groups of Σ_group values / max(1, denominator); 0 (attached) without groups."""
    if not sizes:
        return values_N.sum()
    sums = torch.stack([part.sum() for part in torch.split(values_N, sizes)])
    denom = torch.tensor([max(1, d) for d in denominators], dtype=sums.dtype, device=sums.device)
    return (sums / denom).mean()


def objective(objective_name: str, losses: TokenLosses, *, fraction: float = 0.4, scope: str = "local",
              rule: str = "quantile", normalization: str = "supervised", normalization_scope: str = "per_rank",
              groups_N: Tensor | None = None, group=None, dp_size: int = 1) -> tuple[Tensor, dict]:
    """Scalar loss to backpropagate and what to log (see module docstring). ``groups_N``: each
    token's threshold group (``selection.threshold_groups``), None = the whole micro-batch."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"selection.loss_normalization '{normalization}' must be one of {list(NORMALIZATIONS)}")
    if normalization_scope not in NORMALIZATION_SCOPES:
        raise ValueError(f"normalization_scope '{normalization_scope}' must be one of {list(NORMALIZATION_SCOPES)}")
    l_draft = losses.l_draft
    n = int(l_draft.shape[0])
    stats: dict = {"tokens": n}
    sizes = group_sizes(groups_N, n)
    if objective_name == "adaspec":
        delta = l_draft.detach() - losses.l_ref
        sel = select_tokens(delta, fraction, scope, group=group, rule=rule,
                            groups_N=groups_N if scope == "local" else None)
        keep = sel.keep_N
        if losses.attach is not None:  # fused head: only the kept rows are run (again) with grad
            l_draft = losses.attach(keep)
        # where, not multiply: a non-finite L_draft on a dropped token must not reach the sum.
        trained = torch.where(keep, l_draft, torch.zeros_like(l_draft))
        if normalization_scope == "global":
            denominator = sel.total_global if normalization == "supervised" else sel.kept_global
            loss = trained.sum() / max(1, denominator) * dp_size
        else:
            kept_per_group = [int(k.sum()) for k in torch.split(keep, sizes)]
            loss = _per_group_mean(trained, sizes, sizes if normalization == "supervised" else kept_per_group)
        finite = torch.isfinite(delta)
        stats.update(kept=int(keep.sum()), kept_global=sel.kept_global, total_global=sel.total_global,
                     threshold=sel.threshold, delta=delta, nonfinite=int((~finite).sum()),
                     nonfinite_global=sel.nonfinite_global,
                     l_ref_mean=float(losses.l_ref[finite].mean()) if bool(finite.any()) else 0.0)
    else:
        total = _global_count(n, l_draft.device, group)
        if normalization_scope == "global":
            loss = l_draft.sum() / max(1, total) * dp_size
        else:
            loss = _per_group_mean(l_draft, sizes, sizes)
        stats.update(kept=n, kept_global=total, total_global=total)
    stats["l_draft_sum"] = float(l_draft.detach().sum())
    return loss, stats
