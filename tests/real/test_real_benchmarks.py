"""The real-pair benchmarks (benchmarks/real_{cache,spec,arms}.py) run end to end with ``--smoke``
(a few sequences / tokens, the untrained from_target draft): every section produces its numbers
into ``--out``, and benchmarks/results/ (the measured run's files) is never touched."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, child_env

RESULTS = REPO / "benchmarks" / "results"


def _snapshot() -> dict:
    return {p.name: p.read_bytes() for p in RESULTS.glob("real_*") if p.is_file()}


def _smoke(name: str, tmp_path) -> dict:
    before = _snapshot()
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--smoke", "--out", str(out),
                           "--run-dir", str(tmp_path / "no-run")],
                          env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert _snapshot() == before, f"--smoke touched benchmarks/results/{name}*"
    res = json.loads((out / f"{name}.json").read_text())
    assert res["smoke"] is True and res["machine"]["date"]
    return res


def test_real_cache_smoke(smollm2_dir, tmp_path):
    res = _smoke("real_cache", tmp_path)
    tp = res["throughput"]
    assert tp["tokens"] > 0 and all(v["best"] > 0 for v in tp["tokens_per_s"].values())
    assert tp["job_over_plain_forward"]["median"] > 0 and tp["stdlib_top64_bytes_per_token"] > 0
    caches = res["caches"]
    assert list(caches) == ["topk-64", "topk-8", "sampled-16", "sampled-32"]
    assert caches["topk-8"]["bytes_per_token"] < caches["topk-64"]["bytes_per_token"] < res["dense_fp16_bytes_per_token"]
    assert caches["sampled-16"]["unique_ids_per_row"] >= 1
    err = res["kl_relative_error"]["from_target_2_layers_untrained"]
    assert err["mean_full_kl"] > 0
    # Top-k is a lower bound of the full KL, and more ids bound it more tightly.
    assert err["topk-64"]["mean_sparse_kl"] <= err["mean_full_kl"] * 1.001
    assert err["topk-64"]["relative_error"] <= err["topk-8"]["relative_error"]
    assert "relative_error_max_of_seeds" in err["sampled-32"]


def test_real_spec_smoke(smollm2_dir, tmp_path):
    res = _smoke("real_spec", tmp_path)
    assert set(res["tokens_per_s"]) == {"hf_greedy", "hf_assisted", "ours_ar_b1", "ours_sd_b1", "ours_sd_b8",
                                        "ours_ar_b8"}
    assert res["mismatches_vs_hf_greedy"]["ours_sd_b1"] == 0 and res["mismatches_vs_hf_greedy"]["ours_sd_b8"] == 0
    assert res["ratios"]["ours_sd_b1_over_hf_assisted_b1"] > 0
    assert res["tau"]["measured_b1"] >= 1 and res["tau"]["theory_from_alpha_on_target_greedy"] >= 1


def test_real_arms_smoke(smollm2_dir, tmp_path):
    pytest.importorskip("matplotlib")
    res = _smoke("real_arms", tmp_path)
    assert list(res["by_temperature"]) == ["0", "1"]
    for t, block in res["by_temperature"].items():
        assert list(block["arms"]) == ["distillspec", "adaspec", "distillspec_wide"]
        for arm in block["arms"].values():
            assert 0 <= arm["alpha_logits"] <= 1 and list(arm["by_gamma"]) == ["1", "2"]
            assert all(0 <= r["acceptance_rate"] <= 1 for r in arm["by_gamma"].values())
            if t == "0":
                assert all(r["matches_target"] == 1.0 for r in arm["by_gamma"].values())
        assert (tmp_path / "out" / block["eval_json"]).is_file()
    assert (tmp_path / "out" / "real_arms.png").stat().st_size > 1000
