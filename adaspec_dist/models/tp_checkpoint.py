"""Reading exactly one tensor-parallel rank's slices of an HF safetensors checkpoint.

Contract
--------
``Checkpoint(path)`` opens ``model.safetensors`` or a sharded ``model.safetensors.index.json``
lazily; ``get(name, rows=, cols=)`` reads only the requested rows / columns
(``safe_open(...).get_slice``), so no rank materialises a full weight matrix.
``shard_state(model, ck)`` maps HF tensor names (GPTNeoX, Llama-like) onto the parameter names
of a ``tensor_parallel.TPCausalLM`` for ``model.tp_rank`` of ``model.tp_size``:
column-parallel weights (and biases) are split by output rows, row-parallel weights by input
columns (their bias is added once after the all-reduce, so it is read whole), vocabulary rows
are zero-padded past the real vocabulary, replicated k/v heads read the one head a rank uses.
No megatron import here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open


class Checkpoint:
    """Lazy reader of an HF safetensors checkpoint (single file or index)."""

    def __init__(self, path: Path):
        index = path / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (path / "model.safetensors").exists():
            weight_map = None
        else:
            raise ValueError(f"no safetensors weights in '{path}'; save the model with safetensors "
                             "(save_pretrained(safe_serialization=True))")
        files = sorted(set(weight_map.values())) if weight_map else ["model.safetensors"]
        self.handles = {f: safe_open(str(path / f), framework="pt") for f in files}
        self.where = weight_map or {k: "model.safetensors" for k in self.handles["model.safetensors"].keys()}

    def has(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None):
        if name not in self.where:
            raise ValueError(f"checkpoint lacks tensor '{name}'; is it a complete HF checkpoint?")
        sl = self.handles[self.where[name]].get_slice(name)
        if rows is not None and cols is not None:
            return sl[rows[0]:rows[1], cols[0]:cols[1]]
        if rows is not None:
            return sl[rows[0]:rows[1]]
        if cols is not None:
            return sl[:, cols[0]:cols[1]]
        return sl[:]


def _vocab_rows(ck: Checkpoint, name: str, start: int, end: int, vocab: int) -> torch.Tensor:
    """This shard's vocabulary rows, zero-padded past the real vocabulary."""
    real = ck.get(name, rows=(min(start, vocab), min(end, vocab)))
    if real.shape[0] == end - start:
        return real
    pad = torch.zeros(end - start - real.shape[0], *real.shape[1:], dtype=real.dtype)
    return torch.cat([real, pad])


def shard_state(model: Any, ck: Checkpoint) -> dict[str, torch.Tensor]:
    """Read exactly this rank's slices; keys match ``model.state_dict()``."""
    a, r, n = model.arch, model.tp_rank, model.tp_size
    d, sd = a.head_dim, {}

    def col(out: int):  # this rank's rows of an output dimension split n ways
        return (r * out // n, (r + 1) * out // n)

    if a.family == "gpt_neox":
        pre, emb, norm, head = "gpt_neox.layers", "gpt_neox.embed_in.weight", "gpt_neox.final_layer_norm", "embed_out"
    else:
        pre, emb, norm, head = "model.layers", "model.embed_tokens.weight", "model.norm", "lm_head"
    sd["embed.weight"] = _vocab_rows(ck, emb, model.vocab_start, model.vocab_end, a.vocab)
    if not a.tied:
        sd["head.weight"] = _vocab_rows(ck, f"{head}.weight", model.vocab_start, model.vocab_end, a.vocab)
    for i, blk in enumerate(model.blocks):
        src, dst = f"{pre}.{i}", f"blocks.{i}"
        if a.family == "gpt_neox":
            names = {"ln1": "input_layernorm", "ln2": "post_attention_layernorm"}
            for mine, theirs in names.items():
                sd[f"{dst}.{mine}.weight"] = ck.get(f"{src}.{theirs}.weight")
                sd[f"{dst}.{mine}.bias"] = ck.get(f"{src}.{theirs}.bias")
            col_map = {"qkv": ("attention.query_key_value", 3 * a.hidden), "up": ("mlp.dense_h_to_4h", a.intermediate)}
            row_map = {"o": ("attention.dense", a.hidden), "down": ("mlp.dense_4h_to_h", a.intermediate)}
            biases = {"qkv": a.attn_bias, "up": True, "o": a.out_bias, "down": True}
        else:
            sd[f"{dst}.ln1_w"] = ck.get(f"{src}.input_layernorm.weight")
            sd[f"{dst}.ln2_w"] = ck.get(f"{src}.post_attention_layernorm.weight")
            kv = a.kv_heads * d
            col_map = {"q": ("self_attn.q_proj", a.heads * d), "gate": ("mlp.gate_proj", a.intermediate),
                       "up": ("mlp.up_proj", a.intermediate)}
            if blk.replicated_kv:
                head_i = (r * blk.h_local) // (a.heads // a.kv_heads)
                for mine in ("k", "v"):
                    sd[f"{dst}.{mine}.weight"] = ck.get(f"{src}.self_attn.{mine}_proj.weight",
                                                        rows=(head_i * d, (head_i + 1) * d))
                    if a.attn_bias:
                        sd[f"{dst}.{mine}.bias"] = ck.get(f"{src}.self_attn.{mine}_proj.bias",
                                                          rows=(head_i * d, (head_i + 1) * d))
            else:
                col_map.update(k=("self_attn.k_proj", kv), v=("self_attn.v_proj", kv))
            row_map = {"o": ("self_attn.o_proj", a.heads * d), "down": ("mlp.down_proj", a.intermediate)}
            biases = {"q": a.attn_bias, "k": a.attn_bias, "v": a.attn_bias, "gate": a.mlp_bias, "up": a.mlp_bias,
                      "o": a.out_bias, "down": a.mlp_bias}
        for mine, (theirs, out) in col_map.items():
            sd[f"{dst}.{mine}.weight"] = ck.get(f"{src}.{theirs}.weight", rows=col(out))
            if biases[mine]:
                sd[f"{dst}.{mine}.bias"] = ck.get(f"{src}.{theirs}.bias", rows=col(out))
        for mine, (theirs, inp) in row_map.items():
            sd[f"{dst}.{mine}.weight"] = ck.get(f"{src}.{theirs}.weight", cols=col(inp))
            if biases[mine]:
                sd[f"{dst}.{mine}.bias"] = ck.get(f"{src}.{theirs}.bias")  # added once, after the all-reduce
    if a.family == "gpt_neox":
        sd["final_norm.weight"] = ck.get(f"{norm}.weight")
        sd["final_norm.bias"] = ck.get(f"{norm}.bias")
    else:
        sd["final_norm_w"] = ck.get(f"{norm}.weight")
    return sd
