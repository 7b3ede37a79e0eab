"""docs/architecture.md's "Where to change X" is true: a toy divergence and a toy task, each added to a
copy of the package by editing ONLY the files the doc names for it, train a step through the CLI.

The edits are one registry entry each (``DIVERGENCES`` in sparse/divergence.py, ``TASKS`` in
data/tasks.py); the copy must then accept them everywhere the doc says: the config loader
(``divergence: NAME``, ``data.task: NAME``), the cache (``check_divergence``), the estimator and
the held-out evaluation (its metric is named after the divergence), the task's prompt and its
exported chat template.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.fixtures import spm_tokenizer_dir  # noqa: F401  (pytest fixture)
from tests.helpers import child_env

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"
TITLES = ("A new divergence", "A new task", "The selection rule", "The cache format", "A new draft kind")


def files_to_touch() -> dict[str, list[str]]:
    """Entry title -> the paths of its **Files:** sentence, from the doc's "Where to change X" section."""
    section = DOC.read_text().split("\n## Where to change X\n", 1)[1].split("\n## ", 1)[0]
    out = {}
    for entry in re.split(r"\n\* ", section)[1:]:
        title = re.match(r"\*\*(.+?)\*\*", entry)
        files = re.search(r"\*\*Files:\*\*(.*?)\.(?:\s|$)", entry, re.S)
        if title and files:
            out[title.group(1)] = re.findall(r"`([^`]+)`", files.group(1))
    return out


def test_the_doc_names_existing_files_for_each_change():
    named = files_to_touch()
    assert set(TITLES) <= set(named), sorted(named)
    for title in TITLES:
        assert named[title] and all((REPO / f).is_file() for f in named[title]), (title, named[title])
    assert named["A new divergence"] == ["adaspec_dist/sparse/divergence.py"]
    assert named["A new task"] == ["adaspec_dist/data/tasks.py"]


# Squared Hellinger distance Σ(√p − √q)²: f(t) = (√t − 1)², so E_p[f(q/p)] is the same quantity.
TOY_DIVERGENCE = ('    "toy_hellinger": DivergenceKind(\n'
                  '        buckets=lambda lp, lq, beta: ((lp / 2).exp() - (lq / 2).exp()).pow(2).sum(-1),\n'
                  '        f=lambda log_t, beta: ((log_t / 2).exp() - 1.0).pow(2)),\n')
TOY_TASK = ('    "toy_qa": HubTask("", None, ("q", "a"), PromptStyle("Q: {input}\\nA: "),\n'
            '                      lambda row: ({"input": row["q"]}, str(row["a"]))),\n')

# Run in the copy (PYTHONPATH = the copy), one process each (a train job owns its process group).
CHECK_TASK = r"""
import json, sys
import adaspec_dist
from adaspec_dist.data.tasks import DataConfig, chat_template_for, load_examples, task_names

assert adaspec_dist.__file__.startswith(sys.argv[1]), adaspec_dist.__file__
cfg = DataConfig(task="toy_qa", source="qa.jsonl")
print(json.dumps({"tasks": task_names(), "prompt": load_examples(cfg)[0].prompt, "chat_template": chat_template_for(cfg)}))
"""


def _jobs(tok: Path) -> list[list[str]]:
    """A top-k cache; kd with the toy divergence (evaluated on the same cache); sft on the toy task:
    each train job one optimiser step, through the CLI."""
    common = [f"tokenizer={tok}", "draft.preset=tiny-llama", "draft.seed=1", "max_steps=1", "export=false",
              "engine.ds_config=ds_zero0.json", "engine.micro_batch_size=4"]
    return [["cache", "data.task=arith", "data.limit=8", "data.max_length=32", "model.preset=tiny-llama",
             f"tokenizer={tok}", "out_dir=cache", "top_k=16", "batch_size=8"],
            ["train", "objective=kd", "divergence=toy_hellinger", "cache_dir=cache", "eval.cache_dir=cache",
             "run_dir=kd", *common],
            ["train", "objective=sft", "data.task=toy_qa", "data.source=qa.jsonl", "data.max_length=32",
             "run_dir=sft", *common]]


def _edit(copy: Path, path: str, anchor: str, insert: str) -> None:
    """Insert ``insert`` after ``anchor`` in the copy's ``path``, a file the doc names."""
    file = copy / path
    text = file.read_text()
    assert text.count(anchor) == 1, (path, anchor)
    file.write_text(text.replace(anchor, anchor + insert))


def _copy_package(dest: Path) -> Path:
    shutil.copytree(REPO / "adaspec_dist", dest / "adaspec_dist", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _changed(copy: Path) -> list[str]:
    """The copy's package files whose text differs from the repository's."""
    return sorted(str(p.relative_to(copy)) for p in (copy / "adaspec_dist").rglob("*.py")
                  if p.read_bytes() != (REPO / p.relative_to(copy)).read_bytes())


def test_a_toy_divergence_and_a_toy_task_train_after_editing_only_the_named_files(tmp_path, spm_tokenizer_dir):
    named = files_to_touch()
    copy = _copy_package(tmp_path / "copy")
    (div_file,), (task_file,) = named["A new divergence"], named["A new task"]
    _edit(copy, div_file, "DIVERGENCES: dict[str, DivergenceKind] = {\n", TOY_DIVERGENCE)
    _edit(copy, task_file, "TASKS: dict[str, HubTask] = {\n", TOY_TASK)
    assert _changed(copy) == sorted({div_file, task_file})
    (copy / "qa.jsonl").write_text("".join(json.dumps({"q": f"What is {i} + 1?", "a": str(i + 1)}) + "\n"
                                           for i in range(8)))
    env = child_env(PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")  # no launcher leftovers of other tests

    def run(*argv: str) -> str:
        proc = subprocess.run([sys.executable, *argv], cwd=copy, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, (argv, proc.stderr[-4000:])
        return proc.stdout

    outputs = [run("-m", "adaspec_dist.cli", *job) for job in _jobs(spm_tokenizer_dir)]
    kd, sft = (json.loads(out.strip().splitlines()[-1]) for out in outputs[1:])
    assert kd["steps"] == sft["steps"] == 1 and sft["trained_tokens"] > 0, (kd, sft)
    assert kd["eval_end"]["toy_hellinger"] > 0 and kd["last_loss"] > 0, kd
    result = json.loads(run("-c", CHECK_TASK, str(copy)))
    assert "toy_qa" in result["tasks"] and result["prompt"] == "Q: What is 0 + 1?\nA: "
    assert result["chat_template"] == "{{ bos_token }}{{ 'Q: ' }}{{ messages[-1]['content'] }}{{ '\\nA:' }}"
