"""docs/troubleshooting.md quotes the errors as the code raises them, and the README links it.

Each message in the first column of its tables (a code span; `…` marks what varies) must match a
string the package builds (f-strings read with ``ast``: their variable parts become `…`), so a
reworded error cannot leave the page quoting a message nobody sees any more.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "troubleshooting.md"


def _messages() -> list[str]:
    out = []
    for path in (ROOT / "adaspec_dist").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                out.append("".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.append(node.value)
    return out


def _quoted() -> list[str]:
    rows = [ln for ln in PAGE.read_text().splitlines() if ln.startswith("| `")]
    return [span for row in rows for span in re.findall(r"`([^`]+)`", row.split(" | ")[0])]


def test_every_quoted_error_is_one_the_code_raises():
    messages = _messages()
    missing = []
    for quote in _quoted():
        for fragment in (f.strip(" '\"(),;:") for f in quote.split("…")):
            if len(fragment) >= 12 and not any(fragment in m for m in messages):
                missing.append(f"{quote!r}: {fragment!r}")
    assert not missing, "\n".join(missing)
    assert len(_quoted()) >= 40


def test_the_readme_links_the_page():
    assert "(docs/troubleshooting.md)" in (ROOT / "README.md").read_text()
