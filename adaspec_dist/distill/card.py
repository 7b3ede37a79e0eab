"""What an exported draft carries for its users: the prompt it was trained on and a model card.

Contract
--------
* ``prompt_info(run) -> dict``: the task, its ``prompt_format`` (a format string over the user's
  fields, ``{input}`` for the built-in tasks) and ``chat_template`` (Jinja; None when the prompt
  has more than one field), from the run's data config or, for a cached run, from the cache
  manifest (caches written before this field existed: from the task name alone).
* ``apply_prompt(tokenizer, info)``: give the tokenizer that chat template unless it has one of
  its own (a chat target's tokenizer keeps its template), so plain transformers'
  ``tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)``
  yields exactly the ids the draft was trained to continue.
* ``model_card(run, summary, info) -> str``: README.md of the export (Hugging Face model-card
  front matter + base models, recipe, data, held-out α and the τ it implies, how to prompt).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from adaspec_dist.data.tasks import DataConfig, chat_template_for, prompt_format
from adaspec_dist.distill.state import Run
from adaspec_dist.models.load import model_identity
from adaspec_dist.speculative.metrics import theoretical_tau


def _manifest(run: Run) -> dict:
    return getattr(run.stream, "manifest", None) or {}


def prompt_info(run: Run) -> dict[str, Any]:
    data = _manifest(run).get("data") or {}
    if run.cfg.data is not None:
        cfg = run.cfg.data
        return {"task": cfg.task, "prompt_format": prompt_format(cfg), "chat_template": chat_template_for(cfg)}
    task = data.get("task")
    if task is None:
        return {"task": None, "prompt_format": None, "chat_template": None}
    if "prompt_format" in data:
        return {"task": task, "prompt_format": data["prompt_format"], "chat_template": data.get("chat_template")}
    cfg = DataConfig(task=task, source="?")  # an older cache: the task's own format
    return {"task": task, "prompt_format": prompt_format(cfg), "chat_template": chat_template_for(cfg)}


def apply_prompt(tokenizer, info: dict[str, Any]) -> bool:
    """Set the chat template when the tokenizer has none; returns whether it was set."""
    if tokenizer is None or not info.get("chat_template") or getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = info["chat_template"]
    return True


def model_card(run: Run, summary: dict[str, Any], info: dict[str, Any]) -> str:
    cfg, man = run.cfg, _manifest(run)
    target = (man.get("target") or {}).get("identity") or (model_identity(cfg.target) if cfg.target else None)
    ref_model = cfg.selection.reference
    reference = (man.get("reference") or {}).get("model") or (model_identity(ref_model) if ref_model else None)
    data = man.get("data") or (dataclasses.asdict(cfg.data) if cfg.data else {})
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             "tags: [speculative-decoding, draft-model, adaspec-dist]", "---", "",
             f"# Draft model trained with adaspec-dist ({cfg.objective})", ""]
    lines += ["A draft for speculative decoding: it proposes tokens that its target verifies.", "",
              "| | |", "| --- | --- |",
              f"| objective | `{cfg.objective}`" + (f" (k = {cfg.filter_fraction:g} of the tokens, largest "
                                                     "L_draft − L_ref)" if cfg.objective == "adaspec" else "") + " |",
              f"| initialised from | `{model_identity(cfg.draft)}` |"]
    if target:
        lines.append(f"| target (teacher) | `{target}` |")
    if reference and cfg.objective == "adaspec":
        lines.append(f"| reference (L_ref) | `{reference}` |")
    if cfg.objective != "sft":
        lines.append(f"| divergence | `{cfg.divergence}` |")
    lines += [f"| training data | task `{data.get('task')}`, split `{data.get('split')}`"
              + (f", {man.get('num_sequences')} sequences, {man.get('num_supervised')} supervised tokens"
                 if man else "") + " |",
              f"| steps | {summary.get('steps')} optimiser steps, {summary.get('passes', 0):.2f} passes |",
              f"| learning rate | {cfg.engine.lr:g} ({cfg.engine.schedule}) |", ""]
    end = summary.get("eval_end") or {}
    if "alpha" in end:
        a = end["alpha"]
        lines += ["## Measured", "",
                  f"Held-out α (expected acceptance per token, Σ min(p, q) against the target, over "
                  f"{end.get('tokens')} tokens of `{cfg.eval.cache_dir}`): **{a:.4f}**"
                  + (f"; {cfg.divergence} {end[cfg.divergence]:.4f}" if cfg.divergence in end else "") + ".", "",
                  "Tokens per target call it implies (i.i.d. acceptance; `adaspec-dist eval` measures the real "
                  "one): " + ", ".join(f"τ(γ={g}) = {theoretical_tau(a, g):.2f}" for g in (1, 2, 3, 4, 5)) + ".", ""]
    lines += ["## Prompt format", ""]
    if info.get("prompt_format"):
        lines += ["The draft was trained to continue prompts of this form (`{input}`: your text):", "",
                  "```", info["prompt_format"], "```", ""]
    if info.get("chat_template"):
        lines += ["The tokenizer's chat template renders it:", "", "```python",
                  "ids = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": question}],",
                  "                                    add_generation_prompt=True, return_tensors=\"pt\")",
                  "```", ""]
    elif info.get("task") == "chat":
        lines += ["Chat data: turns are rendered `Role: content` separated by blank lines, ending with "
                  "`Assistant:`; the tokenizer's chat template does this.", ""]
    lines += ["Use it as the assistant model of its target, e.g. "
              "`target.generate(**inputs, assistant_model=draft)`, or with any speculative-decoding server.", "",
              "## Training configuration", "", "```json",
              json.dumps(dataclasses.asdict(cfg), indent=1, default=str), "```", ""]
    return "\n".join(lines)
