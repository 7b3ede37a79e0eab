"""``--print-config``: every key of a subcommand's config, its value, type / choices, default and doc.

Shared by ``train``, ``cache``, ``eval``, ``pipeline`` and ``demo`` (``add_print_config(parser)``,
then ``job_config(cls, args, overrides, usage)`` — or ``print_config`` — in ``run``). The output is YAML — a recipe to start from —
with one comment per key: its type (a ``Literal``'s choices), its default and its doc line (the
attribute docstring under the dataclass field, read with ``ast``). Values are the recipe's and
the overrides' where given, else the defaults; a required key nobody set shows ``<required>``.
Unknown keys and values of the wrong type are the usual one-line ``ConfigError`` (exit 2) — so
``--print-config`` is also the "parse and resolve, run nothing" mode that checks a command line
(tests/integration/test_examples.py runs every documented example through it). A config that
resolves but would be refused when run (a missing required key, a check of ``validate()``) says
so in a last comment line. ``run_job(JOBS row, cfg)``: the subcommand runs the job and prints
what the row describes (or nothing after ``--print-config``).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import yaml

from adaspec_dist.config import ConfigError, build_config, check_keys, load_config, recipe_mapping

REQUIRED = "<required>"
T = TypeVar("T")


def add_print_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print-config", action="store_true",
                        help="print every config key with its value (recipe + overrides, else the default), "
                             "type or choices, default and doc line, as YAML; run nothing")


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """``{field: its attribute docstring, on one line}`` of a dataclass (and its bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:] + [None]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) \
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type without ``| None``, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], len(rest) < len(args)
    return tp, False


def type_name(tp: Any) -> str:
    inner, optional = _unwrap(tp)
    origin = typing.get_origin(inner)
    if origin is typing.Literal:
        text = " | ".join(str(a) for a in typing.get_args(inner))
    elif origin in (typing.Union, types.UnionType):
        text = " | ".join(type_name(a) for a in typing.get_args(inner))
    elif origin in (list, tuple, dict):
        args = ", ".join(type_name(a) for a in typing.get_args(inner))
        text = f"{origin.__name__}[{args}]" if args else origin.__name__
    else:
        text = getattr(inner, "__name__", str(inner))
    return f"{text} | None" if optional else text


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return REQUIRED


def _scalar(value: Any) -> str:
    """``value`` as it would be written in a recipe (flow style, one line)."""
    if value is REQUIRED:
        return REQUIRED
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-3].strip() if text.endswith("...") else text


def _lines(cls: type, given: Mapping[str, Any], indent: int, comment_out: bool,
           enclosing: tuple[type, ...] = ()) -> list[str]:
    docs, hints, out = field_docs(cls), typing.get_type_hints(cls), []
    pad = "  " * indent
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = _default(f)
        inner, _ = _unwrap(hints[f.name])
        doc = docs.get(f.name, "")
        lead = f"{pad}# " if comment_out else pad
        if dataclasses.is_dataclass(inner):
            sub = given.get(f.name)
            unset = f.name not in given and default is None or (f.name in given and sub is None)
            note = "default: unset, setting a key below sets it" if default is None else (
                "required" if default is REQUIRED else "default: its fields' defaults")
            if inner in enclosing + (cls,) and not isinstance(sub, Mapping):
                # A recursive config (draft.from_target.target is a model config): name it, don't unfold it.
                out.append(f"{lead}{f.name}:  # {type_name(hints[f.name])}; {note}; the keys of "
                           f"{inner.__name__} above. {doc}".rstrip())
                continue
            out.append(f"{lead}{f.name}:  # {type_name(hints[f.name])}; {note}. {doc}".rstrip())
            out += _lines(inner, sub if isinstance(sub, Mapping) else {}, indent + 1, comment_out or unset,
                          enclosing + (cls,))
            continue
        value = given.get(f.name, default)
        shown_default = "required" if default is REQUIRED else f"default {_scalar(default)}"
        if isinstance(value, Mapping) and value:
            out.append(f"{lead}{f.name}:  # {type_name(hints[f.name])}; {shown_default}. {doc}".rstrip())
            out += [f"{lead}  {k}: {_scalar(v)}" for k, v in value.items()]
            continue
        out.append(f"{lead}{f.name}: {_scalar(value)}  # {type_name(hints[f.name])}; {shown_default}. {doc}".rstrip())
    return out


def describe_config(cls: type, data: Mapping[str, Any] | None) -> str:
    """The ``--print-config`` text of ``cls`` resolved from ``data`` (see the module docstring)."""
    given = check_keys(cls, data)
    lines = [f"# {cls.__name__}: every key with its value (recipe + overrides, else the default), "
             "type or choices, default and doc"]
    lines += _lines(cls, given, 0, False)
    try:
        build_config(cls, data)
    except (ConfigError, ValueError) as err:
        lines.append(f"# not runnable as is: {' '.join(str(err).split())}")
    return "\n".join(lines)


def print_config(cls: type, path: str | None, overrides: list[str] | None) -> int:
    print(describe_config(cls, recipe_mapping(path, overrides)))
    return 0


def job_config(cls: type[T], args: Any, overrides: list[str], usage: str) -> T | None:
    """A subcommand's typed config from ``--config`` and ``overrides``; None once ``--print-config``
    has printed it instead. Neither given is the one-line error ``usage``."""
    if args.print_config:
        print_config(cls, args.config, overrides)
        return None
    if not args.config and not overrides:
        raise ValueError(usage)
    return load_config(cls, args.config, overrides)



def run_job(job: Any, cfg: Any, **options: Any) -> int:
    """Run a ``pipeline.JOBS`` row's job on ``cfg`` (None: ``--print-config`` already answered) and
    print what its command says at the end (the row's ``describe``); the exit code, 0."""
    if cfg is not None:
        text = job.describe_result(cfg, job.run(cfg, **options))
        if text is not None:
            print(text)
    return 0
