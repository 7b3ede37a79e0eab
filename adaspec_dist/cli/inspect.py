"""``adaspec-dist inspect CACHE_DIR``: what a cache holds, and (``--verify``) whether it is intact.

Calls ``cache.summary.summarise`` and prints its dict (``--json``: as JSON).
"""
from __future__ import annotations

import argparse
import json

from adaspec_dist.cache.summary import summarise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cache_dir", help="a cache directory written by `adaspec-dist cache`")
    parser.add_argument("--verify", action="store_true", help="re-hash every shard against the manifest")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    info = summarise(args.cache_dir, verify=args.verify)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    for key in ("cache_dir", "scheme", "vocab_size", "sequences", "tokens", "supervised_tokens", "shards",
                "bytes", "bytes_per_supervised_token", "mean_tail_mass", "top1_agreement", "reference",
                "mean_ref_loss"):
        value = info[key]
        print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    print(f"{'params':28s} {json.dumps(info['params'], sort_keys=True)}")
    if args.verify:
        print("verify                       ok: every shard matches its sha256")
    return 0
