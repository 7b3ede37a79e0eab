"""`--print-config`: every key with its value, type or choices, default and doc line; runs nothing."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from adaspec_dist.cache.produce import CacheConfig
from adaspec_dist.cache.reference import ReferenceConfig
from adaspec_dist.cli import main
from adaspec_dist.cli.config_help import field_docs
from adaspec_dist.config import load_config, to_dict
from adaspec_dist.distill.config import TrainConfig
from adaspec_dist.pipeline import PipelineConfig
from adaspec_dist.speculative.evaluate import EvalConfig
from adaspec_dist.speculative.generate import GenerateConfig

DEMO = str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")


def _dataclasses(cls: type, seen: set | None = None) -> set[type]:
    seen = set() if seen is None else seen
    if cls in seen:
        return seen
    seen.add(cls)
    for tp in typing.get_type_hints(cls).values():
        for arg in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(arg):
                _dataclasses(arg, seen)
    return seen


@pytest.mark.parametrize("root", [TrainConfig, CacheConfig, ReferenceConfig, EvalConfig, PipelineConfig,
                                  GenerateConfig])
def test_every_key_has_a_doc_line(root):
    missing = [f"{cls.__name__}.{f.name}" for cls in _dataclasses(root) for f in dataclasses.fields(cls)
               if f.init and not field_docs(cls).get(f.name)]
    assert not missing, f"fields without an attribute docstring (what --print-config shows): {missing}"


def test_train_print_config_lists_every_key_with_value_type_default_and_doc(capsys):
    assert main(["train", "--print-config", "objective=kd", "--engine.lr=1e-3", "draft.preset=tiny-llama",
                 "cache_dir=/c"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "objective: kd  # sft | kd | adaspec; default adaspec. sft (CE on answers, no cache)" in out
    assert "  lr: 0.001  # float; default 0.0003. Peak learning rate." in lines
    assert any(ln.startswith("  preset: tiny-llama  # str | None; default null. Name in PRESETS") for ln in lines)
    # An unset optional section lists its keys commented out; every key appears once.
    assert any(ln.startswith("target:  # ModelConfig | None; default: unset") for ln in lines)
    assert any(ln.startswith("  # name_or_path: null  # str | None") for ln in lines)
    keys = {ln.split(":")[0].strip().lstrip("# ").strip() for ln in lines if not ln.startswith("#")}
    for f in dataclasses.fields(TrainConfig):
        assert f.name in keys, f.name
    assert not any(ln.startswith("# not runnable") for ln in lines)  # complete: it would run


def test_the_output_is_a_recipe_that_builds_the_same_config(tmp_path, capsys):
    overrides = ["objective=kd", "draft.preset=tiny-llama", "cache_dir=/c", "engine.lr=1e-3", "engine.betas=[0.9,0.99]",
                 "max_steps=7"]
    assert main(["train", "--print-config", *overrides]) == 0
    recipe = tmp_path / "train.yaml"
    recipe.write_text(capsys.readouterr().out)
    assert to_dict(load_config(TrainConfig, recipe)) == to_dict(load_config(TrainConfig, None, overrides))
    assert yaml.safe_load(recipe.read_text())["target"] is None


def test_incomplete_configs_resolve_and_say_what_is_missing(capsys):
    assert main(["cache", "--print-config", "top_k=16"]) == 0
    out = capsys.readouterr().out
    assert "top_k: 16  # int; default 64. Ids kept per position" in out
    assert "out_dir: <required>  # str; required." in out
    assert out.splitlines()[-1].startswith("# not runnable as is:")


@pytest.mark.parametrize("argv,needle", [
    (["train", "--print-config", "--train.lr=3e-4"], "unknown config key 'train'"),
    (["eval", "--print-config", "gamas=[1]"], "unknown config key 'gamas'; did you mean: gammas"),
    (["cache", "--print-config", "top_k=many"], "config key 'top_k' must be a number"),
    (["pipeline", DEMO, "--print-config", "adaspec.epochs=2"], "unknown config key 'adaspec.epochs'"),
])
def test_unknown_keys_and_bad_values_are_one_line_errors(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err, err


def test_pipeline_and_reference_print_config(capsys):
    assert main(["pipeline", DEMO, "--print-config", "seed=3"]) == 0
    out = capsys.readouterr().out
    assert "seed: 3  # int; default 0. Seed of the run" in out and "adaspec:  # dict; default {}." in out
    assert main(["cache", "--add-reference", "runs/ref/final", "runs/cache", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "model: runs/ref/final  # str | None; default null. The reference draft" in out
    assert "divergence: fkl  # fkl | rkl | jsd | tvd; default fkl." in out
