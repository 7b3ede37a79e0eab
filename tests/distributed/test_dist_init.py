"""A real 2-rank gloo job under torchrun builds the TP x DP grid; a single process does too."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import child_env, run_torchrun

WORKER = Path(__file__).with_name("dist_worker.py")


@pytest.mark.distributed
@pytest.mark.parametrize("tp", [1, 2])
def test_two_rank_gloo_grid(tmp_path, tp):
    run_torchrun([str(WORKER), str(tp), str(tmp_path / "out")], nproc=2, timeout=120)
    results = [json.loads((tmp_path / f"out.{r}.json").read_text()) for r in range(2)]
    for res in results:
        assert res["world"] == 2 and res["backend"] == "gloo"
        if tp == 2:  # one replica of two TP ranks: the TP group sums both, the DP group is itself
            assert res["tp_sum"] == 1.0 and res["dp_sum"] == res["rank"] and res["dp_rank"] == 0
        else:  # two replicas: the DP group sums both
            assert res["dp_sum"] == 1.0 and res["tp_sum"] == res["rank"] and res["tp_rank"] == 0
        # dist.grid_groups: the other split of the same world, created once
        grid = res["grid"]
        assert grid["cached"] and grid["tp_size"] == 2 // tp
        if tp == 1:  # grid tp=2: one group of both ranks
            assert grid["tp_sum"] == 1.0 and grid["dp_sum"] == res["rank"] and grid["tp_rank"] == res["rank"]
        else:  # grid tp=1: each rank alone, the DP group sums both
            assert grid["dp_sum"] == 1.0 and grid["tp_sum"] == res["rank"] and grid["dp_rank"] == res["rank"]


def test_single_process_initialises(tmp_path):
    proc = subprocess.run([sys.executable, str(WORKER), "1", str(tmp_path / "out")], env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "out.0.json").read_text())
    assert res["world"] == 1 and res["tp_sum"] == 0.0


def test_tp_must_divide_world(tmp_path):
    proc = run_torchrun([str(WORKER), "3", str(tmp_path / "out")], nproc=2, timeout=120, check=False)
    assert proc.returncode != 0
    assert "does not divide the world size" in proc.stderr + proc.stdout
