"""``adaspec-dist cache``: build a logit cache, or add the reference column to one.

Usage::

    adaspec-dist cache --config R.yaml [section.key=value ...]     # R.yaml: a CacheConfig recipe
    adaspec-dist cache --print-config model.name_or_path=EleutherAI/pythia-1.4b data.task=gsm8k top_k=64
    torchrun --nproc_per_node 2 -m adaspec_dist.cli cache --config R.yaml out_dir=/data/cache
    adaspec-dist cache --add-reference REF_MODEL CACHE_DIR [--divergence fkl] [--batch-size 8] [--replace]

A ``CacheConfig`` -> ``cache.produce.produce_cache``; ``--add-reference`` builds a
``ReferenceConfig`` -> ``cache.reference.add_reference`` (the ``cache`` and ``add_reference`` rows
of ``pipeline.JOBS``). Rerunning the same command after a crash resumes (complete shards are
kept, the result is byte-identical to an uninterrupted run).
"""
from __future__ import annotations

import argparse

from adaspec_dist.cli.config_help import add_print_config, describe_config, job_config, run_job
from adaspec_dist.config import build_config
from adaspec_dist.pipeline import JOBS
from adaspec_dist.sparse.divergence import KINDS

CACHE, REFERENCE = JOBS["cache"], JOBS["add_reference"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe with a CacheConfig (data, model, out_dir, scheme, ...)")
    parser.add_argument("--add-reference", nargs=2, metavar=("REF_MODEL", "CACHE_DIR"),
                        help="add the per-token reference loss column of REF_MODEL (an HF dir) to CACHE_DIR")
    parser.add_argument("--divergence", default="fkl", help=f"reference loss kind: {', '.join(KINDS)} (default fkl)")
    parser.add_argument("--beta", type=float, default=0.5, help="JSD beta (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per reference forward (default 8)")
    parser.add_argument("--replace", action="store_true",
                        help="with --add-reference: delete the cache's existing (or damaged) reference column "
                             "and compute this one")
    parser.add_argument("--tp", type=int, default=None,
                        help="tensor-parallel size of the target (same as tp=N; world = TP x DP ranks)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. out_dir=/tmp/c scheme=sampled")
    add_print_config(parser)


def run(args: argparse.Namespace) -> int:
    if args.add_reference:
        return _reference(args)
    overrides = list(args.overrides) + ([f"tp={args.tp}"] if args.tp else [])
    cfg = job_config(CACHE.config, args, overrides, "cache needs --config RECIPE.yaml (and/or overrides), or "
                     "--add-reference REF_MODEL CACHE_DIR")
    return run_job(CACHE, cfg)


def _reference(args: argparse.Namespace) -> int:
    ref_path, cache_dir = args.add_reference
    data = {"cache_dir": cache_dir, "model": ref_path, "divergence": args.divergence, "beta": args.beta,
            "batch_size": args.batch_size, "replace": args.replace}
    if args.print_config:
        print(describe_config(REFERENCE.config, data))
        return 0
    return run_job(REFERENCE, build_config(REFERENCE.config, data))
