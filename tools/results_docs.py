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
(sample, ddof = 1, as ``adaspec-dist report``), ``pm`` (``mean ± std``), ``wins``, ``diff``, ``find`` (``find(res.table, arm="adaspec")``) and the plain
builtins ``min max sum len abs round sorted zip range any all``. ``; FMT`` is a format spec
(``.4f``, ``+.3f``, ``,``, ``.1%``; not ``|``, which would split a table cell). Markdown renders the comments invisible, so the prose stays
what it was; only the text between ``-->`` and ``<!--/=-->`` is rewritten.

A table too long to mark cell by cell is a *block marker*, rewritten whole by the function that
prints it at the end of its benchmark (``call(SCRIPT, FUNCTION, *args)`` runs
``benchmarks/SCRIPT.py``'s ``FUNCTION``)::

    <!--block= call("selection_effect", "markdown_table", selection_effect.summary) -->
    | … the table … |
    <!--/block-->

A *sources marker* ``<!--sources-->…<!--/sources-->`` is rewritten with the results files that
the values above it (since the previous sources marker) read, each with the date and machine of
its run, so a reader can tell how old every table is.

Results measured on other code are caught too. A results file that records ``provenance``
(``benchmarks/results_io.provenance``: a digest per source file the run imported, blind to comments
and docstrings) is stale when one of those files has changed since. Its sources line then says
so, naming the changed files (so a reader sees it, and the docs must be regenerated after such a
change); and for the results in ``ENFORCED`` — the demo's, which the README's headline table
quotes and which reruns in minutes — ``--check`` fails, naming the command that measures it again.
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

from adaspec_dist.files import atomic_write_text  # noqa: E402

VALUE = re.compile(r"<!--=\s*(?P<expr>.*?)\s*-->(?P<text>.*?)<!--/=-->")
SOURCES = re.compile(r"<!--sources-->(?P<text>.*?)<!--/sources-->")
BLOCK = re.compile(r"<!--block=\s*(?P<expr>[^\n]*?)\s*-->\n(?P<text>.*?)\n?<!--/block-->", re.S)
FORMAT_SEP = re.compile(r";\s*(?P<fmt>[^;\s]*)$")  # not "|": it would split a table cell

# Results that must be measured again when their code changes (the test fails until they are), and
# the command that does it. Others record provenance too; their staleness is shown in the docs.
ENFORCED = {"reproduce_demo": "benchmarks/reproduce_demo.sh"}


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

    def get(self, key, default=None):
        return wrap(dict.get(self, key, default))

    def items(self):
        return [(k, wrap(v)) for k, v in dict.items(self)]

    def values(self):
        return [wrap(v) for v in dict.values(self)]


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


def find(items, **match):
    """The first item of a list of objects whose keys equal ``match`` (``find(res.table, arm="adaspec")``)."""
    for item in items:
        if all(item.get(k) == v for k, v in match.items()):
            return wrap(item)
    raise LookupError(f"no item with {match}")


def call(script: str, function: str, *args):
    """``function(*args)`` from ``benchmarks/SCRIPT.py``: a table is written by the same code that
    prints it at the end of the run (``<!--block= call("selection_real", "markdown_table", selection_real) -->``)."""
    import importlib

    module = importlib.import_module(script)
    return getattr(module, function)(*args)


HELPERS = {"call": call, "find": find, "mean": mean, "std": std, "pm": pm, "wins": wins, "diff": diff, "min": min, "max": max,
           "sum": sum, "len": len, "abs": abs, "round": round, "sorted": sorted, "zip": zip, "range": range, "any": any, "all": all,
           "str": str, "int": int, "float": float, "format": format}


class Results(dict):
    """The names an expression sees: results files, loaded on first use and remembered as used."""

    def __init__(self, results_dir: Path):
        super().__init__()
        self.dir = results_dir
        self.used: list[str] = []  # every file read, in order of first use
        self.touched: list[str] = []  # the files the current marker read

    def load(self, name: str):
        path = self.dir / f"{name}.json"
        if not path.is_file():
            raise NameError(f"no results file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        if name not in self.used:
            self.used.append(name)
        if name not in self.touched:
            self.touched.append(name)
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
    # Helpers are globals too: the body of a comprehension sees globals, not the results mapping.
    value = eval(compile(expr, "<marker>", "eval"), {"__builtins__": {}, **HELPERS}, results)  # noqa: S307
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
        bits.append(f"load {round(float(m['load_avg_1m']), 2)}")
    changed = stale_files(data["provenance"], ROOT) if isinstance(data.get("provenance"), dict) else []
    if changed:
        bits.append(f"**measured before changes to {', '.join(changed[:3])}"
                    f"{f' and {len(changed) - 3} more files' if len(changed) > 3 else ''}**")
    return f"`{name}.json` ({', '.join(bits)})"


def render(text: str, where: str, results_dir: Path = RESULTS) -> tuple[str, list[str], list[str]]:
    """``text`` with every marker rewritten, the results files it reads (in order of use), and one
    line per marker whose text was not what its expression renders (``where:line: …``)."""
    results = Results(results_dir)
    out, used_since, differs, pos = [], [], [], 0
    # One pass over every kind, in document order, so a sources marker lists the files above it.
    markers = sorted([(m, kind) for kind, rx in (("value", VALUE), ("block", BLOCK), ("sources", SOURCES))
                      for m in rx.finditer(text)], key=lambda p: p[0].start())
    for m, kind in markers:
        line = text.count("\n", 0, m.start()) + 1
        out.append(text[pos:m.start()])
        if kind == "sources":
            if not used_since:
                raise DocError(f"{where}:{line}: <!--sources--> has no value marker above it; remove it")
            listed = "; ".join(describe(u, results_dir) for u in used_since)
            rendered = f"<sub>Generated by `make results-docs` from benchmarks/results/: {listed}.</sub>"
            out.append(f"<!--sources-->{rendered}<!--/sources-->")
            used_since = []
        else:
            results.touched = []
            try:
                rendered = evaluate(m.group("expr"), results)
            except Exception as exc:  # noqa: BLE001 — any failure becomes one line naming the marker
                raise DocError(f"{where}:{line}: cannot render <!--{'block' if kind == 'block' else ''}= "
                               f"{m.group('expr')} -->: {type(exc).__name__}: {exc}; "
                               "fix the expression or the results file") from None
            used_since += [u for u in results.touched if u not in used_since]
            if "<!--" in rendered or (kind == "value" and "\n" in rendered):
                raise DocError(f"{where}:{line}: <!--= {m.group('expr')} --> renders to more than one line "
                               "or to a marker; use <!--block= … --> for a table")
            rendered = rendered.strip("\n")
            out.append(f"<!--= {m.group('expr')} -->{rendered}<!--/=-->" if kind == "value"
                       else f"<!--block= {m.group('expr')} -->\n{rendered}\n<!--/block-->")
        if rendered != m.group("text"):
            old = m.group("text")
            what = (f"{old!r} should be {rendered!r}" if kind == "value"
                    else f"the {kind} differs from what its results render" + (f" (first: {old.splitlines()[0]!r})"
                                                                                if old.strip() else ""))
            differs.append(f"{where}:{line}: {what} (edited by hand? run `make results-docs`)")
        pos = m.end()
    out.append(text[pos:])
    return "".join(out), results.used, differs


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def stale_values(path: Path, results_dir: Path = RESULTS) -> list[str]:
    """One line per marker of ``path`` whose text differs from what its expression renders."""
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return render(path.read_text(), str(where), results_dir)[2]


def stale_results(results_dir: Path = RESULTS, only: dict | None = None) -> list[str]:
    """One line per results file in ``only`` (default ``ENFORCED``: name -> the command that measures
    it again) whose recorded provenance no longer matches the code."""
    lines = []
    for name, rerun in (ENFORCED if only is None else only).items():
        path = results_dir / f"{name}.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        if "provenance" not in data:
            lines.append(f"benchmarks/results/{name}.json records no provenance: run {rerun}")
            continue
        changed = stale_files(data["provenance"], ROOT)
        if changed:
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
            new = render(text, str(doc.relative_to(ROOT)))[0]
            if new != text:
                atomic_write_text(doc, new)  # a kill mid-write must not truncate README
                changed += 1
                print(f"rewrote {doc.relative_to(ROOT)}")
        stale = stale_results()
        for line in stale:
            print(line, file=sys.stderr)
        print(f"{changed} file(s) rewritten")
        return 0
    except DocError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
