"""``adaspec-dist pipeline RECIPE.yaml``: a recipe's stages, resumably (see ``adaspec_dist.pipeline``).

Loads the ``PipelineConfig`` (recipe + dotted overrides) and calls ``pipeline.run_pipeline``,
printing each stage's equivalent command line as it starts; ``--dry-run`` prints the plan (and
each train stage's resolved budget) without running anything.
"""
from __future__ import annotations

import argparse

from adaspec_dist.dist import launch_env
from adaspec_dist.pipeline import budget_line, load_pipeline_config, plan, run_pipeline


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="pipeline recipe YAML (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. run_dir=runs/x seed=1 adaspec.epochs=2")
    parser.add_argument("--stage", action="append", dest="only", metavar="NAME",
                        help="run only this stage (repeatable); its inputs must exist")
    parser.add_argument("--force", action="append", metavar="NAME",
                        help="redo this stage and every later one even if complete")
    parser.add_argument("--dry-run", action="store_true", help="print the stage plan and exit")


def run(args: argparse.Namespace) -> int:
    cfg = load_pipeline_config(args.recipe, args.overrides)
    if args.dry_run:
        world = launch_env().world_size
        for i, s in enumerate(plan(cfg), 1):
            print(f"{i}. {s.name:16s} {s.command_line()}")
            line = budget_line(cfg, s, world)
            if line:
                print(f"   {'':16s} {line}")
        return 0
    run_pipeline(cfg, only=args.only, force=args.force, echo=print)
    return 0
