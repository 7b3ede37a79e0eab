"""Global-scope AdaSPEC selection (both rules) under a real 2-rank gloo job."""
from __future__ import annotations

import json
from pathlib import Path

from adaspec_dist.distill.selection import n_keep
from tests.helpers import run_torchrun

WORKER = Path(__file__).parent / "workers" / "selection_worker.py"


def test_global_selection_identical_on_both_ranks(tmp_path):
    run_torchrun([str(WORKER), str(tmp_path)], timeout=120)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for rule in ("quantile", "exact_k"):
        for fraction in ("0.4", "0.25"):
            a, b = r0[f"{rule}-{fraction}"], r1[f"{rule}-{fraction}"]
            assert a["match"] and b["match"]
            assert a["threshold"] == b["threshold"] == a["expected_threshold"]
            assert a["kept_global"] == b["kept_global"] == a["expected_kept"] and a["total"] == b["total"] == 63
            if rule == "exact_k":
                assert a["expected_kept"] == a["exact_k"] == n_keep(63, float(fraction))
            # Local scope: each rank applies the rule to its own tokens; the global count is their sum.
            assert a["local_kept"] == a["local_expected"] and b["local_kept"] == b["local_expected"]
            assert a["local_kept_global"] == a["local_kept"] + b["local_kept"]
