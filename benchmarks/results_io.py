"""Where every benchmark's figures go: ``benchmarks/results/NAME.json`` with the machine and date.

Scripts run as ``python benchmarks/NAME.py``, so this module is importable as ``results_io``.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What a number depends on: platform, cores, load, versions, accelerator, date (UTC)."""
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_result(name: str, result: dict) -> Path:
    """Write ``result`` plus the machine description to ``results/NAME.json``; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**result, "machine": machine()}, indent=1) + "\n")
    return path
