"""Build tests/data/cache_v1 (format 1): run once with adaspec-dist at commit e3188fc (before format 2):
    PYTHONPATH=OLD_CHECKOUT python tests/data/make_cache_v1.py tests/data/cache_v1
"""
import json, shutil, sys
from pathlib import Path
import numpy as np, torch

from adaspec_dist.cache.produce import JobSpec, hf_target_fn, write_cache
from adaspec_dist.cache.reader import CacheReader
from adaspec_dist.sparse.divergence import per_token_divergence
from adaspec_dist.models.load import build_preset
from adaspec_dist.data.tokenize import TokenizedExample
V = 300
def make_sequences(n, seed=0):
    rng = np.random.default_rng(seed); out = []
    for _ in range(n):
        prompt, answer = int(rng.integers(1, 8)), int(rng.integers(1, 10))
        ids = rng.integers(4, V, prompt + answer).tolist()
        out.append(TokenizedExample(input_ids=ids, labels=[-100] * prompt + ids[prompt:]))
    return out
out = Path(sys.argv[1]); shutil.rmtree(out, ignore_errors=True)
model = build_preset("tiny-llama", V, seed=0)
expect = {}
for scheme in ("sampled", "topk"):
    spec = JobSpec(scheme=scheme, top_k=8, draws=12, batch_size=3, shard_size=4, value_dtype="fp16", vocab_size=V,
                   extra={"tokenizer_fingerprint": "tok-A", "split": "train"})
    d = out / scheme
    write_cache(make_sequences(7), hf_target_fn(model, scheme=scheme, top_k=8, draws=12), spec, d, tensorboard_dir="/tmp/tb-v1fix")
    shutil.rmtree(d / "tb", ignore_errors=True)
    b = next(iter(CacheReader(d, batch_size=7, shuffle=False, prefetch=0)))
    student = torch.randn(len(b.target), V, generator=torch.Generator().manual_seed(5))
    expect[scheme] = {"rows": len(b.target), "fkl": per_token_divergence(student, b.target, "fkl").tolist(),
                      "ids_first_row": b.target.ids[0].tolist()}
(out / "expected.json").write_text(json.dumps(expect, indent=1))
