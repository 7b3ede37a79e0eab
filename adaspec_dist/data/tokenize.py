"""Examples -> token ids with the prompt masked out of the loss.

Contract
--------
``tokenize_examples(examples, tokenizer, max_length=...) -> list[TokenizedExample]``:

* ``input_ids = [BOS] + prompt_ids + answer_ids + [EOS]`` (BOS only when the tokenizer has
  one); ``labels`` are ``-100`` on BOS and the prompt and equal ``input_ids`` on the answer and
  its EOS (the model learns to stop). Prompt and answer are tokenized separately, without
  special tokens, so the boundary between them is exact.
* Truncation policy (the answer is what we train on, so it wins):
  1. nothing is cut when ``len(input_ids) <= max_length``;
  2. otherwise the prompt is cut from the LEFT (its end, next to the answer, is the most
     useful context), keeping ``max_length - len(BOS) - len(answer + EOS)`` tokens;
  3. if the answer + EOS alone exceeds ``max_length - len(BOS)``, the prompt is dropped
     entirely and the answer's END is cut (EOS included) to fill the budget.
  The result never exceeds ``max_length`` tokens.
* With next-token alignment (docs/architecture.md) a label at position 0 is never a target,
  so an example's supervised count is ``sum(labels[1:] != -100)``. Examples with fewer than
  ``min_answer_tokens`` supervised tokens are dropped; the count is logged as one warning.
* ``data_fingerprint(tokenized)``: sha256 hex of every example's ids and labels, in order.
* ``prompt_ids(example, tokenizer)``: ``[BOS] + prompt_ids`` for generation at evaluation.
"""
from __future__ import annotations

import hashlib
import logging
from array import array
from dataclasses import dataclass
from typing import Sequence

from adaspec_dist.data.tasks import Example

logger = logging.getLogger(__name__)

IGNORE = -100


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    """-100 on BOS and the prompt; the token id on the answer and its EOS."""


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def build_sequence(prompt: list[int], answer: list[int], *, bos: list[int], eos: int,
                   max_length: int) -> TokenizedExample:
    """Apply the truncation policy of the module docstring to one (prompt, answer) pair of ids."""
    budget = max_length - len(bos)
    assert budget > 0, "max_length must leave room for at least one token after BOS"
    target = answer + [eos]
    if len(target) > budget:
        target, prompt = target[:budget], []  # rule 3: cut the answer's end
    else:
        room = budget - len(target)
        prompt = prompt[len(prompt) - room:] if len(prompt) > room else prompt  # rule 2: cut from the left
    input_ids = bos + prompt + target
    labels = [IGNORE] * (len(bos) + len(prompt)) + target
    return TokenizedExample(input_ids=input_ids, labels=labels)


def supervised_count(example: TokenizedExample) -> int:
    """Positions that carry a target under next-token alignment (labels[0] never does)."""
    return sum(1 for label in example.labels[1:] if label != IGNORE)


def tokenize_examples(examples: Sequence[Example], tokenizer, *, max_length: int,
                      min_answer_tokens: int = 1) -> list[TokenizedExample]:
    """Tokenize, mask prompts and truncate as the module docstring states."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token before tokenizing")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 tokens, got {max_length}")
    bos = _bos(tokenizer)
    prompts = _encode(tokenizer, [e.prompt for e in examples])
    answers = _encode(tokenizer, [e.answer for e in examples])
    out, dropped, truncated = [], 0, 0
    for p, a in zip(prompts, answers):
        seq = build_sequence(p, a, bos=bos, eos=tokenizer.eos_token_id, max_length=max_length)
        truncated += len(seq.input_ids) < len(bos) + len(p) + len(a) + 1
        if supervised_count(seq) < min_answer_tokens:
            dropped += 1
            continue
        out.append(seq)
    if truncated:
        logger.info("truncated %d of %d examples to max_length=%d (prompt cut from the left)",
                    truncated, len(examples), max_length)
    if dropped:
        logger.warning("dropped %d of %d examples with fewer than %d supervised tokens after truncation "
                       "to max_length=%d", dropped, len(examples), min_answer_tokens, max_length)
    return out


def data_fingerprint(tokenized: Sequence[TokenizedExample]) -> str:
    """sha256 hex of all ids and labels, order-sensitive (identifies the exact training data)."""
    h = hashlib.sha256()
    for ex in tokenized:
        # The length prefix keeps [1,2]+[3] distinct from [1]+[2,3].
        h.update(array("q", [len(ex.input_ids)]).tobytes())
        h.update(array("q", ex.input_ids).tobytes())
        h.update(array("q", ex.labels).tobytes())
    return h.hexdigest()


def prompt_ids(example: Example, tokenizer, *, max_length: int | None = None) -> list[int]:
    """``[BOS] + prompt`` token ids to generate from (cut from the left to ``max_length``)."""
    bos = _bos(tokenizer)
    ids = _encode(tokenizer, [example.prompt])[0]
    if max_length is not None and len(bos) + len(ids) > max_length:
        ids = ids[len(bos) + len(ids) - max_length:]
    return bos + ids
