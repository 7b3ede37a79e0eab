"""Every recipe in configs/ parses, its stage plan is complete and each stage's config is valid
for the component that owns it (TrainConfig, CacheConfig, EvalConfig) — no models are loaded."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from adaspec_dist.config import ConfigError, build_config
from adaspec_dist.pipeline import STAGE_ORDER, is_complete, load_pipeline_config, plan, validate_stage_configs

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TASKS = ("gsm8k", "alpaca", "mbpp", "cnn_dailymail", "xsum")
PAIRS = {"pythia31m-1.4b": ("EleutherAI/pythia-1.4b", "EleutherAI/pythia-31m"),
         "codegen350m-phi2": ("microsoft/phi-2", "Salesforce/codegen-350M-mono")}
PAPER = [CONFIGS / f"{t}-{p}.yaml" for t in TASKS for p in PAIRS]


def _recipes():
    # Pipeline recipes only (configs/ also holds DeepSpeed JSON and single-stage recipes).
    return PAPER + [p for p in (CONFIGS / "demo.yaml",) if p.is_file()]


def test_all_paper_recipes_exist():
    missing = [p.name for p in PAPER if not p.is_file()]
    assert not missing, missing


@pytest.mark.parametrize("path", _recipes(), ids=lambda p: p.name)
def test_recipe_parses_and_plans(path):
    cfg = load_pipeline_config(path)
    stages = plan(cfg)
    names = [s.name for s in stages]
    # Stages come in the pipeline's order, and the method's core is always there.
    assert names == [n for n in STAGE_ORDER if n in names]
    assert {"cache_train", "cache_eval", "reference", "add_reference", "adaspec", "eval"} <= set(names)
    validate_stage_configs(stages, strict=True)
    by = {s.name: s for s in stages}
    # The reference column comes from the kd draft that the eval calls DistillSpec.
    ref_export = by["add_reference"].argv[1]
    assert by["eval"].config["drafts"]["distillspec"] == ref_export
    assert by["reference"].config["objective"] == "kd" and by["adaspec"].config["objective"] == "adaspec"
    # kd and adaspec start from the same draft initialisation and read the same cache.
    assert by["reference"].config["draft"] == by["adaspec"].config["draft"]
    assert by["reference"].config["cache_dir"] == by["adaspec"].config["cache_dir"] == by["add_reference"].argv[2]
    assert all(str(o).startswith(cfg.run_dir) for s in stages for o in s.outputs)


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_hyperparameters(path):
    cfg = load_pipeline_config(path)
    task, pair = path.stem.split("-", 1)
    assert cfg.task == cfg.data["task"] == task
    assert (cfg.target["name_or_path"], cfg.draft["name_or_path"]) == PAIRS[pair]
    by = {s.name: s.config for s in plan(cfg)}
    for stage in ("reference", "adaspec"):
        eng = by[stage]["engine"]
        assert eng["lr"] == pytest.approx(3e-4)
        assert eng["micro_batch_size"] * eng.get("grad_accum", 1) * 8 == 16  # batch 16 on 8 GPUs
    assert by["reference"]["passes"] == 3
    assert by["adaspec"]["filter_fraction"] == pytest.approx(0.4)
    assert by["adaspec"]["kept_token_epochs"] == 3  # = 7.5 passes at k = 0.4
    assert by["sft"]["passes"] == 3 and by["sft"]["engine"]["lr"] == pytest.approx(1e-5)
    assert cfg.divergence == "fkl"


def test_overrides_and_dry_run_cli(capsys):
    from adaspec_dist import pipeline

    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    args = parser.parse_args([str(CONFIGS / "gsm8k-pythia31m-1.4b.yaml"), "run_dir=/tmp/x", "sft=null", "--dry-run"])
    assert pipeline.run(args) == 0
    out = capsys.readouterr().out
    assert "sft" not in out  # sft=null: the target is used as given
    assert "adaspec-dist cache --add-reference /tmp/x/reference/final /tmp/x/cache/train" in out


def test_unknown_key_and_bad_stage_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "gsm8k-pythia31m-1.4b.yaml").read_text() + "\nadaspecc: {}\n")
    with pytest.raises(ConfigError, match="adaspecc.*did you mean: adaspec"):
        load_pipeline_config(bad)
    cfg = load_pipeline_config(CONFIGS / "gsm8k-pythia31m-1.4b.yaml", ["adaspec.filter_fraction=1.5"])
    with pytest.raises(ValueError):
        validate_stage_configs(plan(cfg), strict=True)


def test_marker_of_another_config_is_refused(tmp_path):
    from adaspec_dist.pipeline import _write_marker

    cfg = load_pipeline_config(CONFIGS / "gsm8k-pythia31m-1.4b.yaml", [f"run_dir={tmp_path}"])
    stage = {s.name: s for s in plan(cfg)}["cache_train"]
    assert not is_complete(cfg, stage)
    _write_marker(cfg, stage, 1.0)
    Path(stage.outputs[0]).parent.mkdir(parents=True)
    Path(stage.outputs[0]).write_text("{}")
    assert is_complete(cfg, stage)
    other = load_pipeline_config(CONFIGS / "gsm8k-pythia31m-1.4b.yaml", [f"run_dir={tmp_path}", "cache.top_k=8"])
    with pytest.raises(ConfigError, match="cache_train.*different config"):
        is_complete(other, {s.name: s for s in plan(other)}["cache_train"])
