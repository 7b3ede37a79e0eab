"""Where every benchmark's figures go: ``benchmarks/results/NAME.json`` with the machine and date.

Scripts run as ``python benchmarks/NAME.py``, so this module is importable as ``results_io``.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What a number depends on: platform, cores, load, versions, accelerator, date (UTC)."""
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_result(name: str, result: dict) -> Path:
    """Write ``result`` plus the machine description to ``results/NAME.json``; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**result, "machine": machine()}, indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------- provenance
# A results file that records which code measured it can be caught when that code changes
# (tools/results_docs.py --check). The digest ignores comments, docstrings and layout, so
# documenting the code does not stale a 30-minute measurement; any change to a token does.

ROOT = RESULTS.parent.parent


def source_digest(path: Path) -> str:
    """sha256 of a file's meaning: for Python, its tokens without comments, docstrings and layout;
    for any other file, its bytes."""
    import ast
    import hashlib
    import io
    import tokenize

    data = Path(path).read_bytes()
    if Path(path).suffix != ".py":
        return hashlib.sha256(data).hexdigest()
    text = data.decode()
    docstrings = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                docstrings.add((first.lineno, first.col_offset))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING}
    h = hashlib.sha256()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in skip or (tok.type == tokenize.STRING and tok.start in docstrings):
            continue
        h.update(f"{tok.type}:{tok.string if tok.type not in (tokenize.INDENT, tokenize.DEDENT) else ''}\n".encode())
    return h.hexdigest()


def provenance(*extra: str | Path, whole_package: bool = False) -> dict:
    """What measured this result: the git revision (when there is one) and a digest per source file —
    every ``adaspec_dist`` module this process imported (or, ``whole_package``, every one: for runs
    whose work happened in child processes), the running script, and ``extra`` files (recipes)."""
    import shlex
    import subprocess
    import sys

    files = set()
    if whole_package:
        files |= set((ROOT / "adaspec_dist").rglob("*.py"))
    else:
        files |= {Path(m.__file__) for name, m in list(sys.modules.items())
                  if (name == "adaspec_dist" or name.startswith("adaspec_dist.")) and getattr(m, "__file__", None)}
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0].endswith(".py") else None
    if script and script.is_file():
        files.add(script)
    files |= {Path(p) if Path(p).is_absolute() else ROOT / p for p in extra}
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip() or None
    except OSError:
        rev = None
    digests = {}
    for f in sorted(files):
        rel = Path(os.path.abspath(f))  # not resolve(): configs/ is a link into the package
        if rel.is_relative_to(ROOT):  # an installed (non-editable) copy is not this repository's code
            digests[rel.relative_to(ROOT).as_posix()] = source_digest(f)
    command = shlex.join(["python", *sys.argv]) if script else None  # what reproduces this file
    return {"git_revision": rev, "command": command, "digests": digests}


def stale_files(prov: dict, root: Path = ROOT) -> list[str]:
    """The files of a recorded ``provenance`` whose digest differs now (or that are gone)."""
    changed = []
    for rel, digest in prov.get("digests", {}).items():
        path = root / rel
        if not path.is_file() or source_digest(path) != digest:
            changed.append(rel)
    return changed
