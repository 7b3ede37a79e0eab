"""The CLI against hostile input: every error a user can cause is one line naming the file or key."""
from __future__ import annotations

import shlex
import subprocess

import pytest

from adaspec_dist.cli import main


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def test_an_unknown_log_level_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--log-level", "LOUD", "inspect", "x"])
    assert stop.value.code == 2
    assert "argument --log-level: unknown level 'LOUD'; use DEBUG, INFO" in _one_line(capsys)


@pytest.mark.parametrize("override,needle", [
    ("engine.warmup_steps=-5", "engine.warmup_steps must be >= 0 (0 = no warmup), got -5"),
    ("engine.grad_clip=-1", "engine.grad_clip must be >= 0"),
    ("engine.lr=.nan", "engine.lr must be positive, got nan"),
    ("engine.min_lr_ratio=2", "engine.min_lr_ratio must be in [0, 1]"),
])
def test_negative_schedule_settings_are_refused(override, needle, capsys):
    assert main(["train", "draft.preset=tiny-llama", "cache_dir=/nonexistent", override]) == 2
    assert needle in _one_line(capsys)


def test_generate_refuses_a_nan_temperature(capsys, tmp_path):
    assert main(["generate", "model.preset=tiny-llama", "data.task=arith", "temperature=.nan",
                 f"out_dir={tmp_path / 'g'}"]) == 2
    assert "temperature nan must be a finite number >= 0" in _one_line(capsys)


def test_eval_refuses_an_unknown_device(capsys, tmp_path):
    assert main(["eval", "target.preset=tiny-llama", "drafts.a=x", "device=tpu9", f"out_dir={tmp_path}"]) == 2
    assert "config key 'device' = 'tpu9' is not a torch device; use auto, cpu, cuda or cuda:N" in _one_line(capsys)


def test_pipeline_dry_run_validates_stage_names(capsys):
    assert main(["pipeline", "configs/demo.yaml", "--stage", "nosuch", "--dry-run"]) == 2
    line = _one_line(capsys)
    assert "unknown stage 'nosuch'; this recipe's stages are: tokenizer, sft" in line
    assert main(["pipeline", "configs/demo.yaml", "--force", "nosuch", "--dry-run"]) == 2


def test_the_printed_plan_pastes_into_a_shell_as_the_same_arguments(capsys, tmp_path):
    """A run_dir with a space and `$(...)`: each printed line, pasted into bash, passes the run_dir
    through as one argument and runs nothing."""
    run_dir = f"{tmp_path}/my runs/x$(touch {tmp_path}/pwned)"
    assert main(["pipeline", "configs/demo.yaml", "--dry-run", f"run_dir={run_dir}"]) == 0
    lines = [ln.split(None, 2)[2] for ln in capsys.readouterr().out.splitlines() if ln[:1].isdigit()]
    assert len(lines) >= 8
    for line in lines:
        assert line.startswith("adaspec-dist ")
        pasted = subprocess.run(["bash", "-c", "printf '%s\\n' " + line.removeprefix("adaspec-dist ")],
                                capture_output=True, text=True, check=True).stdout.splitlines()
        assert pasted == shlex.split(line)[1:]
        assert any(run_dir in arg for arg in pasted) or "RECIPE" in pasted
    assert not (tmp_path / "pwned").exists()


def test_a_garbled_jsonl_is_one_line_naming_the_file(capsys, tmp_path):
    for name, text in (("garbled.jsonl", '{"question": "1+1", "answer": "2"}\n{garbled\n'),
                       ("lists.jsonl", '[1, 2]\n"x"\n')):
        path = tmp_path / name
        path.write_text(text)
        assert main(["data", "--task", "gsm8k", "--source", str(path)]) == 2
        line = _one_line(capsys)
        assert line.startswith(f"adaspec-dist data: error: cannot read data file '{path}': ") and \
            "one JSON object per line" in line, line


def test_a_truncated_safetensors_model_is_one_line_naming_the_file(capsys, tmp_path):
    from adaspec_dist.models.load import build_preset, save_hf
    from tests.fixtures import tiny_tokenizer_dir

    save_hf(build_preset("tiny-llama", 300), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    capsys.readouterr()
    code = main(["train", "objective=sft", f"draft.name_or_path={tmp_path / 'm'}",
                 f"tokenizer={tiny_tokenizer_dir(tmp_path)}", "data.task=arith", "data.limit=4", "max_steps=1",
                 f"run_dir={tmp_path / 'run'}"])
    assert code == 2
    line = _one_line(capsys)
    assert f"model file '{weights}' cannot be read (" in line and "truncated or corrupt" in line, line


def test_a_missing_model_directory_is_reported_as_the_model(capsys, tmp_path):
    """cache reads the tokenizer from the model's directory when none is set: a missing directory is the
    model's, not a "cannot load tokenizer"."""
    assert main(["cache", f"model.name_or_path={tmp_path / 'nope'}", "data.task=arith", f"out_dir={tmp_path / 'c'}"]) == 2
    line = _one_line(capsys)
    assert f"model directory '{tmp_path / 'nope'}' (model.name_or_path) does not exist" in line, line
