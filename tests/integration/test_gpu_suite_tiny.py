"""``benchmarks/gpu_suite.sh --tiny``: the prepared GPU check runs in the normal test run, on the CPU
with shrunk shapes, so the one GPU run it was written for does not meet a rotten script.

Every section must finish and produce its numbers: the tests/gpu correctness tests (run on the CPU
under ADASPEC_GPU_TESTS_ON_CPU=1), cache and forward tokens/s (the MFU is a recorded skip without a
GPU), the three training rates, SD at batch 1/8/32 with alpha, tau, c and the bound plus HF assisted
generation, and ``cache --tp 2 == --tp 1`` with two gloo ranks (--tp-on-cpu). The JSON and the
markdown table land in --out; benchmarks/results/gpu_suite.json (the GPU run's) is never touched.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, child_env

# ~60 s on 2 cores (the whole GPU suite, tiny, on the CPU): `make test` only, not `make test-fast`.
pytestmark = pytest.mark.slow

RESULTS = REPO / "benchmarks" / "results" / "gpu_suite.json"


def _snapshot(path: Path):
    return path.read_bytes() if path.exists() else None


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-suite")
    before = _snapshot(RESULTS)
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--tiny", "--tp-on-cpu",
                           "--out", str(tmp / "out"), "--work", str(tmp / "work")],
                          env=child_env(PYTHON=sys.executable), capture_output=True, text=True, timeout=500)
    assert _snapshot(RESULTS) == before, "--tiny touched benchmarks/results/gpu_suite.json"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    return json.loads((tmp / "out" / "gpu_suite.json").read_text()), (tmp / "out" / "gpu_suite.md").read_text()


def test_every_section_ran(suite):
    res, _ = suite
    assert res["mode"].startswith("tiny") and res["exit_code"] == 0 and not res["preflight"]["missing"]
    assert list(res["sections"]) == ["correctness", "cache", "train", "spec", "tp"]
    for name, sec in res["sections"].items():
        assert sec["status"] == "ok", (name, sec.get("error"))
        assert 0 < sec["seconds"] <= sec["budget_s"] and sec["rows"]
    assert res["total_seconds"] < 240 and res["machine"]["cpu_count"]


def test_correctness_tests_ran_on_cpu(suite):
    tests = suite[0]["sections"]["correctness"]["tests"]
    ran = {name for name, t in tests.items() if t["outcome"] != "skipped"}
    assert all(tests[n]["outcome"] == "passed" for n in ran)
    for part in ("greedy_sd_equals_target_greedy", "sampled_sd_follows", "device_cache_matches_cpu",
                 "tp1_megatron", "zero2_train_reduces_the_loss[bf16]", "eval_end_to_end"):
        assert any(part in n for n in ran), part
    assert [n for n in tests if n not in ran] == ["test_jobs_cuda::test_zero2_train_reduces_the_loss[fp16]"]


def test_throughput_numbers(suite):
    secs = suite[0]["sections"]
    cache = secs["cache"]
    assert cache["peak_tflops"] is None and "no GPU" in cache["peak_source"]     # MFU: a recorded skip
    for row in cache["models"].values():
        assert row["forward_tokens_per_s"] > 0 and row["cache_tokens_per_s"] > 0 and row["ratio"] > 0
        assert "forward_mfu" not in row and row["bytes_per_supervised_token"] > 0
    train = secs["train"]
    assert set(train["tokens_per_s"]) == {"online", "cached", "sft"} and min(train["tokens_per_s"].values()) > 0
    assert train["cached_over_online"] > 1 and train["cached_over_sft"] > 0
    assert train["process_group_backend"] == "gloo"


def test_speculative_numbers(suite):
    spec = suite[0]["sections"]["spec"]
    assert abs(spec["calibration"]["agreement"] - 0.7) < 0.05
    assert list(spec["batches"]) == ["1", "8", "32"]
    assert abs(spec["batches"]["32"]["alpha_logits"] - spec["calibration"]["agreement"]) < 0.05   # same prompts
    for row in spec["batches"].values():
        assert row["sd_tokens_per_s"] > 0 and row["target_tokens_per_s"] > 0 and 0 < row["acceptance_rate"] <= 1
        assert 0 < row["alpha_logits"] <= 1 and row["matches_target"] >= 0.5
        assert 1 <= row["tau"] <= 5 and row["c"] > 0 and row["bound"] > 0
    hf = spec["hf_assisted"]
    assert hf["hf_assisted_tokens_per_s"] > 0 and hf["ours_sd_over_hf_assisted"] > 0


def test_tp_and_markdown(suite):
    res, md = suite
    tp = res["sections"]["tp"]
    assert tp["backend"].startswith("gloo") and all(tp["checks"].values()) and tp["rows_ids_equal"] >= 0.99
    assert "| section | status |" in md
    for name in res["sections"]:
        assert f"| {name} | ok |" in md


def test_tiny_refuses_the_gpu_results_file():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_suite

    with pytest.raises(SystemExit):
        gpu_suite.main(["--tiny", "--out", str(RESULTS.parent)])
