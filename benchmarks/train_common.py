"""Shared setup of the training benchmarks: a demo-sized cache (target ~36x the draft) on an
embedded task, built once under a work directory, and helpers to run the trainer in-process."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from results_io import machine, write_result  # noqa: F401  (re-exported to the train_* scripts)

os.environ.setdefault("OMP_NUM_THREADS", "1")
RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(os.environ.get("ADASPEC_BENCH_DIR", Path(tempfile.gettempdir()) / "adaspec-bench-train"))
# demo-target widened so that it has ~30x the draft's parameters with the 4096-piece vocabulary
# (the draft's embeddings dominate its size): ~16M vs ~0.57M.
TARGET = {"preset": "demo-target", "seed": 1,
          "overrides": {"hidden_size": 384, "num_hidden_layers": 8, "intermediate_size": 1024}}
DRAFT = {"preset": "demo-draft", "seed": 5}
REFERENCE = {"preset": "demo-draft", "seed": 9}
DATA = {"task": "arith", "split": "train", "limit": 96, "max_length": 128}






def setup(top_k: int = 64) -> dict:
    """Tokenizer (4096 pieces), cache of the demo target with a reference column; reused if present."""
    from adaspec_dist.cache.produce import CacheConfig, produce_cache
    from adaspec_dist.cache.reference import ReferenceConfig, add_reference
    from adaspec_dist.config import load_config
    from adaspec_dist.data.tokenizer import embedded_tokenizer
    from adaspec_dist.models.load import ModelConfig, load_causal_lm

    WORK.mkdir(parents=True, exist_ok=True)
    tok_dir = WORK / "tokenizer"
    tok = embedded_tokenizer(tok_dir, vocab_size=4096)
    cache = WORK / f"cache_k{top_k}_t384x8"
    if not (cache / "manifest.json").exists():
        cfg = load_config(CacheConfig, None, {"data": DATA, "model": TARGET, "tokenizer": str(tok_dir),
                                              "out_dir": str(cache), "top_k": top_k, "shard_size": 32})
        produce_cache(cfg)
        ref = load_causal_lm(ModelConfig(**REFERENCE), vocab_size=len(tok))
        add_reference(ReferenceConfig(cache_dir=str(cache), model="preset:demo-draft(seed=9)"), model=ref)
    return {"tokenizer": str(tok_dir), "cache": str(cache), "vocab": len(tok)}


def run_train(paths: dict, name: str, steps: int, **over) -> dict:
    """One in-process training run (world size 1) and its summary."""
    from adaspec_dist.config import build_config, merge
    from adaspec_dist.distill.train import TrainConfig, train

    base = {"objective": "adaspec", "draft": DRAFT, "target": TARGET, "selection": {"reference": REFERENCE},
            "tokenizer": paths["tokenizer"], "cache_dir": paths["cache"], "run_dir": str(WORK / "runs" / name),
            "max_steps": steps, "export": False, "seed": 0,
            "engine": {"zero_stage": 1, "micro_batch_size": 8, "lr": 1e-3, "schedule": "constant"}}
    return train(build_config(TrainConfig, merge(base, over)))


def config(paths: dict, name: str, steps: int, **over):
    """The TrainConfig of one benchmark run (adaspec on the cache unless overridden)."""
    from adaspec_dist.config import build_config, merge
    from adaspec_dist.distill.train import TrainConfig

    base = {"objective": "adaspec", "draft": DRAFT, "target": TARGET, "selection": {"reference": REFERENCE},
            "tokenizer": paths["tokenizer"], "cache_dir": paths["cache"], "run_dir": str(WORK / "runs" / name),
            "max_steps": steps, "export": False, "seed": 0,
            "engine": {"zero_stage": 1, "micro_batch_size": 8, "lr": 1e-3, "schedule": "constant"}}
    return build_config(TrainConfig, merge(base, over))


def _batches(run):
    epoch = 0
    while True:
        run.stream.set_epoch(epoch)
        yield from run.stream
        epoch += 1


def interleaved_rates(configs: dict, steps: int, warmup: int = 3) -> tuple[dict, dict]:
    """Build every run side by side and INTERLEAVE their steps (one each, in turn), timing each
    from fetching its batch to the end of its optimiser step, so load drift on a shared machine
    hits all alike. Returns (tokens/s, tokens) per name; the first ``warmup`` steps are not counted."""
    import time

    from adaspec_dist.distill.train import setup as train_setup, train_step

    runs = {name: train_setup(cfg) for name, cfg in configs.items()}
    streams = {k: _batches(r) for k, r in runs.items()}
    seconds = {k: 0.0 for k in runs}
    tokens = {k: 0 for k in runs}
    for step in range(steps):
        for name, run in runs.items():
            t0 = time.perf_counter()
            batch = next(streams[name])
            train_step(run, batch)
            if step >= warmup:
                seconds[name] += time.perf_counter() - t0
                tokens[name] += int(batch.attention_mask.sum())
    return {k: tokens[k] / seconds[k] for k in runs}, tokens
