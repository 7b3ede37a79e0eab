"""The fused, chunked head (distill/fused_head.py) gives the plain path's loss and every parameter's
gradient — each objective × divergence × cache scheme, the online teacher and reference, tied,
untied and frozen heads — and never creates an N × V tensor."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from adaspec_dist.distill import objectives as obj
from adaspec_dist.distill.config import SelectionConfig
from adaspec_dist.distill.fused_head import AUTO_ELEMS, fused_token_losses, supervised_hidden, use_fused
from adaspec_dist.models.head import masked_hidden, output_head, row_chunks
from adaspec_dist.models.load import build_preset, freeze
from adaspec_dist.sparse.divergence import KINDS
from adaspec_dist.sparse.target import sampled_targets, topk_targets

V = 97
CHUNK = 5  # rows per chunk: the batches below have 20-30 supervised rows, so 4-6 chunks


def _batch(seed: int = 0, scheme: str = "topk", with_ref: bool = False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (3, 14), generator=g)
    attn = torch.ones_like(ids)
    attn[2, 11:] = 0
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, 3:13] = True
    mask[1, 6:12] = True
    mask[2, 2:10] = True
    n = int(mask.sum())
    teacher_NV = torch.randn(n, V, generator=g) * 2.5
    if scheme == "topk":
        target = topk_targets(teacher_NV, 8)
    else:
        target = sampled_targets(teacher_NV, 12, torch.Generator().manual_seed(seed))
    ref = torch.rand(n, generator=g) * 3 if with_ref else None
    return SimpleNamespace(input_ids=ids, attention_mask=attn, loss_mask=mask, target=target, ref_loss=ref)


def _model(seed: int = 1, tied: bool = False, frozen: tuple[str, ...] = ()):
    model = build_preset("tiny-llama", V, seed=seed, tie_word_embeddings=tied).train()
    freeze(model, list(frozen))
    return model


def _step(losses, objective: str):
    loss, stats = obj.objective(objective, losses, fraction=0.4)
    return loss, stats


def _plain(model, objective, batch, kind, teacher=None, reference=None):
    draft = obj.supervised_logits(model, batch)
    with torch.no_grad():
        target_NV = None if teacher is None else obj.supervised_logits(teacher, batch)
        ref_NV = None if reference is None else obj.supervised_logits(reference, batch)
    return _step(obj.token_losses(objective, draft, batch, kind=kind, target_NV=target_NV, ref_NV=ref_NV),
                 objective)


def _fused(model, objective, batch, kind, teacher=None, reference=None):
    losses = fused_token_losses(objective, model, batch, kind=kind, teacher=teacher, reference=reference, rows=CHUNK)
    return _step(losses, objective)


def _grads(model, run):
    model.zero_grad(set_to_none=True)
    loss, stats = run()
    loss.backward()
    return loss.detach(), stats, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(model, plain, fused):
    lp, sp, gp = _grads(model, plain)
    lf, sf, gf = _grads(model, fused)
    assert torch.allclose(lf, lp, rtol=1e-5, atol=1e-7), (float(lf), float(lp))
    assert sf["kept"] == sp["kept"] and sf["tokens"] == sp["tokens"]
    assert gp.keys() == gf.keys() and gp, sorted(gp)
    for name in gp:
        err = float((gf[name] - gp[name]).norm() / gp[name].norm().clamp_min(1e-12))
        assert err < 1e-5, (name, err)
    return gp


@pytest.mark.parametrize("scheme", ["topk", "sampled"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("objective", ["kd", "adaspec"])
def test_cached_objectives_match_the_plain_path(objective, kind, scheme):
    model = _model()
    batch = _batch(seed=len(kind), scheme=scheme, with_ref=True)
    _assert_same(model, lambda: _plain(model, objective, batch, kind), lambda: _fused(model, objective, batch, kind))


def test_sft_matches_the_plain_path():
    model = _model()
    batch = _batch()
    _assert_same(model, lambda: _plain(model, "sft", batch, "fkl"), lambda: _fused(model, "sft", batch, "fkl"))


@pytest.mark.parametrize("kind", ["fkl", "jsd"])
@pytest.mark.parametrize("objective", ["kd", "adaspec"])
def test_online_teacher_and_reference_match_the_plain_path(objective, kind):
    model, teacher, reference = _model(1), _model(7).eval(), _model(9).eval()
    batch = _batch(seed=3)
    batch.target = None  # the online path scores against the teacher's full logits
    ref = reference if objective == "adaspec" else None
    _assert_same(model, lambda: _plain(model, objective, batch, kind, teacher, ref),
                 lambda: _fused(model, objective, batch, kind, teacher, ref))


def test_adaspec_with_an_online_reference_on_a_cache_matches_the_plain_path():
    model, reference = _model(1), _model(9).eval()
    batch = _batch(seed=4, scheme="sampled")  # no cached L_ref column: the reference runs online
    _assert_same(model, lambda: _plain(model, "adaspec", batch, "fkl", reference=reference),
                 lambda: _fused(model, "adaspec", batch, "fkl", reference=reference))


@pytest.mark.parametrize("objective", ["sft", "kd", "adaspec"])
def test_tied_head_gets_both_gradients(objective):
    model = _model(tied=True)
    assert model.get_input_embeddings().weight is output_head(model).weight
    batch = _batch(seed=5, with_ref=True)
    grads = _assert_same(model, lambda: _plain(model, objective, batch, "fkl"),
                         lambda: _fused(model, objective, batch, "fkl"))
    assert "model.embed_tokens.weight" in grads


def test_frozen_head_gets_no_gradient_and_the_rest_match():
    model = _model(frozen=("lm_head",))
    batch = _batch(seed=6, with_ref=True)
    grads = _assert_same(model, lambda: _plain(model, "adaspec", batch, "fkl"),
                         lambda: _fused(model, "adaspec", batch, "fkl"))
    assert "lm_head.weight" not in grads and "model.embed_tokens.weight" in grads


def test_hidden_states_through_the_head_are_the_logits():
    model = _model()
    batch = _batch()
    h = masked_hidden(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
    assert torch.allclose(output_head(model)(h), obj.supervised_logits(model, batch), atol=1e-6)


def test_an_empty_batch_gives_no_rows_attached_to_the_graph():
    model = _model()
    empty = SimpleNamespace(input_ids=torch.zeros(0, 5, dtype=torch.long),
                            attention_mask=torch.zeros(0, 5, dtype=torch.long),
                            loss_mask=torch.zeros(0, 5, dtype=torch.bool), target=None, ref_loss=None)
    h = supervised_hidden(model, empty)
    assert h.shape == (0, 32) and h.requires_grad
    losses = fused_token_losses("sft", model, empty, rows=CHUNK)
    assert losses.l_draft.shape == (0,)


def test_row_chunks_pad_to_the_groups_count():
    assert row_chunks(12, 5) == [slice(0, 5), slice(5, 10), slice(10, 12)]
    assert row_chunks(3, 5, count=3) == [slice(0, 3), slice(3, 3), slice(3, 3)]
    assert row_chunks(0, 5) == []


def test_auto_switches_on_above_the_threshold():
    model = _model()
    assert not use_fused("auto", model, AUTO_ELEMS // V)
    assert use_fused("auto", model, AUTO_ELEMS // V + 1)
    assert use_fused("on", model, 1) and not use_fused("off", model, 10 ** 9)
    with pytest.raises(ValueError, match="engine.fused_head 'yes' must be one of"):
        use_fused("yes", model, 1)


class _LargestTensor(TorchDispatchMode):
    """Records the element count of every tensor any aten op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("objective", ["kd", "adaspec"])
def test_no_tensor_of_n_by_v_is_created(objective):
    """Every tensor of forward + backward is below N × V on the fused path; the plain path makes one
    (so the probe can fail). The head's outputs also never exceed a chunk's rows."""
    model = build_preset("tiny-llama", 4001, seed=1, hidden_size=16, intermediate_size=16).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 4001, (2, 40), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    n = int(mask.sum())
    batch = SimpleNamespace(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=mask,
                            target=topk_targets(torch.randn(n, 4001, generator=g), 4),
                            ref_loss=torch.rand(n, generator=g))
    shapes = []
    handle = output_head(model).register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    with _LargestTensor() as probe:
        loss, _ = _step(fused_token_losses(objective, model, batch, rows=8), objective)
        loss.backward()
    handle.remove()
    assert max(s[0] for s in shapes if len(s) == 2) <= 8
    assert all(s[-2] == 0 for s in shapes if len(s) == 3)  # the model's own forward: zero positions
    assert probe.largest < n * 4001 // 4, probe.largest
    with _LargestTensor() as probe:
        _step(obj.token_losses(objective, obj.supervised_logits(model, batch), batch), objective)[0].backward()
    assert probe.largest >= n * 4001


@pytest.mark.parametrize("objective", ["kd", "adaspec"])
def test_compute_loss_takes_the_path_engine_fused_head_names(objective):
    """distill/step.py wiring: engine.fused_head on / off give the same loss and gradients through
    compute_loss (engine.head_chunk_rows reaches the head: its outputs have at most that many rows)."""
    from adaspec_dist.distill.engine import EngineConfig
    from adaspec_dist.distill.step import compute_loss

    model = _model()
    batch = _batch(seed=2, with_ref=True)
    shapes = []
    output_head(model).register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    results = {}
    for mode in ("off", "on"):
        cfg = SimpleNamespace(objective=objective, divergence="fkl", beta=0.5, filter_fraction=0.4,
                              selection=SelectionConfig(), normalization_scope="per_rank",
                              engine=EngineConfig(fused_head=mode, head_chunk_rows=3))
        run = SimpleNamespace(cfg=cfg, engine=model, target=None, reference=None, tp_teacher=None,
                              ps=SimpleNamespace(dp_group=None, dp_size=1, device="cpu"))
        results[mode] = _grads(model, lambda: compute_loss(run, batch))
    assert max(s[0] for s in shapes if len(s) == 2) == 3
    assert torch.allclose(results["on"][0], results["off"][0], rtol=1e-5)
    for name, g in results["off"][2].items():
        assert torch.allclose(results["on"][2][name], g, rtol=1e-4, atol=1e-7), name


def test_engine_config_refuses_bad_fused_head_keys():
    from adaspec_dist.distill.engine import EngineConfig

    with pytest.raises(ValueError, match="engine.fused_head 'maybe' must be one of"):
        EngineConfig(fused_head="maybe").validate()
    with pytest.raises(ValueError, match="engine.head_chunk_rows must be a positive number of rows or null"):
        EngineConfig(head_chunk_rows=0).validate()
