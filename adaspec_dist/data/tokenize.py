"""Examples -> token ids with the prompt masked out of the loss.

Contract
--------
``tokenize_examples(examples, tokenizer, max_length=...) -> list[TokenizedExample]``:

* ``input_ids = [BOS] + prompt_ids + answer_ids + [EOS]`` (BOS only when the tokenizer has
  one); ``labels`` are ``-100`` on BOS and the prompt and equal ``input_ids`` on the answer and
  its EOS (the model learns to stop).
* The boundary. Prompts often end in a space ("Answer: "); BPE tokenizers attach a space to
  the word after it ("ĠNatalia", "▁Nat"), so tokenizing prompt and answer apart would train
  on segmentations that running text never has. Hence: the prompt's trailing spaces go with
  the answer. ``prompt_ids = tokenizer(prompt.rstrip(" "))`` (exactly what ``prompt_ids()``
  returns for generation) and ``answer_ids`` are the remaining tokens of the joint
  tokenization of ``prompt + answer`` (fast tokenizers, located with character offsets).
  When the joint tokenization does not start with exactly ``prompt_ids`` (a merge across the
  boundary) or the tokenizer has no offsets, the answer part (with those spaces) is tokenized
  on its own instead, so the prompt part is always the generation prompt.
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
* A ``rendered`` example (``data.chat_template: target``, tasks.render_chat) is the chat template's
  own text: ``input_ids = prompt_ids + answer_ids``, no BOS or EOS added (the template places its
  special tokens; the answer ends with its end-of-turn token, which is supervised).
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


def _split_prompt(prompt: str) -> tuple[str, str]:
    """(head, trailing spaces): the spaces are tokenized with the answer (module docstring)."""
    head = prompt.rstrip(" ")
    return head, prompt[len(head):]


def encode_pairs(tokenizer, examples: Sequence[Example]) -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, answer_ids) per example, no special tokens, split as the module docstring states."""
    if not examples:
        return []
    heads, tails = zip(*(_split_prompt(e.prompt) for e in examples))
    head_ids = _encode(tokenizer, heads)
    rests = [t + e.answer for t, e in zip(tails, examples)]
    if not getattr(tokenizer, "is_fast", False):
        return list(zip(head_ids, _encode(tokenizer, rests)))
    joint = tokenizer([h + r for h, r in zip(heads, rests)], add_special_tokens=False,
                      return_offsets_mapping=True)
    out, fallback = [], []
    for i, (ids, offsets, head, prompt) in enumerate(zip(joint["input_ids"], joint["offset_mapping"], heads,
                                                         head_ids)):
        # The first token that covers any character after the head starts the answer.
        cut = next((j for j, (_, end) in enumerate(offsets) if end > len(head)), len(ids))
        if ids[:cut] == prompt:
            out.append((prompt, ids[cut:]))
        else:
            out.append((prompt, []))
            fallback.append(i)
    if fallback:
        for i, ids in zip(fallback, _encode(tokenizer, [rests[i] for i in fallback])):
            out[i] = (out[i][0], ids)
        logger.debug("%d of %d examples merged tokens across the prompt/answer boundary; their answers "
                     "were tokenized on their own", len(fallback), len(examples))
    return out


def build_sequence(prompt: list[int], answer: list[int], *, bos: list[int], eos: int | None,
                   max_length: int) -> TokenizedExample:
    """Apply the truncation policy of the module docstring to one (prompt, answer) pair of ids
    (``eos`` None: the answer already ends as it should, a rendered example)."""
    budget = max_length - len(bos)
    assert budget > 0, "max_length must leave room for at least one token after BOS"
    target = answer + ([eos] if eos is not None else [])
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
    out, dropped, truncated = [], 0, 0
    for example, (p, a) in zip(examples, encode_pairs(tokenizer, examples)):
        bos, eos = ([], None) if example.rendered else (_bos(tokenizer), tokenizer.eos_token_id)
        seq = build_sequence(p, a, bos=bos, eos=eos, max_length=max_length)
        truncated += len(seq.input_ids) < len(bos) + len(p) + len(a) + (eos is not None)
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
    """``[BOS] + prompt`` ids to generate from, exactly the training prefix (trailing spaces belong to
    the answer; see the module docstring); cut from the left to ``max_length``."""
    bos = [] if example.rendered else _bos(tokenizer)
    ids = _encode(tokenizer, [_split_prompt(example.prompt)[0]])[0]
    if max_length is not None and len(bos) + len(ids) > max_length:
        ids = ids[len(bos) + len(ids) - max_length:]
    return bos + ids
