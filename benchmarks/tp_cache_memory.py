#!/usr/bin/env python
"""Claim: a TP = 2 cache job holds about half the weights and logits per rank of the TP = 1 job.

Runs the cache job's model call (``TargetFn``: forward + top-k sparse targets) over the same
batches of one Llama-GQA checkpoint (vocabulary 32001, deliberately not divisible by 2) three
ways, each in fresh processes:

* ``hf``   — TP = 1, the HF model and full-vocabulary top-k (``cache.produce.hf_target_fn``);
* ``tp1``  — TP = 1 through ``models.tensor_parallel`` (the same code as TP = 2, one rank);
* ``tp2``  — TP = 2 under torchrun (gloo): each rank holds half the layers' columns and half
  the vocabulary, never the full logits.

Per rank it reports parameter bytes (exact), the logits slice bytes of one batch (exact), and
the peak growth of resident memory from just before loading the model to the end (sampled
every ms from /proc/self/status VmRSS, so mmapped weight pages count; includes allocator slack,
load-time temporaries and the forward's activations); plus tokens/s. Ratios are TP = 2 over HF TP = 1, measured in the same run.
Each rank uses one thread, so TP = 2 uses twice the cores; on a shared 2-core CPU the speed
ratio mostly shows communication and contention overhead — the claim is memory.

    python benchmarks/tp_cache_memory.py            # writes benchmarks/results/tp_cache_memory.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOCAB, BATCH, SEQ, BATCHES, TOP_K = 32001, 2, 128, 2, 64
ARCH = dict(hidden_size=384, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
            intermediate_size=1024, max_position_embeddings=512)


def rss_mb() -> float:
    """Resident memory now (VmRSS: anonymous + file-backed pages, e.g. mmapped safetensors that
    HF keeps zero-copy), so both loaders are charged for every weight page they touch."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # not Linux: peak RSS


class PeakSampler:
    """Samples VmRSS every millisecond in a thread (torch ops release the GIL)."""

    def __init__(self):
        import threading

        self.base = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_mb())

    def growth_mb(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, rss_mb()) - self.base


def worker(mode: str, ckpt: Path, out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    # Import everything first: module imports grow the heap by tens of MB, which is not the job's data.
    import transformers.models.gpt_neox.modeling_gpt_neox  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    import adaspec_dist.cache.produce  # noqa: F401
    import adaspec_dist.models.tp_target  # noqa: F401
    if mode == "hf":
        from adaspec_dist.cache.produce import hf_target_fn
        from adaspec_dist.models.load import load_causal_lm

        sampler = PeakSampler()
        model = load_causal_lm(str(ckpt))
        fn = hf_target_fn(model, scheme="topk", top_k=TOP_K)
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        logits_bytes, rank = BATCH * SEQ * VOCAB * 4, 0
    else:
        from adaspec_dist.dist import init_distributed
        from adaspec_dist.models.tp_target import make_target_fn

        ps = init_distributed(tp_size=2 if mode == "tp2" else 1)
        import megatron.core  # noqa: F401  (import cost outside the measurement)
        import megatron.core.tensor_parallel  # noqa: F401

        sampler = PeakSampler()
        fn, _ = make_target_fn(str(ckpt), ps, dtype="float32", scheme="topk", top_k=TOP_K, draws=1, temperature=1.0)
        model = fn.model
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        logits_bytes, rank = BATCH * SEQ * model.local_vocab * 4, ps.rank
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, VOCAB - 1, (BATCH, SEQ), generator=g) for _ in range(BATCHES + 1)]
    attn = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask = torch.ones(BATCH, SEQ, dtype=torch.bool)
    fn(batches[0], attn, mask, g)  # warm-up
    t0 = time.perf_counter()
    for ids in batches[1:]:
        target = fn(ids, attn, mask, g)
    seconds = time.perf_counter() - t0
    assert target.ids.shape == (BATCH * SEQ, TOP_K)
    res = {"mode": mode, "rank": rank, "param_bytes": params, "logits_bytes_per_batch": logits_bytes,
           "peak_rss_growth_mb": sampler.growth_mb(), "tokens_per_s": BATCHES * BATCH * SEQ / seconds}
    (out / f"{mode}.{rank}.json").write_text(json.dumps(res))


def run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["hf", "tp1", "tp2"])
    parser.add_argument("--ckpt")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, Path(args.ckpt), Path(args.out))

    import torch

    from adaspec_dist.dist import free_port
    from adaspec_dist.models.load import build_preset, save_hf

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_hf(build_preset("tiny-llama", VOCAB, seed=0, **ARCH), tmp / "ckpt")
        me = [sys.executable, str(Path(__file__).resolve())]
        common = ["--ckpt", str(tmp / "ckpt"), "--out", str(tmp)]
        run([*me, "--worker", "hf", *common])
        run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={free_port()}",
             *me[1:], "--worker", "tp1", *common])
        run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
             *me[1:], "--worker", "tp2", *common])
        rows = {p.stem: json.loads(p.read_text()) for p in sorted(tmp.glob("*.json"))}
    hf, tp1, tp2 = rows["hf.0"], rows["tp1.0"], [rows["tp2.0"], rows["tp2.1"]]
    worst = {k: max(r[k] for r in tp2) for k in ("param_bytes", "logits_bytes_per_batch", "peak_rss_growth_mb")}
    result = {
        "claim": "TP=2 cache job: weights and logits per rank ~1/2 of TP=1",
        "model": {"family": "llama (GQA)", "vocab": VOCAB, **ARCH},
        "workload": {"batch": BATCH, "seq": SEQ, "batches": BATCHES, "top_k": TOP_K, "threads_per_rank": 1},
        "hf_tp1": hf, "tp1": tp1, "tp2_ranks": tp2,
        "ratio_param_bytes_tp2_over_tp1": worst["param_bytes"] / hf["param_bytes"],
        "ratio_logits_bytes_tp2_over_tp1": worst["logits_bytes_per_batch"] / hf["logits_bytes_per_batch"],
        "ratio_peak_rss_growth_tp2_over_tp1": worst["peak_rss_growth_mb"] / hf["peak_rss_growth_mb"],
        "ratio_tokens_per_s_tp2_over_tp1": tp2[0]["tokens_per_s"] / hf["tokens_per_s"],
        "ratio_tokens_per_s_tp2_over_tp1_same_code": tp2[0]["tokens_per_s"] / tp1["tokens_per_s"],
        "ratio_peak_rss_growth_tp2_over_tp1_same_code": worst["peak_rss_growth_mb"] / tp1["peak_rss_growth_mb"],
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "load_avg_1m": os.getloadavg()[0], "device": "cpu (gloo)"},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    out = REPO / "benchmarks" / "results" / "tp_cache_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    mb = 1 / 2**20
    print(f"{'':22s}{'HF TP=1':>12s}{'TP code, TP=1':>16s}{'TP=2 (max rank)':>18s}{'ratio 2/1':>11s}")
    for key, label, scale in (("param_bytes", "weights MB/rank", mb),
                              ("logits_bytes_per_batch", "logits MB/rank/batch", mb),
                              ("peak_rss_growth_mb", "peak RSS growth MB", 1.0)):
        print(f"{label:22s}{hf[key] * scale:12.1f}{tp1[key] * scale:16.1f}{worst[key] * scale:18.1f}"
              f"{worst[key] / hf[key]:11.2f}")
    print(f"{'tokens/s':22s}{hf['tokens_per_s']:12.1f}{tp1['tokens_per_s']:16.1f}{tp2[0]['tokens_per_s']:18.1f}"
          f"{result['ratio_tokens_per_s_tp2_over_tp1']:11.2f}")
    print(f"TP=2 / TP=1 through the same TP code: peak RSS growth "
          f"{result['ratio_peak_rss_growth_tp2_over_tp1_same_code']:.2f}, tokens/s "
          f"{result['ratio_tokens_per_s_tp2_over_tp1_same_code']:.2f}")
    print(f"(cpu, 1 thread per rank, load avg {os.getloadavg()[0]:.1f}; wrote {out.relative_to(REPO)})")


if __name__ == "__main__":
    main()
