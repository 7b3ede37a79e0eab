"""Claim: tokenize_examples' batched tokenizer calls are faster than tokenizing one example at a time.

Data: the embedded corpora's train splits (arith, pydoc, stdlib_code; N examples each) and the
4096-piece embedded demo tokenizer (trained here once, ~seconds). Baseline, measured in the
same run: the same function called with one example per call. Both must produce identical
sequences. Prints examples/s and tokens/s of both and the ratio; writes
benchmarks/results/data_tokenize_batched.json.

    python benchmarks/data_tokenize_batched.py [--per-corpus 1000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from results_io import machine

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")




def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-corpus", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=512)
    args = ap.parse_args()

    from adaspec_dist.data.tasks import DataConfig, load_examples
    from adaspec_dist.data.tokenize import tokenize_examples
    from adaspec_dist.data.tokenizer import embedded_tokenizer

    tok = embedded_tokenizer(Path(tempfile.gettempdir()) / "adaspec-bench-demo-tok", vocab_size=4096)
    examples = [e for task in ("arith", "pydoc", "stdlib_code")
                for e in load_examples(DataConfig(task=task, limit=args.per_corpus))]
    batched_s, batched = best_of(lambda: tokenize_examples(examples, tok, max_length=args.max_length), args.repeats)
    single_s, single = best_of(
        lambda: [t for e in examples for t in tokenize_examples([e], tok, max_length=args.max_length)], args.repeats)
    assert batched == single, "batched and per-example tokenization disagree"
    tokens = sum(len(t.input_ids) for t in batched)
    result = {
        "claim": "batched tokenize_examples vs one example per call (same outputs)",
        "examples": len(examples), "tokens": tokens, "max_length": args.max_length,
        "batched_s": round(batched_s, 4), "per_example_s": round(single_s, 4),
        "batched_tokens_per_s": round(tokens / batched_s), "per_example_tokens_per_s": round(tokens / single_s),
        "speedup": round(single_s / batched_s, 2), "machine": machine(),
    }
    print(f"{len(examples)} examples, {tokens} tokens (best of {args.repeats})")
    print(f"batched     {batched_s:7.3f} s   {tokens / batched_s:10.0f} tokens/s")
    print(f"per-example {single_s:7.3f} s   {tokens / single_s:10.0f} tokens/s")
    print(f"speedup (per-example / batched): {result['speedup']:.2f}x")
    out = Path(__file__).parent / "results" / "data_tokenize_batched.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
