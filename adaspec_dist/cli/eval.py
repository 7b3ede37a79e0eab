"""``adaspec-dist eval``: acceptance and speed of drafts against a target.

Usage::

    adaspec-dist eval target.name_or_path=runs/demo/target/final drafts.kd=runs/demo/reference/final gammas=[1,2,4]
    adaspec-dist eval --config R.yaml data.task=gsm8k data.split=test num_prompts=64 temperature=1.0
    torchrun --nproc_per_node 4 -m adaspec_dist.cli eval --config R.yaml --tp 4

An ``EvalConfig`` -> ``speculative.evaluate.evaluate`` (the ``eval`` row of ``pipeline.JOBS``),
which loads the models, builds the inputs, evaluates and writes eval.json, PNG plots and
tensorboard scalars into ``out_dir``; global rank 0 prints the table. With ``--tp N`` (``tp: N``) the target is a megatron-core tensor-parallel model
sharded over the N launched ranks (``torchrun --nproc_per_node N``; exactly one TP group).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from adaspec_dist.cli.config_help import add_print_config, job_config
from adaspec_dist.dist import check_device, launch_env
from adaspec_dist.pipeline import JOBS

EVAL = JOBS["eval"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe with an EvalConfig (target, drafts, data, gammas, ...)")
    parser.add_argument("--tp", type=int, default=None,
                        help="tensor-parallel size of the target (same as tp=N; launch N ranks with torchrun)")
    parser.add_argument("overrides", nargs="*",
                        help="dotted overrides, e.g. target.name_or_path=runs/sft drafts.kd=runs/kd gammas=[1,2,4]")
    add_print_config(parser)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"tp={args.tp}"] if getattr(args, "tp", None) else [])
    cfg = job_config(EVAL.config, args, overrides, "eval needs --config RECIPE.yaml and/or overrides such as "
                     "target.name_or_path=DIR drafts.kd=DIR")
    if cfg is None:
        return 0
    check_device(cfg.device)  # before any model loads: torch's own error is a traceback
    result = EVAL.run(cfg)
    if launch_env().rank == 0:
        print(EVAL.describe(cfg, result))
        print(f"wrote eval.json, the PNG plots and tensorboard scalars (tb/) in {Path(cfg.out_dir)}")
    return 0
