"""Shared bits of the cache benchmarks: machine info, result files, synthetic task sequences."""
from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "load_avg_1m": round(os.getloadavg()[0], 2),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**result, "machine": machine()}, indent=1) + "\n")
    return path


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
