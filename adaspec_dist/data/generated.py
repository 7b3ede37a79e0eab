"""Generated (on-policy) training data: the files a ``generate`` job writes and how ``cache`` reads them.

Contract
--------
A generated dataset is a directory (written by ``speculative.generate.generate``):

* ``manifest.json`` (written last; ``complete: true``): the model that generated (identity,
  weights fingerprint, role ``target`` / ``draft`` / ``reference``), the sampling settings
  (temperature, top_p, max_new_tokens, samples_per_prompt, seed), the prompts (the task's data
  config, ``max_prompt_tokens``, ``prompts_fingerprint``), the tokenizer's ``vocab_fingerprint``,
  the EOS id and the counts; ``shards`` lists every shard's sidecar.
* ``shards/gen-NNNNN.jsonl``: shard ``j`` holds prompts ``[j*shard_size, (j+1)*shard_size)``, each
  with ``samples_per_prompt`` samples, in (prompt, sample) order; one JSON object per line:
  ``{"prompt": i, "sample": s, "input_ids": [...], "labels": [...], "eos": bool}``.
  ``input_ids = [BOS] + prompt + generated``; ``labels`` are ``-100`` on BOS and the prompt and
  the ids on the generated tokens. EOS: generation stops at the model's first EOS, which is kept
  and supervised (``eos: true``: the draft learns to stop where the model stops); a sample cut at
  ``max_new_tokens`` ends without one (``eos: false``; no EOS is invented).
* ``shards/gen-NNNNN.json``: the shard's sidecar (``index``, ``rows``, ``tokens``, ``sha256`` of the
  ``.jsonl`` bytes); a shard is complete iff its sidecar exists and the hash matches.

Reading (``cache``'s ``generated`` / ``generated_fraction``):

* ``read_generated(directory, tokenizer=None) -> GeneratedData``: the rows in order, checked
  (complete manifest, every shard's hash, the tokenizer's fingerprint); one-line ``ValueError``s.
* ``mix_sequences(dataset_by_prompt, generated, fraction, seed) -> list[TokenizedExample]``: the
  mixture with share λ = ``fraction`` (DistillSpec's notation): one sequence per generated row
  (prompt i, sample s); it is the generated sequence when a seeded hash of (seed, i, s) falls below
  λ, else the dataset's own sequence for prompt i. λ = 1 is generated data only, λ = 0 the
  dataset's answers (each repeated ``samples_per_prompt`` times). Order follows the generated rows.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from adaspec_dist.data.tokenize import TokenizedExample, build_sequence, encode_pairs, supervised_count

MANIFEST = "manifest.json"
JOB_FILE = "job.json"
SHARD_DIR = "shards"


def shard_paths(directory: str | Path, index: int) -> tuple[Path, Path]:
    """(data ``.jsonl``, sidecar ``.json``) of shard ``index``."""
    base = Path(directory) / SHARD_DIR / f"gen-{index:05d}"
    return base.with_suffix(".jsonl"), base.with_suffix(".json")


def encode_rows(rows: Sequence[dict]) -> bytes:
    """A shard's ``.jsonl`` bytes (compact, key order fixed: byte-identical for identical rows)."""
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in rows)


def finished_shard(directory: str | Path, index: int) -> dict | None:
    """The sidecar of a complete shard (its data hashes to the recorded sha256), else None."""
    data, side = shard_paths(directory, index)
    if not (data.is_file() and side.is_file()):
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if hashlib.sha256(data.read_bytes()).hexdigest() == meta.get("sha256") else None


@dataclass
class GeneratedData:
    manifest: dict
    rows: list[dict]
    """``{"prompt", "sample", "input_ids", "labels", "eos"}`` per generated sequence, in order."""

    @property
    def sequences(self) -> list[TokenizedExample]:
        return [TokenizedExample(input_ids=r["input_ids"], labels=r["labels"]) for r in self.rows]


def read_generated(directory: str | Path, tokenizer=None) -> GeneratedData:
    """The rows of a finished generated dataset (module contract), checked."""
    from adaspec_dist.data.tokenizer import vocab_fingerprint

    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ValueError(f"generated data '{directory}' has no {MANIFEST}: it is not a finished `adaspec-dist "
                         "generate` output; run (or rerun) generate into it first")
    manifest = json.loads(path.read_text())
    if not manifest.get("complete"):
        raise ValueError(f"generated data '{directory}' is incomplete; rerun its generate command to finish it")
    if tokenizer is not None and manifest.get("tokenizer_fingerprint") != vocab_fingerprint(tokenizer):
        raise ValueError(f"generated data '{directory}' was tokenized with another tokenizer than this job's; "
                         "generate with the target's tokenizer (or set tokenizer to the one it used)")
    rows: list[dict] = []
    for sh in manifest["shards"]:
        if finished_shard(directory, sh["index"]) is None:
            raise ValueError(f"generated data shard '{shard_paths(directory, sh['index'])[0]}' is missing or fails "
                             "its sha256; rerun the generate command to rewrite it")
        data, _ = shard_paths(directory, sh["index"])
        rows += [json.loads(line) for line in data.read_text().splitlines()]
    return GeneratedData(manifest=manifest, rows=rows)


def dataset_by_prompt(examples, tokenizer, *, max_length: int) -> list[TokenizedExample | None]:
    """Each example's tokenized sequence, aligned with the prompts (None where too short to train on)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out: list[TokenizedExample | None] = []
    for p, a in encode_pairs(tokenizer, examples):
        seq = build_sequence(p, a, bos=bos, eos=tokenizer.eos_token_id, max_length=max_length)
        out.append(seq if supervised_count(seq) >= 1 else None)
    return out


def prefers_generated(seed: int, prompt: int, sample: int, fraction: float) -> bool:
    """The mixture's seeded choice for row (prompt, sample): generated iff its uniform < λ."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    u = np.random.SeedSequence([seed, prompt, sample, 0x6D6978]).generate_state(1, np.uint64)[0] / 2.0 ** 64
    return bool(u < fraction)


def mix_sequences(dataset: Sequence[TokenizedExample | None], generated: GeneratedData, fraction: float,
                  seed: int) -> list[TokenizedExample]:
    """The λ-mixture of the module contract."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"generated_fraction={fraction} must be in [0, 1] (the share λ of generated sequences)")
    n_prompts = generated.manifest["num_prompts"]
    if fraction < 1.0 and len(dataset) != n_prompts:
        raise ValueError(f"the data split has {len(dataset)} examples but the generated data was made from "
                         f"{n_prompts} prompts; use the generate job's data settings (task, split, limit)")
    out = []
    for row in generated.rows:
        own = dataset[row["prompt"]] if fraction < 1.0 else None
        if own is None or prefers_generated(seed, row["prompt"], row["sample"], fraction):
            out.append(TokenizedExample(input_ids=row["input_ids"], labels=row["labels"]))
        else:
            out.append(own)
    return out


def prompts_fingerprint(prompts: Sequence[Sequence[int]]) -> str:
    """sha256 hex of the prompt id lists, in order (length-prefixed)."""
    from array import array

    h = hashlib.sha256()
    for p in prompts:
        h.update(array("q", [len(p)]).tobytes())
        h.update(array("q", p).tobytes())
    return h.hexdigest()


def generated_sequences(data, tokenizer, directory: str | Path, fraction: float,
                        seed: int) -> tuple[list[TokenizedExample], dict]:
    """``cache``'s sequences from a generated dataset: the λ-mixture of its rows with ``data``'s own
    answers (``data``, a ``DataConfig``, is loaded only when λ < 1, and must give the same prompts
    the generate job used), and the description the cache's manifest records."""
    from adaspec_dist.data.tasks import load_examples
    from adaspec_dist.data.tokenize import prompt_ids

    gen = read_generated(directory, tokenizer)
    dataset: list[TokenizedExample | None] = []
    if fraction < 1.0:
        examples = load_examples(data, tokenizer=tokenizer)
        found = prompts_fingerprint([prompt_ids(e, tokenizer, max_length=gen.manifest["max_prompt_tokens"])
                                     for e in examples])
        if found != gen.manifest["prompts_fingerprint"]:
            raise ValueError(f"data (task {data.task}, split {data.split}, limit {data.limit}) gives other prompts "
                             f"than the generated data '{directory}' was made from; set data to the generate job's "
                             "(see its manifest.json) or use generated_fraction: 1")
        dataset = dataset_by_prompt(examples, tokenizer, max_length=data.max_length)
    sequences = mix_sequences(dataset, gen, fraction, seed)
    m = gen.manifest
    info = {"generated": {"model": m["model"], "sampling": m["sampling"], "fraction": fraction,
                          "prompts_fingerprint": m["prompts_fingerprint"]}}
    return sequences, info
