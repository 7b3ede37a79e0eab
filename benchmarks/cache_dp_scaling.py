"""Claim: the cache job scales with data parallelism: 2 DP ranks (torchrun, gloo, one thread each)
finish >= 1.7x faster than 1 rank on a 2-core machine.

Runs the same job (``write_cache`` over the demo-target preset, a real LlamaForCausalLM with
~5M parameters, vocab 8000, 64 sequences x 128 tokens, top-64, 8 shards) under
``torchrun --nproc_per_node 1`` (the baseline) and ``--nproc_per_node 2``, timing the job itself
(after model load, up to the manifest) on rank 0 (best of 2 interleaved repeats), and checks that both caches are byte-identical.
Prints t(1 rank) / t(2 ranks); writes benchmarks/results/cache_dp_scaling.json. Needs two idle
cores to show the real ratio: the load average at the start is recorded.

    python benchmarks/cache_dp_scaling.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_common import task_sequences, write_result  # noqa: E402

VOCAB = 8000
REPEATS = 2


def worker(out_dir: str, timing: str) -> None:
    import torch
    from adaspec_dist.cache.produce import JobSpec, hf_target_fn, write_cache
    from adaspec_dist.dist import barrier, init_distributed, shutdown
    from adaspec_dist.models.load import build_preset

    torch.set_num_threads(1)
    ps = init_distributed(1)
    fn = hf_target_fn(build_preset("demo-target", VOCAB), scheme="topk", top_k=64)
    seqs = task_sequences(64, 128, 16, VOCAB)
    spec = JobSpec(scheme="topk", top_k=64, batch_size=4, shard_size=8, vocab_size=VOCAB)
    barrier()
    t0 = time.perf_counter()
    write_cache(seqs, fn, spec, out_dir, ps=ps, tensorboard_dir=out_dir + "-tb")
    seconds = time.perf_counter() - t0
    if ps.is_main:
        Path(timing).write_text(json.dumps({"seconds": seconds, "world": ps.world_size,
                                            "tokens": sum(len(s.input_ids) for s in seqs)}))
    shutdown()


def launch(nproc: int, out_dir: Path, timing: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    from adaspec_dist.dist import free_port
    cmd = [str(Path(sys.executable).parent / "torchrun"), f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           __file__, "--worker", str(out_dir), str(timing)]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return json.loads(timing.read_text())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2], sys.argv[3])
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # Interleaved repeats, best of each: other load on the machine only ever slows a run down.
        runs = {1: [], 2: []}
        for rep in range(REPEATS):
            for n in (1, 2):
                runs[n].append(launch(n, tmp / f"c{n}-{rep}", tmp / f"t{n}-{rep}.json"))
        one = min(runs[1], key=lambda r: r["seconds"])
        two = min(runs[2], key=lambda r: r["seconds"])
        same = all((tmp / "c1-0" / "shards" / p.name).read_bytes() == p.read_bytes()
                   for p in (tmp / "c2-0" / "shards").iterdir())
    ratio = one["seconds"] / two["seconds"]
    print(f"1 rank: {one['seconds']:.2f} s ({one['tokens'] / one['seconds']:,.0f} tokens/s); "
          f"2 ranks: {two['seconds']:.2f} s ({two['tokens'] / two['seconds']:,.0f} tokens/s)")
    print(f"speed-up 2 ranks / 1 rank = {ratio:.2f}x (goal >= 1.7x: {'met' if ratio >= 1.7 else 'NOT met'}); "
          f"caches byte-identical: {same}; load average at start {load:.1f} on {os.cpu_count()} cores")
    path = write_result("cache_dp_scaling", {
        "claim": "2 DP ranks >= 1.7x faster than 1 rank on 2 cores",
        "one_rank_s": round(one["seconds"], 3), "two_ranks_s": round(two["seconds"], 3), "speedup": round(ratio, 2),
        "byte_identical": same, "all_runs_s": {str(n): [round(r["seconds"], 3) for r in v] for n, v in runs.items()}, "load_avg_at_start": round(load, 2),
        "setup": "demo-target preset, vocab 8000, 64 x 128 tokens, top-64, batch 4, 8 shards; 1 thread per rank"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
