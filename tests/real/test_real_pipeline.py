"""`make real` shrunken: the SmolLM2 recipe end to end through the console script (GGUF target, its
2-layer draft with frozen embeddings/head, ChatML-rendered stdlib functions, HumanEval held out,
three arms, sampled and greedy eval), then the proof that the exported draft serves: plain
transformers' assisted generation with SmolLM2 as the target and the draft as ``assistant_model``
reproduces the target's greedy output token for token."""
from __future__ import annotations

import json

import pytest
import torch

from adaspec_dist.data.tasks import DataConfig, load_examples
from adaspec_dist.data.tokenize import prompt_ids
from tests.helpers import REPO, run_cli

pytestmark = pytest.mark.slow

SHRINK = ["data.limit=10", "eval_data.limit=6", "cache.shard_size=5", "cache.batch_size=5",
          "reference.max_steps=2", "adaspec.max_steps=2", "distillspec_wide.max_steps=2",
          "reference.engine.micro_batch_size=2", "adaspec.engine.micro_batch_size=2",
          "eval.num_prompts=2", "eval.max_new_tokens=6", "eval.batch_size=2"]


def test_real_recipe_shrunken_then_hf_assisted_generation_equals_greedy(tmp_path, smollm2_dir, smollm2_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = tmp_path / "real"
    proc = run_cli(["pipeline", str(REPO / "configs" / "smollm2-135m-code.yaml"), f"run_dir={run_dir}", *SHRINK],
                   timeout=900)
    out = proc.stdout + proc.stderr
    for stage in ("cache_train", "cache_eval", "reference", "add_reference", "adaspec", "distillspec_wide", "eval",
                  "eval_greedy"):
        assert (run_dir / "stages" / f"{stage}.done.json").is_file(), (stage, out[-4000:])
    assert "134.5M parameters" in out and "7.1M trained" in out  # the stage logs state the model sizes
    # It ends with the arms side by side, per temperature.
    assert "eval_greedy (temperature 0): the arms at equal optimiser steps" in proc.stdout
    assert proc.stdout.count("| DistillSpec-wide (control) |") >= 2 and "| AdaSPEC |" in proc.stdout
    greedy = json.loads((run_dir / "eval_greedy" / "eval.json").read_text())
    sampled = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert greedy["settings"]["temperature"] == 0.0 and sampled["settings"]["temperature"] == 1.0
    for name in ("distillspec", "adaspec", "distillspec_wide"):
        row = greedy["drafts"][name]["by_gamma"]["4"]
        assert row["matches_target"] == 1.0  # greedy SD is lossless on the real pair
        assert 0.0 <= greedy["drafts"][name]["alpha_logits"] < 1.0  # top-1 agreement: 0 is possible at 2 steps
        assert 0.0 < sampled["drafts"][name]["alpha_logits"] < 1.0   # Σ min(p, q) > 0 on full supports

    # The export is a plain HF model of the target's class with the target's chat template.
    draft_dir = run_dir / "adaspec" / "final"
    draft = AutoModelForCausalLM.from_pretrained(draft_dir)
    target = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    tok = AutoTokenizer.from_pretrained(draft_dir)
    assert type(draft) is type(target) and draft.config.num_hidden_layers == 2
    assert tok.chat_template == smollm2_tokenizer.chat_template
    assert draft.generation_config.eos_token_id == target.generation_config.eos_token_id == 2

    examples = load_examples(DataConfig(task="humaneval", split="test", chat_template="target", limit=3),
                             tokenizer=smollm2_tokenizer)
    for ex in examples:
        ids = torch.tensor([prompt_ids(ex, smollm2_tokenizer)])
        with torch.no_grad():
            alone = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24)
            assisted = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                                       assistant_model=draft)
        assert assisted.tolist() == alone.tolist()
