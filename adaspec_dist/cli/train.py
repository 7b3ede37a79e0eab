"""``adaspec-dist train``: sft / kd / adaspec training with DeepSpeed.

Usage::

    adaspec-dist train --config R.yaml [--objective adaspec] [--resume] [section.key=value ...]
    adaspec-dist train --print-config --config R.yaml engine.lr=1e-4     # every key: value, type, doc
    adaspec-dist train --config runs/demo/configs/adaspec.yaml run_dir=runs/ada2 engine.lr=1e-3
    torchrun --nproc_per_node 2 -m adaspec_dist.cli train --config R.yaml engine.zero_stage=2
    deepspeed --hostfile hosts -m adaspec_dist.cli train --config R.yaml     # (or srun ... under Slurm)

``R.yaml`` is a TrainConfig recipe (a pipeline run writes one per train stage in
``RUN_DIR/configs/``). A ``TrainConfig`` -> ``distill.train.train`` (the ``train`` row of
``pipeline.JOBS``); global rank 0 prints the summary as one JSON line.
``--resume`` continues the run in ``run_dir`` from its newest checkpoint, exactly. A ``run_dir``
holding a run of another config is refused; ``--force`` replaces that run.
"""
from __future__ import annotations

import argparse

from adaspec_dist.cli.config_help import add_print_config, job_config
from adaspec_dist.dist import launch_env
from adaspec_dist.pipeline import JOBS

TRAIN = JOBS["train"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe with a TrainConfig (objective, draft, cache_dir, engine, ...)")
    parser.add_argument("--objective", help="override the recipe's objective: sft, kd or adaspec")
    parser.add_argument("--resume", action="store_true", help="continue from run_dir's newest checkpoint")
    parser.add_argument("--auto-resume", action="store_true",
                        help="continue from the newest checkpoint when there is one, else start fresh "
                             "(for requeued jobs that may have died before their first checkpoint)")
    parser.add_argument("--force", action="store_true",
                        help="replace a run of another config in run_dir (its checkpoints and final/ are deleted)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. engine.zero_stage=2 max_steps=100")
    add_print_config(parser)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides or [])
    if args.objective:
        overrides.append(f"objective={args.objective}")
    cfg = job_config(TRAIN.config, args, overrides,
                     "train needs --config RECIPE.yaml (and/or section.key=value overrides)")
    if cfg is None:
        return 0
    summary = TRAIN.run(cfg, resume="auto" if args.auto_resume else args.resume, force=args.force)
    if launch_env().rank == 0:
        print(TRAIN.describe(cfg, summary))
    return 0
