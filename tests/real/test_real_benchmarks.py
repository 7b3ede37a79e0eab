"""The real-pair benchmarks (benchmarks/real_{cache,spec,arms}.py, make_real.py) run end to end with
``--smoke`` (a few sequences / tokens, the untrained from_target draft; make_real: the shrunken recipe):
every section produces its numbers into ``--out``, and benchmarks/results/ (the measured run's files)
is never touched."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, child_env

RESULTS = REPO / "benchmarks" / "results"


def _snapshot() -> dict:
    return {p.name: p.read_bytes() for pattern in ("real_*", "make_real*") for p in RESULTS.glob(pattern)
            if p.is_file()}


def _smoke(name: str, tmp_path, timeout: float = 240) -> dict:
    before = _snapshot()
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--smoke", "--out", str(out),
                           "--run-dir", str(tmp_path / "no-run")],
                          env=child_env(), capture_output=True, text=True, timeout=timeout)
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


@pytest.mark.slow
def test_make_real_smoke(smollm2_dir, tmp_path):
    # The shrunken recipe through the pipeline (--run-dir), then what make_real.json records of it.
    res = _smoke("make_real", tmp_path, timeout=600)
    stages = ["cache_train", "cache_eval", "reference", "add_reference", "adaspec", "distillspec_wide", "eval",
              "eval_greedy"]
    assert list(res["stage_seconds"]) == stages and all(s > 0 for s in res["stage_seconds"].values())
    assert res["stage_seconds_total"] == pytest.approx(sum(res["stage_seconds"].values()), abs=0.2)
    assert res["pipeline_wall_seconds"] >= res["stage_seconds_total"] - 1
    held = res["held_out"]
    arms = ["distillspec", "adaspec", "distillspec_wide"]
    assert held["tokens"] == res["data"]["eval"]["supervised"] > 0
    assert 0 < held["initial_alpha"] < 1 and list(held["alpha"]) == arms
    for arm in arms:  # every arm starts from the same draft: step 0's α is the initial one, the last the final
        steps = held["alpha_by_step"][arm]
        assert steps[0] == [0, pytest.approx(held["initial_alpha"], abs=1e-6)] and steps[-1][1] == held["alpha"][arm]
    assert [res["eval"][s]["temperature"] for s in ("eval", "eval_greedy")] == [1.0, 0.0]
    for stage in ("eval", "eval_greedy"):
        assert list(res["eval"][stage]["arms"]) == arms
        for row in res["eval"][stage]["arms"].values():
            assert 0 <= row["alpha_logits"] <= 1 and 0 <= row["acceptance_rate"] <= 1 and row["tau"] >= 1
    assert all(r["matches_target"] == 1.0 for r in res["eval"]["eval_greedy"]["arms"].values())
    assert "configs/smollm2-135m-code.yaml" in res["provenance"]["digests"]
    assert "benchmarks/make_real.py" in res["provenance"]["digests"]
