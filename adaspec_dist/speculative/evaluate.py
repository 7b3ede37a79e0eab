"""Acceptance and speed evaluation of one or more drafts against a target: the ``eval`` job.

Contract
--------
``evaluate(cfg: EvalConfig) -> dict``: the job (``adaspec-dist eval`` and the pipeline's eval
stage call it). Loads the target and drafts (``models.load.load_causal_lm``; with ``tp > 1`` the
target is ``models.tp_target.load_tp_target`` over the launched ranks, exactly one TP group, every
rank running the replicated drafts identically with identically seeded generators), builds the
inputs (:func:`task_inputs`: prompts and held-out teacher-forced sequences from a task split;
without ``data``, :func:`synthetic_inputs`: random token prompts whose held-out continuations are
the target's own greedy output), runs :func:`evaluate_drafts`, and on global rank 0 writes
``eval.json``, the PNG plots, tensorboard scalars and ``config.yaml`` into ``cfg.out_dir``
(``speculative.report.write_all``). Returns the result on every rank (the same on each).

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
  target and the bound τ/(γc+1). The speedup's baseline is measured *interleaved*: each batch is
  decoded by the target alone right before SD decodes it (``timing_repeats`` times), and the speedup
  is the median of the per-batch ratios, with their min and max (``speedup_spread``) — a baseline
  timed once, at the start, is no baseline on a shared machine. A speedup above τ (impossible: a
  target call yields at most τ tokens on average) is reported as a timing error (``speedup`` None,
  ``timing_error`` says why), never as a number;
* at temperature 0 the share of prompts whose SD output equals the target-only output is
  reported (``matches_target``; 1.0 unless float noise flips a near-tie).

Nothing here prints: ``speculative.report`` formats the table, the CLI prints it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from adaspec_dist.config import save_resolved
from adaspec_dist.data.tasks import DataConfig, load_examples
from adaspec_dist.data.tokenize import prompt_ids, tokenize_examples
from adaspec_dist.data.tokenizer import job_tokenizer, load_tokenizer, vocab_fingerprint
from adaspec_dist.dist import init_distributed
from adaspec_dist.models.load import ModelConfig, load_causal_lm, model_identity, param_count
from adaspec_dist.models.positions import check_length, position_limit
from adaspec_dist.models.tp_target import check_tp_top_p, load_tp_target
from adaspec_dist.models.vocab import check_same_vocab
from adaspec_dist.speculative.decoder import DecodeStats, autoregressive_generate, speculative_generate
from adaspec_dist.speculative.lm import as_causal_lm
from adaspec_dist.speculative.metrics import (CONVENTIONS, alpha_logits, speedup_bound, summarize,
                                              theoretical_tau)
from adaspec_dist.speculative.report import write_all
from adaspec_dist.speculative.sampling import SamplingConfig, real_vocab_size

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EvalConfig:
    target: ModelConfig | None = None
    """The target model (HF dir / hub id, or a preset for smoke tests)."""
    drafts: dict = field(default_factory=dict)
    """Display name -> draft HF directory (or hub id), e.g. {kd: runs/kd/final, adaspec: runs/ada/final}."""
    data: DataConfig | None = None
    """The held-out split (task, source, split, limit, ...); None = synthetic token prompts."""
    tokenizer: str | None = None
    """Tokenizer dir / hub id for `data`; default: the target's directory."""
    num_prompts: int = 32
    """Prompts to decode (the first ones of the split, or synthetic ones)."""
    max_prompt_tokens: int = 256
    """Prompts are cut from the left to this many tokens (prompts + max_new_tokens + max(gammas) past a
    model's max_position_embeddings are refused: lower this)."""
    gammas: list[int] = field(default_factory=lambda: list(range(1, 9)))
    """Draft lengths to evaluate."""
    batch_size: int = 8
    """Prompts decoded together (rows accept different counts: ragged batches)."""
    temperature: float = 0.0
    """0 = greedy; applied to target and draft alike."""
    top_p: float = 1.0
    """Nucleus sampling of target and draft alike (1 = off; < 1 refused with tp > 1)."""
    max_new_tokens: int = 64
    """Tokens generated per prompt; prompt + max_new_tokens + max(gammas) must fit the models' positions."""
    seed: int = 0
    """Seed of the sampled decoding and of synthetic prompts."""
    device: str = "auto"
    """auto = cuda when available, else cpu."""
    out_dir: str = "runs/eval"
    """Receives eval.json, the PNG plots, tensorboard scalars and config.yaml."""
    timing_repeats: int = 1
    """Times each batch is decoded by the target alone and by SD, alternately, for the speedup (the
    median per-batch ratio is reported with its spread); more repeats = a steadier number, longer eval."""
    tp: int = 1
    """Tensor-parallel size of the target (megatron-core, sharded over the launched ranks: run under
    ``torchrun --nproc_per_node TP``); 1 = the HF model on one device."""

    def validate(self) -> None:
        if not self.gammas or any(g < 1 for g in self.gammas):
            raise ValueError(f"gammas {self.gammas} must be a non-empty list of integers >= 1")
        if self.batch_size < 1 or self.num_prompts < 1 or self.max_new_tokens < 1 or self.timing_repeats < 1:
            raise ValueError("batch_size, num_prompts, max_new_tokens and timing_repeats must all be >= 1")
        SamplingConfig(temperature=self.temperature, top_p=self.top_p).validate()
        if self.tp < 1:
            raise ValueError(f"tp {self.tp} must be >= 1 (1 = no tensor parallelism)")
        if self.tp > 1:
            check_tp_top_p(self.top_p)
            if self.target is None or not self.target.name_or_path:
                raise ValueError("tp > 1 needs target.name_or_path (an HF checkpoint directory to slice), not a preset")

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
        total = _merged(total, out.stats)
    assert total is not None
    return seqs, total


def _merged(total: DecodeStats | None, stats: DecodeStats) -> DecodeStats:
    """``total`` with one more batch's stats added (the first batch's stats start it)."""
    if total is None:
        return stats
    total.accept_hist = [a + b for a, b in zip(total.accept_hist, stats.accept_hist)]
    total.generated += stats.generated
    total.seconds += stats.seconds
    return total


def _tokens_per_s(stats: DecodeStats) -> float:
    return stats.generated / stats.seconds if stats.seconds > 0 else float("nan")


def _interleaved(run_sd: Callable, run_target: Callable, prompts: Sequence[list[int]], cfg: EvalConfig,
                 device) -> tuple[list[list[int]], DecodeStats, list[float]]:
    """SD over the prompts in batches (outputs and stats exactly as one pass of ``_batched`` with the
    eval seed), each batch preceded by the target alone on the same batch; ``timing_repeats`` rounds
    per batch. -> (SD sequences, SD stats of the first round, per-batch per-round speed ratios)."""
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    seqs: list[list[int]] = []
    total: DecodeStats | None = None
    ratios: list[float] = []
    for start in range(0, len(prompts), cfg.batch_size):
        chunk = list(prompts[start:start + cfg.batch_size])
        for r in range(cfg.timing_repeats):
            # The baseline's own generator: its draws never shift SD's (outputs stay comparable).
            alone = run_target(chunk, torch.Generator(device=device).manual_seed(cfg.seed + 7919 * (r + 1)))
            out = run_sd(chunk, gen if r == 0 else torch.Generator(device=device).manual_seed(cfg.seed + r))
            ratios.append(_tokens_per_s(out.stats) / _tokens_per_s(alone.stats))
            if r == 0:
                seqs.extend(out.sequences)
                total = _merged(total, out.stats)
    assert total is not None
    return seqs, total, ratios


# A measured speedup may exceed τ by timer noise on tiny runs; beyond this it is a measurement error.
_SPEEDUP_SLACK = 1.05


def _speedup(ratios: list[float], tau: float, what: str) -> dict[str, Any]:
    """The median per-batch speedup and its spread; above τ it is refused as a timing error."""
    ratios = sorted(ratios)
    mid = len(ratios) // 2
    median = ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2
    out: dict[str, Any] = {"speedup": median, "speedup_spread": [ratios[0], ratios[-1]], "timing_error": None}
    if median > tau * _SPEEDUP_SLACK:
        out["speedup"] = None
        out["timing_error"] = (f"measured speedup {median:.2f}x exceeds tau {tau:.2f}, which no real speedup can: "
                               "the timing was disturbed (another process on the machine?); rerun on an idle "
                               "machine or raise timing_repeats")
        logger.warning("%s: %s", what, out["timing_error"])
    return out


def _baseline(model, V: int, prompts: Sequence[list[int]], cfg: EvalConfig, decode: dict[str, Any],
              device) -> tuple[list[list[int]], DecodeStats]:
    """``model`` alone (autoregressive) over the prompts in batches, after a tiny warm-up so one-time
    allocation/dispatch costs do not land in the timing."""
    autoregressive_generate(model, [list(prompts[0])], sampling=cfg.sampling, max_new_tokens=2, vocab_size=V)
    return _batched(lambda ch, g: autoregressive_generate(model, ch, generator=g, vocab_size=V, **decode),
                    prompts, cfg.batch_size, cfg.seed, device)


def _draft_entry(target, draft, V: int, target_stats: DecodeStats, prompts: Sequence[list[int]],
                 answers_for_alpha: Sequence | None, cfg: EvalConfig, decode: dict[str, Any], device) -> dict[str, Any]:
    """One draft's own numbers: its speed alone, its cost ratio c to the target, α_logits on the
    held-out answers (None without them); ``by_gamma`` is left for the SD runs."""
    _, draft_stats = _baseline(draft, V, prompts, cfg, decode, device)
    cost_ratio = draft_stats.seconds / draft_stats.generated / (target_stats.seconds / target_stats.generated)
    entry: dict[str, Any] = {"draft_tokens_per_s": _tokens_per_s(draft_stats), "cost_ratio": cost_ratio,
                             "alpha_logits": None, "alpha_positions": 0, "by_gamma": {}}
    if answers_for_alpha:
        a = alpha_logits(target, draft, answers_for_alpha, sampling=cfg.sampling, batch_size=cfg.batch_size,
                         vocab_size=V)
        entry["alpha_logits"], entry["alpha_positions"] = a["alpha"], a["positions"]
    return entry


def _gamma_row(target, draft, name: str, gamma: int, V: int, entry: dict[str, Any], target_seqs: list[list[int]],
               prompts: Sequence[list[int]], cfg: EvalConfig, decode: dict[str, Any], device) -> dict[str, Any]:
    """SD with one draft at one γ, interleaved with the target alone: acceptance, τ, speed, speedup
    (and τ(α), and at temperature 0 the share of outputs equal to the target's)."""
    seqs, stats, ratios = _interleaved(
        lambda ch, g: speculative_generate(target, draft, ch, gamma=gamma, generator=g, vocab_size=V, **decode),
        lambda ch, g: autoregressive_generate(target, ch, generator=g, vocab_size=V, **decode),
        prompts, cfg, device)
    row = summarize(stats)
    row.update(tokens_per_s=_tokens_per_s(stats), speedup_bound=speedup_bound(row["tau"], gamma, entry["cost_ratio"]),
               seconds=stats.seconds, **_speedup(ratios, row["tau"], f"{name} gamma={gamma}"))
    if entry["alpha_logits"] is not None:
        row["tau_theory"] = theoretical_tau(entry["alpha_logits"], gamma)
    if cfg.temperature == 0:
        row["matches_target"] = sum(a == b for a, b in zip(seqs, target_seqs)) / len(seqs)
    speedup = "n/a (timing error)" if row["speedup"] is None else f"{row['speedup']:.2f}x"
    logger.info("%s gamma=%d: acceptance %.3f tau %.2f speedup %s", name, gamma, row["acceptance_rate"],
                row["tau"], speedup)
    return row


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
    decode = dict(sampling=cfg.sampling, eos_token_id=eos_token_id, max_new_tokens=cfg.max_new_tokens)
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
        if target_stats is None:  # once, at the first draft's vocabulary
            target_seqs, target_stats = _baseline(target, V, prompts, cfg, decode, device)
            result["target"] = {"tokens_per_s": _tokens_per_s(target_stats), "generated": target_stats.generated,
                                "seconds": target_stats.seconds}
        entry = _draft_entry(target, draft, V, target_stats, prompts, answers_for_alpha, cfg, decode, device)
        for gamma in cfg.gammas:
            entry["by_gamma"][str(gamma)] = _gamma_row(target, draft, name, gamma, V, entry, target_seqs, prompts,
                                                       cfg, decode, device)
            if progress is not None:
                progress(name, gamma)
        result["drafts"][name] = entry
    return result


# ----------------------------------------------------------------------------- the job

def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _width(model) -> int:
    """Logit columns of an HF model, or of a ``CausalLM`` (the TP target's real vocabulary)."""
    if hasattr(model, "vocab_width"):
        return int(model.vocab_width)
    return int(model.get_output_embeddings().weight.shape[0])


def task_inputs(cfg: EvalConfig):
    """(prompts, held-out sequences, eos id, tokenizer length) from the task split ``cfg.data``."""
    tokenizer = job_tokenizer(cfg.tokenizer, cfg.target.files, job="eval with data", model_key="target.name_or_path")
    examples = load_examples(cfg.data, tokenizer=tokenizer)[: cfg.num_prompts]
    prompts = [prompt_ids(e, tokenizer, max_length=cfg.max_prompt_tokens) for e in examples]
    held_out = tokenize_examples(examples, tokenizer, max_length=cfg.data.max_length)
    _check_draft_tokenizers(cfg, tokenizer)
    return prompts, held_out, tokenizer.eos_token_id, len(tokenizer)


def _check_draft_tokenizers(cfg: EvalConfig, tokenizer) -> None:
    """Refuse a draft saved with a different tokenizer (same size is not enough: ids must mean the same)."""
    want = vocab_fingerprint(tokenizer)
    for name, path in cfg.drafts.items():
        if (Path(path) / "tokenizer_config.json").exists() and vocab_fingerprint(load_tokenizer(path)) != want:
            raise ValueError(f"draft '{name}' ({path}) was saved with a different tokenizer than the target's; "
                             f"evaluate drafts trained on the target's tokenizer")


def check_positions(models: dict[str, Any], prompts: Sequence[list[int]], held_out: Sequence | None,
                    cfg: EvalConfig) -> None:
    """Refuse inputs that would run a model past its ``max_position_embeddings`` (one line naming the
    keys to lower). Refused, not cut: cutting would change what is measured without a word, and the
    user already owns the cut (``max_prompt_tokens``). Decoding a prompt of P tokens feeds positions
    up to P + max_new_tokens + γ - 2 (a last step's drafts overshoot max_new_tokens); a held-out
    sequence of L tokens (α_logits) feeds L positions."""
    limits = {name: lim for name, m in models.items() if (lim := position_limit(m)) is not None}
    if not limits:
        return
    name = min(limits, key=limits.get)
    limit, gamma = limits[name], max(cfg.gammas)
    longest = max((len(p) for p in prompts), default=0)
    if longest + cfg.max_new_tokens + gamma - 1 > limit:
        room = limit - cfg.max_new_tokens - gamma + 1
        raise ValueError(
            f"the longest prompt has {longest} tokens: with max_new_tokens={cfg.max_new_tokens} and gamma up to "
            f"{gamma}, decoding reaches position {longest + cfg.max_new_tokens + gamma - 2}, past {name}'s "
            f"max_position_embeddings ({limit}); lower max_prompt_tokens"
            + (f" (to {room} or less)" if room >= 1 else "") + ", max_new_tokens or gammas")
    lengths = [len(s.input_ids) if hasattr(s, "input_ids") else len(s[0]) for s in held_out or []]
    check_length(models[name], max(lengths, default=0), what="a held-out sequence", whose=name)


def synthetic_inputs(cfg: EvalConfig, target, vocab: int):
    """Random token prompts; held-out text = the target's greedy continuation (labels on it only)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    lengths = torch.randint(4, 17, (cfg.num_prompts,), generator=gen).tolist()
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]
    check_positions({"the target": target}, prompts, None, cfg)  # before the target continues them
    cont = autoregressive_generate(target, prompts, max_new_tokens=cfg.max_new_tokens, vocab_size=vocab).sequences
    held_out = [(p + c, [-100] * len(p) + c) for p, c in zip(prompts, cont)]
    return prompts, held_out, None, None


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """The eval job (see the module docstring); collective when ``cfg.tp > 1``."""
    if cfg.target is None:
        raise ValueError("eval needs a target: set target.name_or_path=DIR (or target.preset=NAME)")
    if not cfg.drafts:
        raise ValueError("eval needs at least one draft: set drafts.NAME=DIR")
    if cfg.tp == 1:
        return _evaluate(cfg, _device(cfg.device), None)
    ps = init_distributed(tp_size=cfg.tp)
    if ps.dp_size != 1:
        raise ValueError(f"eval runs one tensor-parallel group: launch exactly tp={cfg.tp} processes, "
                         f"not {ps.world_size}")
    target = load_tp_target(cfg.target.files, tp_group=ps.tp_group, device=ps.device,
                            dtype=cfg.target.dtype, seed=cfg.seed)
    return _evaluate(cfg, ps.device, target, is_main=ps.is_main)


def _evaluate(cfg: EvalConfig, device: torch.device, target, *, is_main: bool = True) -> dict[str, Any]:
    """Load the drafts (and the HF target when ``target`` is None), evaluate; rank 0 writes."""
    torch.manual_seed(cfg.seed)
    drafts = {name: load_causal_lm(ModelConfig(name_or_path=str(path)), device=device)
              for name, path in cfg.drafts.items()}
    if target is None:
        # a preset target (smoke tests) takes the first draft's vocabulary
        preset_vocab = next(iter(drafts.values())).get_output_embeddings().weight.shape[0]
        target = load_causal_lm(cfg.target, vocab_size=preset_vocab, device=device)
    if is_main:
        sizes = ", ".join(f"{n} {param_count(d) / 1e6:.1f}M" for n, d in drafts.items())
        logger.info("eval: target %s (%s parameters), drafts %s; %d prompts x %d new tokens, gammas %s, T %g",
                    model_identity(cfg.target), f"{param_count(target) / 1e6:.1f}M" if hasattr(target, "parameters")
                    else "tensor-parallel", sizes, cfg.num_prompts, cfg.max_new_tokens, cfg.gammas, cfg.temperature)
    if cfg.data is not None:
        prompts, held_out, eos, tok_len = task_inputs(cfg)
    else:
        vocab = min([_width(target)] + [_width(d) for d in drafts.values()])
        prompts, held_out, eos, tok_len = synthetic_inputs(cfg, target, vocab)
    check_positions({"the target": target, **{f"draft '{n}'": d for n, d in drafts.items()}}, prompts, held_out, cfg)
    check_same_vocab(target, {f"draft '{n}'": d for n, d in drafts.items()}, tokenizer_len=tok_len,
                     dirs={"the target": cfg.target.files, **{f"draft '{n}'": str(p) for n, p in cfg.drafts.items()}})
    bar = tqdm(total=len(drafts) * len(cfg.gammas), desc="eval (draft x gamma)", disable=not is_main)
    result = evaluate_drafts(target, drafts, prompts, held_out, cfg, eos_token_id=eos, vocab_size=tok_len,
                             progress=lambda name, g: bar.update(1))
    bar.close()
    if is_main:
        out = Path(cfg.out_dir)
        save_resolved(cfg, out)
        paths = write_all(result, out)
        logger.info("eval wrote %s and tensorboard scalars in %s", ", ".join(map(str, paths)), out / "tb")
    return result
