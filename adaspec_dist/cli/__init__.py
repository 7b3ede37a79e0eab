"""The ``adaspec-dist`` console script: the package's one front end (argument parsing and printing).

Contract
--------
* ``SUBCOMMANDS``: name -> (module, one-line help). Each module (``cli/data.py``, ``cli/cache.py``,
  ...) exposes ``add_arguments(parser)`` and ``run(args) -> int``: it builds a typed config from
  the arguments and calls ONE job function of the library (``produce_cache``, ``add_reference``,
  ``train``, ``evaluate``, ``run_pipeline``, ``write_report``, ...), then prints what it returns.
  The jobs the pipeline also runs (cache, add_reference, generate, train, eval) are read from
  their row of ``pipeline.JOBS`` (config class, function, what to print), not named again here.
  Only this package parses arguments or prints; library code logs.
* Modules are imported only for the subcommand being run, so ``adaspec-dist --help`` and
  ``import adaspec_dist.cli`` need neither torch, deepspeed nor megatron-core.
* A user error (``ConfigError`` / ``ValueError`` / ``OSError``, and the foreign errors a user's
  damaged files cause: ``foreign_user_error``) is one line on stderr, on a line of its own,
  ``adaspec-dist COMMAND: error: ...``, and exit code 2.
* Only subcommands that work are listed; the README's command table is checked against this one
  by a test.
* A subcommand module's ``Usage::`` docstring block is its ``--help`` examples (every one is run
  by tests/integration/test_examples.py). A job stopped by a signal (``Preempted``) ends the
  program with 143 through ``os._exit`` once flushed and its process group destroyed (``main``).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys

from adaspec_dist.config import ConfigError
from adaspec_dist.preemption import Preempted

# name -> (module, one-line help). Modules are imported lazily so that `--help` and
# `import adaspec_dist` need neither deepspeed nor megatron-core.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("adaspec_dist.cli.data", "preview a task's examples and token counts"),
    "cache": ("adaspec_dist.cli.cache", "run the target once and cache sparse next-token distributions"),
    "generate": ("adaspec_dist.cli.generate", "sample continuations of a task's prompts from a model: on-policy training data for cache"),
    "inspect": ("adaspec_dist.cli.inspect", "summarise a logit cache; --verify re-hashes every shard"),
    "train": ("adaspec_dist.cli.train", "train a draft with DeepSpeed: sft, kd or adaspec (selective distillation)"),
    "eval": ("adaspec_dist.cli.eval", "acceptance (alpha, tau, per-position) and SD speed of drafts vs a target"),
    "pipeline": ("adaspec_dist.cli.pipeline", "run a recipe's stages (sft, cache, kd reference, add-reference, adaspec, eval), resumably"),
    "demo": ("adaspec_dist.cli.demo", "the embedded end-to-end demo (no network, no GPU): DistillSpec vs AdaSPEC table and plots"),
    "report": ("adaspec_dist.cli.report", "AdaSPEC vs DistillSpec per task and seed (mean ± std) from run directories: markdown + PNG"),
}


def build_parser(table: dict[str, tuple[str, str]] | None = None, *, load: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only the subcommand named by ``load`` gets its module imported.

    ``parser.subcommand_parsers`` maps each name to its sub-parser."""
    table = SUBCOMMANDS if table is None else table
    parser = argparse.ArgumentParser(
        prog="adaspec-dist",
        description="Selective knowledge distillation (AdaSPEC) of draft models for speculative decoding.",
    )
    parser.add_argument("--log-level", default="INFO", type=log_level,
                        help="python logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO)")
    parser.add_argument("--version", action="version", version=f"adaspec-dist {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.subcommand_parsers = {}
    for name, (module, help_text) in table.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        parser.subcommand_parsers[name] = p
        if name == load:
            loaded = importlib.import_module(module)
            loaded.add_arguments(p)
            examples = usage_examples(loaded.__doc__)
            if examples:  # the module's Usage:: block, shown by --help (and run by tests/integration/test_examples.py)
                p.epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
                p.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def log_level(name: str) -> str:
    """A logging level name (any case) or number; anything else is refused (it used to mean INFO)."""
    if name.isdigit() or name.upper() in logging.getLevelNamesMapping():
        return name.upper()
    raise argparse.ArgumentTypeError(f"unknown level {name!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL")


def usage_examples(doc: str | None) -> list[str]:
    """The command lines of a docstring's ``Usage::`` block (its indented lines, dedented)."""
    lines = (doc or "").splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "Usage::") + 1
    except StopIteration:
        return []
    out = []
    for ln in lines[start:]:
        if ln.strip() and not ln.startswith(" "):
            break
        if ln.strip():
            out.append(ln.strip())
    return out


_OVERRIDE = re.compile(r"^(--)?[A-Za-z_][\w.]*=")


def split_overrides(argv: list[str], sub_parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """Separate config overrides (``key.sub=value`` or ``--key.sub=value``) from the other arguments.

    argparse cannot take positionals after optionals, nor declare every config key, so the
    overrides are picked out here, anywhere on the line — except a token that is the value of
    the option before it (``--config a=b.yaml``).
    """
    takes_value = {o for a in sub_parser._actions for o in a.option_strings if a.nargs != 0}
    kept, overrides = [], []
    for i, token in enumerate(argv):
        if _OVERRIDE.match(token) and not (i and argv[i - 1] in takes_value):
            overrides.append(token)
        else:
            kept.append(token)
    return kept, overrides


def _release_process_group() -> None:
    """Tear down the process group a job made (a no-op inside a pipeline's keep_process_group)."""
    if "torch.distributed" in sys.modules:  # never import torch just to find nothing to tear down
        from adaspec_dist.dist import shutdown

        shutdown()


def one_line(err: BaseException) -> str:
    """The error's message on one line (library messages are one line; some wrapped ones are not)."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{text}: '{err.filename}'"
    return text


def _error_line(command: str, message: str) -> None:
    """The error on a line of its own: a progress bar the error interrupted (tqdm, on stderr) is
    closed first, which ends its line."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    print(f"adaspec-dist {command}: error: {message}", file=sys.stderr)


# Files a user hands us, by suffix: what a foreign library's error is about (it rarely names it).
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")
_MODEL_SUFFIXES = (".safetensors", ".bin", ".gguf")


def files_in_traceback(err: BaseException, suffixes: tuple[str, ...]) -> list[str]:
    """Existing files with one of ``suffixes`` held in the local variables of the frames ``err``
    (and its causes) passed through: the file a library was reading when it failed."""
    import os
    import traceback

    found: dict[str, None] = {}
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        for frame, _ in traceback.walk_tb(err.__traceback__):
            for value in frame.f_locals.values():
                for item in (value if isinstance(value, (list, tuple)) else [value]):
                    if isinstance(item, (str, os.PathLike)) and str(item).endswith(suffixes) and os.path.isfile(item):
                        found[os.path.abspath(item)] = None
        err = err.__cause__ or err.__context__
    return list(found)


def _root_message(err: BaseException) -> str:
    """The innermost cause's message, on one line (the outer ones of datasets say nothing)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return one_line(err)


def foreign_user_error(err: BaseException) -> str | None:
    """One line for an error that a library raises on a user's damaged file, else None (a bug:
    the traceback stays). datasets: a data file that is not what its suffix says; safetensors: a
    truncated or corrupt model file."""
    name = f"{type(err).__module__}.{type(err).__name__}"
    if name.startswith("datasets.") and type(err).__name__ in ("DatasetGenerationError", "DatasetGenerationCastError"):
        files = files_in_traceback(err, _DATA_SUFFIXES)
        where = f"data file '{files[0]}'" if len(files) == 1 else \
            ("data files " + ", ".join(f"'{f}'" for f in files)) if files else "the data files"
        return (f"cannot read {where}: {_root_message(err)}; a .jsonl file needs one JSON object per line "
                "(a .json file: a list of objects) with the task's columns: fix or remove the bad rows")
    if type(err).__name__ == "SafetensorError":
        files = files_in_traceback(err, _MODEL_SUFFIXES)
        where = f"model file '{files[0]}'" if files else "a model's safetensors file"
        return (f"{where} cannot be read ({one_line(err)}): it is truncated or corrupt; download or save the "
                "model again")
    return None


def version() -> str:
    """The installed distribution's version (the source tree's when not installed)."""
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("adaspec-dist")
    except PackageNotFoundError:
        from adaspec_dist import __version__

        return __version__


def _exit_now(code: int) -> None:
    """End the process with ``code`` at once, after flushing the logs and stdio: no interpreter
    teardown, during which a thread still alive in C++ code (gloo, the TCPStore, a prefetcher) is
    killed by ``pthread_exit`` and aborts the process (exit 134, "terminate called without an
    active exception") — Slurm's requeue logic keys on the preempted job's 143."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """The console script. ``argv`` None = this process IS the program (``adaspec-dist``, ``python -m
    adaspec_dist.cli``): then a job stopped by a signal (``Preempted``) ends the process with 143 via
    :func:`_exit_now` once its checkpoint is written and its process group destroyed. With an
    ``argv`` list (a caller in-process) ``Preempted`` propagates as the ``SystemExit(143)`` it is."""
    as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in SUBCOMMANDS), None)
    parser = build_parser(load=command)
    overrides: list[str] = []
    if command:
        at = argv.index(command) + 1
        rest, overrides = split_overrides(argv[at:], parser.subcommand_parsers[command])
        argv = argv[:at] + rest
    args = parser.parse_args(argv)
    if overrides:
        if not hasattr(args, "overrides"):
            parser.error(f"adaspec-dist {command} takes no config overrides: {' '.join(overrides)}")
        args.overrides = list(args.overrides or []) + overrides
    logging.basicConfig(level=int(args.log_level) if args.log_level.isdigit() else args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except (ConfigError, ValueError, OSError) as err:
        # User errors get one clear line, not a traceback. OSError covers what a user's paths cause
        # (missing, not a directory, read-only, no permission); its message names the path.
        _error_line(args.command, one_line(err))
        return 2
    except Exception as err:  # noqa: BLE001  (only the foreign errors a user's files cause; others re-raise)
        message = foreign_user_error(err)
        if message is None:
            raise
        _error_line(args.command, message)
        return 2
    except Preempted as stopped:
        if as_program:
            _release_process_group()
            _exit_now(int(stopped.code))
        raise
    finally:
        _release_process_group()
