"""The ``generate`` job: sample continuations of a task's prompts from a model (on-policy data).

Contract
--------
``generate(cfg: GenerateConfig) -> manifest | None`` (``adaspec-dist generate`` calls it): loads
the task's prompts (``data``; each prompt is ``[BOS] + prompt`` cut from the left to
``data.max_length - max_new_tokens`` tokens) and the model (the target, the SFT'd reference draft
or the current draft: any HF causal LM using the tokenizer), samples ``samples_per_prompt``
continuations per prompt with the project's decoder (``decoder.autoregressive_generate``: one
KV cache, ragged rows that leave the batch at EOS / max_new_tokens, temperature / top-p), and
writes the dataset ``data/generated.py`` describes (``shards/gen-NNNNN.jsonl`` + sidecars, then
``manifest.json``), which ``cache`` reads with ``generated: DIR``.

* Determinism. Sample s of prompt i is drawn with its own counter-based stream keyed by
  ``sample_key(seed, i, s)`` (``sampling.counter_uniforms``): no generator is shared between
  rows, so a sample does not depend on what else is in its batch. Shard j = prompts
  ``[j*shard_size, (j+1)*shard_size)`` (all their samples), owned by DP rank ``j % dp_size`` and
  batched in order, so the batch composition (hence the floating-point logits) is the same for
  any number of ranks: a 2-rank job equals a 1-rank job byte for byte, and a killed job rerun with
  the same command keeps its complete shards and ends byte-identical.
* One job per directory: a :class:`GenerateJob` in the sharded-job skeleton (``jobs.run_sharded``:
  the claim, the ``job.json`` fingerprint of the model's weights, the tokenizer, the prompts and
  every setting that changes the bytes, resume, the rank-owned shard loop, the manifest last);
  another job's directory is refused in one line, never overwritten. Every check (no prompts, max_new_tokens, a model
  built for another tokenizer, positions) is made before anything is written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from adaspec_dist.config import save_resolved
from adaspec_dist.data import generated as gen_fmt
from adaspec_dist.data.tasks import DataConfig, load_examples
from adaspec_dist.data.tokenize import prompt_ids
from adaspec_dist.data.tokenizer import job_tokenizer, load_tokenizer, vocab_fingerprint
from adaspec_dist.dist import init_distributed
from adaspec_dist.files import atomic_write_bytes, atomic_write_text
from adaspec_dist.jobs import JobFile, ShardedJob, job_roles, run_sharded
from adaspec_dist.models.load import ModelConfig, load_causal_lm, model_identity, weights_fingerprint
from adaspec_dist.models.positions import check_length
from adaspec_dist.speculative.decoder import autoregressive_generate
from adaspec_dist.speculative.sampling import MAX_VOCAB_PADDING, SamplingConfig

logger = logging.getLogger(__name__)

Role = Literal["target", "draft", "reference"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


@dataclass(kw_only=True)
class GenerateConfig:
    data: DataConfig
    """The prompts: task, split, limit; data.max_length = prompt + generated tokens per sequence."""
    model: ModelConfig
    """The model that generates (the target, the SFT'd reference draft or the current draft)."""
    role: Role = "target"
    """What the model is, recorded in the manifest: target, draft (the draft being trained) or reference."""
    tokenizer: str | None = None
    """Tokenizer path (default: the model's own directory); must be the model's own."""
    out_dir: str
    """Output directory (created; a directory holding another job is refused)."""
    samples_per_prompt: int = 1
    """Continuations sampled per prompt (n)."""
    max_new_tokens: int = 128
    """Generated tokens per sample at most (a sample ends earlier at the model's EOS, which it keeps)."""
    temperature: float = 1.0
    """Sampling temperature (0 = greedy: one sample per prompt)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = off)."""
    batch_size: int = 16
    """Rows (prompt samples) decoded together."""
    shard_size: int = 64
    """Prompts per shard (the unit of resume and of rank assignment)."""
    seed: int = 0
    """Seed of the per-sample streams (sample s of prompt i: sample_key(seed, i, s))."""

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"generate max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.max_new_tokens >= self.data.max_length:
            raise ValueError(f"generate max_new_tokens={self.max_new_tokens} leaves no room for the prompt in "
                             f"data.max_length={self.data.max_length}; raise data.max_length or lower max_new_tokens")
        for name in ("samples_per_prompt", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"generate {name}={getattr(self, name)} must be >= 1")
        self.sampling.validate()
        if self.temperature == 0 and self.samples_per_prompt > 1:
            raise ValueError(f"generate temperature=0 (greedy) makes all {self.samples_per_prompt} samples of a "
                             "prompt identical; set samples_per_prompt: 1 or temperature > 0")

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p)

    @property
    def max_prompt_tokens(self) -> int:
        return self.data.max_length - self.max_new_tokens


def sample_key(seed: int, prompt: int, sample: int) -> int:
    """The 32-bit key of sample ``sample`` of prompt ``prompt`` (independent of ranks and batches)."""
    return int(np.random.SeedSequence([seed, prompt, sample]).generate_state(1, np.uint32)[0])


def check_model(model, tokenizer, cfg: GenerateConfig) -> int:
    """The real vocabulary (``len(tokenizer)``) after refusing a model built for another tokenizer."""
    width = int(model.get_output_embeddings().weight.shape[0])
    n = len(tokenizer)
    if width < n or width - n >= MAX_VOCAB_PADDING:
        raise ValueError(f"model '{model_identity(cfg.model)}' has {width} logits but the tokenizer has {n} ids: "
                         "it was built for another tokenizer; set tokenizer to the model's own")
    path = Path(cfg.model.name_or_path or "")
    if cfg.tokenizer and cfg.model.name_or_path and any((path / f).is_file() for f in TOKENIZER_FILES):
        if vocab_fingerprint(load_tokenizer(str(path))) != vocab_fingerprint(tokenizer):
            raise ValueError(f"model '{path}' comes with another tokenizer than '{cfg.tokenizer}'; generate with "
                             "the model's own tokenizer (drop tokenizer or set it to the model's directory)")
    check_length(model, cfg.data.max_length, what="a generated sequence (prompt + max_new_tokens: data.max_length)",
                 whose="the model")
    return n


def job_fingerprint(cfg: GenerateConfig, prompts_fp: str, tokenizer_fp: str, eos: int | None) -> str:
    """What determines the output bytes (never where anything lives)."""
    blob = {"weights": weights_fingerprint(cfg.model), "dtype": cfg.model.dtype, "tokenizer": tokenizer_fp,
            "prompts": prompts_fp, "eos": eos, "samples_per_prompt": cfg.samples_per_prompt,
            "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "batch_size": cfg.batch_size, "shard_size": cfg.shard_size, "seed": cfg.seed}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def generate_rows(lm, prompts: list[tuple[int, list[int]]], cfg: GenerateConfig, *, eos: int | None,
                  vocab: int, pad_id: int, on_batch: Callable[[int], None] | None = None) -> list[dict]:
    """The rows of the given (prompt index, prompt ids): all samples, in (prompt, sample) order,
    batched ``cfg.batch_size`` rows at a time (``on_batch(rows)`` after each batch)."""
    todo = [(i, s, ids) for i, ids in prompts for s in range(cfg.samples_per_prompt)]
    rows = []
    for b0 in range(0, len(todo), cfg.batch_size):
        chunk = todo[b0:b0 + cfg.batch_size]
        out = autoregressive_generate(lm, [ids for _, _, ids in chunk], max_new_tokens=cfg.max_new_tokens,
                                      sampling=cfg.sampling, eos_token_id=eos, vocab_size=vocab, pad_id=pad_id,
                                      row_keys=[sample_key(cfg.seed, i, s) for i, s, _ in chunk])
        for (i, s, ids), new in zip(chunk, out.sequences):
            rows.append({"prompt": i, "sample": s, "input_ids": ids + new,
                         "labels": [-100] * len(ids) + new, "eos": bool(new) and new[-1] == eos})
        if on_batch is not None:
            on_batch(len(chunk))
    return rows


class GenerateJob(ShardedJob):
    """The generate job in the sharded-job skeleton (``jobs.run_sharded``): shard ``j`` = prompts
    ``[j*shard_size, (j+1)*shard_size)``, all their samples, one ``.jsonl`` + sidecar."""

    what, name, unit = "generate directory", "generate", "rows"

    def __init__(self, cfg: GenerateConfig, model, prompts: list[list[int]], *, vocab: int, eos: int | None,
                 pad_id: int, tokenizer_fp: str):
        self.cfg, self.model, self.prompts = cfg, model, prompts
        self.vocab, self.eos, self.pad_id, self.tokenizer_fp = vocab, eos, pad_id, tokenizer_fp
        self.prompts_fp = gen_fmt.prompts_fingerprint(prompts)
        self.directory = Path(cfg.out_dir)
        self.n_shards = math.ceil(len(prompts) / cfg.shard_size)
        self.job_file = JobFile(self.directory, job_fingerprint(cfg, self.prompts_fp, tokenizer_fp, eos),
                                what=self.what, kind="generate",
                                other_job="holds data generated with another model, prompts or settings",
                                shard_dir=gen_fmt.SHARD_DIR)

    def completed(self) -> dict | None:
        return self.job_file.finished_manifest(self.directory / gen_fmt.MANIFEST, self.finished)

    def admit(self) -> None:
        self.job_file.admit()
        save_resolved(self.cfg, self.directory)

    def finished(self, index: int) -> dict | None:
        return gen_fmt.finished_shard(self.directory, index)

    def shard(self, index: int) -> list[tuple[int, list[int]]]:
        lo = index * self.cfg.shard_size
        return list(enumerate(self.prompts))[lo:lo + self.cfg.shard_size]

    def work(self, index: int) -> int:
        return len(self.shard(index)) * self.cfg.samples_per_prompt

    def run_shard(self, index: int, *, writes: bool, advance: Callable[[int], None]) -> None:
        rows = generate_rows(self.model, self.shard(index), self.cfg, eos=self.eos, vocab=self.vocab,
                             pad_id=self.pad_id, on_batch=advance)
        if writes:
            write_generated_shard(self.directory, index, rows)

    def write_manifest(self) -> dict:
        return _write_manifest(self.directory, self.cfg, self.n_shards, len(self.prompts), self.prompts_fp,
                               self.tokenizer_fp, self.eos)


def write_generated_shard(out_dir: Path, index: int, rows: list[dict]) -> dict:
    """Shard ``index``'s ``.jsonl`` and then its sidecar (the shard is complete once the sidecar's
    hash matches); returns the sidecar."""
    data = gen_fmt.encode_rows(rows)
    path, side = gen_fmt.shard_paths(out_dir, index)
    meta = {"index": index, "rows": len(rows), "tokens": sum(sum(1 for x in r["labels"] if x != -100) for r in rows),
            "eos": sum(r["eos"] for r in rows), "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_bytes(path, data)
    atomic_write_text(side, json.dumps(meta) + "\n")
    return meta


def load_prompts(cfg: GenerateConfig, tokenizer) -> list[list[int]]:
    """The task's prompts as ids (``[BOS] + prompt`` cut to ``max_prompt_tokens``); one-line errors."""
    examples = load_examples(cfg.data, tokenizer=tokenizer)
    if not examples:
        raise ValueError("generate: the data split has no prompts; check data.task/split/limit")
    prompts = [prompt_ids(e, tokenizer, max_length=cfg.max_prompt_tokens) for e in examples]
    if any(not p for p in prompts):
        raise ValueError("generate: a prompt has no tokens and the tokenizer no BOS to start from; drop empty prompts")
    return prompts


def generate(cfg: GenerateConfig) -> dict | None:
    """The job (module contract); the manifest on global rank 0, None elsewhere."""
    cfg.validate()
    tokenizer = job_tokenizer(cfg.tokenizer, cfg.model.files, job="generate")
    prompts = load_prompts(cfg, tokenizer)
    ps = init_distributed(1)
    model = load_causal_lm(cfg.model, vocab_size=len(tokenizer), device=ps.device)
    vocab = check_model(model, tokenizer, cfg)
    job = GenerateJob(cfg, model, prompts, vocab=vocab, eos=tokenizer.eos_token_id,
                      pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                      tokenizer_fp=vocab_fingerprint(tokenizer))
    return run_sharded(job, job_roles(ps))


def _write_manifest(out_dir: Path, cfg: GenerateConfig, n_shards: int, n_prompts: int, prompts_fp: str,
                    tok_fp: str, eos: int | None) -> dict:
    shards = []
    for j in range(n_shards):
        meta = gen_fmt.finished_shard(out_dir, j)
        if meta is None:
            raise RuntimeError(f"generate shard {j} of {out_dir} is missing after every rank finished")
        shards.append(meta)
    d = cfg.data
    manifest = {
        "format": "adaspec-dist generated v1", "complete": True,
        "model": {"role": cfg.role, "identity": model_identity(cfg.model), "weights": weights_fingerprint(cfg.model),
                  "dtype": cfg.model.dtype},
        "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
                     "samples_per_prompt": cfg.samples_per_prompt, "seed": cfg.seed},
        "data": {"task": d.task, "source": d.source, "split": d.split, "limit": d.limit, "seed": d.seed,
                 "max_length": d.max_length},
        "max_prompt_tokens": cfg.max_prompt_tokens, "prompts_fingerprint": prompts_fp,
        "tokenizer_fingerprint": tok_fp, "eos_token_id": eos,
        "batch_size": cfg.batch_size, "shard_size": cfg.shard_size,
        "num_prompts": n_prompts, "num_sequences": sum(s["rows"] for s in shards),
        "num_generated_tokens": sum(s["tokens"] for s in shards), "num_eos": sum(s["eos"] for s in shards),
        "shards": shards,
    }
    atomic_write_text(out_dir / gen_fmt.MANIFEST, json.dumps(manifest, indent=1) + "\n")
    logger.info("generated %d sequences (%d tokens, %d ended at EOS) at %s", manifest["num_sequences"],
                manifest["num_generated_tokens"], manifest["num_eos"], out_dir)
    return manifest


def describe_generated(out_dir: str | Path, manifest: dict) -> str:
    """One line on a finished generate job (what ``adaspec-dist generate`` prints at its end)."""
    return (f"generated {out_dir}: {manifest['num_sequences']} sequences from {manifest['num_prompts']} prompts by "
            f"{manifest['model']['role']} {manifest['model']['identity']}, {manifest['num_generated_tokens']} "
            f"generated tokens, {manifest['num_eos']} ended at EOS")
