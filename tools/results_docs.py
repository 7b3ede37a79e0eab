"""Every measured number in README.md and docs/*.md, written from ``benchmarks/results/*.json``.

Usage::

    python tools/results_docs.py            # rewrite every marked value from the results files
    python tools/results_docs.py --check    # exit 1, one line per stale value or results file

A measured number stands in a *value marker*: the expression that computes it from the results
files, hidden in an HTML comment, then the text it renders to::

    AdaSPEC α <!--= reproduce_demo.adaspec_alpha[0] ; .4f -->0.7985<!--/=-->

``EXPR`` is a Python expression over the results files, each bound to its name
(``benchmarks/results/real_spec.json`` is ``real_spec``; keys read as attributes or with
``["key"]``; a file in a subdirectory: ``R("reproduce_demo/report")``), plus ``mean``, ``std``
(sample, ddof = 1, as ``adaspec-dist report``), ``pm`` (``mean ± std``), ``wins``, ``diff`` and the plain
builtins ``min max sum len abs round sorted zip range any all``. ``; FMT`` is a format spec
(``.4f``, ``+.3f``, ``,``, ``.1%``; not ``|``, which would split a table cell). Markdown renders the comments invisible, so the prose stays
what it was; only the text between ``-->`` and ``<!--/=-->`` is rewritten.

A *sources marker* ``<!--sources-->…<!--/sources-->`` is rewritten with the results files that
the values above it (since the previous sources marker) read, each with the date and machine of
its run, so a reader can tell how old every table is.

``--check`` also catches results measured on other code: a results file that records
``provenance`` (``benchmarks/results_io.provenance``: a digest per source file the run imported,
blind to comments and docstrings) is stale when one of those files has changed since; the line
names the changed files and the command that measures it again.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from results_io import RESULTS, stale_files  # noqa: E402

VALUE = re.compile(r"<!--=\s*(?P<expr>.*?)\s*-->(?P<text>.*?)<!--/=-->")
SOURCES = re.compile(r"<!--sources-->(?P<text>.*?)<!--/sources-->")
FORMAT_SEP = re.compile(r";\s*(?P<fmt>[^;\s]*)$")  # not "|": it would split a table cell

# What to run to measure a results file again (the default: its benchmark script).
RERUN = {"reproduce_demo": "benchmarks/reproduce_demo.sh", "reproduce_demo/report": "benchmarks/reproduce_demo.sh"}


class DocError(Exception):
    """A marker that cannot be rendered: the message names the file:line and the fix."""


class Node(dict):
    """A JSON object whose keys also read as attributes (``res.table``), recursively."""

    def __getattr__(self, key):
        try:
            return wrap(self[key])
        except KeyError:
            raise AttributeError(f"no key {key!r} (keys: {', '.join(sorted(self))})") from None

    def __getitem__(self, key):
        return wrap(dict.__getitem__(self, key))


def wrap(value):
    if isinstance(value, dict) and not isinstance(value, Node):
        return Node(value)
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def std(xs) -> float:
    xs = list(xs)
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def pm(xs, fmt: str = ".4f") -> str:
    return f"{mean(xs):{fmt}} ± {std(xs):{fmt.lstrip('+')}}"


def wins(a, b) -> int:
    return sum(x > y for x, y in zip(a, b))


def diff(a, b) -> list:
    """Element-wise ``a - b`` (comprehensions cannot see the results files' names in an expression)."""
    return [x - y for x, y in zip(a, b)]


HELPERS = {"mean": mean, "std": std, "pm": pm, "wins": wins, "diff": diff, "min": min, "max": max, "sum": sum, "len": len,
           "abs": abs, "round": round, "sorted": sorted, "zip": zip, "range": range, "any": any, "all": all,
           "str": str, "int": int, "float": float}


class Results(dict):
    """The names an expression sees: results files, loaded on first use and remembered as used."""

    def __init__(self, results_dir: Path):
        super().__init__()
        self.dir = results_dir
        self.used: list[str] = []

    def load(self, name: str):
        path = self.dir / f"{name}.json"
        if not path.is_file():
            raise NameError(f"no results file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        if name not in self.used:
            self.used.append(name)
        return wrap(json.loads(path.read_text()))

    def __missing__(self, name: str):
        if name in HELPERS:
            return HELPERS[name]
        if name == "R":
            return self.load
        return self.load(name)


def evaluate(expr: str, results: Results) -> str:
    """Render one marker's ``EXPR ; FMT``."""
    fmt = ""
    m = FORMAT_SEP.search(expr)
    if m:
        expr, fmt = expr[:m.start()], m.group("fmt")
    value = eval(compile(expr, "<marker>", "eval"), {"__builtins__": {}}, results)  # noqa: S307 (repo files)
    return format(value, fmt)


def describe(name: str, results_dir: Path) -> str:
    """``name.json`` with the date and machine of its run."""
    data = json.loads((results_dir / f"{name}.json").read_text())
    m = data.get("machine") if isinstance(data.get("machine"), dict) else {}
    date = (m.get("date") or data.get("date") or "date not recorded")[:10]
    bits = [date]
    if m.get("cuda"):
        bits.append(m["cuda"])
    elif m.get("cpu_count"):
        bits.append(f"{m['cpu_count']} CPU cores")
    if m.get("torch"):
        bits.append(f"torch {m['torch']}")
    if m.get("load_avg_1m") is not None:
        bits.append(f"load {m['load_avg_1m']}")
    return f"`{name}.json` ({', '.join(bits)})"


def render(text: str, where: str, results_dir: Path = RESULTS) -> tuple[str, list[str]]:
    """``text`` with every marker rewritten, and the results files it reads (in order of use)."""
    results = Results(results_dir)
    out, used_since, pos = [], [], 0
    # One pass over both kinds, in document order, so a sources marker lists the files above it.
    markers = sorted([(m, "value") for m in VALUE.finditer(text)] + [(m, "sources") for m in SOURCES.finditer(text)],
                     key=lambda p: p[0].start())
    for m, kind in markers:
        line = text.count("\n", 0, m.start()) + 1
        out.append(text[pos:m.start()])
        if kind == "value":
            before = len(results.used)
            try:
                rendered = evaluate(m.group("expr"), results)
            except Exception as exc:  # noqa: BLE001 — any failure becomes one line naming the marker
                raise DocError(f"{where}:{line}: cannot render <!--= {m.group('expr')} -->: "
                               f"{type(exc).__name__}: {exc}; fix the expression or the results file") from None
            used_since += [u for u in results.used[before:] if u not in used_since]
            if "\n" in rendered or "<!--" in rendered:
                raise DocError(f"{where}:{line}: <!--= {m.group('expr')} --> renders to more than one line")
            out.append(f"<!--= {m.group('expr')} -->{rendered}<!--/=-->")
        else:
            if not used_since:
                raise DocError(f"{where}:{line}: <!--sources--> has no value marker above it; remove it")
            listed = "; ".join(describe(u, results_dir) for u in used_since)
            out.append(f"<!--sources--><sub>Generated by `make results-docs` from benchmarks/results/: "
                       f"{listed}.</sub><!--/sources-->")
            used_since = []
        pos = m.end()
    out.append(text[pos:])
    return "".join(out), results.used


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def stale_values(path: Path, results_dir: Path = RESULTS) -> list[str]:
    """One line per marker of ``path`` whose text differs from what its expression renders."""
    text = path.read_text()
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    new, _ = render(text, str(where), results_dir)
    if new == text:
        return []
    lines = []
    for i, (a, b) in enumerate(zip(text.splitlines(), new.splitlines()), 1):
        if a != b:
            got = [m.group("text") for m in VALUE.finditer(a)]
            want = [m.group("text") for m in VALUE.finditer(b)]
            diff = ", ".join(f"{g!r} should be {w!r}" for g, w in zip(got, want) if g != w) or "sources line differs"
            lines.append(f"{where}:{i}: {diff} (by hand? run `make results-docs`)")
    return lines


def stale_results(results_dir: Path = RESULTS) -> list[str]:
    """One line per results file whose recorded provenance no longer matches the code."""
    lines = []
    for path in sorted(results_dir.rglob("*.json")):
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "provenance" not in data:
            continue
        changed = stale_files(data["provenance"], ROOT)
        if changed:
            name = path.relative_to(results_dir).with_suffix("").as_posix()
            rerun = RERUN.get(name, f"python benchmarks/{name}.py")
            shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            lines.append(f"benchmarks/results/{name}.json was measured on other code ({shown} changed since): "
                         f"run {rerun}, then `make results-docs`")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 listing every stale value and results file")
    args = ap.parse_args(argv)
    try:
        if args.check:
            problems = [line for doc in documents() for line in stale_values(doc)] + stale_results()
            for line in problems:
                print(line, file=sys.stderr)
            return 1 if problems else 0
        changed = 0
        for doc in documents():
            text = doc.read_text()
            new, _ = render(text, str(doc.relative_to(ROOT)))
            if new != text:
                doc.write_text(new)
                changed += 1
                print(f"rewrote {doc.relative_to(ROOT)}")
        print(f"{changed} file(s) rewritten; {len(stale_results())} results file(s) measured on other code "
              "(`--check` lists them)")
        return 0
    except DocError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
