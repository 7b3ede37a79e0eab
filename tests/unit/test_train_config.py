"""TrainConfig's sections (selection / eval / checkpoint), the flat keys of earlier versions, and
the one precision vocabulary of model dtypes and the engine."""
from __future__ import annotations

import dataclasses
import logging

import pytest
import yaml

from adaspec_dist import config
from adaspec_dist.config import ConfigError, build_config, check_keys, load_config, to_dict, upgrade
from adaspec_dist.distill.config import SelectionConfig, TrainConfig
from adaspec_dist.distill.engine import EngineConfig, ds_config, resolve_precision
from adaspec_dist.distill.rundir import check_run_dir
from adaspec_dist.models.load import ModelConfig
from adaspec_dist.models.precision import PRECISION_ALIASES, canonical_precision, torch_dtype
from adaspec_dist.pipeline import wide_section

BASE = {"objective": "kd", "cache_dir": "/c", "draft": {"preset": "tiny-llama"}}
OLD = {"selection_rule": "exact_k", "selection_scope": "local", "threshold_group": 5, "loss_normalization": "kept",
       "reference": {"preset": "tiny-llama", "seed": 4}, "eval_cache_dir": "/e", "eval_every": 3,
       "eval_batches": 2, "eval_gamma": 5, "save_every": 7, "keep_checkpoints": 1}
NEW = {"selection": {"rule": "exact_k", "scope": "local", "threshold_group": 5, "loss_normalization": "kept",
                     "reference": {"preset": "tiny-llama", "seed": 4}},
       "eval": {"cache_dir": "/e", "every": 3, "batches": 2, "gamma": 5}, "checkpoint": {"every": 7, "keep": 1}}


def test_every_flat_key_of_earlier_versions_is_read_at_its_new_place_with_one_warning(caplog, monkeypatch):
    monkeypatch.setattr(config, "_warned", set())  # each message is logged once per process
    with caplog.at_level(logging.WARNING, logger="adaspec_dist.config"):
        old = build_config(TrainConfig, {**BASE, **OLD})
    assert old == build_config(TrainConfig, {**BASE, **NEW})
    warned = [r.getMessage() for r in caplog.records]
    assert set(OLD) == set(TrainConfig.RENAMED)
    for key, new in TrainConfig.RENAMED.items():
        assert f"config key '{key}' is deprecated: it is now '{new}' (rename it there)" in warned
    assert all("\n" not in w for w in warned)


def test_a_flat_override_lands_in_its_section_and_old_and_new_together_are_one_line_errors():
    cfg = load_config(TrainConfig, None, ["objective=kd", "cache_dir=/c", "draft.preset=tiny-llama", "eval_every=4",
                                          "selection.rule=exact_k", "threshold_group=5"])
    assert cfg.eval.every == 4 and cfg.selection.rule == "exact_k" and cfg.selection.threshold_group == 5
    with pytest.raises(ConfigError, match=r"^config keys 'save_every' and 'checkpoint.every' are both set: .*"
                                          r"keep only checkpoint.every$"):
        build_config(TrainConfig, {**BASE, "save_every": 1, "checkpoint": {"every": 2}})
    with pytest.raises(ConfigError, match="'eval' is 3, not a mapping; write eval.every there instead"):
        build_config(TrainConfig, {**BASE, "eval_every": 1, "eval": 3})


def test_every_old_name_points_at_a_real_key():
    for old, new in TrainConfig.RENAMED.items():
        assert _leaf(check_keys(TrainConfig, {old: None}), new) is None  # an unknown target would raise


def _leaf(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def test_the_compute_control_drops_the_whole_selection_section_old_keys_included():
    ada = {"filter_fraction": 0.4, "budget": "paper", "kept_token_epochs": 3, "engine": {"lr": 1e-3},
           "selection_rule": "exact_k", "threshold_group": 5, "reference": {"preset": "tiny-llama"},
           "selection": {"scope": "local", "loss_normalization": "kept"}, "eval_every": 2}
    wide = wide_section(ada)
    assert wide == {"filter_fraction": 0.4, "budget": "paper", "kept_token_epochs": 3, "engine": {"lr": 1e-3},
                    "eval": {"every": 2}}
    # Every selection field (a new one too) lives in the section that is dropped.
    every = {f.name: "x" for f in dataclasses.fields(SelectionConfig)}
    assert wide_section({"selection": every}) == {}


def test_one_precision_vocabulary_with_the_short_spellings_as_aliases():
    assert PRECISION_ALIASES == {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    cfg = build_config(TrainConfig, {**BASE, "draft": {"preset": "tiny-llama", "dtype": "bf16"},
                                     "engine": {"precision": "fp32"}})
    assert cfg.draft.dtype == "bfloat16" and cfg.engine.precision == "float32"  # recorded canonically
    assert canonical_precision("fp16") == "float16"
    with pytest.raises(ValueError, match=r"^model dtype 'fp8' must be one of \['auto', 'float32', 'bfloat16', "
                                         r"'float16'\] \(or fp32, bf16, fp16\)$"):
        ModelConfig(preset="tiny-llama", dtype="fp8").validate()
    import torch

    assert torch_dtype("auto", "cpu") == torch.float32 and torch_dtype("bf16") == torch.bfloat16
    assert resolve_precision("auto", "cpu") == "float32"


@pytest.mark.parametrize("spelling", ["float32", "fp32", "auto"])
def test_deepspeed_sections_follow_the_engine_precision_on_cpu(spelling):
    conf = ds_config(EngineConfig(precision=spelling), dp_size=1, device="cpu")
    assert conf["bf16"] == {"enabled": False} and conf["fp16"] == {"enabled": False}


@pytest.mark.parametrize("spelling", ["bf16", "bfloat16", "fp16", "float16"])
def test_half_precision_on_cpu_is_refused_in_either_spelling(spelling):
    with pytest.raises(ValueError, match=f"engine.precision={spelling} needs a GPU; use float32"):
        ds_config(EngineConfig(precision=spelling), dp_size=1, device="cpu")


def test_deepspeed_sections_of_half_precisions(monkeypatch):
    import adaspec_dist.distill.engine as engine

    monkeypatch.setattr(engine, "is_cuda", lambda device: True)
    for spelling, bf16, fp16 in (("bf16", True, False), ("float16", False, True)):
        conf = ds_config(EngineConfig(precision=spelling), dp_size=1, device="cpu")
        assert conf["bf16"]["enabled"] is bf16 and conf["fp16"]["enabled"] is fp16
        assert ("initial_scale_power" in conf["fp16"]) is fp16


def test_a_run_recorded_with_the_flat_keys_and_short_spellings_is_the_same_config(tmp_path):
    cfg = build_config(TrainConfig, {**BASE, **NEW, "run_dir": str(tmp_path), "engine": {"precision": "float32"}})
    recorded = to_dict(cfg)
    for key, new in TrainConfig.RENAMED.items():  # as an earlier version wrote it
        section, leaf = new.split(".")
        recorded[key] = recorded[section].pop(leaf)
    recorded["engine"]["precision"] = "fp32"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(recorded))
    assert upgrade(TrainConfig, recorded) == upgrade(TrainConfig, to_dict(cfg))
    check_run_dir(cfg, force=False, resume=None)  # not refused
    other = dataclasses.replace(cfg, selection=dataclasses.replace(cfg.selection, rule="quantile"))
    with pytest.raises(ValueError, match=r"differs in selection.rule \('exact_k' -> 'quantile'\)"):
        check_run_dir(other, force=False, resume=None)
    longer = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, every=1),
                                 eval=dataclasses.replace(cfg.eval, every=1, batches=None))
    check_run_dir(longer, force=False, resume=None)  # how often / how long may change


def test_a_pipeline_recipe_with_the_flat_keys_plans_the_same_stages(tmp_path):
    from adaspec_dist.configs import shipped
    from adaspec_dist.pipeline import load_pipeline_config, plan

    recipe = yaml.safe_load(shipped("demo.yaml").read_text())
    old, new = yaml.safe_load(yaml.safe_dump(recipe)), yaml.safe_load(yaml.safe_dump(recipe))
    selection = old["adaspec"].pop("selection")
    old["adaspec"].update({"selection_rule": "exact_k", "save_every": 2, "eval_gamma": 3}, **selection)
    old["reference"]["eval_every"] = 0
    new["adaspec"]["selection"]["rule"] = "exact_k"
    new["adaspec"].update(checkpoint={"every": 2}, eval={"gamma": 3})
    new["reference"]["eval"] = {"every": 0}
    stages = {}
    for name, data in (("old", old), ("new", new)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**data, "run_dir": str(tmp_path / "run")}))
        stages[name] = plan(load_pipeline_config(tmp_path / f"{name}.yaml"))
    assert [(s.name, s.config, s.recipe) for s in stages["old"]] == [(s.name, s.config, s.recipe) for s in stages["new"]]
    by = {s.name: s.config for s in stages["old"]}
    assert by["adaspec"].selection.rule == "exact_k" and by["adaspec"].selection.threshold_group == 5
    assert by["distillspec_wide"].selection == SelectionConfig() and by["distillspec_wide"].checkpoint.every == 2
    assert by["reference"].eval.every == 0 and by["adaspec"].eval.cache_dir == by["reference"].eval.cache_dir != None
