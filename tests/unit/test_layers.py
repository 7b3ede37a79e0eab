"""The package's layering, read from its source with ``ast`` (nothing is imported).

Every ``import`` of an ``adaspec_dist`` module — at the top of a module or inside a function —
must point to the importer's own layer or a lower one; and the modules' top-level imports must
not form a cycle. The order is written once, in ``LAYERS``.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "adaspec_dist"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE

# Lowest first; a module may import its own layer or any layer below it. A name is the first
# component under adaspec_dist: a subpackage (``cache/``, ``cli/``) or a top-level module
# (``pipeline.py``).
LAYERS: list[tuple[str, ...]] = [
    # foundation: YAML -> dataclasses, shipped files, env and process groups, atomic files and
    # directory claims, reaching the HF Hub, signals
    ("config", "configs", "dist", "files", "jobs", "hub", "preemption"),
    ("sparse",),                       # the shared math: SparseTarget, encoders, divergences
    ("data", "models"),
    ("cache", "speculative"),
    ("distill",),
    ("report",),
    ("pipeline", "demo"),
    ("cli",),
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
ORDER = " < ".join(", ".join(names) for names in LAYERS)

# (importing file, imported module) pairs that break the order today. Keep this small: each
# one carries the reason, and the test fails once it no longer occurs (then delete it here).
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve_from(node: ast.ImportFrom, importer: str, package: bool) -> str:
    """The absolute module of ``from X import ...`` (relative forms resolved against the importer)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".") if package else importer.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported adaspec_dist module, line, runs at import time) for every import in ``path``."""
    return parse_imports(path.read_text(), module_name(path), is_package(path), filename=str(path))


def parse_imports(source: str, importer: str, package: bool, filename: str = "<src>") -> list[tuple[str, int, bool]]:
    """``imports`` of a module's source. ``from adaspec_dist.a import b`` counts as
    ``adaspec_dist.a.b`` when ``b`` is a module, else as ``adaspec_dist.a``. "Runs at import
    time": not inside a function, nor under ``if TYPE_CHECKING``."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, at_import) for a in child.names
                             if a.name == PACKAGE or a.name.startswith(PACKAGE + "."))
            elif isinstance(child, ast.ImportFrom):
                base = _resolve_from(child, importer, package)
                if base == PACKAGE or base.startswith(PACKAGE + "."):
                    for a in child.names:
                        sub = f"{base}.{a.name}"
                        found.append((sub if module_exists(sub) else base, child.lineno, at_import))
            if isinstance(child, ast.If) and _is_type_checking(child):  # the body never runs; `else` does
                for part in child.body:
                    visit(ast.Module(body=[part], type_ignores=[]), False)
                for part in child.orelse:
                    visit(ast.Module(body=[part], type_ignores=[]), at_import)
                continue
            visit(child, at_import and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(source, filename=filename), True)
    return list(dict.fromkeys(found))  # `from m import a, b` of one module: once


def module_exists(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT.parent / rel).with_suffix(".py").is_file() or (ROOT.parent / rel / "__init__.py").is_file()


def layer_name(module: str) -> str | None:
    """``adaspec_dist.cache.produce`` -> ``cache``; the package root itself -> None (no layer)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def package_files() -> list[Path]:
    files = sorted(ROOT.rglob("*.py"))
    assert files, f"no python files under {ROOT}"
    return files


def rel(path: Path) -> str:
    return path.relative_to(ROOT.parent).as_posix()


def test_every_import_goes_to_its_own_layer_or_below():
    problems, seen = [], set()
    for path in package_files():
        mine = layer_name(module_name(path))
        if mine is not None and mine not in LAYER_OF:
            problems.append(f"{rel(path)}: '{mine}' has no layer; add it to LAYERS in tests/unit/test_layers.py")
            continue
        for target, line, _ in imports(path):
            theirs = layer_name(target)
            if theirs is None:
                continue  # `import adaspec_dist` (the root is empty: nothing to layer)
            if theirs not in LAYER_OF:
                problems.append(f"{rel(path)}:{line} imports {target}: '{theirs}' has no layer; "
                                "add it to LAYERS in tests/unit/test_layers.py")
                continue
            if mine is None:  # the root package must stay empty: `import adaspec_dist` is cheap
                problems.append(f"{rel(path)}:{line} imports {target}: the package root imports nothing")
                continue
            if LAYER_OF[theirs] > LAYER_OF[mine]:
                pair = (rel(path), ".".join(target.split(".")[:2]))
                if pair in KNOWN_EXCEPTIONS:
                    seen.add(pair)
                    continue
                problems.append(f"{rel(path)}:{line} imports {target}: layer '{theirs}' is above '{mine}' "
                                f"(rule: a module imports only its own layer or below: {ORDER})")
    stale = KNOWN_EXCEPTIONS - seen
    problems += [f"KNOWN_EXCEPTIONS entry {pair} no longer occurs: delete it from tests/unit/test_layers.py"
                 for pair in sorted(stale)]
    assert not problems, "\n".join(problems)


def test_no_import_cycle_at_import_time():
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for path in package_files():
        me = module_name(path)
        graph.setdefault(me, set())
        for target, line, at_import in imports(path):
            if at_import and target != me:
                graph[me].add(target)
                where.setdefault((me, target), f"{rel(path)}:{line}")
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = dfs(node)
            assert cycle is None, "import cycle at import time: " + " -> ".join(cycle) + "\n" + "\n".join(
                f"  {where[(a, b)]} imports {b}" for a, b in zip(cycle, cycle[1:]))


def test_the_checker_sees_function_level_and_relative_imports():
    """The parser itself: function-level imports count for layers but not for cycles; relative
    and ``from package import module`` forms resolve to the module, other names to the package."""
    src = ("import os\n"
           "from adaspec_dist.cache import format as fmt\n"
           "from . import reader\n"
           "from .produce import CacheConfig\n"
           "from adaspec_dist.sparse import target, NotAModule, AnotherName\n"
           "class A:\n"
           "    import adaspec_dist.data.tasks\n"
           "if TYPE_CHECKING:\n"
           "    from adaspec_dist.distill.train import TrainConfig\n"
           "else:\n"
           "    import adaspec_dist.data.tokenize\n"
           "def f():\n"
           "    from adaspec_dist.cli import SUBCOMMANDS\n")
    got = parse_imports(src, "adaspec_dist.cache.probe", package=False)
    assert got == [("adaspec_dist.cache.format", 2, True), ("adaspec_dist.cache.reader", 3, True),
                   ("adaspec_dist.cache.produce", 4, True), ("adaspec_dist.sparse.target", 5, True),
                   ("adaspec_dist.sparse", 5, True), ("adaspec_dist.data.tasks", 7, True),
                   ("adaspec_dist.distill.train", 9, False), ("adaspec_dist.data.tokenize", 11, True),
                   ("adaspec_dist.cli", 13, False)]
