"""benchmarks/fused_head_memory.py runs end to end with ``--smoke`` (tiny presets stand in for the real
draft and the 128k head): every measurement in its own subprocess, plain and fused losses equal, its
JSON (``memory_ratio``, ``time_ratio``) in ``--out`` and benchmarks/results/ untouched."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, child_env

# ~45 s on 2 cores (a benchmark end to end): `make test` only, not `make test-fast`.
pytestmark = pytest.mark.slow

RESULTS = REPO / "benchmarks" / "results"


@pytest.mark.timeout(300)
def test_fused_head_memory_smoke(tmp_path):
    before = {p.name: p.read_bytes() for p in RESULTS.glob("fused_head_memory*")}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fused_head_memory.py"), "--smoke", "--out",
                           str(out)], env=child_env(), capture_output=True, text=True, timeout=290)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert {p.name: p.read_bytes() for p in RESULTS.glob("fused_head_memory*")} == before, "--smoke touched results/"
    res = json.loads((out / "fused_head_memory.json").read_text())
    assert res["smoke"] is True and res["machine"]["date"]
    assert set(res["memory_ratio"]) == set(res["time_ratio"]) == {"smollm2", "synthetic"}
    for label, ratios in res["memory_ratio"].items():
        assert set(ratios) == {"64", "256"} and all(r > 0 for r in ratios.values())
        assert res["time_ratio"][label] > 0 and res["fused_alone"][label]["n"] == 1024
    assert all(r["peak_bytes"] > 0 and r["how"] in ("VmHWM", "ru_maxrss") for r in res["rows"])
