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


def test_from_target_and_freeze_are_checked_when_the_config_is_read():
    import pytest

    from adaspec_dist.models.load import FromTarget, ModelConfig

    target = ModelConfig(preset="tiny-llama")
    with pytest.raises(ValueError, match=r"freeze: 'head' is not one of"):
        ModelConfig(preset="tiny-llama", freeze=["head"]).validate()
    with pytest.raises(ValueError, match=r"a number of layers or a list of layer indices, got 'two'"):
        ModelConfig(from_target=FromTarget(layers="two", target=target)).validate()
    with pytest.raises(ValueError, match=r"each once"):
        ModelConfig(from_target=FromTarget(layers=[1, 1], target=target)).validate()
    with pytest.raises(ValueError, match=r"remove name_or_path / preset"):
        ModelConfig(preset="tiny-llama", from_target=FromTarget(layers=1, target=target)).validate()
    with pytest.raises(ValueError, match=r"the target has 2 layers"):
        FromTarget(layers=3, target=target).indices(2)


def test_a_draft_from_a_preset_target_trains_only_what_is_not_frozen():
    from adaspec_dist.models.load import FromTarget, ModelConfig, load_causal_lm

    target_cfg = ModelConfig(preset="tiny-llama", seed=4)
    target = load_causal_lm(target_cfg, vocab_size=50)
    draft = load_causal_lm(ModelConfig(from_target=FromTarget(layers=[1], target=target_cfg), freeze=["lm_head"]),
                           vocab_size=50)
    assert draft.config.num_hidden_layers == 1
    assert torch.equal(draft.model.layers[0].mlp.up_proj.weight, target.model.layers[1].mlp.up_proj.weight)
    assert not draft.lm_head.weight.requires_grad and draft.model.embed_tokens.weight.requires_grad
