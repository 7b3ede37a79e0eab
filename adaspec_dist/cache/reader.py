"""Stream a cache back as training batches: memory-mapped, rank-aware, resumable, prefetched.

reader.py knows nothing about models: it yields token ids, masks, sparse targets and the
optional reference-loss column.

Contract
--------
* ``CacheReader(cache_dir, batch_size=B, dp_rank=r, dp_size=R, seed=s, shuffle=True,
  prefetch=2, verify="open", vocab_size=None, tokenizer_fingerprint=None, split=None)``.
* Epoch order: a permutation of all global sequence indices drawn from ``(seed, epoch)``
  (identity when ``shuffle=False``), cut into global batches of ``B * R`` sequences; rank ``r``
  takes slice ``[r*B, (r+1)*B)`` of each. So per-rank streams are disjoint, together cover every
  sequence exactly once per epoch, and ``len(reader) = ceil(S / (B*R))`` on EVERY rank (DeepSpeed's
  collectives line up). The last batch of a rank may be smaller than ``B``, even empty
  (``B = 0``): trainers must run their step (collectives) on it anyway.
* ``CacheBatch``: ``input_ids`` (B,T) int64 right-padded with 0, ``attention_mask`` (B,T) int64,
  ``loss_mask`` (B,T) bool, ``target`` SparseTarget with ``N = loss_mask.sum()`` rows in
  row-major order, ``ref_loss`` (N,) float32 | None, ``seq_ids`` (B,) int64.
* ``set_epoch(e)`` (a different epoch restarts at batch 0), ``state_dict()`` /
  ``load_state_dict()`` = (epoch, batches consumed): iterating after a load resumes exactly
  where the saved reader stopped. An iteration that finished the epoch starts it over.
* ``verify``: ``"full"`` hashes every shard when the reader is built; ``"open"`` checks sizes
  then and each shard's sha256 when it is first opened; ``"none"`` only checks sizes.
  Each shard's values are checked finite when it is first opened (NaN or +inf log-probs, non-finite
  weights or reference losses: a one-line CacheError naming the file, whatever ``verify`` says).
  ``with_reference=False`` ignores the reference column (the job that (re)computes it).
* Batches are decoded in a background thread, ``prefetch`` batches ahead (0 = inline); ending an
  iteration early (``break``, an exception, closing it) stops and joins that thread, so no thread
  is left decoding (in torch's C++ code) when the process exits.
* ``shard_span(j) -> (lo, hi)``: the global sequence positions ``[lo, hi)`` of shard ``j``;
  ``shard_files(seq_ids)``: the shard files holding those sequences (for messages about a batch);
  ``drop_reference()``: serve batches without the reference column (``ref_loss`` None), for the
  job that (re)computes it.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from adaspec_dist.cache.format import (CacheError, check_finite, check_shard_file, check_tokenizer, check_vocab,
                                       load_manifest, open_safetensors, reference_fix, SHARD_DIR, sha256_file)
from adaspec_dist.cache.format import compact_rows as fmt_compact_rows
from adaspec_dist.sparse.target import SparseTarget, decode_values

logger = logging.getLogger(__name__)

VERIFY_MODES = ("open", "full", "none")


@dataclass
class CacheBatch:
    input_ids: torch.Tensor  # (B, T) int64
    attention_mask: torch.Tensor  # (B, T) int64
    loss_mask: torch.Tensor  # (B, T) bool
    target: SparseTarget  # N = loss_mask.sum() rows
    ref_loss: torch.Tensor | None  # (N,) float32
    seq_ids: torch.Tensor  # (B,) int64

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "CacheBatch":
        return CacheBatch(input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
                          loss_mask=self.loss_mask.to(device), target=self.target.to(device),
                          ref_loss=None if self.ref_loss is None else self.ref_loss.to(device),
                          seq_ids=self.seq_ids)


class CacheReader:
    """See the module docstring."""

    def __init__(self, cache_dir, *, batch_size: int, dp_rank: int = 0, dp_size: int = 1, seed: int = 0,
                 shuffle: bool = True, prefetch: int = 2, verify: str = "open", vocab_size: int | None = None,
                 tokenizer_fingerprint: str | None = None, split: str | None = None, with_reference: bool = True):
        if batch_size < 1:
            raise ValueError(f"reader batch_size={batch_size} must be >= 1")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank={dp_rank} must be in [0, dp_size={dp_size})")
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify='{verify}' must be one of {list(VERIFY_MODES)}")
        self.cache_dir = Path(cache_dir)
        self.manifest = load_manifest(self.cache_dir)
        where = str(self.cache_dir)
        check_vocab(self.manifest, vocab_size, where)
        check_tokenizer(self.manifest, tokenizer_fingerprint, where)
        if split is not None and self.manifest.get("split") not in (None, split):
            raise CacheError(f"cache '{where}' holds split '{self.manifest.get('split')}', not '{split}'; "
                             "point to the cache of that split")
        self.batch_size, self.dp_rank, self.dp_size = batch_size, dp_rank, dp_size
        self.seed, self.shuffle, self.prefetch, self.verify = seed, shuffle, prefetch, verify
        self.scheme = self.manifest["scheme"]
        self.value_dtype = self.manifest["params"]["value_dtype"]
        self.compact = fmt_compact_rows(self.manifest)
        self.compression = self.manifest["params"].get("compression", "none")
        self.draws = int(self.manifest["params"].get("draws") or 1)
        self.temperature = float(self.manifest["params"].get("temperature") or 1.0)
        self.shards = self.manifest["shards"]
        self.reference = self.manifest.get("reference") if with_reference else None
        shard_dir = self.cache_dir / SHARD_DIR
        for sh in self.shards:
            check_shard_file(shard_dir / sh["file"], sh, full=verify == "full")
            if self.reference:
                check_shard_file(shard_dir / self.reference["shards"][sh["file"]]["file"],
                                 self.reference["shards"][sh["file"]], full=verify == "full",
                                 fix=reference_fix(self.cache_dir, self.reference))
        counts = np.array([sh["sequences"] for sh in self.shards], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])  # global index -> shard
        self.num_sequences = int(self._starts[-1])
        self._open: dict[int, dict] = {}
        self._lock = threading.Lock()
        self.epoch, self.position = 0, 0

    # ----------------------------------------------------------------- shards
    def shard_span(self, shard: int) -> tuple[int, int]:
        """Global sequence positions ``[lo, hi)`` of shard ``shard`` (in the manifest's shard order)."""
        return int(self._starts[shard]), int(self._starts[shard + 1])

    def shard_files(self, seq_ids) -> list[str]:
        """The shard files holding the given global sequence ids (a batch's ``seq_ids``), in manifest
        order: what an error about a batch names. Shard j holds ids ``first_seq + [0, sequences)``;
        a manifest without ``first_seq`` numbers them by position."""
        wanted = {int(i) for i in seq_ids}
        out = []
        for j, sh in enumerate(self.shards):
            lo = sh.get("first_seq")
            lo = int(self._starts[j]) if lo is None else int(lo)
            if any(lo <= i < lo + int(sh["sequences"]) for i in wanted):
                out.append(sh["file"])
        return out

    def drop_reference(self) -> None:
        """Serve batches without the reference column (``ref_loss`` None): for the job computing it."""
        self.reference = None

    # ----------------------------------------------------------------- order and state
    def __len__(self) -> int:
        return math.ceil(self.num_sequences / (self.batch_size * self.dp_size))

    def epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_sequences)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_sequences)

    def batch_indices(self, epoch: int, b: int, order: np.ndarray | None = None) -> np.ndarray:
        """Global positions (in the cache's sequence numbering) of this rank's batch ``b``."""
        order = self.epoch_order(epoch) if order is None else order
        start = b * self.batch_size * self.dp_size + self.dp_rank * self.batch_size
        return order[start:start + self.batch_size]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "shuffle": self.shuffle,
                "batch_size": self.batch_size, "dp_size": self.dp_size, "num_sequences": self.num_sequences}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "shuffle", "batch_size", "dp_size", "num_sequences"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"reader state was saved with {key}={state[key]} but this reader has "
                                 f"{getattr(self, key)}; resume with the same settings to continue exactly")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    # ----------------------------------------------------------------- decoding
    def _shard(self, s: int) -> dict:
        with self._lock:
            if s not in self._open:
                sh = self.shards[s]
                path = self.cache_dir / SHARD_DIR / sh["file"]
                if self.verify == "open" and sha256_file(path) != sh["sha256"]:
                    raise CacheError(f"shard '{path}' fails its sha256 checksum: it is corrupt; delete it "
                                     "and rerun the cache job (same command) to rewrite it")
                arrays, _, _ = open_safetensors(path, self.compression)
                # Once per shard, before any of it is served: a NaN/inf that got past the writer (a
                # bad disk, an older writer, a re-sealed file) would train to NaN weights silently.
                check_finite(arrays, self.value_dtype, path, "the shard is corrupt or was written by a faulty "
                             "target; delete it and its .json sidecar and rerun the cache job (same command)")
                if self.compact:  # row r's entries are [entry_offsets[r], entry_offsets[r+1])
                    nnz = np.asarray(arrays["row_nnz"], dtype=np.int64)
                    arrays["entry_offsets"] = np.concatenate([[0], np.cumsum(nnz)]).astype(np.int64)
                if self.reference:
                    ref = self.reference["shards"][sh["file"]]
                    ref_path = self.cache_dir / SHARD_DIR / ref["file"]
                    fix = reference_fix(self.cache_dir, self.reference)
                    if self.verify == "open" and sha256_file(ref_path) != ref["sha256"]:
                        raise CacheError(f"reference column '{ref_path}' fails its sha256 checksum; {fix}")
                    column = np.load(ref_path, mmap_mode="r")
                    check_finite({"ref_loss": column}, self.value_dtype, ref_path, fix)
                    arrays["ref_loss"] = column
                self._open[s] = arrays
            return self._open[s]

    def load_batch(self, indices: np.ndarray) -> CacheBatch:
        """Decode the given global sequence positions into one CacheBatch (in that order)."""
        shard_of = np.searchsorted(self._starts, indices, side="right") - 1
        toks, masks, parts, refs, seq_ids = [], [], [], [], []
        for g, s in zip(indices.tolist(), shard_of.tolist()):
            a = self._shard(s)
            local = g - int(self._starts[s])
            t0, t1 = a["seq_offsets"][local:local + 2]
            r0, r1 = a["row_offsets"][local:local + 2]
            toks.append(np.asarray(a["tokens"][t0:t1], dtype=np.int64))
            masks.append(np.asarray(a["loss_mask"][t0:t1], dtype=bool))
            if self.compact:
                parts.append(self._compact_rows(a, int(r0), int(r1)))
            else:
                parts.append(SparseTarget(
                    ids=torch.from_numpy(np.asarray(a["ids"][r0:r1], dtype=np.int64)),
                    logp=decode_values(a["logp"][r0:r1], self.value_dtype),
                    weights=torch.from_numpy(np.array(a["weights"][r0:r1], dtype=np.float32))
                    if "weights" in a else None, scheme=self.scheme))
            if "ref_loss" in a:
                refs.append(np.asarray(a["ref_loss"][r0:r1], dtype=np.float32))
            seq_ids.append(int(a["seq_ids"][local]))
        b = len(toks)
        t_max = max((len(x) for x in toks), default=0)
        input_ids = torch.zeros(b, t_max, dtype=torch.long)
        attn = torch.zeros(b, t_max, dtype=torch.long)
        loss_mask = torch.zeros(b, t_max, dtype=torch.bool)
        for i, (x, m) in enumerate(zip(toks, masks)):
            input_ids[i, :len(x)] = torch.from_numpy(x)
            attn[i, :len(x)] = 1
            loss_mask[i, :len(x)] = torch.from_numpy(m)
        target = SparseTarget.cat(parts, scheme=self.scheme)
        if not parts:  # an empty batch still has the cache's K columns
            k = self.shards[0]["k"] if self.shards else 1
            if self.compact:
                target = self._compact_rows(self._shard(0), 0, 0) if self.shards else target
            else:
                target = SparseTarget(ids=torch.zeros(0, k, dtype=torch.long), logp=torch.zeros(0, k),
                                      weights=None if self.scheme == "topk" else torch.zeros(0, k),
                                      scheme=self.scheme)
        ref_loss = None
        if self.reference:
            ref_loss = torch.from_numpy(np.concatenate(refs)) if refs else torch.zeros(0)
        return CacheBatch(input_ids=input_ids, attention_mask=attn, loss_mask=loss_mask, target=target,
                          ref_loss=ref_loss, seq_ids=torch.tensor(seq_ids, dtype=torch.long))

    def _compact_rows(self, a: dict, r0: int, r1: int) -> SparseTarget:
        """Rows ``[r0, r1)`` of a format-2 sampled shard, padded to their widest row (id 0, weight 0):
        weights = counts / draws (at temperature τ ≠ 1 the self-normalised count · p/q, from the
        stored log-probs: log p − log q = (1 − 1/τ) log p + a per-row constant)."""
        e0, e1 = int(a["entry_offsets"][r0]), int(a["entry_offsets"][r1])
        nnz = np.asarray(a["row_nnz"][r0:r1], dtype=np.int64)
        n, width = r1 - r0, int(nnz.max()) if r1 > r0 else 1
        row = np.repeat(np.arange(n), nnz)
        col = np.arange(e1 - e0) - np.repeat(np.asarray(a["entry_offsets"][r0:r1]) - e0, nnz)
        ids = torch.zeros(n, width, dtype=torch.long)
        counts = torch.zeros(n, width, dtype=torch.long)
        ids[row, col] = torch.from_numpy(np.asarray(a["ids"][e0:e1], dtype=np.int64))
        counts[row, col] = torch.from_numpy(np.asarray(a["counts"][e0:e1], dtype=np.int64))
        logp = None
        if "logp" in a:
            logp = torch.zeros(n, width)
            flat = decode_values(a["logp"][e0:e1], self.value_dtype)
            logp[row, col] = flat
            if n:  # padding: a copy of the row's first value keeps everything finite
                logp = torch.where(counts > 0, logp, logp[:, :1])
        w = counts.float() / self.draws
        if self.temperature != 1.0:
            if logp is None:
                raise CacheError(f"cache '{self.cache_dir}' was sampled at temperature {self.temperature} but stores no "
                                 "log-probs; rebuild it with store_logp: true")
            log_w = torch.where(counts > 0, counts.double().log() + (1.0 - 1.0 / self.temperature) * logp.double(),
                                torch.tensor(float("-inf"), dtype=torch.float64))
            w = torch.softmax(log_w, -1).float() if n else w
        plogp = torch.from_numpy(np.array(a["plogp"][r0:r1], dtype=np.float32))
        return SparseTarget(ids=ids, logp=logp, weights=w, scheme="sampled", plogp=plogp, counts=counts)

    # ----------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[CacheBatch]:
        if self.position >= len(self):
            self.position = 0
        epoch, start, order = self.epoch, self.position, self.epoch_order(self.epoch)
        produce = (self.load_batch(self.batch_indices(epoch, b, order)) for b in range(start, len(self)))
        source = _prefetched(produce, self.prefetch) if self.prefetch > 0 else produce
        try:
            for batch in source:
                # Count before handing out: a checkpoint taken while processing this batch resumes after it.
                self.position += 1
                yield batch
        finally:
            close = getattr(source, "close", None)
            if close:
                close()


def _prefetched(gen: Iterator, depth: int, join_timeout_s: float = 60.0) -> Iterator:
    """Run ``gen`` in a daemon thread, ``depth`` items ahead; exceptions re-raise in the consumer.

    Closing this generator stops the thread and JOINS it (within one item's production): a
    daemon thread still inside torch's C++ code when the interpreter exits is killed by
    ``pthread_exit``, which aborts the process ("terminate called without an active exception",
    exit 134 instead of a preempted run's 143)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in gen:
                if not put(item):
                    return
            put(done)
        except BaseException as err:  # handed to the consumer, which re-raises it
            put(err)

    thread = threading.Thread(target=work, name="cache-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(join_timeout_s)
        if thread.is_alive():  # pragma: no cover  (a read stuck in the filesystem)
            logger.warning("the cache prefetch thread did not stop within %.0f s", join_timeout_s)
