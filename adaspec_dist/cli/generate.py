"""``adaspec-dist generate``: sample continuations of a task's prompts from a model (on-policy data).

Usage::

    adaspec-dist generate --config R.yaml [section.key=value ...]     # R.yaml: a GenerateConfig recipe
    adaspec-dist generate model.name_or_path=runs/demo/reference/final role=draft data.task=arith out_dir=runs/gen/draft samples_per_prompt=2 temperature=1.0
    torchrun --nproc_per_node 2 -m adaspec_dist.cli generate --config R.yaml out_dir=/data/gen

A ``GenerateConfig`` -> ``speculative.generate.generate`` (the ``generate`` row of
``pipeline.JOBS``): ``samples_per_prompt`` samples per prompt, data-parallel over the launched
ranks (each writes its own shards), rerun after a crash to finish (byte-identical to an
uninterrupted run). ``cache`` reads the result with
``generated=OUT_DIR`` (and ``generated_fraction`` for a mixture with the dataset's answers).
"""
from __future__ import annotations

import argparse

from adaspec_dist.cli.config_help import add_print_config, job_config, run_job
from adaspec_dist.pipeline import JOBS

GENERATE = JOBS["generate"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe with a GenerateConfig (data, model, out_dir, ...)")
    parser.add_argument("overrides", nargs="*",
                        help="dotted overrides, e.g. model.name_or_path=runs/sft/final out_dir=runs/gen "
                             "samples_per_prompt=4")
    add_print_config(parser)


def run(args: argparse.Namespace) -> int:
    cfg = job_config(GENERATE.config, args, list(args.overrides), "generate needs --config RECIPE.yaml and/or "
                     "overrides such as model.name_or_path=DIR data.task=arith out_dir=DIR")
    return run_job(GENERATE, cfg)
