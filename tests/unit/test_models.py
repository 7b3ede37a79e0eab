"""Tiny GPTNeoX and Llama presets build, run, save in HF format and reload with identical logits."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from adaspec_dist.models.load import ModelConfig, build_preset, load_causal_lm, param_count, save_hf


@pytest.mark.parametrize("preset,cls", [("tiny-neox", "GPTNeoXForCausalLM"), ("tiny-llama", "LlamaForCausalLM")])
def test_preset_roundtrip(tmp_path, preset, cls):
    model = build_preset(preset, vocab_size=97, seed=3)
    assert type(model).__name__ == cls
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, 9, 97) and torch.isfinite(logits).all()
    out = save_hf(model, tmp_path / "m")
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    again = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, logits)
    loaded = load_causal_lm(ModelConfig(name_or_path=str(out)))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, logits)


def test_preset_seed_is_deterministic():
    a, b = build_preset("tiny-llama", 50, seed=1), build_preset("tiny-llama", 50, seed=1)
    c = build_preset("tiny-llama", 50, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))


def test_demo_sizes_make_target_much_larger():
    target, draft = build_preset("demo-target", 2000), build_preset("demo-draft", 2000)
    assert param_count(target) > 8 * param_count(draft)


def test_bad_model_config_errors(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        ModelConfig(preset="huge").validate()
    with pytest.raises(ValueError, match="name_or_path"):
        ModelConfig().validate()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_causal_lm(ModelConfig(name_or_path=str(tmp_path / "missing")))
