"""Claim: the embedded corpora generate a few thousand examples in well under 2 s once the
stdlib_code index is cached on disk; the baseline is the cold build (parsing the stdlib with ast).

Measured in one run: cold stdlib_code (empty cache dir, in-process cache cleared) vs warm
(disk cache present, in-process cache cleared), plus arith and pydoc generation times. Prints
the cold/warm ratio; writes benchmarks/results/data_embedded_generation.json.

    python benchmarks/data_embedded_generation.py [--limit 3000]
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




def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=3000)
    args = ap.parse_args()
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="adaspec-bench-cache-")  # a guaranteed cold start
    from adaspec_dist.data import embedded

    def stdlib():
        embedded._stdlib_items.cache_clear()  # drop the in-process cache; the disk cache decides
        return embedded.generate("stdlib_code", split="train", seed=0, limit=args.limit)

    cold_s, cold = timed(stdlib)
    warm_s, warm = timed(stdlib)
    assert cold == warm and len(cold) == args.limit
    arith_s, arith = timed(lambda: embedded.generate("arith", split="train", seed=0, limit=args.limit))
    pydoc_s, pydoc = timed(lambda: embedded.generate("pydoc", split="train", seed=0))
    result = {
        "claim": "embedded corpora: a few thousand examples in < 2 s with the stdlib_code disk cache",
        "limit": args.limit, "stdlib_code_cold_s": round(cold_s, 3), "stdlib_code_warm_s": round(warm_s, 3),
        "cold_over_warm": round(cold_s / warm_s, 1), "arith_s": round(arith_s, 3), "arith_examples": len(arith),
        "pydoc_s": round(pydoc_s, 3), "pydoc_examples": len(pydoc), "machine": machine(),
    }
    print(f"stdlib_code {args.limit}: cold {cold_s:.2f} s (parse the stdlib)  warm {warm_s:.3f} s (disk cache)  "
          f"ratio {cold_s / warm_s:.1f}x")
    print(f"arith {len(arith)}: {arith_s:.3f} s    pydoc {len(pydoc)} (all train): {pydoc_s:.3f} s")
    out = Path(__file__).parent / "results" / "data_embedded_generation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
