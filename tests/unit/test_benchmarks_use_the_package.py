"""One implementation: a benchmark measures the package's objective, selection, schedule and batching,
never its own copy of them (issue 21: a verdict about an in-script copy is not about the shipped code).

An AST scan of benchmarks/*.py (and of the Python source held in their string constants, which
some benchmarks run in a subprocess) fails on
* a function (or a name bound to a lambda) named like an objective, a selection, a loss, a KL, an
  lr schedule or a collate/pad helper;
* a ranking of ΔL by hand: quantile / topk / kthvalue / sort / argsort over anything named *delta*;
* a hand-written loss: kl_div, cross_entropy, nll_loss;
* a ``.backward()`` on anything but the loss returned by the package's ``objective(...)``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
FORBIDDEN_NAME = re.compile(
    r"objective|select|adaspec_loss|token_loss|(^|_)kl($|_)|kl_loss|loss_fn|compute_loss|lr_at|lr_lambda|"
    r"schedul|warmup|cosine|collate|(^|_)pad(ded)?($|_)|quantile|top_fraction", re.IGNORECASE)
RANKING_CALLS = {"quantile", "nanquantile", "topk", "kthvalue", "sort", "argsort", "msort"}
LOSS_CALLS = {"kl_div", "cross_entropy", "nll_loss", "binary_cross_entropy"}


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _mentions_delta(node: ast.AST) -> bool:
    return any("delta" in (getattr(n, "id", None) or getattr(n, "attr", None) or "").lower()
               for n in ast.walk(node))


def _objective_losses(scope: ast.AST) -> set[str]:
    """Names bound (directly or by tuple unpacking) to a call of ``...objective(...)`` in ``scope``."""
    bound = set()
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and _name(node.value.func) == "objective":
            for target in node.targets:
                first = target.elts[0] if isinstance(target, ast.Tuple) else target
                if isinstance(first, ast.Name):
                    bound.add(first.id)
    return bound


def problems(source: str, where: str) -> list[str]:
    """Every violation in one module's source (see the module docstring)."""
    tree = ast.parse(source)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and FORBIDDEN_NAME.search(node.name):
            out.append(f"{where}:{node.lineno}: defines {node.name}() - call the package's instead")
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
            for t in node.targets:
                if isinstance(t, ast.Name) and FORBIDDEN_NAME.search(t.id):
                    out.append(f"{where}:{node.lineno}: defines {t.id} = lambda - call the package's instead")
        if isinstance(node, ast.Call):
            name = _name(node.func)
            if name in RANKING_CALLS and _mentions_delta(node):
                out.append(f"{where}:{node.lineno}: ranks ΔL by hand ({ast.unparse(node)[:60]}) - use select_tokens")
            if name in LOSS_CALLS:
                out.append(f"{where}:{node.lineno}: computes its own loss ({name}) - use token_losses + objective")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "backward(" in node.value:
            try:
                out += problems(node.value, f"{where}:{node.lineno}(embedded script)")
            except SyntaxError:
                pass
    # .backward() only on the package's objective: checked per function, and for module-level code.
    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] + [tree]
    for scope in scopes:
        allowed = _objective_losses(scope)
        body = scope.body
        for stmt in body:
            for node in ast.walk(stmt):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and scope is tree:
                    break  # functions are their own scopes
                if (isinstance(node, ast.Call) and _name(node.func) == "backward"
                        and isinstance(node.func, ast.Attribute)):
                    receiver = node.func.value
                    if not (isinstance(receiver, ast.Name) and receiver.id in allowed):
                        out.append(f"{where}:{node.lineno}: backward() on {ast.unparse(receiver)[:40]}, "
                                   "not on the loss of the package's objective(...)")
    return sorted(set(out))


def _benchmarks() -> list[Path]:
    return sorted(BENCHMARKS.glob("*.py"))


@pytest.mark.parametrize("path", _benchmarks(), ids=lambda p: p.name)
def test_benchmark_calls_the_package(path):
    found = problems(path.read_text(), path.name)
    assert not found, "\n".join(found)


def test_the_scan_catches_a_copy():
    """The check is not vacuous: a typical in-script copy trips every rule."""
    copy = '''
import math, torch
def lr_at(step, steps, peak):
    return peak * 0.5 * (1 + math.cos(math.pi * step / steps))
def adaspec_loss(l_draft, l_ref, k):
    delta = l_draft.detach() - l_ref
    keep = delta >= torch.quantile(delta, 1 - k)
    return l_draft[keep].sum() / l_draft.shape[0]
def train(model, x, y):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
def fine(model, obj, losses):
    loss, stats = obj.objective("kd", losses)
    loss.backward()
CHILD = "import torch\\nloss = torch.nn.functional.kl_div(a, b).sum()\\nloss.backward()\\n"
'''
    found = "\n".join(problems(copy, "copy.py"))
    for needle in ("defines lr_at()", "defines adaspec_loss()", "ranks ΔL by hand", "own loss (cross_entropy)",
                   "copy.py:11: backward() on loss", "embedded script", "own loss (kl_div)"):
        assert needle in found, (needle, found)
    assert "copy.py:14" not in found  # the objective's loss is fine
    assert len(_benchmarks()) > 10
