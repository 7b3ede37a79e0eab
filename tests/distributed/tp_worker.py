"""Launched by test_tp_model.py under ``torchrun --nproc_per_node 2`` (gloo, TP = 2, one DP replica).

Rank 0 saves tiny HF checkpoints (vocab 101: NOT divisible by 2); both ranks load them
tensor-parallel and check, against the single-process HF model / full-vocabulary math run on
the same rank: logits (gathered here for checking only), KV-cache decoding, padding masks,
vocab-parallel top-k / log-probs / argmax / inverse-CDF sampling, Gumbel sampling and the
vocab-parallel verify step (chi-square), the refusals, and greedy speculative decoding with a
TP target; the real ``adaspec-dist eval ... --tp 2`` writes ``OUT/eval_tp2_T{0.0,1.0}``; then,
given a cache recipe, the real ``adaspec-dist cache ... --tp 2`` command writes ``OUT/cache_tp2``. Rank 0 writes everything it measured to ``OUT/results.json``; the test asserts.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from scipy.stats import chisquare

from adaspec_dist.dist import init_distributed, keep_process_group
from adaspec_dist.models import vocab_parallel as vp
from adaspec_dist.models.load import build_preset, save_hf
from adaspec_dist.models.tensor_parallel import load_tp_model

VOCAB = 101
CHECKPOINTS = {
    "neox": ("tiny-neox", {}),
    "llama_gqa": ("tiny-llama", {"num_key_value_heads": 2}),                      # k/v split over TP
    "llama_kv1_tied": ("tiny-llama", {"num_key_value_heads": 1, "tie_word_embeddings": True}),  # replicated
    "qwen2": ("qwen2", {}),                                                       # q/k/v biases
    "mistral_window": ("mistral", {}),                                            # sliding window 5 < 12
}


def build(preset: str, seed: int, **kw):
    """Presets from models.load, plus Qwen2 / Mistral variants of tiny-llama's shape."""
    if preset in ("tiny-neox", "tiny-llama"):
        return build_preset(preset, VOCAB, seed=seed, **kw)
    from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config

    shape = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256)
    cfg = Qwen2Config(**shape) if preset == "qwen2" else MistralConfig(**shape, sliding_window=5)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():  # random (non-zero) biases so a dropped bias would show
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model


def gather_vocab(local, group):
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local.contiguous(), group=group)
    return torch.cat(parts, -1)[..., :VOCAB]


def save_checkpoints(out: Path, rank: int) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    if rank == 0:
        for i, (name, (preset, kw)) in enumerate(CHECKPOINTS.items()):
            save_hf(build(preset, i, **kw), out / name)
        save_hf(build_preset("tiny-llama", VOCAB, seed=9, num_attention_heads=6, num_key_value_heads=3,
                             hidden_size=48), out / "bad_kv")
        save_hf(build_preset("tiny-llama", VOCAB, seed=9, num_attention_heads=3, num_key_value_heads=3,
                             hidden_size=48), out / "bad_heads")
        save_hf(GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=4)), out / "gpt2")
        save_hf(build_preset("tiny-llama", VOCAB, seed=5, num_hidden_layers=1), out / "draft")
        noisy = build("tiny-llama", 1, num_key_value_heads=2)   # llama_gqa's weights plus noise:
        gen = torch.Generator().manual_seed(1)                  # a draft agreeing ~60% greedily
        with torch.no_grad():
            for p in noisy.parameters():
                p.add_(0.2 * p.std() * torch.randn(p.shape, generator=gen))
        save_hf(noisy, out / "noisy")
    dist.barrier()


def check_model(path: Path, ps, res: dict, name: str) -> None:
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tp = load_tp_model(path, tp_group=ps.tp_group)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 12), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 9:] = 0                      # right padding, as the cache job batches
    with torch.no_grad():
        full = ref(ids).logits
        local = tp(ids)
        res[f"{name}/logits_maxdiff"] = (gather_vocab(local, ps.tp_group) - full).abs().max().item()
        res[f"{name}/local_width"] = local.shape[-1]
        res[f"{name}/pad_is_neg_inf"] = bool(torch.isinf(gather_vocab_all(local, ps.tp_group)[..., VOCAB:]).all())
        padded = ref(ids, attention_mask=attn).logits
        tp_padded = gather_vocab(tp(ids, attention_mask=attn), ps.tp_group)
        res[f"{name}/padmask_maxdiff"] = (tp_padded - padded)[attn.bool()].abs().max().item()
        # KV cache: prefill 7 tokens, then decode the rest one at a time.
        cache = tp.new_cache()
        steps = [tp(ids[:, :7], cache=cache)] + [tp(ids[:, t:t + 1], cache=cache) for t in range(7, 12)]
        res[f"{name}/kv_maxdiff"] = (gather_vocab(torch.cat(steps, 1), ps.tp_group) - full).abs().max().item()
    res[f"{name}/local_params"] = sum(p.numel() for p in tp.parameters())
    res[f"{name}/full_params"] = sum(p.numel() for p in ref.parameters())
    if name == "llama_gqa":
        check_vocab_math(local.reshape(-1, local.shape[-1]), full.reshape(-1, VOCAB), tp, ps, res)


def gather_vocab_all(local, group):
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local.contiguous(), group=group)
    return torch.cat(parts, -1)


def check_vocab_math(local_NV, full_NV, tp, ps, res: dict) -> None:
    from adaspec_dist.sparse.target import sampled_targets, topk_targets
    from adaspec_dist.models.tp_target import make_target_fn  # noqa: F401  (importable)

    grp, start = ps.tp_group, tp.vocab_start
    ref = topk_targets(full_NV, 8)
    ids, logp = vp.topk(local_NV, 8, vocab_start=start, group=grp, chunk_rows=5)
    res["topk/ids_equal"] = bool(torch.equal(ids, ref.ids))
    res["topk/logp_maxdiff"] = (logp - ref.logp).abs().max().item()
    logz = vp.log_normaliser(local_NV, grp, chunk_rows=7)
    res["logz_maxdiff"] = (logz - torch.logsumexp(full_NV, -1)).abs().max().item()
    probe = torch.randint(0, VOCAB, (local_NV.shape[0], 5), generator=torch.Generator().manual_seed(3))
    lp = vp.gather_logprobs(local_NV, probe, vocab_start=start, group=grp)
    res["gather_logp_maxdiff"] = (lp - torch.log_softmax(full_NV, -1).gather(1, probe)).abs().max().item()
    res["argmax_equal"] = bool(torch.equal(vp.argmax(local_NV, vocab_start=start, group=grp), full_NV.argmax(-1)))
    # The sampled scheme: same uniforms -> the same ids, counts and log-probs as sparse.sampled_targets.
    for temp in (1.0, 0.7):
        want = sampled_targets(full_NV, 16, torch.Generator().manual_seed(11), temp)
        from adaspec_dist.sparse.target import draw_uniforms, merge_draws
        u = draw_uniforms(local_NV.shape[0], 16, torch.Generator().manual_seed(11))
        x = vp.inverse_cdf_draws(local_NV, u, vocab_start=start, vocab_size=VOCAB, group=grp, temperature=temp)
        got_ids, _ = merge_draws(x, VOCAB)
        res[f"sampled_T{temp}/ids_equal"] = bool(torch.equal(got_ids, want.ids))
    # Gumbel-max across shards: 40k draws from one row vs its softmax (and power vs a wrong one).
    sharp = 10.0  # tiny random models are near-uniform: sharpen so a wrong sampler is detectable
    row = local_NV[:1].expand(40000, -1) * sharp
    gen = torch.Generator().manual_seed(100 + ps.tp_rank)
    draws = vp.gumbel_sample(row, vocab_start=start, group=grp, generator=gen)
    res["gumbel/p_value"] = chi2(draws, torch.softmax(full_NV[0].double() * sharp, -1))
    res["gumbel/p_value_wrong_dist"] = chi2(draws, torch.softmax(full_NV[0].double() * sharp * 1.1, -1))
    check_verify(local_NV, full_NV, tp, ps, res)


def chi2(samples: torch.Tensor, p: torch.Tensor) -> float:
    """Chi-square p-value of samples against p, pooling ids with expected count < 5 into one bin."""
    counts = torch.bincount(samples, minlength=p.numel()).double()
    exp = p * samples.numel()
    big = exp >= 5
    obs, ex = counts[big], exp[big]
    if (~big).any():
        obs, ex = torch.cat([obs, counts[~big].sum()[None]]), torch.cat([ex, exp[~big].sum()[None]])
    return float(chisquare(obs.numpy(), ex.numpy() * obs.sum().item() / ex.sum().item()).pvalue)


def check_verify(local_NV, full_NV, tp, ps, res: dict) -> None:
    """Lossless sampling: the first token emitted by verify_logits (γ=1) is distributed as p."""
    from adaspec_dist.models.tp_target import TPTargetLM
    from adaspec_dist.speculative.sampling import SamplingConfig

    lm = TPTargetLM(tp, seed=3)
    B, v_local = 30000, local_NV.shape[1]
    logits = local_NV[:2][None].expand(B, 2, v_local) * 10.0           # p at positions 0 and 1
    q = torch.softmax(full_NV[5].double() * 10.0, -1).float()          # a different draft distribution
    shared = torch.Generator().manual_seed(21)                        # identical on both ranks
    d = torch.multinomial(q, B, replacement=True, generator=shared)[:, None]
    qp = q[None, None].expand(B, 1, VOCAB)
    n, nxt = lm.verify_logits(logits, qp, d, VOCAB, SamplingConfig(temperature=1.0), shared)
    first = torch.where(n >= 1, d[:, 0], nxt)
    res["verify/accept_rate"] = n.float().mean().item()
    res["verify/p_value"] = chi2(first, torch.softmax(full_NV[0].double() * 10.0, -1))
    res["verify/p_value_vs_q"] = chi2(first, q.double())
    same = [torch.empty_like(first) for _ in range(2)]
    dist.all_gather(same, first, group=ps.tp_group)
    res["verify/ranks_agree"] = bool(torch.equal(same[0], same[1]))


def check_errors(out: Path, ps, res: dict) -> None:
    for name in ("bad_kv", "bad_heads", "gpt2"):
        try:
            load_tp_model(out / name, tp_group=ps.tp_group)
            res[f"error/{name}"] = None
        except ValueError as err:
            res[f"error/{name}"] = str(err)


def check_speculative(out: Path, ps, res: dict) -> None:
    from transformers import AutoModelForCausalLM

    from adaspec_dist.models.tp_target import TPTargetLM
    from adaspec_dist.speculative.decoder import speculative_generate
    from adaspec_dist.speculative.sampling import SamplingConfig

    for name in ("neox", "llama_gqa"):
        hf_target = AutoModelForCausalLM.from_pretrained(out / name, dtype=torch.float32).eval()
        draft = AutoModelForCausalLM.from_pretrained(out / "draft", dtype=torch.float32).eval()
        tp_target = TPTargetLM(load_tp_model(out / name, tp_group=ps.tp_group))
        g = torch.Generator().manual_seed(4)
        prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (3, 9, 6)]
        kw = dict(gamma=3, max_new_tokens=12, sampling=SamplingConfig(temperature=0.0))
        want = speculative_generate(hf_target, draft, prompts, **kw).sequences
        got = speculative_generate(tp_target, draft, prompts, **kw).sequences
        res[f"spec/{name}/greedy_equal"] = got == want
        res[f"spec/{name}/tokens"] = sum(len(s) for s in got)
        # Sampling mode runs end to end and stays in the vocabulary.
        sampled = speculative_generate(tp_target, draft, prompts, gamma=3, max_new_tokens=8,
                                       sampling=SamplingConfig(temperature=1.0),
                                       generator=torch.Generator().manual_seed(8)).sequences
        res[f"spec/{name}/sampled_ok"] = all(len(s) == 8 and max(s) < VOCAB for s in sampled)


def check_online_teacher(out: Path, ps, res: dict) -> None:
    """Ranks hold different micro-batches (different B and T); each gets its own rows' top-k."""
    from transformers import AutoModelForCausalLM

    from adaspec_dist.sparse.target import topk_targets
    from adaspec_dist.dist import grid_groups
    from adaspec_dist.models.tp_target import OnlineTPTeacher

    teacher = OnlineTPTeacher(str(out / "llama_gqa"), tp_group=grid_groups(2).tp_group, scheme="topk", top_k=6)
    g = torch.Generator().manual_seed(50 + ps.rank)
    b, t = (2, 7) if ps.rank == 0 else (3, 10)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    attn = torch.ones(b, t, dtype=torch.long)
    loss_mask = torch.rand(b, t, generator=g) < 0.6
    got = teacher(ids, attn, loss_mask)
    hf = AutoModelForCausalLM.from_pretrained(out / "llama_gqa", dtype=torch.float32).eval()
    with torch.no_grad():
        want = topk_targets(hf(ids).logits[loss_mask], 6)
    equal = torch.tensor([float(torch.equal(got.ids, want.ids) and len(got) == int(loss_mask.sum()))])
    diff = torch.tensor([(got.logp - want.logp).abs().max().item()])
    dist.all_reduce(equal, op=dist.ReduceOp.MIN)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    res["online/ids_equal_all_ranks"] = bool(equal.item() == 1.0)
    res["online/logp_maxdiff"] = diff.item()


EVAL_ARGS = ["gammas=[2]", "num_prompts=4", "batch_size=2", "max_new_tokens=8", "device=cpu",
             "target.dtype=float32"]
"""The eval settings test_tp_model.py repeats at TP = 1 (target llama_gqa; drafts: itself, noisy)."""


def run_eval_cli(out: Path, ps, res: dict) -> None:
    """The real ``adaspec-dist eval ... --tp 2`` (greedy and T = 1), and its target-only tokens vs HF's."""
    from transformers import AutoModelForCausalLM

    from adaspec_dist.cli import main as cli_main
    from adaspec_dist.models.tp_target import TPTargetLM
    from adaspec_dist.speculative.evaluate import EvalConfig, synthetic_inputs

    t0 = time.perf_counter()
    models = [f"target.name_or_path={out / 'llama_gqa'}", f"drafts.self={out / 'llama_gqa'}",
              f"drafts.noisy={out / 'noisy'}"]
    for temp in ("0.0", "1.0"):
        res[f"eval/rc_T{temp}"] = cli_main(["eval", "--tp", "2", *models, *EVAL_ARGS, f"temperature={temp}",
                                            f"out_dir={out / f'eval_tp2_T{temp}'}"])
    # The eval's held-out text is the target-only greedy output: TP (distributed argmax) vs HF.
    cfg = EvalConfig(num_prompts=4, max_new_tokens=8)
    hf = AutoModelForCausalLM.from_pretrained(out / "llama_gqa", dtype=torch.float32).eval()
    tp = TPTargetLM(load_tp_model(out / "llama_gqa", tp_group=ps.tp_group))
    want, got = synthetic_inputs(cfg, hf, VOCAB)[1], synthetic_inputs(cfg, tp, VOCAB)[1]
    res["eval/ar_greedy_equal"] = got == want
    res["eval/ar_tokens"] = sum(len(ids) for ids, _ in got)
    res["eval/seconds"] = time.perf_counter() - t0  # this section's share of the suite's time


def run_cache_cli(recipe: str, out: Path, res: dict) -> None:
    """The real ``adaspec-dist cache ... tp=2`` command in this (already initialised) job; it shuts
    torch.distributed down at the end, so it runs last."""
    from adaspec_dist.cli import main as cli_main

    res["cache/rc"] = cli_main(["cache", "--config", recipe, f"out_dir={out / 'cache_tp2'}", "--tp", "2"])


def main() -> None:
    out, recipe = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else None)
    torch.manual_seed(0)
    ps = init_distributed(tp_size=2)
    save_checkpoints(out, ps.rank)
    res: dict = {}
    sections = [lambda n=n: check_model(out / n, ps, res, n) for n in CHECKPOINTS]
    sections += [lambda: check_errors(out, ps, res), lambda: check_speculative(out, ps, res),
                 lambda: check_online_teacher(out, ps, res), lambda: run_eval_cli(out, ps, res)]
    if recipe:
        sections.append(lambda: run_cache_cli(recipe, out, res))
    with keep_process_group():  # the eval and cache commands shut the group down when they end
        for section in sections:
            section()
            if ps.rank == 0:  # written after each section, so a failure still shows what passed
                (out / "results.json").write_text(json.dumps(res, indent=1))
            dist.barrier()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
