"""Reaching the Hugging Face Hub: decide once, before transformers/datasets retry for a minute.

Contract
--------
``hub_access(name, kind)`` is called before loading a model, tokenizer or dataset by a name that
is not a local path. It returns the keyword arguments for that load:

* ``{}``: the Hub answers (or ``HF_ENDPOINT`` points elsewhere and answers): load as usual;
* ``{"local_files_only": True}``: the Hub cannot be reached (or ``HF_HUB_OFFLINE=1``) but the
  name is in the local Hugging Face cache: load that copy without any network attempt (for a
  dataset the caller gets ``{}`` and ``datasets`` uses its cache);

and otherwise raises a one-line ``ValueError`` naming the id and the fixes (a local directory,
or ``HF_HUB_OFFLINE=1`` with a filled cache), where transformers would retry five times with
exponential back-off (~50 s and 20 warning lines) before an ``OSError``. The reachability probe is
one TCP connection with a 3 s timeout, made at most once per process.
"""
from __future__ import annotations

import functools
import os
import re
import socket
from typing import Literal
from urllib.parse import urlparse

Kind = Literal["model", "tokenizer", "dataset"]
_PROBE_TIMEOUT_S = 3.0


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` or ``name`` (not a path: no leading '/', '.', '~', at most one '/')."""
    return bool(_HUB_ID.match(name))


def is_offline_forced() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@functools.lru_cache(maxsize=None)
def hub_reachable(url: str | None = None) -> bool:
    """Whether a TCP connection to the Hub's host opens within 3 s (cached for the process).
    With an HTTPS proxy configured the proxy is what is probed."""
    url = url or endpoint()
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy if proxy else url)
    host = target.hostname
    port = target.port or (443 if target.scheme == "https" else 80)
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def in_local_cache(name: str, kind: Kind) -> bool:
    """Whether the local Hugging Face cache holds ``name`` (a model/tokenizer repo's config or
    tokenizer file, or any snapshot of a dataset repo)."""
    try:
        from huggingface_hub import scan_cache_dir, try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    if kind == "dataset":
        try:
            return any(r.repo_id == name and r.repo_type == "dataset" for r in scan_cache_dir().repos)
        except Exception:  # no cache directory yet
            return False
    files = ("config.json",) if kind == "model" else ("tokenizer_config.json", "tokenizer.json", "config.json")
    return any(isinstance(try_to_load_from_cache(name, f), str) for f in files)


def hub_access(name: str, kind: Kind) -> dict:
    """Keyword arguments for loading hub id ``name`` (see the module docstring), or a one-line error."""
    offline = is_offline_forced() or not hub_reachable()
    if not offline:
        return {}
    if in_local_cache(name, kind):
        return {} if kind == "dataset" else {"local_files_only": True}
    why = "HF_HUB_OFFLINE is set" if is_offline_forced() else f"the Hugging Face Hub ({endpoint()}) cannot be reached"
    use = {"model": "pass its directory as name_or_path", "tokenizer": "pass its directory as tokenizer",
           "dataset": "point data.source at a local .jsonl/.parquet copy"}[kind]
    download = f"hf download {name}" + (" --repo-type dataset" if kind == "dataset" else "")
    raise ValueError(f"{kind} '{name}' is not a local path, {why}, and it is not in the local HF cache; "
                     f"download it where there is network (`{download}`) and {use}, or set HF_HUB_OFFLINE=1 "
                     "here with that HF cache (HF_HOME)")
