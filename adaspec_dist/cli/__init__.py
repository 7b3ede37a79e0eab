"""The ``adaspec-dist`` console script: the package's one front end (argument parsing and printing).

Contract
--------
* ``SUBCOMMANDS``: name -> (module, one-line help). Each module (``cli/data.py``, ``cli/cache.py``,
  ...) exposes ``add_arguments(parser)`` and ``run(args) -> int``: it builds a typed config from
  the arguments and calls ONE job function of the library (``produce_cache``, ``add_reference``,
  ``train``, ``evaluate``, ``run_pipeline``, ``write_report``, ...), then prints what it returns.
  Only this package parses arguments or prints; library code logs.
* Modules are imported only for the subcommand being run, so ``adaspec-dist --help`` and
  ``import adaspec_dist.cli`` need neither torch, deepspeed nor megatron-core.
* A user error (``ConfigError`` / ``ValueError`` / ``FileNotFoundError``) is one line on stderr,
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
    parser.add_argument("--log-level", default="INFO", help="python logging level (default INFO)")
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
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
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
        print(f"adaspec-dist {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except Preempted as stopped:
        if as_program:
            _release_process_group()
            _exit_now(int(stopped.code))
        raise
    finally:
        _release_process_group()
