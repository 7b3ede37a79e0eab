"""``adaspec-dist inspect CACHE_DIR``: what a cache holds, and (``--verify``) whether it is intact.

Usage::

    adaspec-dist inspect runs/demo/cache/train
    adaspec-dist inspect runs/demo/cache/train --verify --json

Calls ``cache.summary.summarise`` and prints its dict (``divergences``: the ones the cache can train
with — a compact sampled cache without log-probs supports fkl only) (``--json``: as JSON); each impossible number
it found (``summarise(...)["warnings"]``: a negative L_ref, a top-k mass above 1, counts that
disagree with the manifest, ...) is a ``warning:`` line on stderr naming the file and the fix.
"""
from __future__ import annotations

import argparse
import json
import sys

from adaspec_dist.cache.summary import summarise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cache_dir", help="a cache directory written by `adaspec-dist cache`")
    parser.add_argument("--verify", action="store_true", help="re-hash every shard against the manifest")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    info = summarise(args.cache_dir, verify=args.verify)
    for line in info["warnings"]:  # impossible numbers: each names its file and the fix
        print(f"adaspec-dist inspect: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    for key in ("cache_dir", "format_version", "scheme", "divergences", "vocab_size", "sequences", "tokens", "supervised_tokens", "shards",
                "bytes", "bytes_per_supervised_token", "mean_tail_mass", "top1_agreement", "reference",
                "mean_ref_loss"):
        value = info[key]
        print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    print(f"{'params':28s} {json.dumps(info['params'], sort_keys=True)}")
    if args.verify:
        print("verify                       ok: every shard matches its sha256")
    return 0
