"""Typed configuration: YAML recipes -> dataclasses, with dotted command-line overrides.

Contract
--------
* Every component owns a ``@dataclass(kw_only=True)`` config; a recipe is a YAML mapping
  whose sections are those dataclasses' fields (nested dataclasses nest as mappings).
* ``build_config(cls, data)`` turns a mapping into ``cls``; an unknown key raises
  ``ConfigError`` naming the dotted key and the closest valid names.
* ``parse_overrides(["--train.lr=3e-4", "train.epochs=2"])`` -> ``{"train": {"lr": 3e-4, ...}}``;
  values are parsed as YAML scalars, so ``1e-4``, ``true``, ``[1, 2]`` work.
* ``load_config(cls, path, overrides)`` = YAML file, then overrides merged on top.
* Keys that moved: a config class may declare ``RENAMED: ClassVar[dict[str, str]]`` (old flat key ->
  its new dotted place, e.g. ``{"eval_every": "eval.every"}``). Loading moves such a key to its
  new place with one warning line naming the new key; the old and the new key both set is a
  ``ConfigError``. A field whose metadata holds ``aliases`` (``{other spelling: canonical}``, e.g.
  models/precision.py's ``precision_field``) reads an alias as its canonical value.
  ``upgrade(cls, data)`` applies both, recursively, to a mapping (a run's recorded config).
* ``save_resolved(cfg, run_dir)`` writes ``run_dir/config.yaml`` so every run records what
  it ran with.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from adaspec_dist.files import atomic_write_text

T = TypeVar("T")
logger = logging.getLogger(__name__)
_warned: set[str] = set()


class ConfigError(ValueError):
    """A user-facing configuration problem (one line: what is wrong and how to fix it)."""


def _closest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    shown = close or sorted(valid)[:8]
    return ", ".join(shown)


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated field type (ints to floats etc.)."""
    tp = _unwrap_optional(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping of {tp.__name__} fields, got {value!r}")
        return build_config(tp, value, prefix=key + ".")
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}' = {value!r} is not one of {list(choices)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if tp is str:
        return str(value)
    if tp in (int, float):
        raise ConfigError(f"config key '{key}' must be a number ({tp.__name__}), got {value!r}")
    return value


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def _place(tree: dict[str, Any], dotted: str, value: Any, *, old: str, prefix: str) -> None:
    """Put ``value`` at ``dotted`` inside ``tree`` (copying the mappings on the way)."""
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.get(part)
        if child is None:
            child = {}
        if not isinstance(child, Mapping):
            raise ConfigError(f"config key '{prefix}{old}' moved to '{prefix}{dotted}', but '{prefix}{part}' is "
                              f"{child!r}, not a mapping; write {prefix}{dotted} there instead")
        node[part] = node = dict(child)
    if leaf in node:
        raise ConfigError(f"config keys '{prefix}{old}' and '{prefix}{dotted}' are both set: '{old}' is the old "
                          f"name of '{dotted}'; keep only {prefix}{dotted}")
    node[leaf] = value


def _upgrade_level(cls: type, data: Mapping[str, Any] | None, prefix: str, warn: bool = True) -> dict[str, Any]:
    """``data`` with ``cls.RENAMED`` keys moved and aliased values mapped (this level only)."""
    out = dict(data or {})
    for old, new in (getattr(cls, "RENAMED", None) or {}).items():
        if old in out:
            _place(out, new, out.pop(old), old=old, prefix=prefix)
            if warn:
                _warn_once(f"config key '{prefix}{old}' is deprecated: it is now '{prefix}{new}' (rename it there)")
    for f in dataclasses.fields(cls):
        aliases = f.metadata.get("aliases")
        value = out.get(f.name)
        if aliases and isinstance(value, str) and value in aliases:
            out[f.name] = aliases[value]
    return out


def upgrade(cls: type, data: Mapping[str, Any] | None, *, prefix: str = "", warn: bool = False) -> dict[str, Any]:
    """``data`` in ``cls``'s current keys and spellings, recursively (see the contract); unknown keys
    are kept as they are (the loader's checks name them), nothing is validated."""
    out = _upgrade_level(cls, data, prefix, warn)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        inner = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(inner) and isinstance(out.get(f.name), Mapping):
            out[f.name] = upgrade(inner, out[f.name], prefix=f"{prefix}{f.name}.", warn=warn)
    return out


def build_config(cls: type[T], data: Mapping[str, Any] | None, *, prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from ``data``; unknown keys are errors with suggestions."""
    data = _upgrade_level(cls, data, prefix)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{prefix}{key}'; did you mean: {_closest(key, list(fields))}?"
            )
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        cfg = cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"config section '{prefix.rstrip('.') or cls.__name__}': {err}") from None
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def check_keys(cls: type, data: Mapping[str, Any] | None, *, prefix: str = "") -> dict[str, Any]:
    """``data`` with its values coerced to ``cls``'s field types, recursively: unknown keys and wrong
    types raise ``ConfigError`` as :func:`build_config` does, but missing required keys and
    ``validate()`` are not checked, so a partial recipe resolves (``--print-config``)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for key, value in _upgrade_level(cls, data, prefix).items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{prefix}{key}'; did you mean: {_closest(key, list(fields))}?")
        inner = _unwrap_optional(hints[key])
        if dataclasses.is_dataclass(inner) and isinstance(value, Mapping):
            out[key] = check_keys(inner, value, prefix=prefix + key + ".")
        else:  # (a dataclass given a non-mapping: the same "must be a mapping" error)
            out[key] = _coerce(value, hints[key], prefix + key)
    return out


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["--a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML scalars)."""
    tree: dict[str, Any] = {}
    for item in items or []:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError(f"override '{item}' must look like --section.key=value")
        dotted, raw = text.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = tree
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override of '{part}'")
        node[parts[-1]] = value
    return tree


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; pass a recipe from configs/ or a path to one")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"config file '{path}' is not valid YAML{where} ({problem}); "
                          "check the indentation and quoting there") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file '{path}' must hold a YAML mapping at the top level")
    return dict(data)


def recipe_mapping(path: str | os.PathLike | None = None,
                   overrides: list[str] | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The mapping a config is built from: the YAML recipe (optional), dotted overrides merged on top."""
    data = read_yaml(path) if path else {}
    if overrides:
        data = merge(data, overrides if isinstance(overrides, Mapping) else parse_overrides(list(overrides)))
    return data


def load_config(cls: type[T], path: str | os.PathLike | None = None,
                overrides: list[str] | Mapping[str, Any] | None = None) -> T:
    """YAML recipe (optional) + dotted overrides -> ``cls``."""
    return build_config(cls, recipe_mapping(path, overrides))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_resolved(cfg: Any, run_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config into ``run_dir`` atomically and return its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / name
    atomic_write_text(out, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return out
