"""`adaspec-dist train` user errors: one clear line, exit code 2, before any process group starts."""
from __future__ import annotations

import pytest

from adaspec_dist.cli import main


@pytest.mark.parametrize("override,needle", [
    ("objective=distill", "unknown objective 'distill'"),
    ("selection_scope=batch", "selection_scope 'batch'"),
    ("filter_fraction=1.5", "filter_fraction must be in (0, 1]"),
    ("filter_fraction=0", "filter_fraction must be in (0, 1]"),
    ("divergence=kll", "unknown divergence 'kll'"),
    ("teacher_mode=offline", "teacher_mode 'offline'"),
    ("engine.zero_stage=4", "engine.zero_stage must be 0, 1, 2 or 3"),
    ("engine.lrr=1", "unknown config key 'engine.lrr'"),
])
def test_bad_settings_are_one_line_errors(override, needle, capsys):
    code = main(["train", "draft.preset=tiny-llama", "cache_dir=/nonexistent", override])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1, err


def test_objective_flag_overrides_the_recipe(capsys):
    assert main(["train", "--objective", "nope", "draft.preset=tiny-llama"]) == 2
    assert "unknown objective 'nope'" in capsys.readouterr().err


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
    fresh = run_cli([*args, "--auto-resume", f"run_dir={tmp_path / 'b'}", "save_every=1"])
    assert json.loads(fresh.stdout.strip().splitlines()[-1])["steps"] == 1
    assert (tmp_path / "b" / "checkpoints" / "latest").is_file()
