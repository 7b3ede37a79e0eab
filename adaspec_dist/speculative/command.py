"""``adaspec-dist eval``: acceptance and speed of drafts against a target (the CLI layer; it prints).

Loads the target and drafts (``models.load.load_causal_lm``), builds prompts and held-out
teacher-forced sequences from a task split (``data.tasks`` + ``data.tokenize``) or, without
``data``, synthetic token prompts whose held-out continuations are the target's own greedy
output; then ``evaluate.evaluate_drafts``, prints the table and writes JSON, PNG plots and
tensorboard scalars into ``out_dir``.

With ``--tp N`` (``tp: N``) the target is a megatron-core tensor-parallel model sharded over
the N launched ranks (``torchrun --nproc_per_node N``; exactly one TP group): every rank runs
the replicated drafts identically, with identically seeded generators, and only global rank 0
prints and writes.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from adaspec_dist.config import build_config, load_config, save_resolved
from adaspec_dist.data.tasks import DataConfig, load_examples
from adaspec_dist.data.tokenize import prompt_ids, tokenize_examples
from adaspec_dist.data.tokenizer import load_tokenizer, vocab_fingerprint
from adaspec_dist.dist import init_distributed, shutdown
from adaspec_dist.models.load import ModelConfig, load_causal_lm, resolve_dtype
from adaspec_dist.models.tensor_parallel import load_tp_model
from adaspec_dist.models.tp_target import TPTargetLM
from adaspec_dist.speculative.decoder import autoregressive_generate
from adaspec_dist.speculative.evaluate import EvalConfig, evaluate_drafts
from adaspec_dist.speculative.report import format_table, write_all

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe with an EvalConfig (target, drafts, data, gammas, ...)")
    parser.add_argument("--tp", type=int, default=None,
                        help="tensor-parallel size of the target (same as tp=N; launch N ranks with torchrun)")
    parser.add_argument("overrides", nargs="*",
                        help="dotted overrides, e.g. target.name_or_path=runs/sft drafts.kd=runs/kd gammas=[1,2,4]")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _width(model) -> int:
    """Logit columns of an HF model, or of a ``CausalLM`` (the TP target's real vocabulary)."""
    if hasattr(model, "vocab_width"):
        return int(model.vocab_width)
    return int(model.get_output_embeddings().weight.shape[0])


def _tp_target(cfg: EvalConfig):
    """-> (TPTargetLM over the launched ranks, ParallelState); collective: every rank calls it."""
    if not cfg.target.name_or_path:
        raise ValueError("tp > 1 needs target.name_or_path (an HF checkpoint directory to slice), not a preset")
    ps = init_distributed(tp_size=cfg.tp)
    if ps.dp_size != 1:
        raise ValueError(f"eval runs one tensor-parallel group: launch exactly tp={cfg.tp} processes, "
                         f"not {ps.world_size}")
    model = load_tp_model(cfg.target.name_or_path, tp_group=ps.tp_group,
                          dtype=resolve_dtype(cfg.target.dtype, ps.device), device=ps.device)
    return TPTargetLM(model, seed=cfg.seed), ps


def _task_inputs(cfg: EvalConfig):
    """(prompts, held-out sequences, eos id, tokenizer length) from a task split."""
    data = build_config(DataConfig, cfg.data, prefix="data.")
    tok_path = cfg.tokenizer or cfg.target.name_or_path
    if not tok_path:
        raise ValueError("eval with data needs a tokenizer: set tokenizer=PATH (or a target directory holding one)")
    tokenizer = load_tokenizer(tok_path)
    examples = load_examples(data)[: cfg.num_prompts]
    prompts = [prompt_ids(e, tokenizer, max_length=cfg.max_prompt_tokens) for e in examples]
    held_out = tokenize_examples(examples, tokenizer, max_length=data.max_length)
    _check_draft_tokenizers(cfg, tokenizer)
    return prompts, held_out, tokenizer.eos_token_id, len(tokenizer)


def _check_draft_tokenizers(cfg: EvalConfig, tokenizer) -> None:
    """Refuse a draft saved with a different tokenizer (same size is not enough: ids must mean the same)."""
    want = vocab_fingerprint(tokenizer)
    for name, path in cfg.drafts.items():
        if (Path(path) / "tokenizer_config.json").exists() and vocab_fingerprint(load_tokenizer(path)) != want:
            raise ValueError(f"draft '{name}' ({path}) was saved with a different tokenizer than the target's; "
                             f"evaluate drafts trained on the target's tokenizer")


def _synthetic_inputs(cfg: EvalConfig, target, vocab: int):
    """Random token prompts; held-out text = the target's greedy continuation (labels on it only)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    lengths = torch.randint(4, 17, (cfg.num_prompts,), generator=gen).tolist()
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]
    cont = autoregressive_generate(target, prompts, max_new_tokens=cfg.max_new_tokens, vocab_size=vocab).sequences
    held_out = [(p + c, [-100] * len(p) + c) for p, c in zip(prompts, cont)]
    return prompts, held_out, None, None


def run(args: argparse.Namespace) -> int:
    if not args.config and not args.overrides:
        raise ValueError("eval needs --config RECIPE.yaml and/or overrides such as target.name_or_path=DIR drafts.kd=DIR")
    overrides = list(args.overrides) + ([f"tp={args.tp}"] if getattr(args, "tp", None) else [])
    cfg = load_config(EvalConfig, args.config, overrides)
    if cfg.target is None:
        raise ValueError("eval needs a target: set target.name_or_path=DIR (or target.preset=NAME)")
    if not cfg.drafts:
        raise ValueError("eval needs at least one draft: set drafts.NAME=DIR")
    if cfg.tp == 1:
        return _evaluate(cfg, _device(cfg.device), None)

    try:
        target, ps = _tp_target(cfg)
        return _evaluate(cfg, ps.device, target, is_main=ps.is_main)
    finally:
        shutdown()


def _evaluate(cfg: EvalConfig, device: torch.device, target, *, is_main: bool = True) -> int:
    """Load the drafts (and the HF target when ``target`` is None), evaluate; rank 0 reports."""
    torch.manual_seed(cfg.seed)
    drafts = {name: load_causal_lm(ModelConfig(name_or_path=str(path)), device=device)
              for name, path in cfg.drafts.items()}
    if target is None:
        # a preset target (smoke tests) takes the first draft's vocabulary
        preset_vocab = next(iter(drafts.values())).get_output_embeddings().weight.shape[0]
        target = load_causal_lm(cfg.target, vocab_size=preset_vocab, device=device)
    if cfg.data is not None:
        prompts, held_out, eos, tok_len = _task_inputs(cfg)
    else:
        vocab = min([_width(target)] + [_width(d) for d in drafts.values()])
        prompts, held_out, eos, tok_len = _synthetic_inputs(cfg, target, vocab)
    bar = tqdm(total=len(drafts) * len(cfg.gammas), desc="eval (draft x gamma)", disable=not is_main)
    result = evaluate_drafts(target, drafts, prompts, held_out, cfg, eos_token_id=eos, vocab_size=tok_len,
                             progress=lambda name, g: bar.update(1))
    bar.close()
    if not is_main:
        return 0
    out = Path(cfg.out_dir)
    save_resolved(cfg, out)
    paths = write_all(result, out)
    print(format_table(result))
    print(f"wrote {', '.join(str(p) for p in paths)} and tensorboard scalars in {out / 'tb'}")
    return 0
