"""Tokenizers: HF ``AutoTokenizer`` for real models; a sentencepiece BPE for from-scratch demo models.

Contract
--------
* ``train_sentencepiece(texts, vocab_size, out_dir, seed=0)`` trains a sentencepiece BPE model
  and returns it as a Hugging Face tokenizer (``LlamaTokenizer``, tokenizers backend), saved
  with ``save_pretrained(out_dir)`` so ``load_tokenizer(out_dir)`` and
  ``AutoTokenizer.from_pretrained(out_dir)`` reload it. Special ids: pad 0, unk 1, bos 2, eos 3;
  ``tokenizer(text)`` prepends BOS. The raw model is kept as ``out_dir/sentencepiece.model``.
* Exact round trip: ``decode(encode(text, add_special_tokens=False)) == text`` for any text,
  including newlines, tabs, runs of spaces (code indentation), digits and non-ASCII. That takes:
  identity normalisation, no dummy prefix, no whitespace collapsing, byte fallback (unseen
  characters become UTF-8 byte tokens), digits split one per token (arithmetic stays regular),
  and "\\n"/"\\t" as atomic symbols. The HF side uses the same vocabulary and merges.
* Deterministic: the same texts (in the same order), vocab size and seed give the same
  vocabulary (sentencepiece's seed fixed, one thread, input not shuffled or sampled).
* ``load_tokenizer(name_or_path)``: ``AutoTokenizer``; a missing pad token becomes EOS (logged). A
  ``.gguf`` file or ``package:`` spec loads the tokenizer of its converted directory (models/source.py).
  ``job_tokenizer(tokenizer, model_files, job=...)``: a job's tokenizer — the ``tokenizer`` key,
  else the model's own directory (the cache, generate and eval jobs resolve it this one way).
* ``vocab_fingerprint(tokenizer)``: sha256 of the sorted (token, id) vocabulary, including
  added tokens: two tokenizers with equal fingerprints map every token to the same id.
* ``embedded_tokenizer_corpus(seed)``: the texts the demo tokenizer is trained on (train
  splits of the embedded corpora only, so test text never shapes the vocabulary).
* ``embedded_tokenizer(out_dir, vocab_size, seed)``: the demo tokenizer, trained on that corpus
  once and reused from ``out_dir`` afterwards (a stamp file records what it was trained with).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Iterable

from adaspec_dist.data import embedded
from adaspec_dist.files import atomic_write_text
from adaspec_dist.hub import hub_access, looks_like_hub_id
from adaspec_dist.models.source import local_model

logger = logging.getLogger(__name__)

SPECIAL = {"pad": (0, "<pad>"), "unk": (1, "<unk>"), "bos": (2, "<s>"), "eos": (3, "</s>")}
SPM_FILE = "sentencepiece.model"
_MIN_VOCAB = 300  # 256 byte-fallback tokens + specials + the corpus's characters need room


def train_sentencepiece(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike, *, seed: int = 0):
    """Train a sentencepiece BPE on ``texts`` and return it as a saved HF tokenizer (see module doc)."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    if vocab_size < _MIN_VOCAB:
        raise ValueError(f"sentencepiece vocab_size {vocab_size} is too small; use at least {_MIN_VOCAB} "
                         "(256 byte tokens + specials + characters)")
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_sentencepiece got no text; pass a non-empty corpus")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, model_type="bpe", vocab_size=vocab_size,
            # Exact round trip (see the module docstring for why each option is needed).
            normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
            byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
            user_defined_symbols=["\n", "\t"], character_coverage=1.0,
            # Determinism: all sentences, in the given order, on one thread.
            input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
            max_sentence_length=1 << 20, minloglevel=2,
            pad_id=SPECIAL["pad"][0], unk_id=SPECIAL["unk"][0], bos_id=SPECIAL["bos"][0],
            eos_id=SPECIAL["eos"][0], pad_piece=SPECIAL["pad"][1], unk_piece=SPECIAL["unk"][1],
            bos_piece=SPECIAL["bos"][1], eos_piece=SPECIAL["eos"][1],
        )
    except RuntimeError as err:  # e.g. a vocab larger than the corpus supports
        raise ValueError(f"sentencepiece training failed ({str(err).splitlines()[0]}); "
                         "adjust vocab_size (too large for the text, or too small for its characters)") from None
    spm_path = out_dir / SPM_FILE
    spm_path.write_bytes(model.getvalue())
    vocab, _, merges = SentencePieceExtractor(str(spm_path)).extract()
    tokenizer = LlamaTokenizer(
        vocab=vocab, merges=merges, add_prefix_space=False, add_bos_token=True, add_eos_token=False,
        pad_token=SPECIAL["pad"][1], unk_token=SPECIAL["unk"][1], bos_token=SPECIAL["bos"][1],
        eos_token=SPECIAL["eos"][1],
    )
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 2, 3)
    tokenizer.save_pretrained(str(out_dir))
    logger.info("trained a %d-piece sentencepiece BPE on %d texts -> %s", len(vocab), len(texts), out_dir)
    return tokenizer


def load_tokenizer(name_or_path: str | os.PathLike, *, model_key: str | None = None):
    """``AutoTokenizer.from_pretrained``; sets pad = eos when the tokenizer has no pad token.
    ``model_key``: the config key of the model whose directory this is (its own tokenizer is read,
    no ``tokenizer`` key set), so that a missing directory is reported as the model's."""
    from transformers import AutoTokenizer

    name = local_model(str(name_or_path))  # a GGUF's converted directory, a package's file
    if not Path(name).exists() and not looks_like_hub_id(name):
        if model_key:
            raise ValueError(f"model directory '{name}' ({model_key}) does not exist; train or download it first, "
                             "or fix the path")
        raise ValueError(f"cannot load tokenizer '{name}' (no such directory); pass a directory written by "
                         "save_pretrained or a hub id")
    access = {} if Path(name).exists() else hub_access(name, "tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **access)
    except OSError as err:
        raise ValueError(f"cannot load tokenizer '{name_or_path}' ({str(err).splitlines()[0]}); pass a "
                         "directory written by save_pretrained or a hub id reachable from here") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer '{name_or_path}' has neither a pad nor an eos token; add one")
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("tokenizer %s has no pad token; using eos '%s' (id %d) for padding",
                    name_or_path, tokenizer.eos_token, tokenizer.eos_token_id)
    return tokenizer


def job_tokenizer(tokenizer: str | None, model_files: str | None, *, job: str, model_key: str = "model.name_or_path"):
    """The tokenizer of a job that runs a model: ``tokenizer`` when set, else the model's own
    directory (``model_files``, whose absence is then reported under ``model_key``); a one-line
    ValueError naming the key to set when there is neither (a preset model has no tokenizer)."""
    path = tokenizer or model_files
    if not path:
        raise ValueError(f"{job} needs a tokenizer: set tokenizer: PATH (a preset model has none of its own)")
    return load_tokenizer(path, model_key=None if tokenizer else model_key)


def vocab_fingerprint(tokenizer) -> str:
    """sha256 hex of the sorted (token, id) pairs of the full vocabulary (added tokens included)."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()


def embedded_tokenizer_corpus(seed: int = 0, *, limit_per_corpus: int | None = None) -> list[str]:
    """Prompt+answer texts of the embedded corpora's train splits (what the demo tokenizer learns)."""
    texts: list[str] = []
    for name in sorted(embedded.EMBEDDED):
        texts += [p + a for p, a in embedded.generate(name, split="train", seed=seed, limit=limit_per_corpus)]
    return texts


STAMP_FILE = "adaspec_tokenizer.json"
_CORPUS_VERSION = 1  # bump when embedded corpora change, so stale demo tokenizers are retrained


def embedded_tokenizer(out_dir: str | os.PathLike, *, vocab_size: int = 4096, seed: int = 0,
                       limit_per_corpus: int | None = None):
    """The demo tokenizer in ``out_dir``: loaded when its stamp matches, else trained and stamped."""
    out_dir = Path(out_dir)
    want = {"corpus": "embedded", "corpus_version": _CORPUS_VERSION, "vocab_size": vocab_size, "seed": seed,
            "limit_per_corpus": limit_per_corpus}
    stamp = out_dir / STAMP_FILE
    try:
        if json.loads(stamp.read_text()) == want:
            return load_tokenizer(out_dir)
    except (OSError, ValueError):
        pass
    texts = embedded_tokenizer_corpus(seed, limit_per_corpus=limit_per_corpus)
    tokenizer = train_sentencepiece(texts, vocab_size, out_dir, seed=seed)
    atomic_write_text(stamp, json.dumps(want))  # the stamp appears only once the tokenizer files are complete
    return tokenizer
