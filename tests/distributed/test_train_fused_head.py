"""The fused head under real DeepSpeed ZeRO 0 and 3 on 2 gloo ranks: loss and every full gradient
equal the plain path's (ranks with different chunk counts, tied and untied heads, an empty rank)."""
from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run_torchrun

WORKER = Path(__file__).parent / "workers" / "fused_head_worker.py"


def test_fused_head_matches_plain_under_zero_0_and_3(tmp_path):
    run_torchrun([str(WORKER), str(tmp_path)], timeout=400)  # a hang (misaligned all-gathers) times out
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert sorted(r0) == sorted(r1) and len(r0) == 10, sorted(r0)
    for key, a in r0.items():
        b = r1[key]
        for res in (a, b):
            assert abs(res["fused"] - res["plain"]) <= 1e-5 * abs(res["plain"]) + 1e-7, (key, res)
            assert res["grad_rel_err"] < 1e-5, (key, res)
            # every parameter trained (the tied head's one tensor counted once)
            assert res["nonzero"] == res["params"], (key, res)
