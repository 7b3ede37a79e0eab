"""DeepSpeed's JIT-built ops: per environment, and a run knows when it is about to compile."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from adaspec_dist.distill import engine


def test_ops_build_in_this_environment_unless_the_user_says_otherwise(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    code = "from adaspec_dist.distill.engine import extensions_dir; import os; print(extensions_dir(), os.environ['TORCH_EXTENSIONS_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(Path(sys.prefix) / "torch_extensions")] * 2  # was torch's ~/.cache default, shared by every venv
    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "mine")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(tmp_path / "mine")] * 2


def test_a_cpu_run_knows_which_ops_it_must_compile_first(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert engine.ops_to_build("cpu") == [tmp_path / "deepspeed_shm_comm"]
    assert engine.ops_to_build("cuda:0") == []  # GPU runs use torch's AdamW: nothing to compile
    (tmp_path / "deepspeed_shm_comm").mkdir()
    (tmp_path / "deepspeed_shm_comm" / "lock").touch()  # a build under way (or killed) is not a build
    assert engine.ops_to_build("cpu") == [tmp_path / "deepspeed_shm_comm"]
    (tmp_path / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").touch()
    assert engine.ops_to_build("cpu") == []
