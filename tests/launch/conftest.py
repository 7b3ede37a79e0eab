"""Fixtures of the launch tests: one tiny training recipe, its plain-DeepSpeed baseline.

Every launch test runs the SAME recipe (sft on the embedded ``arith`` task, ``tiny-llama``
draft, 2 ranks in total, fixed seeds, fp32 on CPU) through a different launcher, so each one
can be checked against the baseline: the final checkpoint's parameters must be equal.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adaspec_dist.dist import free_port
from tests.helpers import BIN, child_env
from tests.launch.common import REPO, checkpoint_params, recipe_text, run_logged


@pytest.fixture(scope="session")
def launch_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("launch")


@pytest.fixture(scope="session")
def launch_env(launch_root) -> dict[str, str]:
    """Child environment: venv first on PATH, one thread per rank, DeepSpeed's ops built.

    ``tools/warm_deepspeed.py --clear-stale-locks`` (also run by ``make test``) builds the JIT ops
    once, with no timeout, and removes a ``lock`` left by a build killed earlier, which would
    hang every launch below. (A private copy of the build directory does not help: the JIT
    rebuilds a moved build directory.)
    """
    from tests.launch.infra import ensure_packages

    ensure_packages(["pgrep"])
    subprocess.run([sys.executable, str(REPO / "tools" / "warm_deepspeed.py"), "--clear-stale-locks"],
                   env=child_env(MASTER_PORT=str(free_port())), check=True, capture_output=True)
    return child_env(ADASPEC_REPO=str(REPO), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.fixture(scope="session")
def tokenizer_dir(launch_root) -> Path:
    from tests.fixtures import tiny_tokenizer_dir

    return tiny_tokenizer_dir(launch_root / "tok")


@pytest.fixture(scope="session")
def make_recipe(launch_root, tokenizer_dir):
    """``make_recipe(name) -> (recipe path, run dir)``: the shared recipe with its own run dir."""
    def make(name: str) -> tuple[Path, Path]:
        run_dir = launch_root / name / "run"
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        path = launch_root / name / "recipe.yaml"
        path.write_text(recipe_text(run_dir, tokenizer_dir))
        return path, run_dir
    return make


@pytest.fixture(scope="session")
def baseline(make_recipe, launch_env, launch_root) -> dict:
    """The recipe under plain ``deepspeed`` on one node with 2 ranks: the reference parameters."""
    recipe, run_dir = make_recipe("baseline")
    out = run_logged([str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
                      "--no_local_rank", "--module", "adaspec_dist.cli", "train", "--config", str(recipe)],
                     env=launch_env, log=run_dir.parent / "launch.log", timeout=400)
    assert "dist_world_size=2" in out
    params = checkpoint_params(run_dir)
    # The comparison can fail: training moved the parameters away from the preset's init.
    from adaspec_dist.models.load import ModelConfig, load_causal_lm
    from tests.fixtures import TINY_VOCAB

    init = load_causal_lm(ModelConfig(preset="tiny-llama", seed=0), vocab_size=TINY_VOCAB, dtype="float32")
    moved = [n for n, p in init.state_dict().items() if n in params and not p.float().equal(params[n])]
    assert moved, "training changed no parameter; the launcher comparisons would prove nothing"
    return params
