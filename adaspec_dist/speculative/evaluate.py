"""Acceptance and speed evaluation of one or more drafts against a target (function API).

Contract
--------
``evaluate_drafts(target, drafts, prompts, answers_for_alpha, cfg) -> dict`` (JSON-ready):

* ``target`` and each draft: HF causal LMs (or ``lm.CausalLM`` implementations) on one device;
  the target may be a tensor-parallel ``models.tp_target.TPTargetLM`` (``cfg.tp > 1``): then
  every rank of its group calls this with the same inputs and gets the same result;
  ``drafts`` maps a display name to a model; ``prompts`` are token-id lists;
  ``answers_for_alpha`` are held-out teacher-forced sequences (``TokenizedExample`` or
  ``(input_ids, labels)``; ``None`` or empty skips α_logits);
* the target alone is decoded once (same engine, same prompts, same batches) as the speed
  baseline; each draft alone is decoded once to measure c = draft/target time per forward;
* for every γ in ``cfg.gammas`` the prompts are decoded speculatively in batches of
  ``cfg.batch_size`` and summarised (metrics.summarize) with tokens/s, speedup over the
  target and the bound τ/(γc+1);
* at temperature 0 the share of prompts whose SD output equals the target-only output is
  reported (``matches_target``; 1.0 unless float noise flips a near-tie).

Nothing here prints or writes files: report.py formats, command.py does IO.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from adaspec_dist.models.load import ModelConfig
from adaspec_dist.speculative.decoder import DecodeStats, autoregressive_generate, speculative_generate
from adaspec_dist.speculative.lm import as_causal_lm
from adaspec_dist.speculative.metrics import (CONVENTIONS, alpha_logits, speedup_bound, summarize,
                                              theoretical_tau)
from adaspec_dist.speculative.sampling import SamplingConfig, real_vocab_size

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EvalConfig:
    target: ModelConfig | None = None
    """The target model (HF dir / hub id, or a preset for smoke tests)."""
    drafts: dict = field(default_factory=dict)
    """Display name -> draft HF directory (or hub id), e.g. {kd: runs/kd/final, adaspec: runs/ada/final}."""
    data: dict | None = None
    """A data.tasks.DataConfig mapping (task, source, split, limit, ...); None = synthetic token prompts."""
    tokenizer: str | None = None
    """Tokenizer dir / hub id for `data`; default: the target's directory."""
    num_prompts: int = 32
    """Prompts to decode (the first ones of the split, or synthetic ones)."""
    max_prompt_tokens: int = 256
    """Prompts are cut from the left to this many tokens."""
    gammas: list[int] = field(default_factory=lambda: list(range(1, 9)))
    """Draft lengths to evaluate."""
    batch_size: int = 8
    temperature: float = 0.0
    """0 = greedy; applied to target and draft alike."""
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0
    device: str = "auto"
    """auto = cuda when available, else cpu."""
    out_dir: str = "runs/eval"
    """Receives eval.json, the PNG plots, tensorboard scalars and config.yaml."""
    tp: int = 1
    """Tensor-parallel size of the target (megatron-core, sharded over the launched ranks: run under
    ``torchrun --nproc_per_node TP``); 1 = the HF model on one device."""

    def validate(self) -> None:
        if not self.gammas or any(g < 1 for g in self.gammas):
            raise ValueError(f"gammas {self.gammas} must be a non-empty list of integers >= 1")
        if self.batch_size < 1 or self.num_prompts < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size, num_prompts and max_new_tokens must all be >= 1")
        SamplingConfig(temperature=self.temperature, top_p=self.top_p).validate()
        if self.tp < 1:
            raise ValueError(f"tp {self.tp} must be >= 1 (1 = no tensor parallelism)")
        if self.tp > 1 and self.top_p < 1.0:
            raise ValueError("top_p < 1 is not supported with a tensor-parallel target (tp > 1); use top_p=1")

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p)


def _batched(run: Callable[[list[list[int]], torch.Generator], Any], prompts: Sequence[list[int]],
             batch_size: int, seed: int, device) -> tuple[list[list[int]], DecodeStats]:
    """Run ``run(chunk, generator)`` over batches; merge outputs and stats."""
    gen = torch.Generator(device=device).manual_seed(seed)
    seqs: list[list[int]] = []
    total: DecodeStats | None = None
    for start in range(0, len(prompts), batch_size):
        out = run(list(prompts[start:start + batch_size]), gen)
        seqs.extend(out.sequences)
        if total is None:
            total = out.stats
        else:
            total.accept_hist = [a + b for a, b in zip(total.accept_hist, out.stats.accept_hist)]
            total.generated += out.stats.generated
            total.seconds += out.stats.seconds
    assert total is not None
    return seqs, total


def _tokens_per_s(stats: DecodeStats) -> float:
    return stats.generated / stats.seconds if stats.seconds > 0 else float("nan")


def evaluate_drafts(target, drafts: dict[str, Any], prompts: Sequence[list[int]],
                    answers_for_alpha: Sequence | None, cfg: EvalConfig, *, eos_token_id: int | None = None,
                    vocab_size: int | None = None, progress: Callable | None = None) -> dict[str, Any]:
    """Measure α_logits, acceptance, τ and speed for each draft (see the module docstring).

    ``progress(name, gamma)`` is called after each (draft, γ) run (the CLI drives tqdm with it).
    """
    if not prompts:
        raise ValueError("no prompts to evaluate; raise num_prompts or check the data split")
    if not drafts:
        raise ValueError("no drafts given; set drafts: {name: path} in the eval config")
    target = as_causal_lm(target)
    device = target.device
    sampling = cfg.sampling
    kw = dict(sampling=sampling, eos_token_id=eos_token_id, max_new_tokens=cfg.max_new_tokens)

    def baseline(model, V):
        # A tiny warm-up first so one-time allocation/dispatch costs do not land in the timing.
        autoregressive_generate(model, [list(prompts[0])], sampling=sampling, max_new_tokens=2, vocab_size=V)
        return _batched(lambda ch, g: autoregressive_generate(model, ch, generator=g, vocab_size=V, **kw),
                        prompts, cfg.batch_size, cfg.seed, device)

    result: dict[str, Any] = {
        "conventions": CONVENTIONS,
        "settings": {"batch_size": cfg.batch_size, "temperature": cfg.temperature, "top_p": cfg.top_p,
                     "max_new_tokens": cfg.max_new_tokens, "gammas": list(cfg.gammas),
                     "num_prompts": len(prompts), "seed": cfg.seed, "device": str(device), "tp": cfg.tp},
        "drafts": {},
    }
    target_seqs = target_stats = None
    for name, draft_model in drafts.items():
        draft = as_causal_lm(draft_model)
        V = vocab_size or real_vocab_size(target.vocab_width, draft.vocab_width)
        if target_stats is None:
            target_seqs, target_stats = baseline(target, V)
            result["target"] = {"tokens_per_s": _tokens_per_s(target_stats), "generated": target_stats.generated,
                                "seconds": target_stats.seconds}
        _, draft_stats = baseline(draft, V)
        cost_ratio = draft_stats.seconds / draft_stats.generated / (target_stats.seconds / target_stats.generated)
        entry: dict[str, Any] = {"draft_tokens_per_s": _tokens_per_s(draft_stats), "cost_ratio": cost_ratio,
                                 "alpha_logits": None, "alpha_positions": 0, "by_gamma": {}}
        if answers_for_alpha:
            a = alpha_logits(target, draft, answers_for_alpha, sampling=sampling, batch_size=cfg.batch_size,
                             vocab_size=V)
            entry["alpha_logits"], entry["alpha_positions"] = a["alpha"], a["positions"]
        for gamma in cfg.gammas:
            seqs, stats = _batched(
                lambda ch, g: speculative_generate(target, draft, ch, gamma=gamma, generator=g, vocab_size=V, **kw),
                prompts, cfg.batch_size, cfg.seed, device)
            row = summarize(stats)
            tps = _tokens_per_s(stats)
            row.update(tokens_per_s=tps, speedup=tps / result["target"]["tokens_per_s"],
                       speedup_bound=speedup_bound(row["tau"], gamma, cost_ratio), seconds=stats.seconds)
            if entry["alpha_logits"] is not None:
                row["tau_theory"] = theoretical_tau(entry["alpha_logits"], gamma)
            if cfg.temperature == 0:
                row["matches_target"] = sum(a == b for a, b in zip(seqs, target_seqs)) / len(seqs)
            entry["by_gamma"][str(gamma)] = row
            logger.info("%s gamma=%d: acceptance %.3f tau %.2f speedup %.2fx", name, gamma,
                        row["acceptance_rate"], row["tau"], row["speedup"])
            if progress is not None:
                progress(name, gamma)
        result["drafts"][name] = entry
    return result
