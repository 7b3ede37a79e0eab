"""benchmarks/selection_real.py (issue 21: does token selection itself raise acceptance, on the real
pair) runs end to end with ``--smoke``: tiny sizes, every code path (target top-64 rows, pydoc CE
initialisation, the reference's lr sweep, L_ref, the four arms through the package's objective, the
null run, HumanEval α with per-prompt bootstrap CIs, real speculative decoding, the decision rule,
the plot), its JSON in ``--out`` and benchmarks/results/ untouched. About a minute on 2 shared cores."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, child_env

RESULTS = REPO / "benchmarks" / "results"


@pytest.mark.timeout(240)
def test_selection_real_smoke(smollm2_dir, tmp_path):
    before = {p.name: p.read_bytes() for p in RESULTS.glob("selection_real*")}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "selection_real.py"), "--smoke", "--out", str(out),
                           "--threads", "1"], env=child_env(), capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert {p.name: p.read_bytes() for p in RESULTS.glob("selection_real*")} == before, "--smoke touched results/"
    res = json.loads((out / "selection_real.json").read_text())
    assert res["smoke"] is True and res["machine"]["date"]
    assert [r["arm"] for r in res["table"]] == ["distillspec", "adaspec", "random_k", "distillspec_wide"]
    for row in res["table"]:
        assert 0 <= row["alpha"] <= 1 and row["alpha_ci95"][0] <= row["alpha"] <= row["alpha_ci95"][1]
        assert 0 <= row["top1"] <= 1
    runs = res["runs"]
    assert all(0.3 < r["mean_kept_fraction"] < 0.6 for r in runs.values() if r["arm"] in ("adaspec", "random_k"))
    ref = res["arm_runs"]["distillspec"][0]
    assert [c["step"] for c in res["curves"][ref]] == [0, 1, 2, 3]
    assert res["null_random_k_selection_seeds"] is not None
    v = res["verdict"]
    assert v["selection_helps"] is False and "fewer than 3 seeds" in v["text"]  # one seed: the rule cannot pass
    assert set(res["speculative_decoding"]["adaspec"]) == {"run", "T0", "T1"}
    assert res["speculative_decoding"]["adaspec"]["T0"]["tau"] >= 1
    assert len(res["alpha_by_reference_kl_quintile"]["alpha"]["adaspec"]) == 5
    assert (out / "selection_real.png").stat().st_size > 1000
