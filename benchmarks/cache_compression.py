"""Measurement: would general-purpose compression of shards pay? (the issue asks for zstd where it pays)

``zstandard`` is not installed in this environment, so this measures the standard library's DEFLATE
(``zlib``, level 6) and LZMA (preset 1) as stand-ins: every shard file of real caches compressed
whole; ratio = raw bytes / compressed bytes, and decompression speed in supervised tokens/s (what
a reader would pay on top of today's decode). Caches: format-2 sampled 16 draws and top-64/top-8
at V = 50,304 of a random-weight target (every draw a different id: ids are incompressible
there), and the demo-shaped trained target's caches of ``cache_training_equivalence.py`` (V = 1024,
peaked rows) when that script's work directory exists. Writes benchmarks/results/cache_compression.json.

    python benchmarks/cache_compression.py
"""
from __future__ import annotations

import lzma
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_common import task_sequences, write_result  # noqa: E402

VOCAB = 50304
EQUIV = Path(os.environ.get("ADASPEC_BENCH_DIR", Path(tempfile.gettempdir()) / "adaspec-bench-equiv"))


def measure(name: str, cache: Path) -> dict:
    from adaspec_dist.cache.format import load_manifest

    man = load_manifest(cache)
    blobs = [(cache / "shards" / sh["file"]).read_bytes() for sh in man["shards"]]
    raw = sum(len(b) for b in blobs)
    row = {"cache": name, "scheme": man["scheme"], "vocab_size": man["vocab_size"],
           "raw_bytes_per_token": round(raw / man["num_supervised"], 1)}
    for codec, comp, decomp in (("zlib6", lambda b: zlib.compress(b, 6), zlib.decompress),
                                ("lzma1", lambda b: lzma.compress(b, preset=1), lzma.decompress)):
        packed = [comp(b) for b in blobs]
        t0 = time.perf_counter()
        for p in packed:
            decomp(p)
        secs = time.perf_counter() - t0
        row[codec] = {"ratio": round(raw / sum(len(p) for p in packed), 3),
                      "bytes_per_token": round(sum(len(p) for p in packed) / man["num_supervised"], 1),
                      "decompress_supervised_tokens_per_s": round(man["num_supervised"] / max(secs, 1e-9))}
    print(f"{name:34s} {row['raw_bytes_per_token']:7.1f} B/token raw; zlib {row['zlib6']['ratio']:.2f}x "
          f"({row['zlib6']['decompress_supervised_tokens_per_s']:,} tok/s), lzma {row['lzma1']['ratio']:.2f}x "
          f"({row['lzma1']['decompress_supervised_tokens_per_s']:,} tok/s)")
    return row


def main() -> None:
    import torch
    from adaspec_dist.cache.produce import JobSpec, hf_target_fn, write_cache
    from adaspec_dist.models.load import build_preset

    torch.set_num_threads(1)
    rows = []
    model = build_preset("tiny-neox", VOCAB)
    seqs = task_sequences(32, 128, 32, VOCAB)
    for name, kw in (("V50304 random: sampled 16", dict(scheme="sampled", draws=16)),
                     ("V50304 random: top-64 int8", dict(scheme="topk", top_k=64, value_dtype="int8")),
                     ("V50304 random: top-8 fp16", dict(scheme="topk", top_k=8))):
        with tempfile.TemporaryDirectory() as tmp:
            spec = JobSpec(**kw, batch_size=8, shard_size=16, vocab_size=VOCAB)
            write_cache(seqs, hf_target_fn(model, scheme=spec.scheme, top_k=spec.top_k, draws=spec.draws), spec,
                        Path(tmp) / "c", tensorboard_dir=str(Path(tmp) / "tb"))
            rows.append(measure(name, Path(tmp) / "c"))
    for d in sorted(EQUIV.glob("cache-*")):
        if (d / "manifest.json").exists():
            rows.append(measure(f"V1024 trained demo target: {d.name.split('-')[1]}", d))
    best = max(r["zlib6"]["ratio"] for r in rows)
    print(f"best DEFLATE ratio {best:.2f}x; the format stays uncompressed unless a codec saves >= 1.5x (see the JSON)")
    path = write_result("cache_compression", {
        "claim": "measurement: general-purpose compression of whole shard files (zstd not installed: zlib/lzma stand-ins)",
        "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
