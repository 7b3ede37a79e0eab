"""SIGTERM to a real `adaspec-dist train` (1 rank, and 2 ranks as srun starts them): exit 143, always.

Slurm's requeue logic keys on the exit code, so a preempted run must end with 143 whatever the
timing — never 134 ("terminate called without an active exception": a thread still alive in
C++ code when the interpreter tore down) — with a complete checkpoint and its tensorboard
scalars on disk up to the stop step; and the run directory, moved elsewhere, resumes from it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import child_env, run_cli

pytestmark = pytest.mark.slow

# Put on a rank's PYTHONPATH: when the interpreter starts its teardown (atexit), report every
# thread still alive, Python's and the OS's. Those are what abort a teardown with 134; a preempted
# run must leave without one (os._exit after its checkpoint: the report never prints) or with none.
_TEARDOWN_HOOK = """
import atexit, os, sys, threading

def _report():
    py = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    tasks = []
    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else []:
        if int(tid) != os.getpid():
            try:
                tasks.append(open(f"/proc/self/task/{tid}/comm").read().strip())
            except OSError:
                pass
    if py or tasks:
        print(f"TEARDOWN with live threads: python={py} os={sorted(tasks)}", file=sys.stderr, flush=True)

atexit.register(_report)
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> tuple[Path, Path]:
    """A tokenizer and a small topk cache of a tiny target (enough batches for a long run)."""
    from tests.fixtures import tiny_tokenizer_dir
    from adaspec_dist.data.tokenizer import load_tokenizer
    from adaspec_dist.models.load import build_preset, save_hf

    root = tmp_path_factory.mktemp("signals")
    (root / "hook").mkdir()
    (root / "hook" / "sitecustomize.py").write_text(_TEARDOWN_HOOK)
    tok_dir = tiny_tokenizer_dir(root)
    save_hf(build_preset("tiny-llama", len(load_tokenizer(tok_dir)), seed=0), root / "target",
            tokenizer=load_tokenizer(tok_dir))
    run_cli(["cache", f"model.name_or_path={root / 'target'}", "data.task=arith", "data.limit=96",
             "data.max_length=48", "top_k=8", "shard_size=48", f"out_dir={root / 'cache'}"], timeout=300)
    return tok_dir, root / "cache", root / "hook"


def _train_argv(tok: Path, cache: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "adaspec_dist.cli", "train", "objective=kd", "draft.preset=tiny-llama",
            f"tokenizer={tok}", f"cache_dir={cache}", f"run_dir={run_dir}", "engine.ds_config=ds_zero0.json",
            "engine.micro_batch_size=2", "max_steps=100000", "export=false", *extra]


def _wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = 240) -> None:
    t0 = time.time()
    while not path.exists():
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a rank ended before {path} appeared: " +
                                 "\n".join(p.communicate()[1][-3000:] for p in procs))
        if time.time() - t0 > timeout:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.1)


def _sigterm_run(tok: Path, cache: Path, hook: Path, run_dir: Path, *, world: int,
                 delay: float) -> list[subprocess.CompletedProcess]:
    """Start ``world`` ranks (srun-style: one process each, rank variables set), SIGTERM them all
    ``delay`` s after setup is done, and collect them."""
    from adaspec_dist.dist import free_port

    port = str(free_port())
    procs = []
    for r in range(world):
        env = child_env(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                        MASTER_PORT=port) if world > 1 else child_env()
        env["PYTHONPATH"] = str(hook) + os.pathsep + env["PYTHONPATH"]
        procs.append(subprocess.Popen(_train_argv(tok, cache, run_dir), env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        _wait_for(run_dir / "config.yaml", procs)  # setup is done: the handlers are in place
        time.sleep(delay)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        out = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=240)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _scalar_steps(run_dir: Path, tag: str = "train/loss") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def _check_stopped(procs: list[subprocess.CompletedProcess], run_dir: Path) -> int:
    for p in procs:
        assert p.returncode == 143, (p.returncode, p.stderr[-4000:])
        assert "terminate called" not in p.stderr, p.stderr[-4000:]
        assert "TEARDOWN with live threads" not in p.stderr, p.stderr[-4000:]
    latest = run_dir / "checkpoints" / "latest"
    assert latest.is_file(), sorted(run_dir.rglob("*"))
    tag = latest.read_text().strip()
    step = int(tag.removeprefix("step"))
    assert (run_dir / "checkpoints" / tag).is_dir() and step >= 1
    # The scalars of every step up to the stop checkpoint were flushed before the process ended.
    assert max(_scalar_steps(run_dir), default=0) == step, (_scalar_steps(run_dir), step)
    assert not (run_dir / ".lock").exists()  # the run's claim on its directory was released
    return step


@pytest.mark.parametrize("delay", [0.0, 2.5])
def test_sigterm_one_rank_exits_143_with_a_complete_checkpoint(cache_dir, tmp_path, delay):
    tok, cache, hook = cache_dir
    _check_stopped(_sigterm_run(tok, cache, hook, tmp_path / "run", world=1, delay=delay), tmp_path / "run")


def test_sigterm_two_ranks_exit_143_with_a_complete_checkpoint(cache_dir, tmp_path):
    tok, cache, hook = cache_dir
    _check_stopped(_sigterm_run(tok, cache, hook, tmp_path / "run", world=2, delay=1.0), tmp_path / "run")


def test_a_stopped_run_moved_elsewhere_resumes(cache_dir, tmp_path):
    """Nothing in a run directory pins its path: moved (a requeued job seeing another mount point),
    it resumes from the checkpoint the signal left."""
    tok, cache, hook = cache_dir
    run_dir = tmp_path / "run"
    step = _check_stopped(_sigterm_run(tok, cache, hook, run_dir, world=1, delay=1.0), run_dir)
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(str(run_dir), moved)
    argv = _train_argv(tok, cache, moved, f"max_steps={step + 1}", "--resume")[3:]
    summary = json.loads(run_cli(argv, timeout=300).stdout.strip().splitlines()[-1])
    assert summary["steps"] == step + 1 and summary["eval_start"] == {}
    assert (moved / "checkpoints" / f"step{step + 1:08d}").is_dir()
