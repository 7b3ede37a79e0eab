"""``adaspec-dist demo``: the whole method on the embedded recipe, no network, no GPU.

Loads the demo recipe (``configs/demo.yaml``, shipped in the package) with the overrides, calls
``demo.run_demo`` and prints (rank 0) the final table, the one-line verdict and where the plots are.

Usage::

    adaspec-dist demo
    adaspec-dist demo --seed 1 --run-dir runs/demo-seed1
    adaspec-dist demo --print-config adaspec.kept_token_epochs=2
    adaspec-dist demo --generated --run-dir runs/demo-gen
"""
from __future__ import annotations

import argparse
from pathlib import Path

from adaspec_dist.cli.config_help import add_print_config, describe_config
from adaspec_dist.config import recipe_mapping
from adaspec_dist.demo import DEFAULT_RECIPE, run_demo
from adaspec_dist.pipeline import PipelineConfig, load_pipeline_config, plan
from adaspec_dist.report import verdict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="dotted recipe overrides, e.g. adaspec.kept_token_epochs=2")
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE),
                        help="recipe (default: the shipped demo.yaml, = configs/demo.yaml in the repository)")
    parser.add_argument("--run-dir", default=None, help="run directory (default: the recipe's, runs/demo)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the whole run (default: the recipe's)")
    parser.add_argument("--gamma", type=int, default=None, help="γ of the final table (default 4)")
    parser.add_argument("--generated", action="store_true",
                        help="then train DistillSpec and AdaSPEC again on draft-generated data (samples of the "
                             "DistillSpec draft) and compare with the dataset-trained arms")
    add_print_config(parser)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.run_dir is not None:
        overrides.append(f"run_dir={args.run_dir}")
    if args.print_config:  # as `adaspec-dist pipeline RECIPE --print-config`
        print(describe_config(PipelineConfig, recipe_mapping(args.recipe, overrides)))
        plan(load_pipeline_config(args.recipe, overrides))
        return 0
    cfg = load_pipeline_config(args.recipe, overrides)
    summary = run_demo(cfg, gamma=args.gamma, echo=print, generated=args.generated)
    if summary is None:  # not rank 0
        return 0
    table, rows = summary
    print()
    print(f"demo ({cfg.name}, seed {cfg.seed}) — drafts distilled from the target in {cfg.run_dir}:")
    print(table)
    print(verdict(rows))
    print(f"\nplots: {Path(cfg.run_dir) / 'demo_summary.png'} and {Path(cfg.run_dir) / 'eval'}/*.png")
    return 0
