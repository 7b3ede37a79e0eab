"""``adaspec-dist pipeline RECIPE.yaml``: a recipe's stages, resumably (see ``adaspec_dist.pipeline``).

Usage::

    adaspec-dist pipeline configs/gsm8k-pythia31m-1.4b.yaml --dry-run
    adaspec-dist pipeline configs/demo.yaml run_dir=runs/x seed=1 adaspec.kept_token_epochs=2
    adaspec-dist pipeline configs/demo.yaml --stage eval --force eval
    adaspec-dist pipeline configs/demo.yaml --print-config

Loads the ``PipelineConfig`` (recipe + dotted overrides) and calls ``pipeline.run_pipeline``,
printing each stage's equivalent command line as it starts; ``--dry-run`` prints the plan (and
each train stage's resolved budget) without running anything.
"""
from __future__ import annotations

import argparse
import json

from adaspec_dist.cli.config_help import add_print_config, describe_config
from adaspec_dist.config import ConfigError, recipe_mapping
from adaspec_dist.dist import launch_env
from adaspec_dist.pipeline import PipelineConfig, budget_line, eval_results, load_pipeline_config, plan, run_pipeline
from adaspec_dist.report import format_rows, method_rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="pipeline recipe YAML (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*",
                        help="dotted overrides, e.g. run_dir=runs/x seed=1 adaspec.kept_token_epochs=2")
    parser.add_argument("--stage", action="append", dest="only", metavar="NAME",
                        help="run only this stage (repeatable); its inputs must exist")
    parser.add_argument("--force", action="append", metavar="NAME",
                        help="redo this stage and every later one even if complete")
    parser.add_argument("--dry-run", action="store_true", help="print the stage plan and exit")
    add_print_config(parser)


def run(args: argparse.Namespace) -> int:
    if args.print_config:
        # The stage sections are TrainConfig / CacheConfig / EvalConfig overrides: planning types them
        # (an unknown key there is the usual one-line error); `adaspec-dist train --print-config` lists theirs.
        print(describe_config(PipelineConfig, recipe_mapping(args.recipe, args.overrides)))
        plan(load_pipeline_config(args.recipe, args.overrides))
        return 0
    cfg = load_pipeline_config(args.recipe, args.overrides)
    if args.dry_run:
        world = launch_env().world_size
        stages = plan(cfg)
        names = [s.name for s in stages]
        for n in (args.only or []) + (args.force or []):  # as the real run refuses them
            if n not in names:
                raise ConfigError(f"unknown stage '{n}'; this recipe's stages are: {', '.join(names)}")
        for i, s in enumerate(stages, 1):
            print(f"{i}. {s.name:16s} {s.command_line()}")
            line = budget_line(cfg, s, world)
            if line:
                print(f"   {'':16s} {line}")
        return 0
    run_pipeline(cfg, only=args.only, force=args.force, echo=print)
    if launch_env().rank == 0:
        _print_arms(plan(cfg))
    return 0


def _print_arms(stages) -> None:
    """The arms side by side, one table per eval stage that has a result (the per-draft tables
    above hold the detail)."""
    for name, result in eval_results(stages):
        if not result.is_file():
            continue
        data = json.loads(result.read_text())
        print(f"\n{name} (temperature {data['settings']['temperature']:g}): the arms at equal optimiser steps")
        print(format_rows(method_rows(data)))
