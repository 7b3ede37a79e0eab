"""Tokenization: masked prompts, the truncation policy, dropping, fingerprints, generation prompts."""
from __future__ import annotations

import logging

import pytest

from adaspec_dist.data.tasks import Example
from adaspec_dist.data.tokenize import (IGNORE, TokenizedExample, build_sequence, data_fingerprint, prompt_ids,
                                        encode_pairs, supervised_count, tokenize_examples)
from tests.fixtures import spm_tokenizer, spm_tokenizer_dir  # noqa: F401  (pytest fixtures)

BOS, EOS = [2], 3
PROMPT = [10, 11, 12, 13, 14, 15]
ANSWER = [20, 21, 22]


def test_no_truncation_when_it_fits():
    seq = build_sequence(PROMPT, ANSWER, bos=BOS, eos=EOS, max_length=11)
    assert seq.input_ids == BOS + PROMPT + ANSWER + [EOS]
    assert seq.labels == [IGNORE] * 7 + ANSWER + [EOS]


@pytest.mark.parametrize("max_length", [10, 8, 6])
def test_prompt_is_cut_from_the_left(max_length):
    seq = build_sequence(PROMPT, ANSWER, bos=BOS, eos=EOS, max_length=max_length)
    keep = max_length - 1 - 4
    assert len(seq.input_ids) == max_length
    assert seq.input_ids == BOS + PROMPT[len(PROMPT) - keep:] + ANSWER + [EOS]  # the prompt's END survives
    assert seq.labels[-4:] == ANSWER + [EOS] and set(seq.labels[:-4]) == {IGNORE}


@pytest.mark.parametrize("max_length", [4, 3, 2])
def test_answer_end_is_cut_when_answer_alone_overflows(max_length):
    seq = build_sequence(PROMPT, ANSWER, bos=BOS, eos=EOS, max_length=max_length)
    assert seq.input_ids == BOS + (ANSWER + [EOS])[:max_length - 1]  # prompt gone, answer's start kept
    assert seq.labels == [IGNORE] + seq.input_ids[1:]
    assert supervised_count(seq) == max_length - 1


def test_without_bos_the_first_label_is_not_a_target():
    seq = build_sequence([], ANSWER, bos=[], eos=EOS, max_length=10)
    assert seq.input_ids == ANSWER + [EOS] and seq.labels == seq.input_ids
    assert supervised_count(seq) == 3  # position 0 has no preceding context


def test_tokenize_examples_policy_on_real_tokenizer(spm_tokenizer, caplog):
    tok = spm_tokenizer
    examples = [Example(prompt="Question: what is 12 + 30?\nAnswer: ", answer="12 + 30 = 42\nThe final answer is: 42"),
                Example(prompt="x " * 200, answer="short"),
                Example(prompt="Say nothing.", answer="")]
    full = tokenize_examples(examples, tok, max_length=4096)
    assert len(full) == 3
    assert full[2].labels[-1] == tok.eos_token_id and supervised_count(full[2]) == 1  # learns to stop
    cut = tokenize_examples(examples, tok, max_length=24)
    assert all(len(t.input_ids) <= 24 for t in cut)
    long_prompt = cut[1]
    assert len(long_prompt.input_ids) == 24 and long_prompt.input_ids[0] == tok.bos_token_id
    assert tok.decode([i for i, l in zip(long_prompt.input_ids, long_prompt.labels) if l != IGNORE]) == " short</s>"
    # A minimum the short answers cannot meet drops them, with one warning that counts them.
    with caplog.at_level(logging.WARNING, logger="adaspec_dist.data.tokenize"):
        kept = tokenize_examples(examples, tok, max_length=4096, min_answer_tokens=6)
    assert kept == [full[0]]
    assert any("dropped 2 of 3 examples" in r.getMessage() for r in caplog.records)


def test_tokenize_requires_eos(spm_tokenizer):
    class NoEos:
        eos_token_id = None
    with pytest.raises(ValueError, match="no EOS token"):
        tokenize_examples([Example(prompt="a", answer="b")], NoEos(), max_length=8)


def test_data_fingerprint_is_order_and_content_sensitive():
    a = TokenizedExample(input_ids=[2, 5, 6, 3], labels=[IGNORE, IGNORE, 6, 3])
    b = TokenizedExample(input_ids=[2, 7, 3], labels=[IGNORE, 7, 3])
    fp = data_fingerprint([a, b])
    assert fp == data_fingerprint([a, b]) and len(fp) == 64
    assert fp != data_fingerprint([b, a])
    assert fp != data_fingerprint([a, TokenizedExample(input_ids=[2, 7, 3], labels=[IGNORE, IGNORE, 3])])
    # Boundaries matter: the same flat ids split differently are different data.
    c = TokenizedExample(input_ids=[2, 5], labels=[IGNORE, 5])
    d = TokenizedExample(input_ids=[6, 3, 2, 7, 3], labels=[6, 3, IGNORE, 7, 3])
    assert data_fingerprint([a, b]) != data_fingerprint([c, d])


def test_prompt_ids_match_the_training_prefix(spm_tokenizer):
    tok = spm_tokenizer
    ex = Example(prompt="Question: Ava has 3 apples.\nAnswer: ", answer="3")
    (seq,) = tokenize_examples([ex], tok, max_length=512)
    ids = prompt_ids(ex, tok)
    assert ids == seq.input_ids[:len(ids)] and seq.labels[len(ids)] != IGNORE
    assert ids[0] == tok.bos_token_id
    short = prompt_ids(ex, tok, max_length=5)
    assert len(short) == 5 and short[0] == tok.bos_token_id and short[1:] == ids[-4:]


def _byte_level_bpe():
    """A GPT-2/GPT-NeoX-style byte-level BPE (spaces attach to the next word), trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    text = ["Question: Natalia sold 48 clips.\nAnswer: Natalia sold 48 clips in April.", "abcdef abcdef abc def"] * 50
    tk.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")


def test_trailing_prompt_space_goes_with_the_answer_for_byte_level_bpe():
    tok = _byte_level_bpe()
    ex = Example(prompt="Question: Natalia sold 48 clips.\nAnswer: ", answer="Natalia sold 48 clips in April.")
    (seq,) = tokenize_examples([ex], tok, max_length=128)
    # The sequence is the tokenization of the running text, as the model will see it at inference.
    assert seq.input_ids[:-1] == tok(ex.prompt + ex.answer, add_special_tokens=False)["input_ids"]
    first = seq.input_ids[seq.labels.index(next(l for l in seq.labels if l != IGNORE))]
    assert tok.convert_ids_to_tokens(first).startswith("Ġ")  # " Natalia", not a lone "Ġ" in the prompt
    ids = prompt_ids(ex, tok)
    assert ids == seq.input_ids[:len(ids)] and set(seq.labels[:len(ids)]) == {IGNORE}
    assert seq.labels[len(ids)] != IGNORE


def test_merge_across_the_boundary_falls_back_to_separate_answer():
    tok = _byte_level_bpe()
    assert len(tok("abcdef", add_special_tokens=False)["input_ids"]) == 1  # one merged word
    ex = Example(prompt="abc", answer="def")
    ((p, a),) = encode_pairs(tok, [ex])
    assert p == tok("abc", add_special_tokens=False)["input_ids"]
    assert a == tok("def", add_special_tokens=False)["input_ids"]
    (seq,) = tokenize_examples([ex], tok, max_length=16)
    assert seq.input_ids == p + a + [tok.eos_token_id] and seq.labels == [IGNORE] * len(p) + a + [tok.eos_token_id]
