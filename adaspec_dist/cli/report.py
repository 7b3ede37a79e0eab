"""``adaspec-dist report RUN_DIR...``: the three arms per task and seed, mean ± std.

Usage::

    adaspec-dist report runs/gsm8k-seed0 runs/gsm8k-seed1 runs/gsm8k-seed2 --out runs/report --gamma 4

Calls ``report.write_report`` (report.md, report.json, report_alpha.png) and prints the markdown.
"""
from __future__ import annotations

import argparse

from adaspec_dist.report import write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="pipeline/demo run directories (one per task and seed)")
    parser.add_argument("--out", default=None, help="output directory (default: the first run's parent/report)")
    parser.add_argument("--gamma", type=int, default=None, help="γ of the τ/speedup columns (default 4, else the largest)")


def run(args: argparse.Namespace) -> int:
    path, md = write_report(args.run_dirs, args.out, args.gamma)
    print(md)
    print(f"wrote {path} and {path.parent / 'report_alpha.png'}")
    return 0
