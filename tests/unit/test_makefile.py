"""The Makefile and the docs agree: every target declared ``.PHONY`` has a rule, every ``make
TARGET`` in README.md and docs/*.md names one, and ``make test-fast`` selects by markers that
pytest.ini registers (``--strict-markers``: a misspelt ``@pytest.mark.slow`` is an error, not a
slow test in the fast tier)."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = (ROOT / "Makefile").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def rules(text: str) -> dict[str, list[str]]:
    """target -> its recipe lines (a rule is ``name: ...`` at the start of a line, not ``:=``)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z][\w-]*)\s*:(?!=)", line)
        if m:
            current = out.setdefault(m.group(1), [])
        elif line.startswith("\t") and current is not None:
            current.append(line.strip())
        elif line.strip() and not line.startswith("#"):
            current = None
    return out


def phony(text: str) -> list[str]:
    return [name for m in re.finditer(r"^\.PHONY:(.*)$", text, flags=re.M) for name in m.group(1).split()]


def documented_targets() -> set[tuple[str, str]]:
    """(doc, target) of each ``make TARGET`` at the start of a code span or a code-block line."""
    found = set()
    for doc in DOCS:
        for m in re.finditer(r"(?:^|`)make ([a-z][\w-]*)", doc.read_text(), flags=re.M):
            found.add((doc.name, m.group(1)))
    return found


def test_every_phony_target_has_a_rule():
    missing = [name for name in phony(MAKEFILE) if name not in rules(MAKEFILE)]
    assert not missing, f".PHONY names targets without a rule: {missing}; delete them from .PHONY or add the rule"


def test_every_documented_make_command_is_a_target():
    found = documented_targets()
    assert ("README.md", "test-fast") in found and ("README.md", "test") in found
    missing = sorted(f"{doc}: make {target}" for doc, target in found if target not in rules(MAKEFILE))
    assert not missing, f"documented but not in the Makefile: {missing}"


def test_the_fast_tier_deselects_registered_markers_only():
    recipe = " ".join(rules(MAKEFILE)["test-fast"])
    expr = re.search(r'-m "([^"]+)"', recipe)
    assert expr and "tests/unit" in recipe, recipe
    ini = configparser.ConfigParser()
    ini.read(ROOT / "pytest.ini")
    registered = {ln.split(":")[0].strip() for ln in ini["pytest"]["markers"].splitlines() if ln.strip()}
    assert "--strict-markers" in ini["pytest"]["addopts"]
    used = set(re.findall(r"[a-z_]+", expr.group(1))) - {"not", "and", "or"}
    assert used and used <= registered, (used, registered)


def test_slow_tests_in_the_fast_tier_are_named():
    from tests.conftest import FAST_TEST_S, slow_in_fast_tier

    class Report:
        def __init__(self, nodeid, when, duration):
            self.nodeid, self.when, self.duration = nodeid, when, duration

    reports = [Report("a", "setup", FAST_TEST_S), Report("a", "call", 1.0), Report("b", "call", 0.5),
               Report("c", "call", FAST_TEST_S * 3), "a warning, not a report"]
    assert slow_in_fast_tier(reports) == [(FAST_TEST_S * 3, "c"), (FAST_TEST_S + 1.0, "a")]
