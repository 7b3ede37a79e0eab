"""The config system: YAML -> dataclasses, overrides, unknown keys, resolved config on disk."""
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from adaspec_dist.config import (ConfigError, build_config, load_config, parse_overrides, save_resolved)

REPO = Path(__file__).resolve().parents[2]


@dataclass(kw_only=True)
class Inner:
    lr: float = 1e-3
    steps: int = 10
    name: str = "x"


@dataclass(kw_only=True)
class Outer:
    train: Inner = field(default_factory=Inner)
    seed: int = 0
    flag: bool = False
    tags: list[str] = field(default_factory=list)


def test_yaml_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 3\n  steps: 5\nseed: 7\n")
    cfg = load_config(Outer, recipe, ["--train.lr=3e-4", "flag=true", "--tags=[a, b]"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 5 and cfg.seed == 7 and cfg.flag is True and cfg.tags == ["a", "b"]


def test_int_in_yaml_becomes_float():
    cfg = build_config(Outer, {"train": {"lr": 1}})
    assert isinstance(cfg.train.lr, float)


def test_unknown_key_names_key_and_suggestion():
    with pytest.raises(ConfigError) as err:
        build_config(Outer, {"train": {"lrr": 1.0}})
    msg = str(err.value)
    assert "train.lrr" in msg and "lr" in msg and "\n" not in msg


def test_unknown_override_fails(tmp_path):
    with pytest.raises(ConfigError, match="sede"):
        load_config(Outer, None, ["--sede=3"])


def test_bad_type_fails():
    with pytest.raises(ConfigError, match="train.steps"):
        build_config(Outer, {"train": {"steps": "many"}})


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="--section.key=value"):
        parse_overrides(["--train.lr"])


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_save_resolved_roundtrip(tmp_path):
    cfg = build_config(Outer, {"train": {"lr": 0.5}, "seed": 3})
    path = save_resolved(cfg, tmp_path / "run")
    again = build_config(Outer, yaml.safe_load(path.read_text()))
    assert again == cfg


def test_every_yaml_in_configs_parses():
    files = sorted((REPO / "configs").glob("**/*.yaml")) + sorted((REPO / "configs").glob("**/*.json"))
    for path in files:
        text = path.read_text()
        data = yaml.safe_load(text)  # JSON is YAML
        assert isinstance(data, dict), f"{path} must hold a mapping"
