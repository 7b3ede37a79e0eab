"""Embedded corpora: task data that needs no network (the demo, tests, air-gapped smoke runs).

Contract
--------
``generate(name, split, seed, limit) -> list[(prompt, answer)]`` for ``name`` in ``EMBEDDED``
(a ``Corpus``: its generator of (the user's text, answer) pairs and its ``PromptStyle``, which
makes every prompt here and the exported chat template: see ``data/prompts.py``):

* ``arith``        GSM8K-style arithmetic word problems (2-4 steps, several templates) with
                   step-by-step solutions ending "The final answer is: N".
* ``pydoc``        Python's own documentation (``pydoc_data.topics``) as instruction/response
                   pairs: "Explain the Python topic 'X'." -> a chunk of that topic's text.
* ``stdlib_code``  Python standard-library functions with docstrings (parsed with ``ast``) as
                   docstring -> code pairs (the code without its docstring).

Determinism and disjointness: the same ``(split, seed, limit)`` always gives the same list;
another seed gives another choice/order. Train and test are disjoint *by construction*: an
item's split is a pure function of a content key (the problem text, the documentation
topic, the module name) hashed with sha256, independent of the seed, so no seed can put the
same item in both splits. Splits: ``train``, ``test`` (``validation`` is an alias of test).
``pydoc`` and ``stdlib_code`` come from the running Python, so they are fixed per seed *and
Python version*; the data fingerprint of the tokenized result records which one was used.
"""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import random
import sys
import sysconfig
import textwrap
from functools import lru_cache
from pathlib import Path
from dataclasses import dataclass
from typing import Callable

from adaspec_dist.data.prompts import PromptStyle
from adaspec_dist.files import user_cache_dir

logger = logging.getLogger(__name__)

Pair = tuple[str, str]

# Fraction of content keys (in 1/100) that belong to the test split, per corpus.
_TEST_PERCENT = {"arith": 10, "pydoc": 15, "stdlib_code": 10}
# Default sizes of the (infinite) arithmetic generator when no limit is given.
_ARITH_DEFAULT = {"train": 5000, "test": 500}


def canonical_split(split: str) -> str:
    if split in ("train",):
        return "train"
    if split in ("test", "validation"):
        return "test"
    raise ValueError(f"embedded corpora have splits train and test (validation = test), not '{split}'")


def split_of(corpus: str, key: str) -> str:
    """The split that owns ``key``: a seed-independent hash partition (hence disjoint splits)."""
    bucket = int(hashlib.sha256(f"{corpus}\0{key}".encode()).hexdigest()[:8], 16) % 100
    return "test" if bucket < _TEST_PERCENT[corpus] else "train"


# ----------------------------------------------------------------------------- arith

_NAMES = ["Ava", "Ben", "Chloe", "Daniel", "Elena", "Farid", "Grace", "Hiro", "Isla", "Jamal", "Kira",
          "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera",
          "Wes", "Xin", "Yara", "Zane"]
_OBJECTS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "books", "shells", "cards",
            "coins", "balloons", "beads", "candles", "crayons", "plums"]
_GOODS = [("notebook", "notebooks"), ("pen", "pens"), ("sandwich", "sandwiches"), ("ticket", "tickets"),
          ("mug", "mugs"), ("plant", "plants"), ("kite", "kites"), ("scarf", "scarves"), ("lamp", "lamps")]
_JOBS = ["tutoring", "babysitting", "walking dogs", "washing cars", "mowing lawns", "delivering papers"]


def _possession(rng: random.Random) -> Pair:
    """A quantity changed by 2-4 operations (+, -, x, /), solved one line per step."""
    name, obj = rng.choice(_NAMES), rng.choice(_OBJECTS)
    amount = rng.randint(5, 60)
    question = [f"{name} has {amount} {obj}."]
    steps = [f"{name} starts with {amount} {obj}."]
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(["add", "sub", "mul", "div"])
        if kind == "div" and amount >= 4:
            divisors = [d for d in range(2, 7) if amount % d == 0]
            if divisors:
                d = rng.choice(divisors)
                new = amount // d
                question.append(rng.choice([f"Then {name} splits them equally into {d} bags and keeps one bag.",
                                            f"{name} shares them equally with {d - 1} friends, keeping one share."]))
                steps.append(f"One of {d} equal shares is {amount} / {d} = {new}.")
                amount = new
                continue
            kind = "add"
        if kind == "mul" and amount <= 200:
            k = rng.randint(2, 4)
            new = amount * k
            word = {2: "doubles", 3: "triples", 4: "quadruples"}[k]
            question.append(f"Then {name}'s collection {word}.")
            steps.append(f"After it {word}, {name} has {amount} * {k} = {new} {obj}.")
            amount = new
            continue
        if kind == "sub" and amount > 3:
            n = rng.randint(1, amount - 1)
            who = rng.choice([n2 for n2 in _NAMES if n2 != name])
            question.append(rng.choice([f"{name} gives {n} to {who}.", f"{name} loses {n} of them."]))
            steps.append(f"After giving away {n}, {name} has {amount} - {n} = {amount - n} {obj}.")
            amount -= n
            continue
        n = rng.randint(2, 40)
        question.append(rng.choice([f"{name} buys {n} more.", f"A friend gives {name} {n} more {obj}.",
                                    f"{name} finds {n} more {obj}."]))
        steps.append(f"After getting {n} more, {name} has {amount} + {n} = {amount + n} {obj}.")
        amount += n
    question.append(rng.choice([f"How many {obj} does {name} have now?", f"How many {obj} does {name} end with?"]))
    steps.append(f"The final answer is: {amount}")
    return " ".join(question), "\n".join(steps)


def _shopping(rng: random.Random) -> Pair:
    """2-3 items bought at unit prices, paid with a bill: costs, total, change."""
    name = rng.choice(_NAMES)
    goods = rng.sample(_GOODS, rng.randint(1, 3))
    lines, parts, total = [], [], 0
    for singular, plural in goods:
        qty, price = rng.randint(2, 9), rng.randint(1, 15)
        cost = qty * price
        parts.append(f"{qty} {plural} at ${price} each")
        lines.append(f"The {plural} cost {qty} * {price} = ${cost}.")
        total += cost
    bill = next(b for b in (20, 50, 100, 200, 500) if b >= total)
    listing = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    question = (f"{name} buys {listing}. {name} pays with a ${bill} bill. "
                f"How much change, in dollars, does {name} get back?")
    if len(goods) > 1:
        lines.append(f"In total {name} spends " + " + ".join(l.split("= $")[1][:-1] for l in lines)
                     + f" = ${total}.")
    lines.append(f"The change is {bill} - {total} = ${bill - total}.")
    lines.append(f"The final answer is: {bill - total}")
    return question, "\n".join(lines)


def _earnings(rng: random.Random) -> Pair:
    """Hourly earnings over several days, minus spending, optionally split with a sibling."""
    name, job = rng.choice(_NAMES), rng.choice(_JOBS)
    rate, hours, days = rng.randint(5, 25), rng.randint(1, 6), rng.randint(2, 7)
    daily = rate * hours
    earned = daily * days
    spend = rng.randint(1, earned - 1)
    question = (f"{name} earns ${rate} an hour {job}. {name} works {hours} hours a day for {days} days, "
                f"then spends ${spend} on a gift.")
    lines = [f"Each day {name} earns {rate} * {hours} = ${daily}.",
             f"Over {days} days that is {daily} * {days} = ${earned}.",
             f"After the gift {name} has {earned} - {spend} = ${earned - spend}."]
    left = earned - spend
    if left % 2 == 0 and rng.random() < 0.5:
        question += f" {name} then gives half of the rest to a sibling."
        lines.append(f"Half of it is {left} / 2 = ${left // 2}, which {name} keeps.")
        left //= 2
    question += f" How many dollars does {name} have left?"
    lines.append(f"The final answer is: {left}")
    return question, "\n".join(lines)


_ARITH_TEMPLATES: list[Callable[[random.Random], Pair]] = [_possession, _shopping, _earnings]


def arith_pairs(split: str, seed: int, limit: int | None) -> list[Pair]:
    want = limit or _ARITH_DEFAULT[split]
    rng = random.Random(f"arith-{seed}")
    seen: set[str] = set()
    out: list[Pair] = []
    budget = want * 200  # guards against a template space too small for `want` distinct items
    while len(out) < want and budget > 0:
        budget -= 1
        question, solution = rng.choice(_ARITH_TEMPLATES)(rng)
        if question in seen or split_of("arith", question) != split:
            continue
        seen.add(question)
        out.append((question, solution))
    return out


# ----------------------------------------------------------------------------- pydoc

_CHUNK_CHARS = 900


def _chunks(text: str) -> list[str]:
    """Consecutive paragraphs grouped up to ~_CHUNK_CHARS (a longer paragraph stays whole)."""
    paragraphs = [p.strip("\n") for p in text.strip().split("\n\n") if p.strip()]
    chunks, current = [], ""
    for para in paragraphs:
        if current and len(current) + 2 + len(para) > _CHUNK_CHARS:
            chunks.append(current)
            current = para
        else:
            current = f"{current}\n\n{para}" if current else para
    if current:
        chunks.append(current)
    return chunks


@lru_cache(maxsize=None)
def _pydoc_items() -> tuple[tuple[str, str, str], ...]:
    """(topic, instruction, response) for every chunk of every topic, in sorted topic order."""
    from pydoc_data.topics import topics

    items = []
    for topic in sorted(topics):
        chunks = _chunks(topics[topic])
        for i, chunk in enumerate(chunks):
            part = f" (part {i + 1} of {len(chunks)})" if len(chunks) > 1 else ""
            items.append((topic, f"Explain the Python topic '{topic}'{part}.", chunk))
    return tuple(items)


def pydoc_pairs(split: str, seed: int, limit: int | None) -> list[Pair]:
    # Split by topic, so no topic's text is in both splits.
    pairs = [(p, r) for topic, p, r in _pydoc_items() if split_of("pydoc", topic) == split]
    random.Random(f"pydoc-{seed}").shuffle(pairs)
    return pairs[:limit] if limit else pairs


# ----------------------------------------------------------------------------- stdlib_code

_SKIP_DIRS = {"test", "tests", "site-packages", "dist-packages", "idlelib", "lib2to3", "turtledemo",
              "tkinter", "ensurepip", "__pycache__", "__phello__"}
_MAX_CODE_CHARS, _MAX_DOC_CHARS = 2000, 1200


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files(root: Path) -> list[Path]:
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS and not x.startswith(("config-", "plat-")))
        files += [Path(d) / n for n in sorted(names) if n.endswith(".py")]
    return files


def _functions(path: Path, module: str) -> list[tuple[str, str, str, str]]:
    """(module, qualname, docstring, code-without-docstring) for documented functions in a file."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    lines = source.splitlines()
    out = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                first = node.body[0]
                # Need a docstring on its own lines and at least one statement after it.
                if not doc or len(node.body) < 2 or first.lineno == node.lineno or len(doc) > _MAX_DOC_CHARS:
                    continue
                start = min([d.lineno for d in node.decorator_list] + [node.lineno])
                kept = lines[start - 1:first.lineno - 1] + lines[first.end_lineno:node.end_lineno]
                code = textwrap.dedent("\n".join(kept)).strip("\n")
                if len(code) <= _MAX_CODE_CHARS and code.count("\n") >= 1:
                    out.append((module, prefix + node.name, doc, code))

    visit(tree.body, "")
    return out


def _cache_file(root: Path) -> Path:
    base = user_cache_dir()
    tag = hashlib.sha256(f"{root}|{sys.version}|v1".encode()).hexdigest()[:16]
    return base / f"stdlib_code-{tag}.json"


@lru_cache(maxsize=None)
def _stdlib_items() -> tuple[tuple[str, str, str, str], ...]:
    """All documented stdlib functions, sorted; cached on disk (parsing the stdlib takes seconds)."""
    root = _stdlib_root()
    cache = _cache_file(root)
    try:
        return tuple(tuple(x) for x in json.loads(cache.read_text()))
    except (OSError, ValueError):
        pass
    items = []
    for path in _stdlib_files(root):
        rel = path.relative_to(root).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        items += _functions(path, module)
    items.sort()
    try:  # atomic write: concurrent processes may build the same cache
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(items))
        os.replace(tmp, cache)
    except OSError as err:  # a read-only home only costs time
        logger.warning("could not cache stdlib_code items at %s: %s", cache, err)
    return tuple(items)


def stdlib_code_pairs(split: str, seed: int, limit: int | None) -> list[Pair]:
    # Split by module: a module's functions (which share helpers and idioms) stay together.
    pairs = []
    for module, qualname, doc, code in _stdlib_items():
        if split_of("stdlib_code", module) != split:
            continue
        pairs.append((f"Write the Python function `{qualname}` of the standard-library module `{module}`, "
                      f"documented as:\n{doc}", code))
    random.Random(f"stdlib_code-{seed}").shuffle(pairs)
    return pairs[:limit] if limit else pairs


# ----------------------------------------------------------------------------- entry point

@dataclass(frozen=True)
class Corpus:
    pairs: Callable[[str, int, int | None], list[Pair]]
    """(split, seed, limit) -> (the user's text, answer) pairs."""
    style: PromptStyle
    """The prompt around the user's text: the training prompt and the exported chat template."""


_INSTRUCTION = PromptStyle("### Instruction:\n{input}\n\n### Response:\n")
EMBEDDED: dict[str, Corpus] = {
    # Same prompt shape as the gsm8k task, so the demo exercises the real format.
    "arith": Corpus(arith_pairs, PromptStyle("Question: {input}\nAnswer: ")),
    "pydoc": Corpus(pydoc_pairs, _INSTRUCTION),
    "stdlib_code": Corpus(stdlib_code_pairs, _INSTRUCTION),
}


def generate(name: str, *, split: str = "train", seed: int = 0, limit: int | None = None) -> list[Pair]:
    """``(prompt, answer)`` pairs of embedded corpus ``name``; see the module docstring."""
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded corpus '{name}'; choose one of {sorted(EMBEDDED)}")
    corpus = EMBEDDED[name]
    pairs = corpus.pairs(canonical_split(split), seed, limit)
    return [(corpus.style.prompt(input=text), answer) for text, answer in pairs]
