"""Embedded corpora: deterministic per seed, disjoint splits by construction, well-formed items."""
from __future__ import annotations

import ast
import re

import pytest

from adaspec_dist.data import embedded
from adaspec_dist.data.embedded import generate, split_of

LIMIT = {"arith": 400, "pydoc": None, "stdlib_code": 400}


@pytest.mark.parametrize("name", sorted(embedded.EMBEDDED))
def test_deterministic_per_seed_and_different_across_seeds(name):
    a = generate(name, split="train", seed=0, limit=LIMIT[name])
    b = generate(name, split="train", seed=0, limit=LIMIT[name])
    c = generate(name, split="train", seed=1, limit=LIMIT[name])
    assert a == b and len(a) > 100
    assert a != c


@pytest.mark.parametrize("name", sorted(embedded.EMBEDDED))
def test_splits_disjoint_for_any_seeds(name):
    # Disjoint by construction: an item's split depends on its content key, not on the seed,
    # so even train(seed 0) and test(seed 1) share nothing.
    train = generate(name, split="train", seed=0, limit=LIMIT[name])
    for seed in (0, 1):
        test = generate(name, split="test", seed=seed, limit=LIMIT[name] and LIMIT[name] // 4)
        assert len(test) > 20
        assert not {p for p, _ in train} & {p for p, _ in test}
        assert not {p + a for p, a in train} & {p + a for p, a in test}
    assert generate(name, split="validation", seed=3, limit=10) == generate(name, split="test", seed=3, limit=10)


def test_split_keys_follow_the_hash_partition():
    train = generate("arith", split="train", seed=5, limit=200)
    test = generate("arith", split="test", seed=5, limit=50)
    question = lambda prompt: prompt[len("Question: "):-len("\nAnswer: ")]  # noqa: E731
    assert all(split_of("arith", question(p)) == "train" for p, _ in train)
    assert all(split_of("arith", question(p)) == "test" for p, _ in test)
    topics = lambda pairs: {re.search(r"topic '([^']+)'", p).group(1) for p, _ in pairs}  # noqa: E731
    train_topics, test_topics = topics(generate("pydoc", split="train")), topics(generate("pydoc", split="test"))
    assert train_topics and test_topics and not train_topics & test_topics
    modules = lambda pairs: {re.search(r"module `([^`]+)`", p).group(1) for p, _ in pairs}  # noqa: E731
    assert not modules(generate("stdlib_code", split="train")) & modules(generate("stdlib_code", split="test"))


def test_bad_split_and_name():
    with pytest.raises(ValueError, match="splits train and test"):
        generate("arith", split="dev")
    with pytest.raises(ValueError, match="unknown embedded corpus"):
        generate("poetry")


_STEP = re.compile(r"((?:\d+ [-+*/] )+\d+) = \$?(\d+)")  # "a op b [op c ...] = result"


def test_arith_solutions_are_correct_and_stepwise():
    pairs = generate("arith", split="train", seed=2, limit=300)
    templates = set()
    for prompt, answer in pairs:
        assert prompt.startswith("Question: ") and prompt.endswith("\nAnswer: ")
        lines = answer.split("\n")
        final = re.fullmatch(r"The final answer is: (\d+)", lines[-1])
        assert final, answer
        steps = [m for line in lines[:-1] for m in _STEP.finditer(line)]
        assert 2 <= len(steps) <= 5, answer
        for expression, result in (m.groups() for m in steps):
            assert eval(expression) == int(result), answer  # every step's arithmetic holds
        # The final answer is the last computed value.
        assert int(steps[-1].group(2)) == int(final.group(1))
        templates.add(next(k for k in ("starts with", " cost ", "Each day") if k in lines[0]))
    assert len({p for p, _ in pairs}) == len(pairs)  # no duplicate problems
    assert len(templates) >= 3  # several templates are in use


def test_stdlib_code_answers_are_python_without_their_docstring():
    pairs = generate("stdlib_code", split="test", seed=0, limit=150)
    for prompt, code in pairs:
        tree = ast.parse(code)
        (fn,) = tree.body
        assert isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        assert f"`{fn.name}`" in prompt or f".{fn.name}`" in prompt
        assert ast.get_docstring(fn) is None


def test_pydoc_pairs_shape():
    pairs = generate("pydoc", split="train", seed=0)
    assert all(p.startswith("### Instruction:\nExplain the Python topic '") for p, _ in pairs)
    assert all(p.endswith("\n\n### Response:\n") and r.strip() for p, r in pairs)
    # Chunks stay near the target size (only a single long paragraph may exceed it).
    assert sum(len(r) > 2 * embedded._CHUNK_CHARS for _, r in pairs) < len(pairs) // 10
