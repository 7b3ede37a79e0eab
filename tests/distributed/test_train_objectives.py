"""Objective maths on a tiny real HF model, single process: sft CE equals HF's own loss, an empty
batch keeps the graph, kd / adaspec normalisation and selection counts."""
from __future__ import annotations

import pytest
import torch

from adaspec_dist.sparse.target import SparseTarget
from adaspec_dist.distill import objectives as obj
from adaspec_dist.distill.batches import TokenStream, collate
from adaspec_dist.sparse.divergence import dense_divergence
from adaspec_dist.distill.selection import keep_mask, n_keep
from adaspec_dist.models.load import build_preset

V = 96


class Ex:
    def __init__(self, ids, prompt):
        self.input_ids = ids
        self.labels = [-100] * prompt + ids[prompt:]


def _batch():
    g = torch.Generator().manual_seed(0)
    return collate([Ex(torch.randint(4, V, (n,), generator=g).tolist(), p) for n, p in ((12, 5), (7, 3), (9, 2))])


def test_sft_cross_entropy_equals_hf_loss():
    model = build_preset("tiny-llama", V, seed=2)
    batch = _batch()
    logits = obj.supervised_logits(model, batch)
    losses = obj.token_losses("sft", logits, batch)
    labels = batch.input_ids.clone()
    labels[:, 1:][~batch.loss_mask[:, :-1]] = -100
    labels[:, 0] = -100
    hf = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
    torch.testing.assert_close(losses.l_draft.mean(), hf, rtol=1e-5, atol=1e-6)
    assert logits.shape == (int(batch.loss_mask.sum()), V)


def test_empty_batch_keeps_the_graph():
    model = build_preset("tiny-llama", V, seed=2)
    empty = collate([])
    logits = obj.supervised_logits(model, empty)
    assert logits.shape == (0, V) and logits.requires_grad
    target = SparseTarget(ids=torch.zeros(0, 4, dtype=torch.long), logp=torch.zeros(0, 4), weights=None, scheme="topk")
    empty.target = target
    loss, stats = obj.objective("kd", obj.token_losses("kd", logits, empty))
    loss.backward()
    assert loss.item() == 0.0 and stats["kept_global"] == 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("n", [40, 37])
@pytest.mark.parametrize("rule", ["quantile", "exact_k"])
def test_adaspec_keeps_top_fraction_with_the_published_loss_scale(n, rule):
    g = torch.Generator().manual_seed(1)
    student, teacher, ref = (torch.randn(n, V, generator=g) for _ in range(3))
    student.requires_grad_(True)
    losses = obj.TokenLosses(dense_divergence(student, teacher), dense_divergence(ref, teacher))
    delta = losses.l_draft.detach() - losses.l_ref
    kept = keep_mask(delta, 0.4, rule)
    expected = (n_keep(n, 0.4) if rule == "exact_k" else int(0.4 * (n - 1)) + 1)  # 16 / 15 (exact_k 15)
    assert int(kept.sum()) == expected
    if rule == "exact_k":
        assert torch.equal(kept.nonzero().flatten().sort().values,
                           delta.argsort(descending=True)[:n_keep(n, 0.4)].sort().values)
    kept_mean = losses.l_draft[kept].mean()
    # Default = the published code: sum over kept / all supervised tokens = k_eff x the kept mean.
    loss, stats = obj.objective("adaspec", losses, fraction=0.4, rule=rule)
    k_eff = stats["kept_global"] / stats["total_global"]
    assert stats["kept_global"] == expected and stats["total_global"] == n and stats["nonfinite_global"] == 0
    torch.testing.assert_close(loss, k_eff * kept_mean)
    # The option: the plain mean over kept tokens.
    loss_kept, _ = obj.objective("adaspec", losses, fraction=0.4, rule=rule, normalization="kept")
    torch.testing.assert_close(loss_kept, kept_mean)
    with pytest.raises(ValueError, match="loss_normalization 'mean'"):
        obj.objective("adaspec", losses, fraction=0.4, normalization="mean")
    with pytest.raises(ValueError, match="normalization_scope 'rank'"):
        obj.objective("adaspec", losses, fraction=0.4, normalization_scope="rank")


@pytest.mark.parametrize("name", ["adaspec", "kd"])
def test_per_rank_normalisation_weighs_threshold_groups_equally(name):
    """groups of 3 + 2 sequences stand for two devices: per_rank = mean_g(Σ_kept,g / N_g) (HF
    Trainer 4.52.3 per device, DeepSpeed averaging the devices); global = Σ_kept / N."""
    g = torch.Generator().manual_seed(2)
    sizes = [23, 9]
    n = sum(sizes)
    student, teacher, ref = (torch.randn(n, V, generator=g) for _ in range(3))
    losses = obj.TokenLosses(dense_divergence(student, teacher), dense_divergence(ref, teacher))
    groups = torch.tensor([0] * sizes[0] + [1] * sizes[1])
    delta = losses.l_draft - losses.l_ref
    if name == "adaspec":
        keep = torch.cat([keep_mask(d, 0.4) for d in torch.split(delta, sizes)])
    else:
        keep = torch.ones(n, dtype=torch.bool)
    parts = [(l[k].sum(), l.shape[0]) for l, k in zip(torch.split(losses.l_draft, sizes), torch.split(keep, sizes))]
    per_rank, stats = obj.objective(name, losses, groups_N=groups)
    torch.testing.assert_close(per_rank, sum(s / c for s, c in parts) / 2)
    assert stats["kept_global"] == int(keep.sum())
    glob, _ = obj.objective(name, losses, groups_N=groups, normalization_scope="global")
    torch.testing.assert_close(glob, losses.l_draft[keep].sum() / n)
    if name == "adaspec":  # kept-mean per group under per_rank
        kept_norm, _ = obj.objective(name, losses, groups_N=groups, normalization="kept")
        torch.testing.assert_close(kept_norm, sum(l[k].mean() for l, k in zip(torch.split(losses.l_draft, sizes),
                                                                               torch.split(keep, sizes))) / 2)


def test_a_nan_delta_is_dropped_and_the_loss_stays_finite():
    g = torch.Generator().manual_seed(3)
    student, teacher, ref = (torch.randn(13, V, generator=g) for _ in range(3))
    student.requires_grad_(True)
    l_ref = dense_divergence(ref, teacher)
    l_ref[[1, 5]] = float("nan")  # e.g. a corrupt reference column
    losses = obj.TokenLosses(dense_divergence(student, teacher), l_ref)
    loss, stats = obj.objective("adaspec", losses, fraction=0.4)
    assert torch.isfinite(loss) and stats["nonfinite"] == stats["nonfinite_global"] == 2
    assert stats["kept"] == int(0.4 * 10) + 1  # the rule on the 11 finite values
    loss.backward()
    assert torch.isfinite(student.grad).all()


def test_token_stream_assignment_matches_the_reader_contract():
    examples = [Ex([4, 5, 6, i % 90 + 4], 1) for i in range(11)]
    streams = [TokenStream(examples, batch_size=2, dp_rank=r, dp_size=2, seed=3) for r in (0, 1)]
    assert len(streams[0]) == len(streams[1]) == 3
    seen = [int(i) for s in streams for b in s for i in b.seq_ids]
    assert sorted(seen) == list(range(11))  # disjoint, complete; rank 1's last batch is empty
    s = streams[0]
    s.set_epoch(1)
    first = next(iter(s)).seq_ids.tolist()
    state = s.state_dict()
    rest = [b.seq_ids.tolist() for b in s]
    s2 = TokenStream(examples, batch_size=2, dp_rank=0, dp_size=2, seed=3)
    s2.load_state_dict(state)
    assert [b.seq_ids.tolist() for b in s2] == rest and first not in rest


def test_wrong_objective_needs_cache():
    batch = _batch()
    with pytest.raises(ValueError, match="needs cache_dir"):
        obj.token_losses("kd", torch.zeros(int(batch.loss_mask.sum()), V), batch)
