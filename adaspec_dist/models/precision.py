"""One precision vocabulary for every component: model loading, training engines, caches' models.

Contract
--------
* ``Precision``: ``auto``, ``float32``, ``bfloat16`` or ``float16`` (torch's names). The short
  spellings ``fp32``, ``bf16``, ``fp16`` (DeepSpeed's) are accepted wherever a precision is read:
  ``canonical_precision`` maps them, and a config field made with ``precision_field()`` maps them
  when a recipe is loaded (``adaspec_dist.config`` reads the field's ``aliases`` metadata), so a
  resolved config always records the canonical name.
* ``resolve_precision(name, device, half_fallback=False)`` -> the concrete precision (never
  ``auto``): ``auto`` = bfloat16 on a CUDA device that supports it, else float16 on CUDA when
  ``half_fallback`` (a training engine with loss scaling), else float32.
* ``is_cuda(device)``: whether ``device`` (None = CPU) is a CUDA device.
* ``torch_dtype(name, device)``: the torch dtype of ``resolve_precision(name, device)``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

Precision = Literal["auto", "float32", "bfloat16", "float16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
PRECISION_ALIASES: dict[str, Precision] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""Other spellings of the same precisions (DeepSpeed's), accepted and mapped to the canonical name."""


def canonical_precision(name: Any, key: str = "precision") -> Precision:
    """``name`` in the canonical vocabulary; anything else is a one-line ValueError naming ``key``."""
    name = PRECISION_ALIASES.get(name, name) if isinstance(name, str) else name
    if name not in PRECISIONS:
        raise ValueError(f"{key} '{name}' must be one of {list(PRECISIONS)} (or {', '.join(PRECISION_ALIASES)})")
    return name


def precision_field(default: Precision = "auto") -> Any:
    """A dataclass field holding a precision whose recipe value may use an alias (see the contract)."""
    return dataclasses.field(default=default, metadata={"aliases": PRECISION_ALIASES})


def is_cuda(device: Any) -> bool:
    """Whether ``device`` (a torch device or its name; None = CPU) is a CUDA device."""
    import torch

    return device is not None and torch.device(device).type == "cuda"


def resolve_precision(name: str, device: Any = None, *, half_fallback: bool = False) -> Precision:
    """The concrete precision of ``name`` on ``device`` (see the contract for ``auto``)."""
    import torch

    name = canonical_precision(name)
    if name != "auto":
        return name
    if not is_cuda(device):
        return "float32"
    if torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float16" if half_fallback else "float32"


def torch_dtype(name: str, device: Any = None):
    """The ``torch.dtype`` of ``resolve_precision(name, device)``."""
    import torch

    return getattr(torch, resolve_precision(name, device))
