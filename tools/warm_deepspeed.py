"""Build (once) every DeepSpeed JIT op the trainer needs, with no timeout, before tests run.

On CPU the only one is DeepSpeed's shared-memory comm op (built when DeepSpeed's comm backend
starts); the trainer uses torch.optim.AdamW, so no fused/CPU Adam build is needed. The build is
cached in this environment's ``sys.prefix/torch_extensions`` (or TORCH_EXTENSIONS_DIR;
``adaspec_dist.distill.engine.extensions_dir``); a build killed half-way leaves a stale ``lock`` file there
that hangs later runs — this script removes such a lock only when no build is running
(``--clear-stale-locks``). Usage: ``python tools/warm_deepspeed.py``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def stale_locks(root: Path, older_than_s: float = 1800.0) -> list[Path]:
    now = time.time()
    return [p for p in root.rglob("lock") if now - p.stat().st_mtime > older_than_s]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clear-stale-locks", action="store_true",
                        help="delete torch_extensions lock files older than 30 minutes first")
    args = parser.parse_args()
    from adaspec_dist.distill.engine import extensions_dir

    root = extensions_dir()
    if args.clear_stale_locks and root.exists():
        for lock in stale_locks(root):
            print(f"removing stale build lock {lock}")
            lock.unlink()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from adaspec_dist.dist import init_distributed, shutdown
    from adaspec_dist.distill.engine import EngineConfig, build_engine

    t0 = time.time()
    init_distributed(tp_size=1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    engine = build_engine(model, cfg=EngineConfig(zero_stage=1, micro_batch_size=1), total_steps=1)
    loss = engine(torch.randn(1, 4)).sum()
    engine.backward(loss)
    engine.step()
    shutdown()
    print(f"deepspeed ops ready ({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
