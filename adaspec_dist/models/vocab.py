"""Do two models speak the same vocabulary? Asked of the models themselves, not of their directories.

Contract
--------
* ``head_rows(model)``: the logit width (rows of the output head; a ``CausalLM`` wrapper's
  ``vocab_width``).
* ``check_same_vocab(reference, others, *, reference_name, tokenizer_len=None, dirs=None)``: one-line
  ValueError when a model's head differs from the reference's by more than padding
  (``MAX_VOCAB_PADDING`` rows, what HF models round their vocabulary up by), when a head is
  narrower than the tokenizer the run uses, or when two of the models' own directories (``dirs``:
  name -> directory) hold tokenizers with different vocabularies (same size is not enough: ids
  must mean the same tokens). A draft with another vocabulary otherwise "works" and measures α = 0.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from adaspec_dist.data.tokenizer import load_tokenizer, vocab_fingerprint
from adaspec_dist.models.source import local_model

MAX_VOCAB_PADDING = 128
"""Heads of one tokenizer may differ by this many rows (padding to a multiple of 64/128)."""


def head_rows(model: Any) -> int:
    if hasattr(model, "vocab_width"):
        return int(model.vocab_width)
    return int(model.get_output_embeddings().weight.shape[0])


def _tokenizer_fingerprint(directory: str | None) -> str | None:
    directory = local_model(directory) if directory else directory  # a GGUF's converted directory
    if not directory or not (Path(directory) / "tokenizer_config.json").is_file():
        return None
    return vocab_fingerprint(load_tokenizer(directory))


def check_same_vocab(reference: Any, others: Mapping[str, Any], *, reference_name: str = "the target",
                     tokenizer_len: int | None = None, dirs: Mapping[str, str | None] | None = None) -> None:
    """Refuse a model whose vocabulary is not the reference's (see the module contract)."""
    want = head_rows(reference)
    for name, model in others.items():
        rows = head_rows(model)
        if abs(rows - want) >= MAX_VOCAB_PADDING:
            raise ValueError(f"{name} has {rows} vocabulary rows but {reference_name} has {want}: they do not share a "
                             f"tokenizer; use a {name} trained with {reference_name}'s tokenizer")
        if tokenizer_len is not None and min(rows, want) < tokenizer_len:
            raise ValueError(f"{name if rows < want else reference_name} has {min(rows, want)} vocabulary rows, fewer "
                             f"than the tokenizer's {tokenizer_len} ids; use models built for this tokenizer")
    prints = {name: fp for name, d in (dirs or {}).items() if (fp := _tokenizer_fingerprint(d)) is not None}
    if len(set(prints.values())) > 1:
        names = sorted(prints)
        raise ValueError(f"the tokenizers saved with {' and '.join(f'{n} ({dirs[n]})' for n in names)} have different "
                         "vocabularies; use models trained with one tokenizer")
