"""Shared test fixtures: a tiny sentencepiece tokenizer trained once per test session.

Use from any test module:

    from tests.fixtures import spm_tokenizer, spm_tokenizer_dir   # pytest fixtures (session scope)
    def test_x(spm_tokenizer): ...

or call ``tiny_tokenizer()`` / ``tiny_tokenizer_dir()`` directly (same cached object/dir).
The tokenizer is a real HF ``LlamaTokenizer`` from ``data.tokenizer.train_sentencepiece``:
vocab ``TINY_VOCAB`` (pad 0, unk 1, bos 2, eos 3), trained on a slice of the embedded
corpora's train splits, saved in a directory that ``load_tokenizer`` / ``AutoTokenizer`` and
subprocesses (CLI, torchrun workers) can load.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

TINY_VOCAB = 640
_TEXTS_PER_CORPUS = 120
_CACHE: dict[str, object] = {}


def tiny_tokenizer_dir(tmp_dir: str | Path | None = None) -> Path:
    """Directory of the session's tiny tokenizer (trained on first use; later calls reuse it)."""
    if "dir" not in _CACHE:
        from adaspec_dist.data.tokenizer import embedded_tokenizer_corpus, train_sentencepiece

        out = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.mkdtemp(prefix="adaspec-tiny-tok-"))
        out = out / "tiny-spm"
        texts = embedded_tokenizer_corpus(0, limit_per_corpus=_TEXTS_PER_CORPUS)
        _CACHE["tokenizer"] = train_sentencepiece(texts, TINY_VOCAB, out, seed=0)
        _CACHE["dir"] = out
    return _CACHE["dir"]  # type: ignore[return-value]


def tiny_tokenizer(tmp_dir: str | Path | None = None):
    """The session's tiny HF tokenizer (see module docstring)."""
    tiny_tokenizer_dir(tmp_dir)
    return _CACHE["tokenizer"]


@pytest.fixture(scope="session")
def spm_tokenizer_dir(tmp_path_factory) -> Path:
    return tiny_tokenizer_dir(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def spm_tokenizer(spm_tokenizer_dir):
    return tiny_tokenizer()
