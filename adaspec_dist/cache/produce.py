"""The ``cache`` job: run the target once over tokenized sequences and write sparse targets to shards.

Contract
--------
* ``produce_cache(cfg: CacheConfig) -> manifest | None``: the job (``adaspec-dist cache`` and the
  pipeline's cache stages call it): the process grid, then :func:`prepare_job` (data, tokenizer,
  target), then :func:`write_cache`. The manifest on global rank 0, None elsewhere.
* ``CacheConfig`` (YAML + dotted overrides via ``adaspec_dist.config.load_config``); the resolved
  config is written into the cache directory as ``config.yaml``.
* ``TargetFn(input_ids_BT, attention_mask_BT, loss_mask_BT, generator) -> SparseTarget`` with
  ``N = loss_mask.sum()`` rows in row-major order: the only thing the job knows about the model.
  ``hf_target_fn`` is the full-vocabulary Hugging Face implementation; a tensor-parallel one
  (``models.tp_target.make_target_fn(path, ps, ...) -> (TargetFn, vocab_size)``) slots in when ``tp > 1``. A sampled
  TargetFn must draw its randomness only from ``generator`` (see ``sparse.draw_uniforms``).
* ``write_cache(sequences, target_fn, spec, out_dir, ps=...)``: the job as a :class:`CacheJob` in
  the sharded-job skeleton (``jobs.run_sharded``: the claim, ``job.json``, resume, the rank-owned
  shard loop and progress, the manifest last). Shard ``j`` = global sequences
  ``[j*shard_size, (j+1)*shard_size)``, owned by DP rank ``j % dp_size``, batched in order
  (``data.batch.collate``), with a generator seeded from ``(seed, j)``. So shard bytes depend
  neither on the number of ranks nor on interruptions: a 2-rank job equals a 1-rank job and a
  killed job rerun with the same command skips its complete shards and ends byte-identical. A
  directory holding a different job (config or data) is refused, never overwritten; one job at a
  time writes into a directory, and every check that can be made first (:func:`check_job`, the
  target's position limit) is made before anything is written.

Shapes: B batch, T time, V vocabulary, N supervised positions, K ids per row.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from adaspec_dist.cache import format as fmt
from adaspec_dist.cache.writer import finished_shard, write_shard
from adaspec_dist.config import save_resolved
from adaspec_dist.data.generated import generated_sequences
from adaspec_dist.data.tasks import DataConfig, chat_template_for, load_examples, prompt_format
from adaspec_dist.data.tokenize import data_fingerprint, tokenize_examples
from adaspec_dist.data.batch import collate
from adaspec_dist.data.tokenizer import job_tokenizer, vocab_fingerprint
from adaspec_dist.dist import init_distributed
from adaspec_dist.jobs import JobFile, ShardedJob, job_roles, run_sharded
from adaspec_dist.models.load import ModelConfig, load_causal_lm, model_identity, param_count, weights_fingerprint
from adaspec_dist.models.head import chunked_logits, fusable
from adaspec_dist.models.logits import masked_logits
from adaspec_dist.models.positions import check_length
from adaspec_dist.models.tp_target import make_target_fn
from adaspec_dist.sparse.target import (SCHEMES, VALUE_DTYPES, Scheme, SparseTarget, ValueDtype, id_dtype,
                                        sampled_targets, topk_targets)

logger = logging.getLogger(__name__)

TargetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], SparseTarget]


@dataclass(kw_only=True)
class CacheConfig:
    data: DataConfig
    """Task, split and max_length of the sequences to cache."""
    model: ModelConfig
    """The target model."""
    tokenizer: str | None = None
    """Tokenizer path (default: the target's own directory)."""
    out_dir: str
    """Cache directory (created; a directory holding another job is refused)."""
    scheme: Scheme = "topk"
    """topk (k most likely ids, tail mass implied) or sampled (unbiased importance-sampled ids)."""
    top_k: int = 64
    """Ids kept per position for topk; the rest of the teacher's mass becomes one bucket."""
    draws: int = 32
    """Draws per position for sampled (duplicates merge, so fewer unique ids are stored)."""
    temperature: float = 1.0
    """Proposal temperature of sampled (1 = sample from the target itself: exact weights)."""
    value_dtype: ValueDtype = "fp16"
    """Stored log-prob type: fp16, bf16 or int8 (companded; error stated in docs/cache-format.md)."""
    compression: Literal["none", "zlib"] = "none"
    """zlib: each shard file DEFLATE-compressed whole (1.5-2.5x smaller, benchmarks/cache_compression.json;
    the reader then decompresses a shard into memory instead of memory-mapping it)."""
    store_logp: bool = False
    """sampled: also store the target's log-prob at each drawn id (needed by rkl, jsd, tvd and a
    temperature other than 1); without it a row is its ids, draw counts and one float, enough for fkl."""
    batch_size: int = 8
    """Sequences per forward pass."""
    shard_size: int = 256
    """Sequences per shard (the unit of resume and of rank assignment)."""
    seed: int = 0
    """Seed of the sampled scheme (per-shard generators derive from it)."""
    tp: int = 1
    """Tensor-parallel size of the target (needs models.tensor_parallel)."""
    tensorboard_dir: str | None = None
    """Where rank 0 writes tensorboard scalars (default: <out_dir>/tb)."""
    generated: str | None = None
    """A `generate` job's directory: cache its sequences (prompt + sampled continuation, the
    continuation supervised) instead of data's answers (None = data's answers)."""
    generated_fraction: float = 1.0
    """With generated: the share λ of generated sequences (DistillSpec's mixture); the rest are the
    dataset's answers to the same prompts (then data must be the generate job's prompts). 1 = generated only."""

    def validate(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"cache scheme '{self.scheme}' must be one of {list(SCHEMES)}")
        if self.value_dtype not in VALUE_DTYPES:
            raise ValueError(f"cache value_dtype '{self.value_dtype}' must be one of {list(VALUE_DTYPES)}")
        for name in ("top_k", "draws", "batch_size", "shard_size", "tp"):
            if getattr(self, name) < 1:
                raise ValueError(f"cache {name}={getattr(self, name)} must be >= 1")
        if self.temperature <= 0:
            raise ValueError(f"cache temperature={self.temperature} must be > 0")
        if self.scheme == "sampled" and self.temperature != 1.0 and not self.store_logp:
            raise ValueError(f"cache temperature={self.temperature} needs store_logp: true (the importance weights "
                             "need the target's log-probs); set it, or temperature: 1")
        if not 0.0 <= self.generated_fraction <= 1.0:
            raise ValueError(f"cache generated_fraction={self.generated_fraction} must be in [0, 1] (the share λ of "
                             "generated sequences)")
        if self.generated is None and self.generated_fraction != 1.0:
            raise ValueError("cache generated_fraction needs generated: DIR (a generate job's output) to mix with")
        if self.tp > 1 and not self.model.name_or_path:
            raise ValueError("tp > 1 needs model.name_or_path (an HF checkpoint directory to slice), not a preset")


@dataclass(kw_only=True)
class JobSpec:
    """Everything that determines the cache's bytes (besides the model weights)."""

    scheme: str
    top_k: int = 64
    draws: int = 32
    temperature: float = 1.0
    value_dtype: str = "fp16"
    store_logp: bool = False
    compression: str = "none"
    batch_size: int = 8
    shard_size: int = 256
    seed: int = 0
    vocab_size: int
    extra: dict = field(default_factory=dict)
    """Identities for the manifest: target, tokenizer_fingerprint, data, split ..."""


def spec_from_config(cfg: CacheConfig, vocab_size: int, extra: dict) -> JobSpec:
    """The byte-determining part of ``cfg``: every JobSpec field the config has, copied by name
    (so a field added to both can never be forgotten here)."""
    shared = {f.name: getattr(cfg, f.name) for f in fields(JobSpec) if hasattr(cfg, f.name)}
    return JobSpec(**{**shared, "vocab_size": vocab_size, "extra": extra})


def hf_target_fn(model, *, scheme: str, top_k: int = 64, draws: int = 32, temperature: float = 1.0,
                 chunked: bool = True) -> TargetFn:
    """Full-vocabulary TargetFn over a Hugging Face causal LM.

    ``chunked`` (default): the target's head runs row chunk by row chunk inside the encoders
    (``models.head.ChunkedLogits``), so a long-context batch needs O(chunk × V) beyond the model
    instead of N × V; the chunks are the encoders' own, so the bytes written are those of the
    dense logits (tests/unit/test_cache_store.py). ``chunked=False``: the N × V logits (the reference)."""
    chunked = chunked and fusable(model) is None

    @torch.no_grad()
    def target(input_ids_BT, attention_mask_BT, loss_mask_BT, generator):
        rows = chunked_logits if chunked else masked_logits
        logits_NV = rows(model, input_ids_BT, attention_mask_BT, loss_mask_BT)
        if scheme == "topk":
            return topk_targets(logits_NV, top_k).to("cpu")
        return sampled_targets(logits_NV, draws, generator, temperature).to("cpu")

    return target


def shard_seed(seed: int, index: int) -> int:
    """The sampled scheme's generator seed of shard ``index`` (independent of ranks and resumes)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


# Manifest fields that describe the data but do not determine the cache's bytes (its token ids are
# in data.fingerprint): they never enter the job's fingerprint, so adding one keeps old caches valid.
DESCRIPTIVE_DATA_KEYS = ("prompt_format", "chat_template")


def _hash(settings: dict, extra: dict, num_sequences: int, *, target_by: str) -> str:
    """sha256 of the job's settings and identities. ``target_by``: how the target enters —
    "weights" (today: its content fingerprint, its path left out when the fingerprint is there)
    or "path" (earlier versions: its path, no fingerprint). Descriptive data fields never enter."""
    extra = dict(extra)
    target = extra.get("target")
    if isinstance(target, dict):
        drop = "weights" if target_by == "path" else ("identity" if "weights" in target else None)
        extra["target"] = {k: v for k, v in target.items() if k != drop}
    if isinstance(extra.get("data"), dict):
        extra["data"] = {k: v for k, v in extra["data"].items() if k not in DESCRIPTIVE_DATA_KEYS}
    blob = json.dumps({**settings, "extra": extra, "num_sequences": num_sequences}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def job_fingerprint(spec: JobSpec, num_sequences: int) -> str:
    """The hash of what determines the cache's bytes: the settings, the data, the tokenizer and the
    target's weights — never where they are. The target's path (``extra.target.identity``) is left
    out when its content fingerprint (``extra.target.weights``) is there, and out_dir never enters,
    so a moved cache, a copied target or a relative vs absolute path still resumes."""
    return _hash(_byte_settings(spec), spec.extra, num_sequences, target_by="weights")


def format1_fingerprints(spec: JobSpec, num_sequences: int) -> list[str]:
    """What format 1 recorded for the same sampled job (today's and the legacy hash, settings as
    they were): a COMPLETE format-1 cache of this job is accepted as done (it is still read), never
    resumed (format 2 writes other bytes)."""
    if spec.scheme != "sampled" or spec.compression != "none":
        return []
    settings = {k: v for k, v in spec.__dict__.items() if k not in ("store_logp", "compression", "extra")}
    return [_hash(settings, spec.extra, num_sequences, target_by=by) for by in ("weights", "path")]


def _byte_settings(spec: JobSpec) -> dict:
    """The settings as hashed: a top-k job leaves out store_logp (its bytes are format 1's, so its
    fingerprint is too); a sampled job adds its row layout (format 2's compact rows)."""
    settings = {k: v for k, v in spec.__dict__.items() if k not in ("store_logp", "compression", "extra")}
    if spec.compression != "none":
        settings["compression"] = spec.compression
    if spec.scheme == "sampled":
        settings.update(store_logp=spec.store_logp, sampled_layout="compact")
    return settings


def legacy_fingerprints(spec: JobSpec, num_sequences: int) -> list[str]:
    """What the same job's ``job.json`` held when written by an earlier version (format 1 before
    weights fingerprints: the settings and identities hashed as they were, the target by its
    path): a rerun of the same command on such a cache resumes or finds it complete instead of
    calling it 'different settings'."""
    if spec.scheme == "sampled":
        return []  # format 1 wrote other bytes for sampled rows: an old sampled cache is another job
    return [_hash(_byte_settings(spec), spec.extra, num_sequences, target_by="path")]


def check_job(sequences: Sequence[Any], spec: JobSpec) -> None:
    """Everything about the job that can be refused before anything is written (one-line ValueError)."""
    if not sequences:
        raise ValueError("no sequences to cache: the data split is empty; check data.task/split/limit")
    if spec.scheme == "topk" and spec.top_k > spec.vocab_size:
        raise ValueError(f"cache top_k={spec.top_k} exceeds the target's vocabulary ({spec.vocab_size} ids); "
                         f"set top_k <= {spec.vocab_size}")
    if spec.scheme == "sampled" and spec.temperature != 1.0 and not spec.store_logp:
        raise ValueError(f"cache temperature={spec.temperature} needs store_logp: true (the importance weights "
                         "need the target's log-probs); set it, or temperature: 1")
    if spec.compression not in fmt.COMPRESSIONS:
        raise ValueError(f"cache compression '{spec.compression}' must be one of {list(fmt.COMPRESSIONS)}")
    top = max((max(s.input_ids) for s in sequences if len(s.input_ids)), default=-1)
    if top >= spec.vocab_size:
        raise ValueError(f"the tokenized data holds token id {top} but the target's vocabulary has {spec.vocab_size} "
                         "ids: the tokenizer is not the target's; set tokenizer to the target's own")


def compute_shard(sequences: Sequence[Any], target_fn: TargetFn, spec: JobSpec, index: int,
                  device: Any, on_batch: Callable[[int], None] | None = None,
                  ) -> tuple[list[np.ndarray], list[np.ndarray], SparseTarget]:
    """Run the target over one shard's sequences in order: -> (input ids, loss masks, targets).
    ``on_batch(tokens)`` after each batch (progress moves per batch, not per shard: a real target
    takes minutes per shard)."""
    gen = torch.Generator().manual_seed(shard_seed(spec.seed, index))
    ids_out, masks_out, parts = [], [], []
    for b0 in range(0, len(sequences), spec.batch_size):
        batch = sequences[b0:b0 + spec.batch_size]
        b = collate(batch)
        parts.append(target_fn(b.input_ids.to(device), b.attention_mask.to(device), b.loss_mask.to(device), gen))
        ids_out += [np.asarray(s.input_ids, dtype=np.int64) for s in batch]
        masks_out += [b.loss_mask[i, :len(s.input_ids)].numpy() for i, s in enumerate(batch)]
        if on_batch is not None:
            on_batch(sum(len(s.input_ids) for s in batch))
    return ids_out, masks_out, SparseTarget.cat(parts, scheme=spec.scheme)


class CacheJob(ShardedJob):
    """The cache job in the sharded-job skeleton (``jobs.run_sharded``): shard ``j`` = global
    sequences ``[j*shard_size, (j+1)*shard_size)``, its target rows computed by ``target_fn``."""

    what, name, unit = "cache directory", "cache", "tokens"

    def __init__(self, sequences: Sequence[Any], target_fn: TargetFn, spec: JobSpec, out_dir: Path, *,
                 device: Any, config: Any, tensorboard_dir: str | None):
        self.sequences, self.target_fn, self.spec, self.device, self.config = sequences, target_fn, spec, device, config
        self.directory = out_dir
        self.n_shards = math.ceil(len(sequences) / spec.shard_size)
        self.tensorboard_dir = tensorboard_dir or str(out_dir / "tb")
        self.job_file = JobFile(out_dir, job_fingerprint(spec, len(sequences)), what=self.what, kind="cache",
                                other_job="holds a cache made with different settings or data",
                                legacy=legacy_fingerprints(spec, len(sequences)), fresh_ok=("tb", ".lock"),
                                shard_dir=fmt.SHARD_DIR)

    def shard(self, index: int) -> Sequence[Any]:
        return self.sequences[index * self.spec.shard_size:(index + 1) * self.spec.shard_size]

    def completed(self) -> dict | None:
        # Nothing to write then: rewriting the manifest would drop a reference column added since.
        done = self.job_file.finished_manifest(fmt.manifest_path(self.directory), self.finished)
        if done is None and self.spec.scheme == "sampled":  # a complete format-1 cache of this job is still read
            old = self.job_file.finished_manifest(fmt.manifest_path(self.directory), self.finished,
                                                  accepted=format1_fingerprints(self.spec, len(self.sequences)))
            done = old if old is not None and old.get("format_version") == 1 else None
        return done

    def admit(self) -> None:
        self.job_file.admit()
        if self.config is not None:
            save_resolved(self.config, self.directory)

    def finished(self, index: int) -> dict | None:
        return finished_shard(self.directory, index)

    def work(self, index: int) -> int:
        return sum(len(s.input_ids) for s in self.shard(index))

    def run_shard(self, index: int, *, writes: bool, advance: Callable[[int], None]) -> dict[str, float]:
        chunk, spec = self.shard(index), self.spec
        ids, masks, target = compute_shard(chunk, self.target_fn, spec, index, self.device, on_batch=advance)
        if writes:
            first = index * spec.shard_size
            write_shard(self.directory, index, seq_ids=range(first, first + len(chunk)), input_ids=ids,
                        loss_masks=masks, target=target, vocab_size=spec.vocab_size, value_dtype=spec.value_dtype,
                        draws=spec.draws if spec.scheme == "sampled" else None, store_logp=spec.store_logp,
                        compression=spec.compression)
        return {"cache/supervised_per_shard": len(target)}

    def write_manifest(self) -> dict:
        return write_manifest(self.directory, self.spec, self.n_shards, len(self.sequences))


def write_cache(sequences: Sequence[Any], target_fn: TargetFn, spec: JobSpec, out_dir: str | Path, *,
                ps=None, device: Any = "cpu", config: Any = None, tensorboard_dir: str | None = None) -> dict | None:
    """Write (or finish) the cache; returns the manifest on rank 0, None elsewhere.

    ``ps`` is the ParallelState (None = one process); only TP leaders write."""
    check_job(sequences, spec)  # before anything is written: a refused job leaves no job.json behind
    job = CacheJob(sequences, target_fn, spec, Path(out_dir), device=device, config=config,
                   tensorboard_dir=tensorboard_dir)
    return run_sharded(job, job_roles(ps))


def write_manifest(out_dir: Path, spec: JobSpec, n_shards: int, num_sequences: int) -> dict:
    """Collect every shard's sidecar and write ``manifest.json`` (complete) atomically."""
    shards = []
    for j in range(n_shards):
        paths = fmt.shard_paths(out_dir, j)
        meta = fmt.read_json(paths["meta"], "shard sidecar")
        fmt.check_shard_file(paths["data"], meta, full=False)
        shards.append(meta)
    manifest = {
        "format_version": fmt.FORMAT_VERSION, "complete": True, "scheme": spec.scheme,
        "params": {"top_k": spec.top_k, "draws": spec.draws, "temperature": spec.temperature,
                   "value_dtype": spec.value_dtype, "id_dtype": id_dtype(spec.vocab_size).name,
                   "store_logp": spec.store_logp if spec.scheme == "sampled" else True,
                   "compression": spec.compression,
                   "shard_size": spec.shard_size, "batch_size": spec.batch_size, "seed": spec.seed},
        "vocab_size": spec.vocab_size, "num_sequences": num_sequences,
        "num_tokens": sum(s["tokens"] for s in shards), "num_supervised": sum(s["supervised"] for s in shards),
        "shards": shards, **spec.extra,
    }
    manifest.setdefault("tokenizer_fingerprint", None)
    previous = fmt.manifest_path(out_dir)
    if previous.is_file():
        # A shard rewritten after damage is byte-identical (the job is deterministic), so a reference
        # column added earlier still applies: keep its record (its own files are checked when read).
        reference = fmt.read_json(previous, "manifest").get("reference")
        if reference:
            manifest["reference"] = reference
    fmt.atomic_write_json(fmt.manifest_path(out_dir), manifest)
    logger.info("cache complete: %d sequences, %d supervised tokens in %d shards at %s", num_sequences,
                manifest["num_supervised"], n_shards, out_dir)
    return manifest


def prepare_job(cfg: CacheConfig, ps=None, device: Any = "cpu") -> tuple[list, TargetFn, JobSpec]:
    """Data, tokenizer and target of a ``CacheConfig`` -> (sequences, target_fn, spec); no side effects."""
    tokenizer = job_tokenizer(cfg.tokenizer, cfg.model.files, job="cache")
    generated_info: dict = {}
    if cfg.generated is not None:  # on-policy data (data/generated.py): the λ-mixture of its rows and data's answers
        sequences, generated_info = generated_sequences(cfg.data, tokenizer, cfg.generated, cfg.generated_fraction,
                                                        cfg.seed)
    else:
        examples = load_examples(cfg.data, tokenizer=tokenizer)
        sequences = tokenize_examples(examples, tokenizer, max_length=cfg.data.max_length)
    if cfg.tp > 1:
        target_fn, vocab_size = make_target_fn(cfg.model.files, ps, dtype=cfg.model.dtype, scheme=cfg.scheme,
                                               top_k=cfg.top_k, draws=cfg.draws, temperature=cfg.temperature)
    else:
        model = load_causal_lm(cfg.model, vocab_size=len(tokenizer), device=device)
        vocab_size = int(model.get_output_embeddings().weight.shape[0])
        target_fn = hf_target_fn(model, scheme=cfg.scheme, top_k=cfg.top_k, draws=cfg.draws,
                                 temperature=cfg.temperature)
        logger.info("cache: target %s (%.1fM parameters, vocabulary %d) over %d sequences, %d tokens",
                    model_identity(cfg.model), param_count(model) / 1e6, vocab_size, len(sequences),
                    sum(len(s.input_ids) for s in sequences))
    if cfg.tp == 1:
        check_length(model, max((len(s.input_ids) for s in sequences), default=0))
    extra = {"target": {"identity": model_identity(cfg.model), "weights": weights_fingerprint(cfg.model),
                        "dtype": cfg.model.dtype, "tp": cfg.tp},
             "tokenizer_fingerprint": vocab_fingerprint(tokenizer),
             "data": {"task": cfg.data.task, "split": cfg.data.split, "limit": cfg.data.limit,
                      "max_length": cfg.data.max_length, "fingerprint": data_fingerprint(sequences),
                      # descriptive (DESCRIPTIVE_DATA_KEYS): what exported drafts' chat templates are built from
                      "prompt_format": prompt_format(cfg.data), "chat_template": chat_template_for(cfg.data),
                      **generated_info},
             "split": cfg.data.split}
    return sequences, target_fn, spec_from_config(cfg, vocab_size, extra)


def describe_cache(out_dir: str | Path, manifest: dict) -> str:
    """One line on a finished cache (what ``adaspec-dist cache`` prints at its end)."""
    return (f"cache {out_dir}: {manifest['num_sequences']} sequences, {manifest['num_supervised']} supervised tokens, "
            f"{len(manifest['shards'])} shards")


def produce_cache(cfg: CacheConfig) -> dict | None:
    """The ``cache`` job: process grid, then :func:`prepare_job`, then :func:`write_cache`; returns the
    manifest on global rank 0, None elsewhere. Rerunning it after a crash finishes the cache."""
    ps = init_distributed(cfg.tp)
    sequences, target_fn, spec = prepare_job(cfg, ps, ps.device)
    return write_cache(sequences, target_fn, spec, cfg.out_dir, ps=ps, device=ps.device, config=cfg,
                         tensorboard_dir=cfg.tensorboard_dir)
