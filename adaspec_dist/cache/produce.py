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
* ``write_cache(sequences, target_fn, spec, out_dir, ps=...)``: shard ``j`` = global sequences
  ``[j*shard_size, (j+1)*shard_size)``, owned by DP rank ``j % dp_size``, batched in order, with
  a generator seeded from ``(seed, j)``. So shard bytes depend neither on the number of ranks
  nor on interruptions: a 2-rank job equals a 1-rank job and a killed job rerun with the same
  command skips its complete shards and ends byte-identical. Rank 0 writes ``manifest.json``
  last. A directory holding a different job (config or data) is refused, never overwritten; one
  job at a time writes into a directory (:func:`claim_directory`), and every check that can be made
  first (:func:`check_job`, :func:`check_positions`) is made before anything is written.

Shapes: B batch, T time, V vocabulary, N supervised positions, K ids per row.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Collection, Literal, Sequence

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from adaspec_dist.cache import format as fmt
from adaspec_dist.cache.writer import Roles, finished_shard, job_roles, loss_mask_from_labels, write_shard
from adaspec_dist.config import save_resolved
from adaspec_dist.data.generated import generated_sequences
from adaspec_dist.data.tasks import DataConfig, chat_template_for, load_examples, prompt_format
from adaspec_dist.data.tokenize import data_fingerprint, tokenize_examples
from adaspec_dist.data.tokenizer import load_tokenizer, vocab_fingerprint
from adaspec_dist.dist import init_distributed
from adaspec_dist.files import DirectoryClaim, remove_stale_tmp
from adaspec_dist.models.load import ModelConfig, load_causal_lm, model_identity, param_count, weights_fingerprint
from adaspec_dist.models.head import chunked_logits, fusable
from adaspec_dist.models.logits import masked_logits
from adaspec_dist.models.tp_target import make_target_fn
from adaspec_dist.sparse.target import (SCHEMES, VALUE_DTYPES, Scheme, SparseTarget, ValueDtype, id_dtype,
                                        sampled_targets, topk_targets)

logger = logging.getLogger(__name__)

TargetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], SparseTarget]
JOB_FILE = "job.json"


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


def completed_manifest(out_dir: Path, fingerprint: str | Collection[str]) -> dict | None:
    """The manifest of a finished cache made by this very job (its fingerprint, or one of the
    ``fingerprint`` collection: today's and the legacy ones), else None."""
    accepted = {fingerprint} if isinstance(fingerprint, str) else set(fingerprint)
    job, manifest = out_dir / JOB_FILE, fmt.manifest_path(out_dir)
    if not (job.is_file() and manifest.is_file()):
        return None
    if fmt.read_json(job, "job file").get("fingerprint") not in accepted:
        return None
    done = fmt.read_json(manifest, "manifest")
    if not done.get("complete"):
        return None
    # Each shard re-hashed, as a resume would: a deleted or damaged shard is rewritten, not skipped.
    intact = all(finished_shard(out_dir, sh["index"]) is not None for sh in done["shards"])
    return done if intact else None


def claim_directory(out_dir: Path, fingerprint: str, me: Roles, legacy: Collection[str] = ()) -> DirectoryClaim | None:
    """Claim ``out_dir`` for this job, refuse a directory that holds another job, record ours.

    The claim is per job: the main rank takes an exclusive lock on the directory (held until the
    caller releases the returned claim; ``adaspec_dist.files``), checks ``job.json`` and writes it,
    clears the temp files a killed run left; the other ranks wait for its answer, so every rank
    gets the same one. A second job into the same directory — any settings, any timing — is
    refused in one line while the first holds the lock, and by ``job.json`` after it. A ``job.json``
    an earlier version wrote for the same job (one of ``legacy``) is rewritten with today's."""
    claim, refusal = None, None
    if me.is_main:
        try:
            claim = DirectoryClaim.acquire(out_dir, what="cache directory",
                                           fix="wait for it to finish or choose another out_dir")
            job = out_dir / JOB_FILE
            if job.exists():
                found = fmt.read_json(job, "job file").get("fingerprint")
                if found in legacy and found != fingerprint:
                    fmt.atomic_write_json(job, {"fingerprint": fingerprint})
                    logger.info("%s: written by an earlier adaspec-dist version for the same job; updated", job)
                elif found != fingerprint:
                    raise ValueError(f"cache directory '{out_dir}' holds a cache made with different settings or "
                                     f"data (see {job}); choose a new out_dir or delete that directory")
            elif any(p.name not in ("tb", ".lock") for p in out_dir.iterdir()):
                raise ValueError(f"directory '{out_dir}' is not empty and holds no cache job; choose a new out_dir")
            else:
                (out_dir / fmt.SHARD_DIR).mkdir(parents=True, exist_ok=True)
                fmt.atomic_write_json(job, {"fingerprint": fingerprint})
            remove_stale_tmp(out_dir)  # no writer is running: the claim excludes other jobs, ours waits
        except (ValueError, OSError) as err:  # every rank must hear the answer, whatever it is
            if claim is not None:
                claim.release()
            refusal = str(err)
    refusal = me.share(refusal)
    if refusal:
        raise ValueError(refusal)
    return claim


def _pad(batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[np.ndarray]]:
    t_max = max(len(s.input_ids) for s in batch)
    ids = torch.zeros(len(batch), t_max, dtype=torch.long)
    attn = torch.zeros(len(batch), t_max, dtype=torch.long)
    mask = torch.zeros(len(batch), t_max, dtype=torch.bool)
    masks = []
    for i, s in enumerate(batch):
        m = loss_mask_from_labels(s.labels)
        ids[i, :len(s.input_ids)] = torch.tensor(s.input_ids)
        attn[i, :len(s.input_ids)] = 1
        mask[i, :len(m)] = torch.from_numpy(m)
        masks.append(m)
    return ids, attn, mask, masks


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
        ids, attn, mask, masks = _pad(batch)
        parts.append(target_fn(ids.to(device), attn.to(device), mask.to(device), gen))
        ids_out += [np.asarray(s.input_ids, dtype=np.int64) for s in batch]
        masks_out += masks
        if on_batch is not None:
            on_batch(sum(len(s.input_ids) for s in batch))
    return ids_out, masks_out, SparseTarget.cat(parts, scheme=spec.scheme)


def write_cache(sequences: Sequence[Any], target_fn: TargetFn, spec: JobSpec, out_dir: str | Path, *,
                ps=None, device: Any = "cpu", config: Any = None, tensorboard_dir: str | None = None) -> dict | None:
    """Write (or finish) the cache; returns the manifest on rank 0, None elsewhere.

    ``ps`` is the ParallelState (None = one process); only TP leaders write.
    """
    out_dir = Path(out_dir)
    check_job(sequences, spec)  # before anything is written: a refused job leaves no job.json behind
    me = job_roles(ps)
    fingerprint = job_fingerprint(spec, len(sequences))
    legacy = legacy_fingerprints(spec, len(sequences))
    done = completed_manifest(out_dir, [fingerprint, *legacy])
    if done is None and spec.scheme == "sampled" :
        old = completed_manifest(out_dir, format1_fingerprints(spec, len(sequences)))
        done = old if old is not None and old.get("format_version") == 1 else None
    if done is not None:
        # Nothing to write: rewriting the manifest would drop a reference column added since.
        logger.info("cache %s is already complete (%d shards); nothing to do", out_dir, len(done["shards"]))
        return done if me.is_main else None
    claim = claim_directory(out_dir, fingerprint, me, legacy)
    try:
        return _write_claimed(sequences, target_fn, spec, out_dir, me, device=device, config=config,
                              tensorboard_dir=tensorboard_dir)
    finally:
        if claim is not None:
            claim.release()


def _write_claimed(sequences: Sequence[Any], target_fn: TargetFn, spec: JobSpec, out_dir: Path, me: Roles, *,
                   device: Any, config: Any, tensorboard_dir: str | None) -> dict | None:
    """The shards this rank owns, then (main rank) the manifest; the directory is this job's."""
    if me.is_main and config is not None:
        save_resolved(config, out_dir)

    n_shards = math.ceil(len(sequences) / spec.shard_size)
    mine = [j for j in range(n_shards) if j % me.dp_size == me.dp_rank]
    todo = [j for j in mine if finished_shard(out_dir, j) is None]
    if len(todo) < len(mine):
        logger.info("rank %d: %d of its %d shards are already complete; resuming", me.dp_rank,
                    len(mine) - len(todo), len(mine))
    bar = writer_tb = None
    if me.is_main:
        total = sum(len(s.input_ids) for j in todo for s in sequences[j * spec.shard_size:(j + 1) * spec.shard_size])
        bar = tqdm(total=total, unit="tok", unit_scale=True, desc="cache (rank 0)", dynamic_ncols=True)
        from torch.utils.tensorboard import SummaryWriter
        writer_tb = SummaryWriter(tensorboard_dir or str(out_dir / "tb"))
    t0 = time.perf_counter()
    done_tokens = 0
    with logging_redirect_tqdm():  # log lines go above the bar, not onto its line
        for j in todo:
            chunk = sequences[j * spec.shard_size:(j + 1) * spec.shard_size]
            ids, masks, target = compute_shard(chunk, target_fn, spec, j, device,
                                               on_batch=bar.update if bar is not None else None)
            if me.writes:
                write_shard(out_dir, j, seq_ids=range(j * spec.shard_size, j * spec.shard_size + len(chunk)),
                            input_ids=ids, loss_masks=masks, target=target, vocab_size=spec.vocab_size,
                            value_dtype=spec.value_dtype, draws=spec.draws if spec.scheme == "sampled" else None,
                            store_logp=spec.store_logp, compression=spec.compression)
            n_tok = sum(len(x) for x in ids)
            done_tokens += n_tok
            if bar is not None:
                rate = done_tokens / max(time.perf_counter() - t0, 1e-9)
                writer_tb.add_scalar("cache/tokens_per_s_rank0", rate, j)
                writer_tb.add_scalar("cache/supervised_per_shard", len(target), j)
    if bar is not None:
        bar.close()
        writer_tb.close()
    me.barrier()
    manifest = write_manifest(out_dir, spec, n_shards, len(sequences)) if me.is_main else None
    me.barrier()
    return manifest


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
    tok_path = cfg.tokenizer or cfg.model.files
    if not tok_path:
        raise ValueError("cache needs a tokenizer: set tokenizer: PATH (a preset model has none of its own)")
    tokenizer = load_tokenizer(tok_path, model_key=None if cfg.tokenizer else "model.name_or_path")
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
        check_positions(model, sequences)
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


def check_positions(model, sequences: Sequence[Any]) -> None:
    """Refuse sequences longer than the target's position limit (its logits there mean nothing)."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    longest = max((len(s.input_ids) for s in sequences), default=0)
    if isinstance(limit, int) and longest > limit:
        raise ValueError(f"a sequence has {longest} tokens but the target's max_position_embeddings is {limit}; "
                         f"set data.max_length <= {limit}")


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
