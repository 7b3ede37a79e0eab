"""Shared bits of the cache benchmarks: machine info, result files, synthetic task sequences."""
from __future__ import annotations

import os
from pathlib import Path
from results_io import machine, write_result  # noqa: F401  (re-exported to the cache_* scripts)

os.environ.setdefault("OMP_NUM_THREADS", "1")
RESULTS = Path(__file__).resolve().parent / "results"






def task_sequences(n: int, length: int, prompt: int, vocab: int, seed: int = 0):
    """``n`` sequences of ``length`` random ids, the first ``prompt`` of them masked as prompt."""
    import numpy as np
    from adaspec_dist.data.tokenize import TokenizedExample

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(4, vocab, length).tolist()
        out.append(TokenizedExample(input_ids=ids, labels=[-100] * prompt + ids[prompt:]))
    return out
