"""`adaspec-dist train` against hostile or damaged run directories: one line, nothing run, nothing exported.

* A planted pickle in a checkpoint cannot run code through any resume path (they all load
  through distill/engine.py's ``load_checkpoint``, which reads with ``weights_only=True``).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import run_cli


class _Planted:
    """Unpickling this (``weights_only=False``) opens a file for writing: it creates the file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _args(tok: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["train", "objective=sft", "draft.preset=tiny-llama", f"tokenizer={tok}", "data.task=arith",
            "data.limit=4", "data.max_length=32", "export=false", "engine.micro_batch_size=2",
            "engine.ds_config=ds_zero1.json", f"run_dir={run_dir}", "checkpoint.every=1", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tokenizer and a run directory with a step-1 checkpoint (ZeRO-1: model + optimiser files)."""
    from tests.fixtures import tiny_tokenizer_dir

    root = tmp_path_factory.mktemp("hostile")
    tok = tiny_tokenizer_dir(root)
    run_cli(_args(tok, root / "run", "max_steps=1"))
    return tok, root / "run"


@pytest.mark.parametrize("flag", ["--resume", "--auto-resume"])
@pytest.mark.parametrize("victim", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_a_planted_checkpoint_pickle_is_refused_and_runs_nothing(finished_run, tmp_path, flag, victim):
    import shutil

    tok, run = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    target = copy / "checkpoints" / "step00000001" / victim
    state = torch.load(target, weights_only=False)  # the genuine state, plus the planted object
    marker = tmp_path / "pwned"
    state["planted"] = _Planted(marker)
    torch.save(state, target)
    proc = run_cli(_args(tok, copy, "max_steps=2", flag), check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert not marker.exists()
    assert f"checkpoint file '{target}' holds an object that is not training state (io.open)" in err[-1]
    assert len(err) == 1 or "error:" not in err[-2]
    assert "Traceback" not in proc.stderr
    assert not (copy / "checkpoints" / "step00000002").exists()
    # The advice works: a new run_dir without --resume trains.
    assert run_cli(_args(tok, tmp_path / "new", "max_steps=1")).returncode == 0


def test_a_genuine_checkpoint_still_resumes(finished_run, tmp_path):
    import shutil

    tok, run = finished_run
    shutil.copytree(run, tmp_path / "run")
    proc = run_cli(_args(tok, tmp_path / "run", "max_steps=2", "--resume"))
    assert json.loads(proc.stdout.strip().splitlines()[-1])["steps"] == 2


def test_a_diverging_run_stops_at_the_nan_step_and_exports_nothing(finished_run, tmp_path):
    """lr 1e30: the first step's update blows the weights up, the second step's loss is NaN."""
    tok, _ = finished_run
    run = tmp_path / "run"
    proc = run_cli(_args(tok, run, "max_steps=3", "engine.lr=1e30", "engine.grad_clip=0", "export=true"), check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert err[-1].startswith("adaspec-dist train: error: step 2: the loss is nan (micro-batch from data example")
    assert "lower engine.lr" in err[-1] and "Traceback" not in proc.stderr
    assert not (run / "final").exists()
    assert sorted(p.name for p in (run / "checkpoints").glob("step*")) == ["step00000001"]


def test_a_cache_with_nan_log_probs_stops_training_naming_the_shard(tmp_path):
    from adaspec_dist.cache.produce import JobSpec, hf_target_fn, write_cache
    from adaspec_dist.models.load import build_preset
    from tests.unit.test_cache_hostile import poison
    from tests.unit.test_cache_store import make_sequences

    spec = JobSpec(scheme="topk", top_k=8, batch_size=2, shard_size=4, vocab_size=300)
    cache = tmp_path / "c"
    write_cache(make_sequences(8), hf_target_fn(build_preset("tiny-llama", 300), scheme="topk", top_k=8), spec,
                cache, tensorboard_dir=str(tmp_path / "tb"))
    shard = poison(cache, 1, float("nan"))
    run = tmp_path / "run"
    proc = run_cli(["train", "draft.preset=tiny-llama", f"cache_dir={cache}", "objective=kd", f"run_dir={run}",
                    "max_steps=4", "engine.micro_batch_size=2", "engine.ds_config=ds_zero1.json"], check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"'{shard}' holds non-finite values (NaN or inf: 1 in 'logp')" in err[-1], err[-1]
    assert not (run / "final").exists()


def test_train_into_a_run_of_another_config_is_refused_naming_the_keys(finished_run, tmp_path):
    """A finished sft run (export on); a run with another lr into it is refused before anything is
    written, naming the key; --force replaces it (old checkpoints gone); a longer run of the same
    config (max_steps) resumes there as before."""
    import shutil

    tok, run = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    proc = run_cli(_args(tok, copy, "max_steps=1", "engine.lr=0.001", "seed=4"), check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"run directory '{copy}' holds a run of another config (differs in engine.lr (0.0003 -> 0.001), " \
           "seed (0 -> 4))" in err[-1] and "--force" in err[-1] and "new run_dir" in err[-1], err[-1]
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    assert run_cli(_args(tok, copy, "max_steps=2", "--resume")).returncode == 0  # same config, longer
    forced = run_cli(_args(tok, copy, "max_steps=1", "engine.lr=0.001", "--force"))
    assert json.loads(forced.stdout.strip().splitlines()[-1])["steps"] == 1
    assert sorted(p.name for p in (copy / "checkpoints").glob("step*")) == ["step00000001"]
    assert "lr: 0.001" in (copy / "config.yaml").read_text()
    both = run_cli(_args(tok, copy, "max_steps=1", "--force", "--resume"), check=False)
    assert both.returncode == 2 and "drop --resume" in both.stderr.strip().splitlines()[-1]


def test_an_online_target_of_another_vocabulary_is_refused(finished_run, tmp_path):
    from adaspec_dist.models.load import build_preset, save_hf

    tok, _ = finished_run
    save_hf(build_preset("tiny-llama", 2048), tmp_path / "target")
    proc = run_cli(["train", "objective=kd", "teacher_mode=online", f"target.name_or_path={tmp_path / 'target'}",
                    "draft.preset=tiny-llama", f"tokenizer={tok}", "data.task=arith", "data.limit=4",
                    "data.max_length=32", "max_steps=1", f"run_dir={tmp_path / 'run'}"], check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "the target has 2048 vocabulary rows but the draft has 640: they do not share a tokenizer" in err[-1]
    assert not (tmp_path / "run").exists()
