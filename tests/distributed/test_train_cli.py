"""`adaspec-dist train` user errors: one clear line, exit code 2, before any process group starts."""
from __future__ import annotations

import pytest

from adaspec_dist.cli import main
from adaspec_dist.distill.config import SelectionConfig


@pytest.mark.parametrize("override,needle", [
    # Choice fields are Literal: the config loader names the key, the value and the choices.
    ("objective=distill", "config key 'objective' = 'distill' is not one of ['sft', 'kd', 'adaspec']"),
    ("selection.scope=batch", "config key 'selection.scope' = 'batch' is not one of ['local', 'global']"),
    ("selection.rule=topk", "config key 'selection.rule' = 'topk' is not one of ['quantile', 'exact_k']"),
    ("normalization_scope=rank", "config key 'normalization_scope' = 'rank' is not one of ['per_rank', 'global']"),
    ("selection.threshold_group=0", "threshold_group must be a positive number of sequences"),
    ("selection.scope=global selection.threshold_group=5", "threshold_group splits a rank's micro-batch"),
    ("filter_fraction=1.5", "filter_fraction must be in (0, 1]"),
    ("filter_fraction=0", "filter_fraction must be in (0, 1]"),
    ("divergence=kll", "config key 'divergence' = 'kll' is not one of ['fkl', 'rkl', 'jsd', 'tvd']"),
    ("teacher_mode=offline", "config key 'teacher_mode' = 'offline' is not one of ['cached', 'online']"),
    ("engine.zero_stage=4", "engine.zero_stage must be 0, 1, 2 or 3"),
    ("engine.precision=fp8", "config key 'engine.precision' = 'fp8' is not one of"),
    ("engine.lrr=1", "unknown config key 'engine.lrr'"),
])
def test_bad_settings_are_one_line_errors(override, needle, capsys):
    code = main(["train", "draft.preset=tiny-llama", "cache_dir=/nonexistent", *override.split()])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("field,value,needle", [
    ("objective", "distill", "unknown objective 'distill'"),
    ("selection", SelectionConfig(scope="batch"), "selection.scope 'batch'"),
    ("selection", SelectionConfig(rule="topk"), "selection.rule 'topk'"),
    ("normalization_scope", "rank", "normalization_scope 'rank'"),
    ("divergence", "kll", "unknown divergence 'kll'"),
    ("teacher_mode", "offline", "teacher_mode 'offline'"),
])
def test_configs_built_in_code_are_validated_too(field, value, needle):
    """The Literal check is the loader's; validate() repeats it for a TrainConfig built in code."""
    from adaspec_dist.distill.train import TrainConfig
    from adaspec_dist.models.load import ModelConfig

    cfg = TrainConfig(draft=ModelConfig(preset="tiny-llama"), cache_dir="/nonexistent", **{field: value})
    with pytest.raises(ValueError, match=needle):
        cfg.validate()


def test_objective_flag_overrides_the_recipe(capsys):
    assert main(["train", "--objective", "nope", "draft.preset=tiny-llama"]) == 2
    assert "config key 'objective' = 'nope' is not one of" in capsys.readouterr().err


def test_adaspec_without_cache_or_reference_says_what_to_do(capsys, tmp_path):
    assert main(["train", "draft.preset=tiny-llama", "teacher_mode=online", "target.preset=tiny-llama",
                 "cache_dir=/x"]) == 2
    assert "online adaspec needs a reference model" in capsys.readouterr().err


def test_auto_resume_starts_fresh_where_resume_refuses(tmp_path):
    """Requeued jobs use --auto-resume: with no checkpoint yet it trains from scratch."""
    import json

    from tests.fixtures import tiny_tokenizer_dir
    from tests.helpers import run_cli

    tok = tiny_tokenizer_dir(tmp_path)
    args = ["train", "objective=sft", "draft.preset=tiny-llama", f"tokenizer={tok}", "data.task=arith",
            "data.limit=4", "data.max_length=32", "max_steps=1", "export=false", "engine.micro_batch_size=2"]
    refused = run_cli([*args, "--resume", f"run_dir={tmp_path / 'a'}"], check=False)
    assert refused.returncode == 2 and "no checkpoint in" in refused.stderr
    fresh = run_cli([*args, "--auto-resume", f"run_dir={tmp_path / 'b'}", "checkpoint.every=1"])
    assert json.loads(fresh.stdout.strip().splitlines()[-1])["steps"] == 1
    assert (tmp_path / "b" / "checkpoints" / "latest").is_file()


def test_a_run_directory_in_use_is_refused_before_anything_is_written(tmp_path, capsys):
    """One job at a time per run_dir: a second train (here: the directory claimed as a running
    job's main rank holds it) gets one line, and writes no config, tensorboard or checkpoint."""
    from adaspec_dist.files import DirectoryClaim
    from tests.fixtures import tiny_tokenizer_dir

    run_dir = tmp_path / "run"
    args = ["train", "objective=sft", "draft.preset=tiny-llama", f"tokenizer={tiny_tokenizer_dir(tmp_path)}",
            "data.task=arith", "data.limit=4", "data.max_length=32", "max_steps=1", "export=false",
            "engine.micro_batch_size=2", "engine.ds_config=ds_zero0.json", f"run_dir={run_dir}"]
    with DirectoryClaim.acquire(run_dir):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"run directory '{run_dir}' is in use by another job" in err and "choose another run_dir" in err
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    # --resume without a checkpoint is refused before the run directory is even created.
    assert main([*args[:-1], f"run_dir={tmp_path / 'other'}", "--resume"]) == 2
    assert "no checkpoint in" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_a_divergence_the_cache_cannot_estimate_is_one_line(capsys, tmp_path):
    """A compact sampled cache (no log-probs) trains fkl only: rkl is refused in one line, naming the fix."""
    from adaspec_dist.cache.produce import JobSpec, hf_target_fn, write_cache
    from adaspec_dist.data.tokenize import TokenizedExample
    from adaspec_dist.models.load import build_preset

    seqs = [TokenizedExample(input_ids=list(range(4, 14)), labels=[-100] * 3 + list(range(7, 14)))] * 4
    spec = JobSpec(scheme="sampled", draws=8, batch_size=2, shard_size=2, vocab_size=300)
    write_cache(seqs, hf_target_fn(build_preset("tiny-llama", 300), scheme="sampled", draws=8), spec,
                tmp_path / "c", tensorboard_dir=str(tmp_path / "tb"))
    capsys.readouterr()  # the cache job's progress bar
    code = main(["train", "draft.preset=tiny-llama", f"cache_dir={tmp_path / 'c'}", "objective=kd", "divergence=rkl",
                 f"run_dir={tmp_path / 'run'}", "max_steps=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "supports divergence fkl only, not rkl" in err and "store_logp: true" in err
    assert len(err.splitlines()) == 1, err
