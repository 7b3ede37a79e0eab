"""Every documented command line runs (issue 15: the README's own `--train.lr=3e-4` did not).

The examples are collected from README.md, docs/*.md, the launcher scripts' headers and every
subcommand's `--help` (its examples block, and the `e.g. key=value` overrides of its help
lines). Each is run in-process through `adaspec_dist.cli.main`:

* fully when that is cheap: `--help`, `data` (embedded tasks), `pipeline --dry-run`, `report` and
  `inspect` on fixture directories;
* otherwise (`train`, `cache`, `eval`, `demo`) with `--print-config`: it parses the line and
  resolves the config from the recipe and the overrides, so an unknown key or a value of the wrong
  type fails, and runs nothing.

Placeholders are what the docs say they are: an UPPERCASE word (R.yaml, RECIPE, CACHE_DIR, N) or a
`configs/my-*.yaml`, `[optional ...]` groups and `...`. A recipe under configs/ must exist; a
path under runs/ is one the pipeline writes. Placeholder values become fixture values of their
option; a `--config` placeholder resolves the overrides against an empty recipe.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from adaspec_dist.cli import SUBCOMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "launchers").rglob("*.sh"))]
# Where a documented line hands over to the console script.
_ENTRY = re.compile(r"(?:^|[\s`(])(?:adaspec-dist|-m adaspec_dist\.cli|launchers/(?:deepspeed|torchrun)/run\.sh|"
                    r"(?<![\w/])run\.sh|launchers/slurm/stage\.sbatch|"
                    r"launchers/slurm/(?P<kind>train|cache|eval)\.sbatch)\s+(?P<rest>.*)$")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.\.\.)?$|^\$[A-Z_]+$")
# Values for placeholder arguments, by option (positionals by subcommand below).
_VALUES = {"--task": "arith", "--seed": "1", "--gamma": "2", "--tp": "2", "--stage": "eval", "--force": "eval",
           "--nproc": "8", "--node-rank": "0", "--divergence": "fkl", "--batch-size": "8"}


def _code_texts(path: Path) -> list[str]:
    """Inline code spans and code-block lines (backslash continuations joined) of a doc or a script."""
    text = path.read_text()
    if path.suffix == ".sh":  # the header comment block: its `spans`, else its lines
        lines = []
        for ln in text.splitlines()[1:]:
            if not ln.startswith("#"):
                break
            spans = re.findall(r"`([^`]+)`", ln)
            lines += spans or [ln.lstrip("#")]
        return _joined(lines)
    out = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    for block in blocks:
        out += _joined(block.splitlines())
    return out


def _joined(lines: list[str]) -> list[str]:
    out, cur = [], ""
    for ln in lines:
        if ln.rstrip().endswith("\\"):
            cur += ln.rstrip()[:-1] + " "
            continue
        out.append(cur + ln)
        cur = ""
    return out


def _help_texts() -> list[tuple[str, str]]:
    """(subcommand, text) of each --help: its examples block lines and each `e.g.` list of overrides."""
    out = []
    for name in SUBCOMMANDS:
        text = build_parser(load=name).subcommand_parsers[name].format_help()
        if "examples:" in text:
            out += [(name, ln.strip()) for ln in text.split("examples:", 1)[1].splitlines() if ln.strip()]
        flat = " ".join(text.split())
        for m in re.finditer(r"e\.g\. ((?:[\w.]+=\S+\s?)+)", flat):
            out.append((name, f"adaspec-dist {name} " + m.group(1).strip()))
    return out


def _after_entry(text: str) -> str | None:
    m = _ENTRY.search(text)
    if not m:
        return None
    return f"{m.group('kind')} {m.group('rest')}" if m.group("kind") else m.group("rest")


def collect() -> list[tuple[str, str]]:
    """(where, the argument line after the entry point) of every documented example."""
    found = []
    for path in DOCS:
        for text in _code_texts(path):
            rest = _after_entry(text)
            if rest is not None:
                found.append((str(path.relative_to(ROOT)), rest))
    for name, text in _help_texts():
        rest = _after_entry(text)
        if rest is not None:
            found.append((f"adaspec-dist {name} --help", rest))
    return found


def _strip(line: str) -> list[str]:
    """The argv of a documented line: no comments, no [optional] groups, no `...`."""
    line = re.sub(r"\s#.*$", "", " " + line).strip()
    line = re.sub(r"\s{2,}\(.*\)$", "", line)  # a trailing "   (a remark)"
    prev = None
    while prev != line:  # innermost [groups] first; not values such as gammas=[1,2]
        prev, line = line, re.sub(r"(^|\s)\[[^\[\]]*\](\.\.\.)?", r"\1", line)
    line = line.replace("`", "")
    tokens = [t for t in shlex.split(line) if t not in ("...", "\\")]
    return [t[:-3] if t.endswith("...") and len(t) > 3 else t for t in tokens]


def _is_placeholder_path(value: str) -> bool:
    stem = Path(value).stem
    return bool(_PLACEHOLDER.match(Path(value).name) or _PLACEHOLDER.match(stem)) or stem.startswith("my-")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, str]:
    """Run directories for `report`, a cache for `inspect`, an output directory."""
    from tests.integration.test_pipeline_report import _make_run
    from tests.unit.test_cache_store import build, build_preset, V  # noqa: F401  (a real tiny cache)

    root = tmp_path_factory.mktemp("examples")
    runs = [str(_make_run(root / "runs", "gsm8k-p", "gsm8k", s, 0.7, 0.72, 0.71)) for s in range(3)]
    cache = build(root / "cache", build_preset("tiny-llama", V, seed=0), n=6)
    return {"runs": runs, "cache": str(cache), "out": str(root / "out")}


def _data_needs_more(argv: list[str]) -> bool:
    """`data` lines that need the network, a user's file or minutes (training a tokenizer)."""
    from adaspec_dist.data.embedded import EMBEDDED

    opt = dict(zip(argv, argv[1:]))
    return (opt.get("--task") not in EMBEDDED or "--source" in opt or "--build-tokenizer" in opt
            or ("--tokenizer" in opt and not Path(opt["--tokenizer"]).exists()))


def resolve(argv: list[str], fx: dict[str, str]) -> list[str] | None:
    """The command to run for a documented argv (see the module docstring); None: not a command."""
    sub = next((i for i, t in enumerate(argv) if t in SUBCOMMANDS), None)
    if sub is None:
        return None  # a schematic ("run.sh [OPTIONS] STAGE ARGS")
    command, rest = argv[sub], argv[sub + 1:]
    if not rest:
        return None  # `adaspec-dist NAME` in prose names the command; it is not an example
    parser = build_parser(load=command).subcommand_parsers[command]
    valued = {o for a in parser._actions for o in a.option_strings if a.nargs != 0}
    out, i = [command], 0
    positionals = []
    while i < len(rest):
        tok = rest[i]
        if tok.startswith("--") and "=" not in tok:
            has = i + 1 < len(rest) and not rest[i + 1].startswith("-") and "=" not in rest[i + 1]
            if tok in valued and not has:
                i += 1  # "--config ..." with the value elided
                continue
            takes = tok in valued
            value = rest[i + 1] if takes else None
            if tok == "--add-reference":
                out += [tok, "REF", rest[i + 2] if i + 2 < len(rest) else "CACHE"]
                i += 3
                continue
            if tok == "--config" and value is not None:
                if not (ROOT / value).exists():
                    assert not value.startswith("configs/") or _is_placeholder_path(value), \
                        f"{value}: no such recipe in the repository"
                    i += 2
                    continue  # a placeholder recipe: the overrides resolve against an empty one
                value = str(ROOT / value)
            elif value is not None and _PLACEHOLDER.match(value):
                value = _VALUES.get(tok, fx["out"])
            elif tok in ("--out", "--run-dir"):
                value = fx["out"]
            out += [tok] + ([value] if value is not None else [])
            i += 2 if takes else 1
            continue
        if "=" in tok:
            out.append(tok)  # an override: its key must resolve; a placeholder value is fine
        else:
            positionals.append(tok)
        i += 1
    if command == "pipeline":
        recipe = positionals[0] if positionals else "RECIPE"  # (a help line's e.g. overrides alone)
        if not (ROOT / recipe).exists():
            assert not recipe.startswith("configs/") or _is_placeholder_path(recipe), f"{recipe}: no such recipe"
            recipe = "configs/demo.yaml"
        out.insert(1, str(ROOT / recipe))
    elif command == "report":
        out[1:1] = fx["runs"]
    elif command == "inspect":
        out.insert(1, fx["cache"])
    if "--help" in out:
        return out
    if command == "pipeline":
        out += ["--dry-run"] if "--print-config" not in out else []
    elif command in ("train", "cache", "eval", "demo", "generate") and "--print-config" not in out:
        out.append("--print-config")
    elif command == "data" and _data_needs_more(out):
        out.append("--parse-only")  # parse the line only
    if command == "report" and "--out" not in out:
        out += ["--out", fx["out"]]
    return out


def test_the_collection_finds_the_documented_examples():
    where = {w for w, _ in collect()}
    assert {"README.md", "docs/launching.md", "docs/pipeline.md", "docs/tensor-parallel.md"} <= where, where
    assert {f"adaspec-dist {n} --help" for n in ("train", "cache", "eval", "pipeline", "demo")} <= where, where
    assert len(collect()) >= 40


def test_every_documented_command_runs(fixtures, capsys):
    failures, ran = [], 0
    for where, line in collect():
        argv = resolve(_strip(line), fixtures)
        if argv is None:
            continue
        try:
            if "--parse-only" in argv:
                argv.remove("--parse-only")
                build_parser(load=argv[0]).parse_args(argv)
                code = 0
            else:
                code = main(argv)
        except SystemExit as stop:  # --help, or a line argparse refuses
            code = stop.code
        captured = capsys.readouterr()
        ran += 1
        if code != 0:
            error = [ln for ln in captured.err.splitlines() if "error" in ln][-1:] or [captured.err[-300:]]
            failures.append(f"{where}: `{line}` -> adaspec-dist {' '.join(argv)}: exit {code}: {error[0]}")
    assert not failures, "\n".join(failures)
    assert ran >= 30, ran


@pytest.mark.parametrize("line,needle", [
    ("adaspec-dist train --train.lr=3e-4", "unknown config key 'train'"),  # the README's example before the fix
    ("adaspec-dist pipeline configs/demo.yaml adaspec.epochs=2", "unknown config key 'adaspec.epochs'"),
    ("adaspec-dist train --config configs/demo.yaml", "unknown config key"),  # a pipeline recipe given to train
])
def test_the_check_catches_a_wrong_example(fixtures, capsys, line, needle):
    assert main(resolve(_strip(line), fixtures)) == 2
    assert needle in capsys.readouterr().err
