"""Shared setup of the speculative-decoding benchmarks (spec_*.py): a target/draft pair, results files.

The pair: a random-weight Llama target (hidden 1024, 4 layers: ~46M parameters; 8 layers, ~88M, for
spec_speedup.py so that the target costs >= 20x the draft per forward; large enough that
one forward on CPU is dominated by reading its weights, as on a GPU) with a sharpened output head
(logits std ~3, so sampling is not near-uniform), and a ``demo-draft`` Llama (hidden 64, 1 layer)
DISTILLED here with plain torch: forward KL to the target's teacher-forced distributions on
sequences the target itself generated, for a few hundred Adam steps. The draft is what
AdaSPEC-style training produces in miniature: a small model that agrees with the target often
enough for acceptance to be meaningful.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from results_io import machine as machine_info, write_result  # noqa: F401  (re-exported)

RESULTS = Path(__file__).resolve().parent / "results"
VOCAB = 128
LAYER_SCALE = 0.3
EMBED_SCALE = 20.0






def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_target(dev, layers: int = 4) -> torch.nn.Module:
    from adaspec_dist.models.load import build_preset

    target = build_preset("demo-target", VOCAB, seed=0, hidden_size=1024, num_hidden_layers=layers,
                          num_attention_heads=16, num_key_value_heads=8, intermediate_size=2752)
    with torch.no_grad():
        target.lm_head.weight.mul_(5.0)   # default init gives near-uniform next-token distributions
        target.model.embed_tokens.weight.mul_(EMBED_SCALE)
        for layer in target.model.layers:  # damp the blocks' residual writes: the target's next token
            layer.self_attn.o_proj.weight.mul_(LAYER_SCALE)   # then depends mostly on recent tokens,
            layer.mlp.down_proj.weight.mul_(LAYER_SCALE)      # which a 1-layer draft can learn
    return target.to(dev)


def target_text(target, n_seqs: int, prompt_len: int, new_tokens: int, seed: int) -> list[list[int]]:
    """Sequences = random prompt + the target's own sampled continuation (temperature 1)."""
    from adaspec_dist.speculative.decoder import autoregressive_generate
    from adaspec_dist.speculative.sampling import SamplingConfig

    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randint(3, VOCAB, (n_seqs, prompt_len), generator=gen).tolist()
    dev_gen = torch.Generator(device=next(target.parameters()).device).manual_seed(seed)
    out = autoregressive_generate(target, prompts, max_new_tokens=new_tokens, generator=dev_gen,
                                  sampling=SamplingConfig(temperature=1.0))
    return [p + s for p, s in zip(prompts, out.sequences)]


def distill_draft(target, n_seqs: int, seq_len: int, steps: int, seed: int = 0) -> torch.nn.Module:
    """Forward-KL distillation of a demo-draft on the target's teacher-forced distributions over
    random token sequences (uniform coverage of the small vocabulary)."""
    from adaspec_dist.distill import objectives as obj
    from adaspec_dist.models.load import build_preset

    dev = next(target.parameters()).device
    ids = torch.randint(3, VOCAB, (n_seqs, seq_len), generator=torch.Generator().manual_seed(seed + 7)).to(dev)
    with torch.no_grad():
        teacher = torch.cat([torch.log_softmax(target(ids[i:i + 8]).logits, -1) for i in range(0, len(ids), 8)])
    draft = build_preset("demo-draft", VOCAB, seed=seed).to(dev).train()
    opt = torch.optim.Adam(draft.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(0, len(ids), (16,), generator=gen).to(dev)
        # The package's kd objective (online teacher: full log-probs as its logits) on every position.
        losses = obj.token_losses("kd", draft(ids[rows]).logits.flatten(0, 1), None,
                                  target_NV=teacher[rows].flatten(0, 1))
        loss, _ = obj.objective("kd", losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return draft.eval()


def held_out(seqs: list[list[int]], prompt_len: int) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) with the prompt masked: alpha is measured on the target's own continuations."""
    return [(s, [-100] * prompt_len + s[prompt_len:]) for s in seqs]


PAIR_DIR = Path(os.environ.get("ADASPEC_BENCH_TMP", "/tmp")) / "adaspec_spec_bench_pair_v2"
PROMPT_LEN = 8


def pair(dev=None, layers: int = 4):
    """(target, draft, held-out sequences): built once per target depth, then reused from disk."""
    from adaspec_dist.models.load import load_causal_lm, save_hf

    dev = dev or device()
    pair_dir = PAIR_DIR if layers == 4 else PAIR_DIR.with_name(f"{PAIR_DIR.name}_L{layers}")
    if not (pair_dir / "held_out.json").exists():
        target = build_target("cpu", layers)
        draft = distill_draft(target, 64, 32, 300)
        seqs = target_text(target, 48, PROMPT_LEN, 32, seed=1)
        save_hf(target, pair_dir / "target")
        save_hf(draft, pair_dir / "draft")
        (pair_dir / "held_out.json").write_text(json.dumps(seqs))
    seqs = json.loads((pair_dir / "held_out.json").read_text())
    return (load_causal_lm(str(pair_dir / "target"), device=dev, dtype="float32"),
            load_causal_lm(str(pair_dir / "draft"), device=dev, dtype="float32"), held_out(seqs, PROMPT_LEN))


def prompts(n: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (n, PROMPT_LEN), generator=gen).tolist()


def forward_ms(model, batch: int, new_tokens: int, context: int = 40, reps: int = 7) -> float:
    """Median time (ms) of one cached forward over ``new_tokens`` tokens after ``context`` cached ones."""
    import time

    from adaspec_dist.speculative.kv_cache import SlotCache
    from adaspec_dist.speculative.lm import HFCausalLM

    lm = HFCausalLM(model)
    slot = SlotCache(lm.new_cache(), batch, lm.device)
    ids = torch.randint(3, VOCAB, (batch, context), device=lm.device)
    valid = torch.ones((batch, context), dtype=torch.bool, device=lm.device)
    lm.forward(ids, torch.arange(context, device=lm.device).expand(batch, context), slot.attention_mask(valid),
               slot.cache)
    slot.append(valid)
    times = []
    for _ in range(reps):
        x = torch.randint(3, VOCAB, (batch, new_tokens), device=lm.device)
        v = torch.ones((batch, new_tokens), dtype=torch.bool, device=lm.device)
        pos = (context + torch.arange(new_tokens, device=lm.device)).expand(batch, new_tokens)
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        lm.forward(x, pos, slot.attention_mask(v), slot.cache)
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        slot.cache.crop(-new_tokens)   # back to `context` cached slots for the next repetition
    return 1000 * sorted(times)[len(times) // 2]
