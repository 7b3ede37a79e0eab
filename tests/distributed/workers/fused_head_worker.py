"""2-rank worker: under real DeepSpeed engines (ZeRO 0 and 3, fp32, gloo), one micro-step of the fused
head gives the plain path's loss and every parameter's full (all-reduced / gathered) gradient.

Ranks hold different numbers of supervised rows (so different chunk counts: the padding to the
group's count is what keeps ZeRO-3's per-call all-gathers in step); the "empty" case gives rank 1
no sequence at all. Writes ``rank{r}.json``: per case, the loss of each path and the largest
relative gradient error over the parameters."""
import json
import sys
from types import SimpleNamespace

import torch
from deepspeed.utils import safe_get_full_grad

from adaspec_dist.dist import init_distributed, shutdown
from adaspec_dist.distill import objectives as obj
from adaspec_dist.distill.engine import EngineConfig, build_engine
from adaspec_dist.distill.fused_head import fused_token_losses
from adaspec_dist.models.load import build_preset
from adaspec_dist.sparse.target import SparseTarget, topk_targets

V = 97
state = init_distributed(tp_size=1)
rank = state.dp_rank


def batch(empty: bool):
    g = torch.Generator().manual_seed(10 + rank)
    rows = 0 if empty and rank == 1 else 3 - rank  # rank 0: 3 sequences, rank 1: 2 (or none)
    ids = torch.randint(3, V, (rows, 12), generator=g)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, 2 + 3 * rank:11] = True
    n = int(mask.sum())
    target = topk_targets(torch.randn(n, V, generator=g) * 2, 6) if n else SparseTarget.cat([], "topk")
    return SimpleNamespace(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=mask, target=target,
                           ref_loss=torch.rand(n, generator=g))


def step(stage: int, objective: str, tied: bool, fused: bool, empty: bool):
    model = build_preset("tiny-llama", V, seed=1, tie_word_embeddings=tied).train()
    engine = build_engine(model, cfg=EngineConfig(zero_stage=stage, precision="fp32", micro_batch_size=3),
                          total_steps=1)
    b = batch(empty)
    if fused:
        losses = fused_token_losses(objective, engine, b, rows=4, group=state.dp_group)
    else:
        losses = obj.token_losses(objective, obj.supervised_logits(engine, b), b)
    loss, _ = obj.objective(objective, losses, fraction=0.4, group=state.dp_group, dp_size=state.dp_size)
    engine.backward(loss)
    grads = {n: safe_get_full_grad(p).clone() for n, p in engine.module.named_parameters()}  # collective
    return float(loss.detach()), grads


out = {}
for stage in (0, 3):
    for objective in ("kd", "adaspec"):
        for tied in (False, True):
            for empty in ((False, True) if stage == 3 and not tied else (False,)):
                key = f"zero{stage}-{objective}-{'tied' if tied else 'untied'}{'-empty' if empty else ''}"
                lp, gp = step(stage, objective, tied, False, empty)
                lf, gf = step(stage, objective, tied, True, empty)
                err = max(float((gf[n] - gp[n]).norm() / gp[n].norm().clamp_min(1e-12)) for n in gp)
                out[key] = dict(plain=lp, fused=lf, grad_rel_err=err, params=len(gp),
                                nonzero=sum(int(g.abs().sum() > 0) for g in gp.values()))
with open(f"{sys.argv[1]}/rank{state.rank}.json", "w") as fh:
    json.dump(out, fh)
shutdown()
