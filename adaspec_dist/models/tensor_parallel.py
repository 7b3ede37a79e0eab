"""Tensor-parallel causal LMs built from megatron-core parallel layers (the ONLY megatron.core importer).

Contract
--------
``load_tp_model(path, tp_group=..., dtype=...)`` reads an HF checkpoint directory (config.json +
safetensors, sharded or not) of the GPTNeoX (Pythia) or Llama family (Llama, Mistral, Qwen2:
GQA included) and returns a :class:`TPCausalLM` sharded over ``tp_group``:

* attention q/k/v (NeoX: the fused, head-interleaved ``query_key_value``) and MLP up/gate are
  ``ColumnParallelLinear``; attention output and MLP down are ``RowParallelLinear``; the
  embedding is ``VocabParallelEmbedding``; the LM head is ``ColumnParallelLinear`` with
  ``gather_output=False``. Norms and rotary tables are replicated (they are tiny).
* The model is built on the meta device and every rank reads only its own slices with
  ``safe_open(...).get_slice``, so no rank ever holds the full weights.
* ``forward(input_ids, attention_mask=None, position_ids=None, cache=None)`` returns THIS rank's
  logits slice (B,T,V/TP) in fp32 — never the full vocabulary. Global ids of the slice are
  ``[model.vocab_start, model.vocab_start + V/TP)``; the vocabulary is padded to a multiple of TP
  and padded ids' logits are ``-inf``. Use :mod:`adaspec_dist.models.vocab_parallel` for
  normalisers, top-k, sampling and argmax across the shards.
* Tied embeddings: the LM head reuses the embedding's shard (same vocab partition).
* Mistral's sliding window is applied over cache slots, like HF's masks; Qwen2's per-layer
  sliding window (``use_sliding_window``) is refused.
* ``num_key_value_heads`` must be divisible by TP (column-parallel k/v), or TP divisible by it:
  then each rank holds a *replica* of the one k/v head its query heads use. Anything else, or an
  unsupported architecture, is a ``ValueError`` naming the fix.
* KV cache: pass a :class:`TPKVCache`; ``attention_mask`` (B, past+T) may contain holes (zeros)
  anywhere, and explicit ``position_ids`` (B,T) are honoured, so ragged speculative decoding works.

CPU notes: ``ModelParallelConfig(use_cpu_initialization=True, perform_initialization=False)``
with gloo needs no patches; ``sequence_parallel`` stays off (its gathers allocate on CUDA).
Megatron's full GPTModel attention calls torch.cuda, hence the small blocks below around the
parallel linears, with ``scaled_dot_product_attention``.

Shapes: B batch, T new tokens, S cached+new tokens, H heads on this rank, D head dim,
V this rank's vocabulary width.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from adaspec_dist.models.tp_checkpoint import Checkpoint, shard_state
from adaspec_dist.models.vocab_parallel import shard_range

logger = logging.getLogger(__name__)

LLAMA_LIKE = ("llama", "mistral", "qwen2")
SUPPORTED = ("gpt_neox", *LLAMA_LIKE)


@dataclass(frozen=True)
class TPArch:
    """The architecture facts the TP model needs, read from an HF config."""

    family: str  # "gpt_neox" | "llama" (llama-like)
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    act: str
    attn_bias: bool
    out_bias: bool
    mlp_bias: bool
    parallel_residual: bool
    tied: bool


def arch_from_config(cfg: Any, tp_size: int) -> TPArch:
    """Validate an HF config for TP and extract :class:`TPArch` (ValueError on anything unsupported)."""
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED:
        raise ValueError(f"tensor parallelism supports model_type {list(SUPPORTED)}, not '{kind}'; "
                         "run this model with --tp 1")
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if heads % tp_size:
        raise ValueError(f"num_attention_heads={heads} is not divisible by tp={tp_size}; choose a tp "
                         f"that divides {heads}")
    if kv % tp_size and tp_size % kv:
        raise ValueError(f"num_key_value_heads={kv} and tp={tp_size}: one must divide the other "
                         "(k/v heads are split, or replicated when tp is a multiple); change --tp")
    if kind == "gpt_neox":
        return TPArch(family="gpt_neox", hidden=cfg.hidden_size, layers=cfg.num_hidden_layers, heads=heads,
                      kv_heads=heads, head_dim=cfg.hidden_size // heads, intermediate=cfg.intermediate_size,
                      vocab=cfg.vocab_size, eps=cfg.layer_norm_eps, act=cfg.hidden_act,
                      attn_bias=cfg.attention_bias, out_bias=cfg.attention_bias, mlp_bias=True,
                      parallel_residual=cfg.use_parallel_residual, tied=bool(cfg.tie_word_embeddings))
    if kind == "qwen2" and getattr(cfg, "use_sliding_window", False):
        raise ValueError("Qwen2 with use_sliding_window=true is not supported with tensor parallelism; "
                         "use --tp 1")
    qkv_bias = True if kind == "qwen2" else bool(getattr(cfg, "attention_bias", False))
    return TPArch(family="llama", hidden=cfg.hidden_size, layers=cfg.num_hidden_layers, heads=heads, kv_heads=kv,
                  head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
                  intermediate=cfg.intermediate_size, vocab=cfg.vocab_size, eps=cfg.rms_norm_eps,
                  act=cfg.hidden_act, attn_bias=qkv_bias,
                  out_bias=False if kind == "qwen2" else bool(getattr(cfg, "attention_bias", False)),
                  mlp_bias=bool(getattr(cfg, "mlp_bias", False)), parallel_residual=False,
                  tied=bool(cfg.tie_word_embeddings))


class _LayerKV:
    __slots__ = ("keys", "values")

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None


class TPKVCache:
    """Per-layer keys/values of this rank's heads, each (B, Hkv, S, D).

    The same small surface as an HF ``DynamicCache`` that the speculative decoder's
    ``SlotCache`` uses: ``layers[i].keys/values``, ``batch_select_indices(rows)``, ``crop(n)``.
    Ragged rows keep rejected slots as holes masked by the attention mask.
    """

    def __init__(self, n_layers: int):
        self.layers = [_LayerKV() for _ in range(n_layers)]

    def __len__(self) -> int:
        k = self.layers[0].keys
        return 0 if k is None else k.shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.layers[layer]
        if kv.keys is not None:
            k = torch.cat([kv.keys, k], dim=2)
            v = torch.cat([kv.values, v], dim=2)
        kv.keys, kv.values = k, v
        return k, v

    def crop(self, length: int) -> None:
        for kv in self.layers:
            if kv.keys is not None:
                kv.keys, kv.values = kv.keys[:, :, :length], kv.values[:, :, :length]

    def batch_select_indices(self, rows: torch.Tensor) -> None:
        for kv in self.layers:
            if kv.keys is not None:
                kv.keys, kv.values = kv.keys[rows], kv.values[rows]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # As HF Llama: normalise in fp32, cast back, then scale.
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotary(x_BHTD: torch.Tensor, cos_BTR: torch.Tensor, sin_BTR: torch.Tensor) -> torch.Tensor:
    """Rotate the first R dims of each head (NeoX partial rotary; R = D for Llama)."""
    r = cos_BTR.shape[-1]
    cos, sin = cos_BTR[:, None], sin_BTR[:, None]
    rot, rest = x_BHTD[..., :r], x_BHTD[..., r:]
    return torch.cat([rot * cos + _rotate_half(rot) * sin, rest], dim=-1)


class TPBlock(nn.Module):
    """One decoder layer: parallel q/k/v + MLP in, row-parallel out; all-reduces inside megatron."""

    def __init__(self, arch: TPArch, mp_config: Any, tp_group: Any, tp_size: int, layer: int):
        from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
        from transformers.activations import ACT2FN

        super().__init__()
        self.arch, self.layer = arch, layer
        self.h_local = arch.heads // tp_size
        self.kv_local = max(1, arch.kv_heads // tp_size)
        self.replicated_kv = arch.kv_heads % tp_size != 0
        d, hid = arch.head_dim, arch.hidden
        col = dict(config=mp_config, init_method=nn.init.zeros_, gather_output=False, tp_group=tp_group)
        row = dict(config=mp_config, init_method=nn.init.zeros_, input_is_parallel=True, skip_bias_add=False,
                   tp_group=tp_group)
        if arch.family == "gpt_neox":
            self.ln1 = nn.LayerNorm(hid, eps=arch.eps)
            self.ln2 = nn.LayerNorm(hid, eps=arch.eps)
            self.qkv = ColumnParallelLinear(hid, 3 * arch.heads * d, bias=arch.attn_bias, **col)
            self.up = ColumnParallelLinear(hid, arch.intermediate, bias=arch.mlp_bias, **col)
        else:
            self.ln1_w = nn.Parameter(torch.empty(hid))
            self.ln2_w = nn.Parameter(torch.empty(hid))
            self.q = ColumnParallelLinear(hid, arch.heads * d, bias=arch.attn_bias, **col)
            if self.replicated_kv:
                # TP > num_kv_heads: each rank keeps a replica of the single k/v head its queries use.
                self.k = nn.Linear(hid, d, bias=arch.attn_bias)
                self.v = nn.Linear(hid, d, bias=arch.attn_bias)
            else:
                self.k = ColumnParallelLinear(hid, arch.kv_heads * d, bias=arch.attn_bias, **col)
                self.v = ColumnParallelLinear(hid, arch.kv_heads * d, bias=arch.attn_bias, **col)
            self.gate = ColumnParallelLinear(hid, arch.intermediate, bias=arch.mlp_bias, **col)
            self.up = ColumnParallelLinear(hid, arch.intermediate, bias=arch.mlp_bias, **col)
        self.o = RowParallelLinear(arch.heads * d, hid, bias=arch.out_bias, **row)
        self.down = RowParallelLinear(arch.intermediate, hid, bias=arch.mlp_bias, **row)
        self.act = ACT2FN[arch.act]

    @staticmethod
    def _lin(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = layer(x)
        return out[0] if isinstance(out, tuple) else out  # megatron layers return (out, bias)

    def _attention(self, x: torch.Tensor, rope: tuple, mask: torch.Tensor | None, cache: TPKVCache | None):
        b, t, _ = x.shape
        d = self.arch.head_dim
        if self.arch.family == "gpt_neox":
            # Fused rows are laid out head by head: (heads, [q|k|v], D) — a contiguous slice per rank.
            qkv = self._lin(self.qkv, x).view(b, t, self.h_local, 3 * d).transpose(1, 2)
            q, k, v = qkv.chunk(3, dim=-1)
        else:
            q = self._lin(self.q, x).view(b, t, self.h_local, d).transpose(1, 2)
            k = self._lin(self.k, x).view(b, t, self.kv_local, d).transpose(1, 2)
            v = self._lin(self.v, x).view(b, t, self.kv_local, d).transpose(1, 2)
        cos, sin = rope
        q, k = _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        gqa = k.shape[1] != q.shape[1]
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self._lin(self.o, out.transpose(1, 2).reshape(b, t, self.h_local * d))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.arch.family == "gpt_neox":
            return self._lin(self.down, self.act(self._lin(self.up, x)))
        return self._lin(self.down, self.act(self._lin(self.gate, x)) * self._lin(self.up, x))

    def forward(self, x: torch.Tensor, rope: tuple, mask: torch.Tensor | None, cache: TPKVCache | None):
        if self.arch.family == "gpt_neox":
            attn = self._attention(self.ln1(x), rope, mask, cache)
            if self.arch.parallel_residual:
                return x + attn + self._mlp(self.ln2(x))
            x = x + attn
            return x + self._mlp(self.ln2(x))
        x = x + self._attention(_rms_norm(x, self.ln1_w, self.arch.eps), rope, mask, cache)
        return x + self._mlp(_rms_norm(x, self.ln2_w, self.arch.eps))


class TPCausalLM(nn.Module):
    """A tensor-parallel causal LM; ``forward`` returns this rank's fp32 logits slice (B,T,V)."""

    def __init__(self, hf_config: Any, arch: TPArch, *, tp_group: Any, dtype: torch.dtype):
        from megatron.core import ModelParallelConfig
        from megatron.core.tensor_parallel import ColumnParallelLinear, VocabParallelEmbedding

        super().__init__()
        self.hf_config, self.arch, self.tp_group = hf_config, arch, tp_group
        self.tp_size = dist.get_world_size(tp_group)
        self.tp_rank = dist.get_rank(tp_group)
        self.vocab_size = arch.vocab
        self.vocab_start, self.vocab_end, self.padded_vocab = shard_range(arch.vocab, self.tp_rank, self.tp_size)
        mp = ModelParallelConfig(tensor_model_parallel_size=self.tp_size, use_cpu_initialization=True,
                                 perform_initialization=False, sequence_parallel=False, params_dtype=dtype)
        self.embed = VocabParallelEmbedding(self.padded_vocab, arch.hidden, init_method=nn.init.zeros_,
                                            config=mp, tp_group=tp_group)
        self.blocks = nn.ModuleList(TPBlock(arch, mp, tp_group, self.tp_size, i) for i in range(arch.layers))
        if arch.family == "gpt_neox":
            self.final_norm = nn.LayerNorm(arch.hidden, eps=arch.eps)
        else:
            self.final_norm_w = nn.Parameter(torch.empty(arch.hidden))
        self.head = ColumnParallelLinear(arch.hidden, self.padded_vocab, config=mp, init_method=nn.init.zeros_,
                                         bias=False, gather_output=False, tp_group=tp_group,
                                         skip_weight_param_allocation=arch.tied)
        self.rotary = None  # built after loading, off the meta device (see load_tp_model)
        # Mistral: every layer attends to the last `sliding_window` cache slots only (as HF's masks).
        self.window = getattr(hf_config, "sliding_window", None) if hf_config.model_type == "mistral" else None

    @property
    def local_vocab(self) -> int:
        return self.vocab_end - self.vocab_start

    def new_cache(self) -> TPKVCache:
        return TPKVCache(self.arch.layers)

    def _mask(self, attention_mask: torch.Tensor | None, t: int, past: int, device) -> torch.Tensor | None:
        """Boolean (B,1,T,S) mask: causal over cache slots AND the caller's key mask (holes allowed).

        A 4D boolean mask (B,1,T,S) from the caller (True = attend) is used as given.
        """
        if attention_mask is not None and attention_mask.dim() == 4:
            if self.window is not None and attention_mask.shape[-1] > self.window:
                raise ValueError("a 4D attention mask with a sliding-window (Mistral) TP model is not supported; "
                                 "pass a 2D key mask or use --tp 1")
            return attention_mask.bool()
        s = past + t
        windowed = self.window is not None and s > self.window
        if past == 0 and not windowed and (attention_mask is None or bool(attention_mask.all())):
            return None  # plain causal: SDPA's fast path (one host sync, once per forward)
        q_pos = torch.arange(past, s, device=device)[:, None]
        k_pos = torch.arange(s, device=device)[None, :]
        causal = (k_pos <= q_pos) & (k_pos > q_pos - self.window) if windowed else k_pos <= q_pos  # (T,S)
        mask = causal[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask[:, None, None, :s].bool()
        # A fully masked query row (a pad position) would give NaN; let it see itself instead.
        return mask | (torch.arange(s, device=device)[None, :] == q_pos)[None, None]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: TPKVCache | None = None,
                logits_to_keep: int = 0) -> torch.Tensor:
        """This rank's logits slice (B,T,V) fp32; ``logits_to_keep > 0`` keeps only the last positions."""
        b, t = input_ids.shape
        past = len(cache) if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device).expand(b, t)
        x = self.embed(input_ids)
        rope = self.rotary(x, position_ids)
        mask = self._mask(attention_mask, t, past, input_ids.device)
        for block in self.blocks:
            x = block(x, rope, mask, cache)
        if self.arch.family == "gpt_neox":
            x = self.final_norm(x)
        else:
            x = _rms_norm(x, self.final_norm_w, self.arch.eps)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        weight = self.embed.weight if self.arch.tied else None
        logits = self.head(x, weight=weight)[0].float()
        pad_from = self.vocab_size - self.vocab_start
        if pad_from < self.local_vocab:
            logits[..., max(pad_from, 0):] = float("-inf")
        return logits


def load_tp_model(path: str | Path, *, tp_group: Any, dtype: torch.dtype = torch.float32,
                  device: Any = "cpu") -> TPCausalLM:
    """Build a :class:`TPCausalLM` over ``tp_group`` from an HF checkpoint directory (see module doc)."""
    from transformers import AutoConfig
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    path = Path(path)
    if not (path / "config.json").exists():
        raise ValueError(f"'{path}' is not an HF model directory (no config.json); pass a saved checkpoint")
    hf_config = AutoConfig.from_pretrained(path)
    tp_size = dist.get_world_size(tp_group)
    arch = arch_from_config(hf_config, tp_size)
    with torch.device("meta"):
        model = TPCausalLM(hf_config, arch, tp_group=tp_group, dtype=dtype)
    # copy=True: own the memory. Whole-tensor slices can be zero-copy views of the safetensors
    # mmap; weights must not depend on the file staying unchanged, and the map closes after this.
    # One tensor at a time, dropping each source as it is copied: the load peak stays ~1x the shard.
    raw = shard_state(model, Checkpoint(path))
    state = {k: raw.pop(k).to(dtype, copy=True) for k in list(raw)}
    # Megatron's layers add an empty `_extra_state` on load; keep strict=True to catch any missing tensor.
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    assert not missing and not unexpected, (missing, unexpected)
    rotary_cls = GPTNeoXRotaryEmbedding if arch.family == "gpt_neox" else LlamaRotaryEmbedding
    model.rotary = rotary_cls(hf_config)  # HF's own tables: every rope variant matches exactly
    for p in model.parameters():
        p.requires_grad_(False)
    n_local = sum(p.numel() for p in model.parameters())
    logger.info("loaded %s TP rank %d/%d: %d local params, vocab [%d, %d) of %d (padded %d)", arch.family,
                model.tp_rank, tp_size, n_local, model.vocab_start, model.vocab_end, arch.vocab, model.padded_vocab)
    return model.to(device).eval()

