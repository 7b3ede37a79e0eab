"""Drafts made from the target: its embeddings, a subset of its decoder layers, its final norm and
head, as a standalone model of the target's own class (what layer-skip / early-exit drafts are).

Contract
--------
``draft_from_target(target, layers) -> model``: a new ``type(target)`` whose config is the target's
with ``num_hidden_layers = len(layers)`` (per-layer config lists such as ``layer_types`` sliced the
same way) and whose weights are copies of the target's: decoder layer ``layers[j]`` becomes layer
``j``; every other tensor (embeddings, norm, head, rotary buffers) is copied as is. Tied embeddings
stay tied. The target is not modified. The result saves with ``save_pretrained`` and loads in plain
``transformers`` like any model of that class.
"""
from __future__ import annotations

import copy
import re
from typing import Sequence

import torch


def _layer_list_prefix(model: torch.nn.Module, num_layers: int) -> str:
    """The state-dict prefix of the decoder's layer list (``model.layers`` for Llama/Qwen/Mistral,
    ``gpt_neox.layers`` for GPT-NeoX): the one ModuleList with ``num_layers`` entries."""
    found = [name for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.ModuleList) and len(mod) == num_layers]
    if len(found) != 1:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (ModuleLists with "
                         f"{num_layers} entries: {found or 'none'}); build this draft another way")
    return found[0]


def draft_from_target(target: torch.nn.Module, layers: Sequence[int]) -> torch.nn.Module:
    """See the module contract."""
    n = target.config.num_hidden_layers
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = len(layers)
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == n and key != "architectures":
            setattr(config, key, [value[i] for i in layers])  # e.g. layer_types (sliding / full)
    prefix = _layer_list_prefix(target, n)
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    new_index = {old: new for new, old in enumerate(layers)}
    state = {}
    for key, tensor in target.state_dict().items():
        m = pattern.match(key)
        if m is None:
            state[key] = tensor.clone()
        elif int(m.group(1)) in new_index:
            state[f"{prefix}.{new_index[int(m.group(1))]}.{m.group(2)}"] = tensor.clone()
    with torch.random.fork_rng(devices=[]):  # the fresh init below is overwritten: keep callers' RNG
        draft = type(target)(config)
    missing, unexpected = draft.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if config.tie_word_embeddings else set()
    assert not unexpected and set(missing) <= tied, (missing, unexpected)
    draft.tie_weights()
    return draft.to(next(target.parameters()).dtype).eval()
