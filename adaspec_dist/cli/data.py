"""``adaspec-dist data``: preview a task's formatted examples and their token counts.

Usage::

    adaspec-dist data --task arith --show 2
    adaspec-dist data --task gsm8k --source data/gsm8k.jsonl --tokenizer EleutherAI/pythia-1.4b

Builds a ``DataConfig`` and calls ``data.preview.preview`` (examples exactly as training loads
them); prints the first few with the prompt/answer boundary visible and, given ``--tokenizer``
(or ``--build-tokenizer``), token-count statistics under the training policy, how many
sequences the truncation policy touched, and the data fingerprint. Without a tokenizer it
reports character counts only.
"""
from __future__ import annotations

import argparse
import statistics

from adaspec_dist.data.preview import preview
from adaspec_dist.data.tasks import DataConfig, task_names
from adaspec_dist.data.tokenizer import embedded_tokenizer, load_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=task_names(), help="task to load")
    parser.add_argument("--source", default=None,
                        help="hub dataset id, local .jsonl/.json/.parquet file, or a directory with "
                             "{split}.jsonl/.parquet (default: the task's hub id / the embedded generator)")
    parser.add_argument("--split", default="train", help="split to load (default train)")
    parser.add_argument("--limit", type=int, default=3, help="examples to load (default 3; 0 = all)")
    parser.add_argument("--show", type=int, default=3, help="examples to print in full (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the embedded generators")
    parser.add_argument("--max-length", type=int, default=512, help="token budget per sequence (default 512)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer directory or hub id; enables token counts and the fingerprint")
    parser.add_argument("--build-tokenizer", default=None, metavar="DIR",
                        help="train (or reuse) the embedded demo sentencepiece tokenizer in DIR and use it")
    parser.add_argument("--vocab-size", type=int, default=4096, help="vocab of --build-tokenizer (default 4096)")


def _describe(name: str, values: list[int]) -> str:
    if not values:
        return f"{name:<16} (none)"
    return (f"{name:<16} mean {statistics.fmean(values):8.1f}   median {statistics.median(values):8.1f}   "
            f"min {min(values):6d}   max {max(values):6d}   total {sum(values):9d}")


def _tokenizer(args: argparse.Namespace):
    """-> (tokenizer or None, its name for the report)."""
    if args.tokenizer and args.build_tokenizer:
        raise ValueError("pass either --tokenizer or --build-tokenizer, not both")
    if args.build_tokenizer:
        return embedded_tokenizer(args.build_tokenizer, vocab_size=args.vocab_size, seed=args.seed), args.build_tokenizer
    if args.tokenizer:
        return load_tokenizer(args.tokenizer), args.tokenizer
    return None, None


def run(args: argparse.Namespace) -> int:
    cfg = DataConfig(task=args.task, source=args.source, split=args.split, limit=args.limit or None,
                     seed=args.seed, max_length=args.max_length)
    tokenizer, tok_name = _tokenizer(args)
    shown = preview(cfg, tokenizer)
    for i, ex in enumerate(shown.examples[:max(args.show, 0)]):
        print(f"===== example {i} =====")
        print("----- prompt (labels -100) -----")
        print(ex.prompt)
        print("----- answer (supervised) -----")
        print(ex.answer)
    print(f"===== {len(shown.examples)} {args.task} examples ({args.split}) =====")
    print(_describe("prompt chars", shown.prompt_chars))
    print(_describe("answer chars", shown.answer_chars))
    t = shown.tokens
    if t is None:
        print("(pass --tokenizer PATH_OR_ID or --build-tokenizer DIR for token counts and the data fingerprint)")
        return 0
    print(_describe("prompt tokens", t.prompt))
    print(_describe("answer tokens", t.answer))
    print(_describe("sequence tokens", t.sequence))
    print(_describe("supervised", t.supervised))
    print(f"truncated to --max-length {args.max_length}: {t.truncated}   dropped (no supervised token): {t.dropped}")
    print(f"tokenizer {tok_name}: {t.vocab_size} tokens, vocab fingerprint {t.vocab_fingerprint[:16]}")
    print(f"data fingerprint {t.data_fingerprint}")
    return 0
