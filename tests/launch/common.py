"""Helpers shared by the launch tests: the tiny recipe, logged runs, checkpoint comparison."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.helpers import REPO

LAUNCHERS = REPO / "launchers"
MAX_STEPS = 80  # enough steps (several seconds) for the preemption test to land mid-run
# Equality of parameters across launchers: the same ranks do the same fp32 math and a 2-way
# gloo all-reduce is order-independent, so the runs agree to rounding (in practice bitwise).
ATOL = 1e-6


def recipe_text(run_dir: Path, tokenizer: Path) -> str:
    return yaml.safe_dump({
        "objective": "sft",
        "draft": {"preset": "tiny-llama", "seed": 0},
        "tokenizer": str(tokenizer),
        "data": {"task": "arith", "limit": 64, "max_length": 48, "seed": 0},
        "run_dir": str(run_dir),
        "max_steps": MAX_STEPS,
        "checkpoint": {"every": 0},  # only the final checkpoint, so a mid-run one can only come from a stop signal
        "seed": 0,
        "engine": {"micro_batch_size": 4, "lr": 1e-3, "schedule": "constant"},
    })


def run_logged(cmd: list[str], *, env: dict, log: Path, timeout: float, cwd: Path = REPO) -> str:
    """Run a launcher command, keep its output in ``log``, fail with the tail on a non-zero exit."""
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, cwd=cwd)
    out = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{out[-6000:]}")
    return out


def checkpoint_params(run_dir: Path, step: int = MAX_STEPS) -> dict:
    """The module parameters of the DeepSpeed checkpoint of ``step`` (checks both ranks wrote theirs)."""
    import torch

    ckpt = run_dir / "checkpoints" / f"step{step:08d}"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == ckpt.name
    for rank in (0, 1):  # ZeRO optimizer partitions: one file per data-parallel rank
        assert (ckpt / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").is_file(), f"rank {rank} wrote nothing"
    state = torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in state["module"].items()}


def assert_same_params(got: dict, want: dict) -> None:
    import torch

    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=ATOL, msg=lambda m: f"{name}: {m}")


def node_ranks_seen(log: str) -> set[int]:
    """Node ranks whose DeepSpeed launch.py started ranks (it logs ``node_rank=R``)."""
    return {int(m) for m in re.findall(r"num_local_procs=\d+, node_rank=(\d+)", log)}
