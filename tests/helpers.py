"""Shared test helpers: free ports, multi-process launches with their own ports and logs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from adaspec_dist.dist import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child process: one thread per rank (2 cores), no launcher leftovers."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
           and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


def run_torchrun(args: list[str], *, nproc: int = 2, timeout: float = 300, env: dict | None = None,
                 check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node nproc --master_port <free> args...`` with captured output."""
    cmd = [str(BIN / "torchrun"), f"--nproc_per_node={nproc}", "--nnodes=1",
           f"--master_port={free_port()}", *args]
    proc = subprocess.run(cmd, env=env or child_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def sigkill_when(argv: list[str], ready, *, timeout: float = 120) -> None:
    """Run ``argv`` (a Python script and its arguments) and SIGKILL it as soon as ``ready()`` holds
    (polled every 2 ms), or when it exits or ``timeout`` passes first; the caller checks where the
    kill landed."""
    proc = subprocess.Popen([sys.executable, *argv], env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def run_cli(args: list[str], *, timeout: float = 300, env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed ``adaspec-dist`` console script in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "adaspec_dist.cli", *args], env=env or child_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"adaspec-dist {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def first_two_chisquare(sequences, expected_VV, vocab: int) -> float:
    """p-value of the observed first-two-token pairs of ``sequences`` against the exact joint
    distribution ``expected_VV`` (flattened, sums to 1). Cells with fewer than 5 expected counts
    are pooled into one, as chi-square needs."""
    import torch
    from scipy import stats

    n = len(sequences)
    keep = expected_VV * n >= 5
    cells = torch.tensor([s[0] * vocab + s[1] for s in sequences])
    counts = torch.bincount(cells, minlength=vocab * vocab).double()
    obs = torch.cat([counts[keep], counts[~keep].sum()[None]])
    exp = torch.cat([expected_VV[keep], expected_VV[~keep].sum()[None]]) * n
    return stats.chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue
