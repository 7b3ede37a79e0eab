"""Which run a run directory holds: ``train`` into a directory of another run is refused.

Contract
--------
* ``check_run_dir(cfg, force=..., resume=...)``: reads ``run_dir/config.yaml`` (every run writes it
  once its checks pass). A directory holding a run of another config (finished or not) is
  refused in one ``ValueError`` naming the differing keys and the fixes (``--force``, or a new
  ``run_dir``); the cache, generate and pipeline jobs refuse a directory of another job the same
  way. Keys that only steer how long or how often a run works (``RUN_CONTROL``: max_steps,
  checkpoint, eval.every, ...) may change, so a run can be extended or its moved directory resumed.
  The recorded config is read in today's keys and spellings first (``config.upgrade``: a run
  recorded with ``save_every`` or ``precision: bf16`` compares as ``checkpoint.every`` /
  ``bfloat16``); keys absent from either file (written by another version) are not compared;
  paths compare by where they point.
* ``force``: the new run starts afresh in that directory; ``clear_previous(run)`` (main rank,
  under the run's claim, after setup) deletes the old run's checkpoints and ``final/`` so none of
  them can be resumed, pruned in place of, or mistaken for the new run's. ``force`` with a resume
  is refused: there is nothing of this config to resume.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from adaspec_dist.config import to_dict, upgrade
from adaspec_dist.dist import barrier
from adaspec_dist.distill.config import TrainConfig
from adaspec_dist.distill.state import Run

logger = logging.getLogger(__name__)

RUN_CONTROL = frozenset({"run_dir", "max_steps", "checkpoint", "eval.every", "eval.batches", "export"})
"""Keys (or whole sections) that change how long or how often the run works, not what it computes."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {dotted.key: leaf}."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) and value else
                   {f"{prefix}{key}": value})
    return out


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()  # relative vs absolute, a symlink
    return False


def differing_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys present in both configs whose values differ (``RUN_CONTROL`` left out)."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in a.keys() & b.keys() if not _run_control(k) and not _same(a[k], b[k]))


def _run_control(dotted: str) -> bool:
    """Whether ``dotted`` or a section holding it is in ``RUN_CONTROL``."""
    parts = dotted.split(".")
    return any(".".join(parts[:i]) in RUN_CONTROL for i in range(1, len(parts) + 1))


def _recorded(run_dir: Path) -> dict | None:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"'{path}' is not a readable config ({type(err).__name__}); the directory holds a damaged "
                         "run: train into a new run_dir, or pass --force to start afresh there") from None
    return upgrade(TrainConfig, data) if isinstance(data, dict) else None


def check_run_dir(cfg: TrainConfig, *, force: bool, resume: Any) -> None:
    """Refuse a run_dir holding another config's run (see the module contract)."""
    if force and resume:
        raise ValueError("--force starts the run afresh (it deletes the directory's checkpoints); drop --resume / "
                         "--auto-resume, or drop --force to continue the run there")
    old = _recorded(Path(cfg.run_dir))
    if old is None or force:
        return
    # The new config as its config.yaml would read back (tuples become lists, and so on).
    new = upgrade(TrainConfig, yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False)))
    keys = differing_keys(old, new)
    if keys:
        shown = ", ".join(f"{k} ({flatten(old).get(k)!r} -> {flatten(new).get(k)!r})" for k in keys[:6])
        more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
        raise ValueError(f"run directory '{cfg.run_dir}' holds a run of another config (differs in {shown}{more}); "
                         "choose a new run_dir, or pass --force to replace that run")


def clear_previous(run: Run) -> None:
    """``--force``: delete the old run's checkpoints and export (main rank, under the claim); collective."""
    if run.ps.is_main:
        for sub in ("checkpoints", "final"):
            path = Path(run.cfg.run_dir) / sub
            if path.exists():
                shutil.rmtree(path)
                logger.warning("--force: removed %s of the previous run", path)
    barrier()
