"""``adaspec-dist data``: preview a task's formatted examples and their token counts.

Loads examples exactly as training will (``tasks.load_examples``), prints the first few with
the prompt/answer boundary visible, and, given ``--tokenizer``, tokenizes them with the
training policy (``tokenize.tokenize_examples``) and prints token-count statistics, how many
sequences the truncation policy touched, and the data fingerprint. Without ``--tokenizer``
it reports character counts only. This is the CLI layer, so it prints.
"""
from __future__ import annotations

import argparse
import statistics

from adaspec_dist.data.tasks import DataConfig, load_examples, task_names
from adaspec_dist.data.tokenize import data_fingerprint, supervised_count, tokenize_examples
from adaspec_dist.data.tokenizer import embedded_tokenizer, load_tokenizer, vocab_fingerprint


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


def run(args: argparse.Namespace) -> int:
    cfg = DataConfig(task=args.task, source=args.source, split=args.split, limit=args.limit or None,
                     seed=args.seed, max_length=args.max_length)
    examples = load_examples(cfg)
    for i, ex in enumerate(examples[:max(args.show, 0)]):
        print(f"===== example {i} =====")
        print("----- prompt (labels -100) -----")
        print(ex.prompt)
        print("----- answer (supervised) -----")
        print(ex.answer)
    print(f"===== {len(examples)} {args.task} examples ({args.split}) =====")
    print(_describe("prompt chars", [len(e.prompt) for e in examples]))
    print(_describe("answer chars", [len(e.answer) for e in examples]))
    if args.tokenizer and args.build_tokenizer:
        raise ValueError("pass either --tokenizer or --build-tokenizer, not both")
    if args.tokenizer is None and args.build_tokenizer is None:
        print("(pass --tokenizer PATH_OR_ID or --build-tokenizer DIR for token counts and the data fingerprint)")
        return 0

    if args.build_tokenizer:
        tokenizer = embedded_tokenizer(args.build_tokenizer, vocab_size=args.vocab_size, seed=args.seed)
        args.tokenizer = args.build_tokenizer
    else:
        tokenizer = load_tokenizer(args.tokenizer)
    enc = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []  # noqa: E731
    prompt_tokens = [len(ids) for ids in enc([e.prompt for e in examples])]
    answer_tokens = [len(ids) for ids in enc([e.answer for e in examples])]
    tokenized = tokenize_examples(examples, tokenizer, max_length=args.max_length)
    overflow = sum(1 for p, a in zip(prompt_tokens, answer_tokens)
                   if p + a + 1 + (tokenizer.bos_token_id is not None) > args.max_length)
    print(_describe("prompt tokens", prompt_tokens))
    print(_describe("answer tokens", answer_tokens))
    print(_describe("sequence tokens", [len(t.input_ids) for t in tokenized]))
    print(_describe("supervised", [supervised_count(t) for t in tokenized]))
    print(f"truncated to --max-length {args.max_length}: {overflow}   dropped (no supervised token): "
          f"{len(examples) - len(tokenized)}")
    print(f"tokenizer {args.tokenizer}: {len(tokenizer)} tokens, vocab fingerprint {vocab_fingerprint(tokenizer)[:16]}")
    print(f"data fingerprint {data_fingerprint(tokenized)}")
    return 0
