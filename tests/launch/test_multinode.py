"""Multi-node launches on one machine: DeepSpeed over ssh/pdsh, DeepSpeed --no_ssh, torchrun.

Each runs the project's launcher scripts (launchers/deepspeed/run.sh, launchers/torchrun/run.sh)
on two "nodes" with one rank each, and the resulting checkpoint must equal the plain
one-node 2-rank DeepSpeed run of the same recipe (fixture ``baseline``).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from adaspec_dist.dist import free_port
from tests.launch import infra
from tests.launch.common import (LAUNCHERS, REPO, assert_same_params, checkpoint_params, node_ranks_seen,
                                   run_logged)

pytestmark = [pytest.mark.launch, pytest.mark.distributed]

DS_RUN = LAUNCHERS / "deepspeed" / "run.sh"
TORCHRUN = LAUNCHERS / "torchrun" / "run.sh"


@pytest.fixture(scope="module")
def ssh_nodes(launch_root):
    with infra.ssh_nodes(launch_root / "ssh") as nodes:
        yield nodes


def two_node_hostfile(path: Path) -> Path:
    path.write_text("# two 'nodes' on this machine (see tests/launch/infra.py)\nnode1 slots=1\nnode2 slots=1\n")
    return path


def run_two(cmds: list[list[str]], env: dict, logs: list[Path], timeout: float = 400) -> list[str]:
    """Start one launcher per node rank at once; both must exit 0."""
    procs = []
    for cmd, log in zip(cmds, logs):
        procs.append((subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=REPO),
                      cmd, log))
    try:
        for proc, _, _ in procs:
            proc.wait(timeout=timeout)
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outs = []
    for proc, cmd, log in procs:
        out = log.read_text(errors="replace")
        assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-6000:]}"
        outs.append(out)
    return outs


def test_deepspeed_hostfile_over_ssh(ssh_nodes, make_recipe, launch_env, baseline):
    """`run.sh --hostfile H --ssh-port 2222`: pdsh ssh-es into node1 and node2, one rank each."""
    recipe, run_dir = make_recipe("ds_ssh")
    hostfile = two_node_hostfile(run_dir.parent / "hostfile")
    out = run_logged(["bash", str(DS_RUN), "--hostfile", str(hostfile), "--ssh-port", str(ssh_nodes.port),
                      "--master-port", str(free_port()), "train", "--config", str(recipe)],
                     env=launch_env, log=run_dir.parent / "launch.log", timeout=400)
    assert "Running on the following workers: node1,node2" in out
    # pdsh prefixes each remote line with its host: both nodes started their launch.py
    assert "node1: " in out and "node2: " in out
    assert node_ranks_seen(out) == {0, 1}
    assert_same_params(checkpoint_params(run_dir), baseline)


def test_deepspeed_no_ssh_two_node_ranks(make_recipe, launch_env, baseline):
    """`run.sh --hostfile H --no-ssh --node-rank R` started once per node (no ssh at all)."""
    recipe, run_dir = make_recipe("ds_no_ssh")
    hostfile = two_node_hostfile(run_dir.parent / "hostfile")
    port = str(free_port())
    cmds = [["bash", str(DS_RUN), "--hostfile", str(hostfile), "--no-ssh", "--node-rank", str(r),
             "--master-addr", "127.0.0.1", "--master-port", port, "train", "--config", str(recipe)]
            for r in (0, 1)]
    outs = run_two(cmds, launch_env, [run_dir.parent / f"node{r}.log" for r in (0, 1)])
    assert [node_ranks_seen(o) for o in outs] == [{0}, {1}]
    assert_same_params(checkpoint_params(run_dir), baseline)


@pytest.mark.parametrize("rdzv", ["static", "c10d"])
def test_torchrun_two_nodes(rdzv, make_recipe, launch_env, baseline):
    """`torchrun/run.sh --nnodes 2` with static node ranks, and with c10d rendezvous."""
    recipe, run_dir = make_recipe(f"torchrun_{rdzv}")
    port = str(free_port())
    cmds = []
    for r in (0, 1):
        node = ["--node-rank", str(r)] if rdzv == "static" else ["--rdzv-id", f"launch-test-{port}"]
        cmds.append(["bash", str(TORCHRUN), "--nproc", "1", "--nnodes", "2", "--rdzv", rdzv, *node,
                     "--master-addr", "127.0.0.1", "--master-port", port, "train", "--config", str(recipe)])
    run_two(cmds, launch_env, [run_dir.parent / f"node{r}.log" for r in (0, 1)])
    assert_same_params(checkpoint_params(run_dir), baseline)
