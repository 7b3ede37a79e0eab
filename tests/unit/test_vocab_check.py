"""models/vocab.py: a draft whose vocabulary is not the target's is refused, asked of the models themselves."""
from __future__ import annotations

import pytest

from adaspec_dist.models.load import build_preset, save_hf
from adaspec_dist.models.vocab import check_same_vocab, head_rows


def test_heads_that_differ_by_more_than_padding_are_refused():
    """The issue's case: a 2,048-row draft against a 1,024-row target, no tokenizer files anywhere
    (eval measured alpha = 0.000 and exited 0)."""
    target, draft = build_preset("tiny-llama", 1024), build_preset("tiny-llama", 2048)
    assert head_rows(draft) == 2048
    with pytest.raises(ValueError, match="^draft 'kd' has 2048 vocabulary rows but the target has 1024: they do not "
                                         "share a tokenizer"):
        check_same_vocab(target, {"draft 'kd'": draft})
    check_same_vocab(target, {"draft 'kd'": build_preset("tiny-llama", 1024 + 64)})  # padding only


def test_a_head_narrower_than_the_tokenizer_is_refused():
    with pytest.raises(ValueError, match="fewer than the tokenizer's 1100 ids"):
        check_same_vocab(build_preset("tiny-llama", 1024), {"d": build_preset("tiny-llama", 1024)}, tokenizer_len=1100)


def test_tokenizers_saved_with_the_models_must_match_by_vocabulary(tmp_path):
    from adaspec_dist.data.tokenizer import load_tokenizer
    from tests.fixtures import tiny_tokenizer_dir

    tok = load_tokenizer(tiny_tokenizer_dir(tmp_path))
    n = len(tok)
    save_hf(build_preset("tiny-llama", n), tmp_path / "target", tokenizer=tok)
    save_hf(build_preset("tiny-llama", n), tmp_path / "same", tokenizer=tok)
    other = load_tokenizer(tiny_tokenizer_dir(tmp_path))  # a fresh copy: the fixture's is shared
    other.add_tokens(["<zz-extra>"])  # one id more: another vocabulary
    save_hf(build_preset("tiny-llama", n), tmp_path / "other", tokenizer=other)
    target = build_preset("tiny-llama", n)
    check_same_vocab(target, {}, dirs={"the target": str(tmp_path / "target"), "draft 'a'": str(tmp_path / "same")})
    with pytest.raises(ValueError, match="have different vocabularies"):
        check_same_vocab(target, {}, dirs={"the target": str(tmp_path / "target"),
                                           "draft 'b'": str(tmp_path / "other")})
