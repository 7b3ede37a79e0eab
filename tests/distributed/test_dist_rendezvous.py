"""Launcher variables left in a shell (RANK=0 WORLD_SIZE=2 ...) fail fast, in one line, instead of hanging."""
from __future__ import annotations

import time

import pytest

from adaspec_dist.dist import free_port, rendezvous_timeout_s
from tests.helpers import child_env, run_cli


@pytest.mark.parametrize("rank,who", [(0, "for the other ranks"), (1, "for rank 0 at 127.0.0.1:")])
def test_stale_launcher_variables_fail_within_the_rendezvous_timeout(tmp_path, rank, who):
    port = free_port()
    env = child_env(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                    ADASPEC_RENDEZVOUS_TIMEOUT="3")
    t0 = time.time()
    proc = run_cli(["train", "objective=sft", "draft.preset=tiny-llama", "data.task=arith", "tokenizer=x",
                    f"run_dir={tmp_path / 'run'}"], env=env, check=False, timeout=120)
    took = time.time() - t0
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and took < 60, (took, proc.stderr[-2000:])
    assert err[-1].startswith(f"adaspec-dist train: error: rank {rank} of 2 waited 3 s {who}"), err[-1]
    assert f"RANK={rank} WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT={port}" in err[-1]
    assert "unset RANK WORLD_SIZE" in err[-1] and "Traceback" not in proc.stderr


def test_the_rendezvous_timeout_is_validated():
    assert rendezvous_timeout_s({}) == 60
    assert rendezvous_timeout_s({"ADASPEC_RENDEZVOUS_TIMEOUT": "5"}) == 5
    for bad in ("0", "-1", "soon", "nan"):
        with pytest.raises(ValueError, match="ADASPEC_RENDEZVOUS_TIMEOUT"):
            rendezvous_timeout_s({"ADASPEC_RENDEZVOUS_TIMEOUT": bad})
