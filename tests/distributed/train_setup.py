"""Shared setup of the train tests: tiny real caches (train with a reference column, eval) and recipes.

The caches hold the FULL vocabulary (top_k = V = 640) so the cached and online losses must
agree up to the fp16 storage of the log-probs.
"""
from __future__ import annotations

from pathlib import Path

TARGET = {"preset": "tiny-llama", "seed": 1}
REFERENCE = {"preset": "tiny-llama", "seed": 7}
DRAFT = {"preset": "tiny-llama", "seed": 5}


def build_caches(root: Path) -> dict:
    """Build (once per root) the train cache (+ reference column) and the eval cache."""
    from adaspec_dist.cache.produce import CacheConfig, produce_cache
    from adaspec_dist.cache.reference import ReferenceConfig, add_reference
    from adaspec_dist.config import load_config
    from adaspec_dist.models.load import ModelConfig, load_causal_lm
    from tests.fixtures import tiny_tokenizer_dir

    tok = tiny_tokenizer_dir(root)
    out = {"tokenizer": str(tok), "target_dir": str(root / "target_hf")}
    if not (root / "target_hf").exists():  # the same target as an HF directory, for the TP online teacher
        from adaspec_dist.models.load import save_hf

        save_hf(load_causal_lm(ModelConfig(**TARGET), vocab_size=640), root / "target_hf")
    for split, n in (("train", 24), ("test", 12)):
        cache = root / f"cache_{split}"
        out[split] = str(cache)
        if (cache / "manifest.json").exists():
            continue
        cfg = load_config(CacheConfig, None, {
            "data": {"task": "arith", "split": split, "limit": n, "max_length": 48}, "model": dict(TARGET),
            "tokenizer": str(tok), "out_dir": str(cache), "scheme": "topk", "top_k": 640, "shard_size": 8})
        produce_cache(cfg)
        if split == "train":
            ref = load_causal_lm(ModelConfig(**REFERENCE), vocab_size=640)
            add_reference(ReferenceConfig(cache_dir=str(cache), model="preset:tiny-llama(seed=7)"), model=ref)
    return out


def recipe(caches: dict, run_dir: Path, **over) -> dict:
    """A TrainConfig mapping for the tiny setup; ``over`` are top-level / nested overrides."""
    from adaspec_dist.config import merge

    base = {"objective": "adaspec", "draft": dict(DRAFT), "target": dict(TARGET),
            "selection": {"reference": dict(REFERENCE)}, "tokenizer": caches["tokenizer"],
            "cache_dir": caches["train"], "eval": {"cache_dir": caches["test"]},
            "run_dir": str(run_dir), "max_steps": 4, "seed": 3,
            "engine": {"zero_stage": 1, "micro_batch_size": 3, "lr": 3e-3, "schedule": "cosine", "warmup_steps": 1}}
    return merge(base, over)
