"""The sentencepiece tokenizer through the HF interface: exact round trip, reload, determinism, fingerprint."""
from __future__ import annotations

import json

import pytest

from adaspec_dist.data.tokenizer import (embedded_tokenizer_corpus, load_tokenizer, train_sentencepiece,
                                         vocab_fingerprint)
from tests.fixtures import TINY_VOCAB, spm_tokenizer, spm_tokenizer_dir  # noqa: F401  (pytest fixtures)

TEXTS = [
    "def area(r):\n    \"\"\"Circle area.\"\"\"\n    if r < 0:\n        raise ValueError(r)\n    return 3.14159 * r ** 2\n",
    "class A:\n\tdef f(self):\n\t\treturn {'a': [1, 2, 3]}\n\n\n",
    "Question: Ava has 12345 apples and 0.5 pears.\nAnswer: 12345 + 67890 = 80235\nThe final answer is: 80235",
    "  leading spaces,   runs   of spaces, trailing spaces   ",
    "\n\nblank lines\n\n\n  \n",
    "Unicode: café naïve 東京 ß → ∑ 😀",
    "line with a\r\nwindows ending",
    "",
]


def test_round_trip_through_hf_interface(spm_tokenizer):
    tok = spm_tokenizer
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        with_special = tok(text)["input_ids"]
        assert with_special[0] == tok.bos_token_id and with_special[1:] == ids  # BOS prepended, no EOS
        assert tok.decode(with_special, skip_special_tokens=True) == text
    for text in embedded_tokenizer_corpus(7, limit_per_corpus=40):  # held-out-ish texts of every corpus
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_special_ids_and_digits(spm_tokenizer):
    tok = spm_tokenizer
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    assert len(tok) == TINY_VOCAB
    ids = tok("80235", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == list("80235")  # one token per digit
    # Unseen characters fall back to UTF-8 byte tokens instead of <unk>.
    assert tok.unk_token_id not in tok("東京😀", add_special_tokens=False)["input_ids"]


def test_reload_from_disk_is_identical(spm_tokenizer, spm_tokenizer_dir):
    from transformers import AutoTokenizer

    for reloaded in (load_tokenizer(spm_tokenizer_dir), AutoTokenizer.from_pretrained(str(spm_tokenizer_dir))):
        assert vocab_fingerprint(reloaded) == vocab_fingerprint(spm_tokenizer)
        assert (reloaded.pad_token_id, reloaded.bos_token_id, reloaded.eos_token_id) == (0, 2, 3)
        for text in TEXTS:
            assert reloaded(text)["input_ids"] == spm_tokenizer(text)["input_ids"]
            assert reloaded.decode(reloaded(text, add_special_tokens=False)["input_ids"]) == text
    assert (spm_tokenizer_dir / "sentencepiece.model").is_file()


def test_training_is_deterministic_and_fingerprint_tracks_vocab(spm_tokenizer, tmp_path):
    texts = embedded_tokenizer_corpus(0, limit_per_corpus=40)
    a = train_sentencepiece(texts, 400, tmp_path / "a", seed=0)
    b = train_sentencepiece(texts, 400, tmp_path / "b", seed=0)
    assert vocab_fingerprint(a) == vocab_fingerprint(b)
    assert (tmp_path / "a" / "sentencepiece.model").read_bytes() == (tmp_path / "b" / "sentencepiece.model").read_bytes()
    c = train_sentencepiece(texts, 420, tmp_path / "c", seed=0)
    assert vocab_fingerprint(c) != vocab_fingerprint(a) != vocab_fingerprint(spm_tokenizer)
    # Same size, one token added, or one id swapped: each changes the fingerprint.
    before = vocab_fingerprint(b)
    b.add_tokens(["<extra>"])
    assert vocab_fingerprint(b) != before
    vocab = a.get_vocab()
    swapped = dict(vocab)
    swapped["▁the"], swapped["▁a"] = vocab.get("▁a", -1), vocab.get("▁the", -2)

    class Fake:
        def get_vocab(self):
            return swapped
    assert vocab_fingerprint(Fake()) != vocab_fingerprint(a)


def test_load_tokenizer_sets_pad_from_eos(spm_tokenizer_dir, tmp_path):
    out = tmp_path / "nopad"
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_text((spm_tokenizer_dir / name).read_text())
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg.pop("pad_token")
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(out)
    assert tok.pad_token == tok.eos_token == "</s>" and tok.pad_token_id == 3


def test_user_errors(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        train_sentencepiece(["abc"], 100, tmp_path)
    with pytest.raises(ValueError, match="no text"):
        train_sentencepiece([], 512, tmp_path)
    with pytest.raises(ValueError, match="cannot load tokenizer"):
        load_tokenizer(tmp_path / "nothing-here")


def test_embedded_tokenizer_is_trained_once_then_reused(tmp_path):
    from adaspec_dist.data.tokenizer import STAMP_FILE, embedded_tokenizer

    out = tmp_path / "demo-tok"
    first = embedded_tokenizer(out, vocab_size=400, limit_per_corpus=25)
    model = out / "sentencepiece.model"
    mtime = model.stat().st_mtime_ns
    again = embedded_tokenizer(out, vocab_size=400, limit_per_corpus=25)
    assert model.stat().st_mtime_ns == mtime  # reused, not retrained
    assert vocab_fingerprint(again) == vocab_fingerprint(first) and len(again) == 400
    other = embedded_tokenizer(out, vocab_size=420, limit_per_corpus=25)  # another setting: retrained
    assert len(other) == 420 and '"vocab_size": 420' in (out / STAMP_FILE).read_text()
