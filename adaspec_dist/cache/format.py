"""The on-disk cache format: names, manifest, shard files, checksums (no torch.distributed).

Contract (the full description for other tools is docs/cache-format.md)
--------
* A cache is a directory: ``manifest.json`` (written last, by rank 0, atomically),
  ``config.yaml`` (the resolved job config) and ``shards/``.
* Shard ``j`` holds the global sequences ``[j * shard_size, (j + 1) * shard_size)`` and is one
  safetensors file ``shards/shard-{j:05d}.safetensors`` (readable by the ``safetensors``
  library; here memory-mapped with numpy by parsing the header) plus a sidecar
  ``shard-{j:05d}.json`` (counts, byte size, sha256) whose presence marks the shard complete.
  The optional reference column is ``shard-{j:05d}.ref.npy`` (float32, (N,)) + ``.ref.json``.
* Every file is written to ``NAME.<pid>.<random>.tmp`` (unique per writer, ``adaspec_dist.files``)
  and renamed, so a killed job leaves either the whole file or nothing under the final name, and
  two writers never share a temp file.
* ``check_*`` helpers raise :class:`CacheError` (a ``ValueError``) with one line naming the file
  and the fix.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from adaspec_dist import files
from adaspec_dist.sparse.divergence import KINDS, ROW_CONSTANT_KINDS

FORMAT_VERSION = 2
"""What this version writes: 2 = sampled rows compact (variable length: unique ids + draw counts,
log-probs optional); top-k shards are laid out as in 1."""
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
SHARD_DIR = "shards"

# safetensors dtype names <-> numpy (bf16 is carried as its raw 16-bit pattern).
_ST_TO_NP = {"U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16, "U32": np.uint32,
             "I32": np.int32, "I64": np.int64, "F16": np.float16, "BF16": np.uint16, "F32": np.float32,
             "F64": np.float64, "BOOL": np.bool_}
_NP_TO_ST = {np.dtype(v): k for k, v in _ST_TO_NP.items() if k != "BF16"}


class CacheError(ValueError):
    """A cache that cannot be used as is (one line: which file, what is wrong, what to do)."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_paths(cache_dir: str | os.PathLike, index: int) -> dict[str, Path]:
    base = Path(cache_dir) / SHARD_DIR / shard_name(index)
    return {"data": base.with_suffix(".safetensors"), "meta": base.with_suffix(".json"),
            "ref": Path(str(base) + ".ref.npy"), "ref_meta": Path(str(base) + ".ref.json")}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes | list[bytes | memoryview]) -> None:
    """Write ``data`` to ``path`` via a temp name unique to this writer + fsync + rename."""
    files.atomic_write_bytes(path, data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike, what: str = "file") -> dict:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise CacheError(f"{what} '{path}' is missing; rerun the cache job to complete the cache") from None
    except json.JSONDecodeError as err:
        raise CacheError(f"{what} '{path}' is not valid JSON ({err.msg}); delete it and rerun the cache job") from None


# ----------------------------------------------------------------------------- safetensors


COMPRESSIONS = ("none", "zlib")


def safetensors_blobs(arrays: dict[str, np.ndarray], dtypes: dict[str, str] | None = None,
                      metadata: dict[str, str] | None = None) -> list[bytes | memoryview]:
    """The bytes of a safetensors file holding ``arrays``, deterministically (sorted names).

    ``dtypes`` overrides the safetensors dtype name of an array (``"BF16"`` for uint16 bit patterns).
    """
    dtypes = dtypes or {}
    header: dict[str, Any] = {}
    blobs, offset = [], 0
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        st = dtypes.get(name) or _NP_TO_ST[arr.dtype]
        assert np.dtype(_ST_TO_NP[st]).itemsize == arr.dtype.itemsize, (name, st, arr.dtype)
        header[name] = {"dtype": st, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        blobs.append(memoryview(arr).cast("B"))
        offset += arr.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    return [struct.pack("<Q", len(raw)), raw, *blobs]


def write_safetensors(path: str | os.PathLike, arrays: dict[str, np.ndarray],
                      dtypes: dict[str, str] | None = None, metadata: dict[str, str] | None = None,
                      compression: str = "none") -> None:
    """Write numpy arrays as one safetensors file, deterministically and atomically; with
    ``compression="zlib"`` the whole file is stored DEFLATE-compressed (level 6)."""
    blobs = safetensors_blobs(arrays, dtypes, metadata)
    if compression == "zlib":
        comp = zlib.compressobj(6)
        blobs = [b"".join(comp.compress(b) for b in blobs) + comp.flush()]
    atomic_write_bytes(path, blobs)


def open_safetensors(path: str | os.PathLike, compression: str = "none"
                     ) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, str]]:
    """Memory-map a safetensors file (or decompress a zlib one into memory) -> (arrays, safetensors
    dtype names, metadata).

    Raises CacheError on a truncated or malformed file.
    """
    path = Path(path)
    if compression == "zlib":
        try:
            buf = zlib.decompress(path.read_bytes())
        except zlib.error:
            raise CacheError(f"shard '{path}' is not valid zlib data: it is truncated or corrupt; delete it and "
                             "rerun the cache job") from None
        return _parse_safetensors(path, len(buf), buf[:8], lambda n: buf[8:8 + n],
                                  lambda dt, off, shape: np.frombuffer(buf, dtype=dt, count=int(np.prod(shape)),
                                                                       offset=off).reshape(shape))
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        header = fh.read(n) if len(head) == 8 and n <= size - 8 else b""
    return _parse_safetensors(path, size, head, lambda n: header,
                              lambda dt, off, shape: np.memmap(path, dtype=dt, mode="r", offset=off, shape=shape))


def _parse_safetensors(path: Path, size: int, head: bytes, read_header, array_at):
    if len(head) < 8:
        raise CacheError(f"shard '{path}' is truncated ({size} bytes); delete it and rerun the cache job")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8:
        raise CacheError(f"shard '{path}' is truncated (header says {n} bytes); delete it and rerun the cache job")
    try:  # a flipped byte can make the header invalid UTF-8 as well as invalid JSON
        header = json.loads(read_header(n))
        meta = header.pop("__metadata__", {}) or {}
        end = max((v["data_offsets"][1] for v in header.values()), default=0)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError, IndexError):
        raise CacheError(f"shard '{path}' has a corrupt header; delete it and rerun the cache job") from None
    base = 8 + n
    if base + end != size:
        raise CacheError(f"shard '{path}' has {size} bytes but its header describes {base + end}; "
                         "it is truncated or corrupt: delete it and rerun the cache job")
    arrays, names = {}, {}
    for name, info in header.items():
        if info.get("dtype") not in _ST_TO_NP:
            raise CacheError(f"shard '{path}' stores '{name}' as dtype {info.get('dtype')!r}, which no cache writes; "
                             "the shard is corrupt or not a cache shard: delete it and rerun the cache job")
        dt = np.dtype(_ST_TO_NP[info["dtype"]])
        start, stop = info["data_offsets"]
        count = (stop - start) // dt.itemsize
        if count == 0:
            arrays[name] = np.zeros(info["shape"], dtype=dt)
        else:
            arrays[name] = array_at(dt, base + start, tuple(info["shape"]))
        names[name] = info["dtype"]
    return arrays, names, meta


# ----------------------------------------------------------------------------- manifest


def manifest_path(cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / MANIFEST


def load_manifest(cache_dir: str | os.PathLike) -> dict:
    """Read and sanity-check ``manifest.json`` of a cache directory."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise CacheError(f"cache directory '{cache_dir}' does not exist; run `adaspec-dist cache` first")
    path = manifest_path(cache_dir)
    if not path.exists():
        raise CacheError(f"'{path}' is missing: the cache job did not finish; rerun the same command to resume it")
    man = read_json(path, "manifest")
    if not isinstance(man, dict):
        raise CacheError(f"manifest '{path}' is not a JSON object; it is damaged or not an adaspec-dist cache "
                         "manifest: rebuild the cache into a new directory (adaspec-dist cache out_dir=NEW)")
    if man.get("format_version") not in READABLE_VERSIONS:
        raise CacheError(f"manifest '{path}' has format version {man.get('format_version')}, this reader "
                         f"reads {list(READABLE_VERSIONS)}; rebuild the cache with this version of adaspec-dist")
    if not man.get("complete"):
        raise CacheError(f"manifest '{path}' marks the cache incomplete; rerun the cache job to finish it")
    check_manifest_shape(man, path)
    return man


# What every reader of a complete manifest indexes without a default.
_MANIFEST_KEYS = {"scheme": str, "params": dict, "shards": list, "vocab_size": int}
_SHARD_KEYS = {"file": str, "sequences": int, "bytes": int, "sha256": str}


def check_manifest_shape(man: Any, path: Path) -> None:
    """One-line CacheError, naming the key, when a manifest lacks what readers index (a hand-edited
    or foreign JSON file, or a directory that is not a cache) instead of a KeyError deep inside."""
    fix = "it is damaged or not an adaspec-dist cache manifest: rebuild the cache into a new directory (adaspec-dist cache out_dir=NEW)"
    if not isinstance(man, dict):
        raise CacheError(f"manifest '{path}' is not a JSON object; {fix}")
    for key, kind in _MANIFEST_KEYS.items():
        if not isinstance(man.get(key), kind):
            raise CacheError(f"manifest '{path}' has no valid '{key}' ({kind.__name__}); {fix}")
    if "value_dtype" not in man["params"]:
        raise CacheError(f"manifest '{path}' has no 'params.value_dtype'; {fix}")
    for i, sh in enumerate(man["shards"]):
        bad = [k for k, kind in _SHARD_KEYS.items() if not isinstance(sh, dict) or not isinstance(sh.get(k), kind)]
        if bad:
            raise CacheError(f"manifest '{path}' shard entry {i} has no valid {', '.join(bad)}; {fix}")


def compact_rows(man: dict) -> bool:
    """Whether the cache's sampled rows are compact (format 2: flat ids + counts + row lengths)."""
    return man.get("scheme") == "sampled" and int(man.get("format_version", 1)) >= 2


def stores_logp(man: dict) -> bool:
    """Whether the teacher's log-probabilities at the stored ids are in the cache."""
    return not compact_rows(man) or bool(man["params"].get("store_logp"))


def supported_divergences(man: dict) -> tuple[str, ...]:
    """The divergences a cache can train (and estimate) with: every kind of
    ``sparse.divergence.DIVERGENCES`` when it stores the teacher's log-probs; for a compact sampled
    cache without them, the kinds computable from its row constant Σ w log p (fkl)."""
    return KINDS if stores_logp(man) else ROW_CONSTANT_KINDS


def check_divergence(man: dict, kind: str, where: str) -> None:
    """One-line CacheError when the cache cannot estimate ``kind``."""
    supported = supported_divergences(man)
    if kind not in supported:
        names = " or ".join(supported)
        raise CacheError(f"cache '{where}' stores no teacher log-probs (sampled, store_logp: false), so it supports "
                         f"divergence {names} only, not {kind}; train with divergence {names} or rebuild the cache "
                         "with store_logp: true")


def check_vocab(man: dict, vocab_size: int | None, where: str) -> None:
    if vocab_size is not None and int(man["vocab_size"]) != int(vocab_size):
        raise CacheError(f"cache '{where}' has vocab size {man['vocab_size']} but the model has {vocab_size}; "
                         "use a draft with the target's tokenizer or rebuild the cache")


def check_manifest_vocab(man: dict, tokenizer_len: int | None, where: str) -> None:
    """The manifest's vocab_size is the target's logit width: never below the tokenizer's length
    (a model may pad its vocabulary above it), and, when the target is an HF directory that still
    exists, equal to its config's vocab_size. A mismatch means a damaged or hand-edited manifest."""
    vocab = int(man["vocab_size"])
    path = Path(where) / MANIFEST
    if tokenizer_len is not None and vocab < tokenizer_len:
        raise CacheError(f"'{path}' says vocab_size {vocab} but the tokenizer has {tokenizer_len} tokens; "
                         "the manifest is damaged or belongs to another target: rebuild the cache")
    identity = str((man.get("target") or {}).get("identity") or "")
    config = Path(identity) / "config.json" if identity and not identity.startswith("preset:") else None
    if config is not None and config.is_file():
        with open(config) as fh:
            width = json.load(fh).get("vocab_size")
        if width is not None and int(width) != vocab:
            raise CacheError(f"'{path}' says vocab_size {vocab} but its target {identity} has {width}; "
                             "the manifest is damaged or the target changed: rebuild the cache")


def check_tokenizer(man: dict, fingerprint: str | None, where: str) -> None:
    cached = man.get("tokenizer_fingerprint")
    if fingerprint is not None and cached is not None and cached != fingerprint:
        raise CacheError(f"cache '{where}' was built with another tokenizer (fingerprint {cached[:12]} != "
                         f"{fingerprint[:12]}); use the target's tokenizer or rebuild the cache")


def check_shard_file(path: Path, expected: dict, *, full: bool, fix: str | None = None) -> None:
    """Size check always; sha256 too when ``full``. ``fix``: the advice (default: rerun the cache job)."""
    if not path.exists():
        raise CacheError(f"shard '{path}' is missing; {fix or 'rerun the cache job (same command) to rewrite it'}")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise CacheError(f"shard '{path}' has {size} bytes, the manifest says {expected['bytes']}: it is "
                         f"truncated or was replaced; {fix or 'delete it and rerun the cache job'}")
    if full and sha256_file(path) != expected["sha256"]:
        raise CacheError(f"shard '{path}' fails its sha256 checksum: it is corrupt; "
                         f"{fix or 'delete it and rerun the cache job (same command) to rewrite it'}")


def reference_fix(cache_dir: str | os.PathLike, reference: dict) -> str:
    """The command that recomputes a cache's missing or damaged reference-column shards (the
    add-reference job resumes: it redoes exactly the shards whose column is not intact)."""
    extra = "" if reference.get("divergence", "fkl") == "fkl" else f" --divergence {reference['divergence']}"
    if reference.get("divergence") == "jsd" and reference.get("beta") is not None:
        extra += f" --beta {reference['beta']}"
    return (f"rerun `adaspec-dist cache --add-reference {reference.get('model', 'REF_MODEL')} {cache_dir}{extra}` "
            "to recompute it")


# ----------------------------------------------------------------------------- finiteness


def nonfinite_counts(arrays: dict[str, np.ndarray], value_dtype: str) -> dict[str, int]:
    """Per array, how many values no writer can have produced: log-probs NaN or +inf (−inf is a
    legitimate zero probability), weights / Σ w log p / reference losses NaN or ±inf. Integer
    arrays (ids, counts, offsets, int8-coded log-probs) cannot hold them. One pass per array."""
    out = {}
    for name in ("logp", "weights", "plogp", "ref_loss"):
        if name not in arrays:
            continue
        arr = np.asarray(arrays[name])
        if name == "logp":
            if value_dtype == "bf16":  # raw bit patterns: exponent all ones and sign 0 (+inf) or a mantissa (NaN)
                bits = arr.view(np.uint16)
                bad = int(np.count_nonzero(((bits & 0x7FFF) > 0x7F80) | (bits == 0x7F80)))
            elif arr.dtype.kind == "f":
                bad = int(np.count_nonzero(np.isnan(arr) | np.isposinf(arr)))
            else:
                bad = 0
        else:
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            out[name] = bad
    return out


def check_finite(arrays: dict[str, np.ndarray], value_dtype: str, path: str | os.PathLike, fix: str) -> None:
    """One-line CacheError naming ``path`` when :func:`nonfinite_counts` finds any."""
    bad = nonfinite_counts(arrays, value_dtype)
    if bad:
        what = ", ".join(f"{n} in '{name}'" for name, n in bad.items())
        raise CacheError(f"'{path}' holds non-finite values (NaN or inf: {what}); {fix}")
