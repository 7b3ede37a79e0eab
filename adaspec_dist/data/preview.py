"""What a task's examples look like to training: the library side of ``adaspec-dist data``.

Contract
--------
``preview(cfg: DataConfig, tokenizer=None) -> DataPreview``: the examples exactly as training
loads them (``tasks.load_examples``), their character counts and, given a tokenizer, their
token counts under the training policy (``tokenize.tokenize_examples``): prompt / answer /
sequence / supervised tokens per example, how many sequences ``cfg.max_length`` truncates, how
many are dropped (no supervised token left), and the vocabulary and data fingerprints training
would record. Nothing is printed here; the CLI formats a :class:`DataPreview`.
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from typing import Any

from adaspec_dist.data.tasks import DataConfig, Example, load_examples
from adaspec_dist.data.tokenize import data_fingerprint, supervised_count, tokenize_examples
from adaspec_dist.data.tokenizer import vocab_fingerprint


@dataclass
class TokenCounts:
    """Per-example token counts under the training policy (present when a tokenizer was given)."""

    prompt: list[int]
    answer: list[int]
    sequence: list[int]
    """Tokens of each kept sequence after truncation (BOS/EOS included)."""
    supervised: list[int]
    truncated: int
    """Examples longer than ``max_length`` (the truncation policy touched them)."""
    dropped: int
    """Examples left with no supervised token (not trained on)."""
    vocab_size: int
    vocab_fingerprint: str
    data_fingerprint: str


@dataclass
class DataPreview:
    examples: list[Example]
    prompt_chars: list[int] = field(default_factory=list)
    answer_chars: list[int] = field(default_factory=list)
    tokens: TokenCounts | None = None


def preview(cfg: DataConfig, tokenizer: Any = None) -> DataPreview:
    """Load ``cfg``'s examples and count them (see the module docstring)."""
    if cfg.chat_template and tokenizer is None:
        cfg = dataclasses.replace(cfg, chat_template=None)  # no tokenizer: the task's plain text
    examples = load_examples(cfg, tokenizer=tokenizer)
    out = DataPreview(examples=examples, prompt_chars=[len(e.prompt) for e in examples],
                      answer_chars=[len(e.answer) for e in examples])
    if tokenizer is None:
        return out

    def enc(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    prompt_tokens = [len(ids) for ids in enc([e.prompt for e in examples])]
    answer_tokens = [len(ids) for ids in enc([e.answer for e in examples])]
    tokenized = tokenize_examples(examples, tokenizer, max_length=cfg.max_length)
    truncated = sum(1 for p, a in zip(prompt_tokens, answer_tokens)
                    if p + a + 1 + (tokenizer.bos_token_id is not None) > cfg.max_length)
    out.tokens = TokenCounts(prompt=prompt_tokens, answer=answer_tokens,
                             sequence=[len(t.input_ids) for t in tokenized],
                             supervised=[supervised_count(t) for t in tokenized], truncated=truncated,
                             dropped=len(examples) - len(tokenized), vocab_size=len(tokenizer),
                             vocab_fingerprint=vocab_fingerprint(tokenizer),
                             data_fingerprint=data_fingerprint(tokenized))
    return out
