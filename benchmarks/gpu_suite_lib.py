"""The parts of ``gpu_suite.py`` that are not sections: shapes per machine, model construction, timing.

* ``profile_for(tiny, gpu_mem_gib)`` -> :class:`Profile`: the real shapes on a big GPU (Pythia-1.4B /
  Pythia-31M-shaped GPTNeoX, a TinyLlama-1.1B-shaped Llama), smaller batches on a < 60 GiB card
  (a 24 GB one), everything shrunk for ``--tiny`` on a CPU. Budgets are hard per-section limits.
* ``build_model(family_preset, vocab, arch, device, dtype, seed)``: a real Hugging Face model with
  random weights from the package's preset configs (``models.load.preset_config``: transformers'
  ``GPTNeoXConfig`` / ``LlamaConfig``), initialised directly on the device (a 1.4B model in a
  second on a GPU, instead of a minute on the CPU).
* ``AgreeingPair``: a target and a draft made to agree on a chosen share of greedy tokens. Random
  models disagree almost always; distilling a 50k-vocabulary draft for a few hundred steps (what
  ``spec_common.py`` does at vocab 128) would not reliably reach ~70 %. So both are built around
  one shared low-rank "bigram" core: token x embeds as ``A[x]`` (draft, width r) or ``A[x] P``
  (target, width H; P has r orthonormal rows orthogonal to the all-ones vector, so layer norm
  treats both alike) and the heads are ``B`` / ``B P``, so without their blocks both models have
  the same logits ``∝ A[x]·B[y]``; their blocks are damped (they add context-dependent noise, the
  target's part of which the draft cannot model), and the draft's head gets ``σ·noise`` with σ
  bisected until greedy agreement on the target's own continuations of the benchmark's prompts
  is the requested share.
  The cost of every forward is that of the real shapes; only the weights' values are arranged.
* ``sync(device)``, ``timed(fn, device)``: wall-clock timing that waits for the GPU.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

# Real configs (HF hub config.json of EleutherAI/pythia-1.4b, pythia-31m, TinyLlama-1.1B), no download.
PYTHIA_VOCAB = 50304
PYTHIA_1_4B = dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192,
                   max_position_embeddings=2048)
PYTHIA_31M = dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1024,
                  max_position_embeddings=2048)
LLAMA_VOCAB = 32000
LLAMA_1B = dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                intermediate_size=5632, max_position_embeddings=2048)

# Dense bf16 peak TFLOP/s (no sparsity) by device-name fragment; the first match wins.
PEAK_BF16_TFLOPS = [("H200", 989.0), ("H100", 989.0), ("H800", 989.0), ("GH200", 989.0), ("B200", 2250.0),
                    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("A6000", 155.0),
                    ("4090", 165.0), ("A10", 125.0), ("L4", 121.0), ("3090", 71.0)]


@dataclass
class Profile:
    name: str
    vocab: int
    target: dict
    """GPTNeoX (Pythia) architecture of the target (preset tiny-neox + these fields)."""
    draft: dict
    llama: dict
    llama_vocab: int
    seq_len: int
    prompt_len: int
    cache_max_seqs: int
    """Upper bound of the cache batch (sequences); memory may allow fewer."""
    cache_batches: int
    train_micro: int
    train_steps: int
    train_warmup: int
    sd_batches: tuple = (1, 8, 32)
    sd_new_tokens: int = 64
    sd_prompt_len: int = 16
    hf_prompts: int = 4
    tp_arch: dict = field(default_factory=dict)
    tp_tok_vocab: int = 1024
    tp_examples: int = 64
    tp_max_length: int = 256
    budgets: dict = field(default_factory=dict)
    """Hard wall-clock limit per section (s)."""


def profile_for(tiny: bool, gpu_mem_gib: float | None) -> Profile:
    if tiny:
        return Profile(
            name="tiny (CPU)", vocab=2048,
            target=dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=512,
                        max_position_embeddings=256),
            draft=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                       max_position_embeddings=256),
            llama=dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=256, max_position_embeddings=256), llama_vocab=1024,
            seq_len=64, prompt_len=16, cache_max_seqs=8, cache_batches=3, train_micro=4, train_steps=7,
            train_warmup=2, sd_new_tokens=12, sd_prompt_len=8, hf_prompts=2,
            tp_arch=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, max_position_embeddings=256),
            tp_tok_vocab=400, tp_examples=12, tp_max_length=64,
            budgets={"correctness": 150, "cache": 40, "train": 60, "spec": 60, "tp": 90})
    big = gpu_mem_gib is None or gpu_mem_gib >= 60
    return Profile(
        name=f"{'big' if big else 'small'} GPU ({gpu_mem_gib:.0f} GiB)" if gpu_mem_gib else "GPU",
        vocab=PYTHIA_VOCAB, target=PYTHIA_1_4B, draft=PYTHIA_31M, llama=LLAMA_1B, llama_vocab=LLAMA_VOCAB,
        seq_len=512, prompt_len=64, cache_max_seqs=256 if big else 32, cache_batches=6 if big else 8,
        train_micro=16 if big else 8, train_steps=28, train_warmup=3,
        tp_arch={**LLAMA_1B, "num_hidden_layers": 4},
        # 450 s in all (+ ~15 s preflight): the suite ends inside 8 minutes even when every section
        # runs to its limit; benchmarks/gpu_suite.sh adds a 480 s backstop.
        budgets={"correctness": 160, "cache": 65, "train": 70, "spec": 85, "tp": 70})


def peak_tflops(device_name: str | None) -> tuple[float | None, str]:
    """(dense bf16 peak TFLOP/s, where the number comes from) for an MFU; None when unknown."""
    if not device_name:
        return None, "no GPU: MFU not computed"
    for frag, value in PEAK_BF16_TFLOPS:
        if frag in device_name:
            return value, f"datasheet dense bf16 peak of '{frag}' ({value:g} TFLOP/s, no sparsity)"
    return None, f"no peak known for '{device_name}' (pass --peak-tflops)"


def sync(device: Any) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: Any) -> tuple[Any, float]:
    """(fn(), seconds), waiting for the device before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def build_model(preset: str, vocab: int, arch: dict, *, device: Any, dtype: torch.dtype, seed: int):
    """A random-weight HF causal LM of the preset family with ``arch``, built on ``device``."""
    from transformers import AutoModelForCausalLM

    from adaspec_dist.models.load import preset_config

    config = preset_config(preset, vocab, **arch)
    torch.manual_seed(seed)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config)
    except (RuntimeError, NotImplementedError, TypeError):   # a transformers that resists: build on the CPU
        model = AutoModelForCausalLM.from_config(config).to(device)
    assert all(p.device.type == torch.device(device).type for p in model.parameters())
    return model.to(dtype).eval()


def _block_outputs(model) -> list[torch.nn.Linear]:
    """The linear layers that write into the residual stream (attention out, MLP down)."""
    names = ("attention.dense", "mlp.dense_4h_to_h", "self_attn.o_proj", "mlp.down_proj")
    return [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(names)]


class AgreeingPair:
    """Target and draft around one shared low-rank core (see the module docstring)."""

    def __init__(self, vocab: int, target_hidden: int, draft_hidden: int, *, seed: int = 0, logit_std: float = 3.0,
                 block_scale: float = 0.03):
        g = torch.Generator().manual_seed(seed)
        r, h = draft_hidden, target_hidden
        assert r <= h - 1, "the draft must be narrower than the target"
        self.A = torch.randn(vocab, r, generator=g)
        self.A -= self.A.mean(1, keepdim=True)              # zero-mean rows: layer norm subtracts nothing
        self.B = torch.randn(vocab, r, generator=g)
        self.noise = torch.randn(vocab, r, generator=g)
        q = torch.randn(h, r, generator=g)
        q -= q.mean(0, keepdim=True)                        # columns orthogonal to the all-ones vector
        self.P = torch.linalg.qr(q.double())[0].float().T   # (r, h), orthonormal rows
        self.r, self.h, self.logit_std, self.block_scale = r, h, logit_std, block_scale
        self.sigma = 0.0

    @torch.no_grad()
    def shape_target(self, model) -> None:
        dev, dt = model.device, model.dtype
        A, B, P = self.A.to(dev), self.B.to(dev), self.P.to(dev)   # (V x r) @ (r x H): on the device
        # per-dimension embedding std ~1 (as the draft's), logits std ~logit_std
        model.get_input_embeddings().weight.copy_((A @ P * math.sqrt(self.h / self.r)).to(dt))
        model.get_output_embeddings().weight.copy_((B @ P * self.logit_std / math.sqrt(self.h)).to(dt))
        self.damp(model, self.block_scale)

    @torch.no_grad()
    def shape_draft(self, model) -> None:
        model.get_input_embeddings().weight.copy_(self.A.to(model.device, model.dtype))
        self.damp(model, self.block_scale)
        self.set_sigma(model, self.sigma)

    @torch.no_grad()
    def set_sigma(self, draft, sigma: float) -> None:
        self.sigma = sigma
        head = (self.B + sigma * self.noise) * self.logit_std / math.sqrt(self.r)
        draft.get_output_embeddings().weight.copy_(head.to(draft.device, draft.dtype))

    @staticmethod
    @torch.no_grad()
    def damp(model, factor: float) -> None:
        for lin in _block_outputs(model):
            lin.weight.mul_(factor)
            if lin.bias is not None:
                lin.bias.mul_(factor)


@torch.no_grad()
def greedy_agreement(draft, seqs: list[list[int]], prompt_len: int) -> float:
    """Share of continuation positions where the draft's argmax (teacher-forced) is the token the
    target chose greedily (``seqs`` = prompt + the target's greedy continuation)."""
    dev = next(draft.parameters()).device
    ids = torch.tensor(seqs, device=dev)
    pred = draft(ids[:, :-1]).logits.argmax(-1)[:, prompt_len - 1:]
    return float((pred == ids[:, prompt_len:]).float().mean())


def calibrate(pair: AgreeingPair, target, draft, *, prompts: list[list[int]], new_tokens: int, want: float,
              iters: int = 12) -> dict:
    """Bisect the draft's head noise σ until its greedy agreement with the target's own greedy
    continuations of ``prompts`` is ``want`` (calibrated on the prompts the benchmark decodes: with
    near-bigram models a sequence soon settles into a cycle the draft either knows or not, so the
    share varies from prompt set to prompt set). When the target's context noise caps agreement
    below ``want`` + 0.1, both models' blocks are damped further first (at most three halvings).
    Returns the agreement reached, σ and the continuations (held-out text for α_logits)."""
    from adaspec_dist.speculative.decoder import autoregressive_generate

    prompt_len = len(prompts[0])
    assert all(len(p) == prompt_len for p in prompts)
    for _ in range(4):
        cont = autoregressive_generate(target, prompts, max_new_tokens=new_tokens).sequences
        seqs = [p + c for p, c in zip(prompts, cont)]
        pair.set_sigma(draft, 0.0)
        ceiling = greedy_agreement(draft, seqs, prompt_len)
        if ceiling >= min(0.98, want + 0.1):
            break
        AgreeingPair.damp(target, 0.5)
        AgreeingPair.damp(draft, 0.5)
        pair.block_scale *= 0.5
    lo, hi = 0.0, 4.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        pair.set_sigma(draft, mid)
        if greedy_agreement(draft, seqs, prompt_len) > want:
            lo = mid
        else:
            hi = mid
    pair.set_sigma(draft, lo)
    return {"agreement": greedy_agreement(draft, seqs, prompt_len), "ceiling": ceiling, "sigma": lo,
            "block_scale": pair.block_scale, "seqs": seqs, "prompt_len": prompt_len, "prompts": len(prompts),
            "new_tokens": new_tokens}
