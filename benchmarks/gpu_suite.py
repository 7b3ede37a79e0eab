"""One prepared GPU check: prove the CUDA paths and record the numbers a GPU user compares.

    bash benchmarks/gpu_suite.sh                  # on a GPU node, < 8 min: benchmarks/results/gpu_suite.{json,md}
    python benchmarks/gpu_suite.py --tiny --out DIR   # the same code on a CPU with shrunk shapes (< 3 min)

Sections (each timed, with a hard wall-clock budget; a failing one is recorded with its one-line
error and the suite goes on; results are rewritten after every section, so a killed run keeps them):

1. correctness -- ``pytest -m gpu tests/gpu``: greedy SD == target greedy (fp32, bf16), sampled SD
   chi-square, the cache on the device vs the CPU, megatron-core layers in a 1-rank TP group, a
   20-step ZeRO-2 bf16 (and fp16) train whose held-out loss falls, ``eval`` end to end.
2. cache -- tokens/s of the cache job (top-64, bf16) with a Pythia-1.4B-shaped target vs the same
   model's plain forward (goal: ratio >= 0.85), the batch chosen from free memory; the MFU both imply
   (FLOPs = 2 x params x tokens); the same for a TinyLlama-1.1B-shaped target when time allows.
3. train -- cached AdaSPEC vs online AdaSPEC (target + reference forwards every step) tokens/s for a
   Pythia-31M-shaped draft against the 1.4B target (goal >= 10x) and cached AdaSPEC / plain SFT of the
   draft (goal >= 0.9): steps interleaved in one process (train_common.interleaved_rates).
4. spec -- SD (gamma 4, greedy; a draft made to agree with the target on ~70 % of greedy tokens,
   see gpu_suite_lib.AgreeingPair) vs the target alone at batch 1, 8, 32 in the package's engine,
   with alpha, tau, c and the bound tau/(gamma*c+1); HF assisted generation at batch 1.
5. tp -- with >= 2 GPUs, ``cache --tp 2`` equals ``cache --tp 1`` (torchrun, NCCL); else "not run".

Exit status: 0 all passed; 1 a correctness check failed; 2 a section crashed or ran out of time;
3 the machine cannot run the suite (no CUDA without --tiny, or packages missing).
Shapes and budgets: gpu_suite_lib.profile_for. Results: docs/gpu.md explains every number.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))  # results_io, cache_common, train_common, gpu_suite_lib
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))  # tests/, and the package when it is not installed

# import name -> pip name; all are dependencies of the package (setup.py) or of its tests
PACKAGES = {"torch": "torch", "transformers": "transformers", "numpy": "numpy", "safetensors": "safetensors",
            "sentencepiece": "sentencepiece", "yaml": "pyyaml", "tqdm": "tqdm", "tensorboard": "tensorboard",
            "matplotlib": "matplotlib", "scipy": "scipy", "pytest": "pytest", "pytest_timeout": "pytest-timeout",
            "deepspeed": "deepspeed", "megatron.core": "megatron-core", "adaspec_dist": "adaspec-dist (this repo)"}
BASE = ["torch", "transformers", "numpy", "safetensors", "sentencepiece", "yaml", "tqdm", "tensorboard",
        "adaspec_dist"]
NEEDS = {"correctness": BASE + ["scipy", "pytest", "deepspeed", "megatron.core", "matplotlib"],
         "cache": BASE, "train": BASE + ["deepspeed"], "spec": BASE, "tp": BASE + ["megatron.core"]}
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()
    return text[0][:300] if text else type(err).__name__


class SectionTimeout(BaseException):
    """Raised by SIGALRM when a section's budget is spent (BaseException: no `except Exception` eats it)."""


def child_env(**extra: str) -> dict[str, str]:
    """A subprocess environment without launcher leftovers (an in-process job exported RANK etc.)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE",
                        "GROUP_RANK", "NODE_RANK") and not k.startswith("SLURM_")}
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def run_cmd(cmd: list[str], *, timeout: float, env: dict, log_file: Path | None = None, echo: bool = False) -> int:
    """Run ``cmd`` in its own session (so torchrun's ranks die with it), its output going to
    ``log_file`` (and to ours too with ``echo``, line by line); on a timeout or an exception (the
    section's alarm) the whole process group is ended."""
    out = open(log_file, "w") if log_file else None
    pipe = subprocess.PIPE if echo else out
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=pipe, stderr=subprocess.STDOUT if pipe else None,
                            start_new_session=True, text=True if echo else None)
    try:
        if echo:
            for line in proc.stdout:
                print(line, end="", flush=True)
                if out:
                    out.write(line)
                    out.flush()
        return proc.wait(timeout=max(1.0, timeout))
    except BaseException:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=10)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        raise
    finally:
        if out:
            out.close()


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------- context

class Ctx:
    """What the sections share: settings, device, work directory, the big models (built once)."""

    def __init__(self, args, profile, device, work: Path, gpu: dict):
        import torch

        self.args, self.profile, self.device, self.work, self.gpu = args, profile, device, work, gpu
        self.tiny = args.tiny
        self.dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
        self.deadline = float("inf")
        self._pair = self._target = self._draft = self._calib = self._target_dir = None

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def peak(self) -> tuple[float | None, str]:
        from gpu_suite_lib import peak_tflops

        if self.args.peak_tflops:
            return self.args.peak_tflops, f"--peak-tflops {self.args.peak_tflops:g}"
        return peak_tflops(self.gpu.get("name"))

    def pair(self):
        from gpu_suite_lib import AgreeingPair

        if self._pair is None:
            p = self.profile
            self._pair = AgreeingPair(p.vocab, p.target["hidden_size"], p.draft["hidden_size"], seed=0)
        return self._pair

    def target(self):
        """The Pythia-1.4B-shaped target on the device (bf16 on a GPU), arranged by AgreeingPair."""
        from gpu_suite_lib import build_model

        if self._target is None:
            log(f"building the target: GPTNeoX {self.profile.target} vocab {self.profile.vocab} on {self.device}")
            self._target = build_model("tiny-neox", self.profile.vocab, self.profile.target, device=self.device,
                                       dtype=self.dtype, seed=0)
            self.pair().shape_target(self._target)
        return self._target

    def saved_target(self) -> Path:
        """The target saved in HF format (what a TrainConfig's target.name_or_path loads)."""
        from adaspec_dist.models.load import save_hf

        if self._target_dir is None:
            path = self.work / "target-hf"
            log(f"saving the target to {path}")
            save_hf(self.target(), path)
            self._target_dir = path
        return self._target_dir

    def draft(self, prompts: list[list[int]]):
        """The Pythia-31M-shaped draft, calibrated to agree with the target's greedy continuations of
        ``prompts`` on ~70 % of tokens (built once)."""
        from gpu_suite_lib import build_model, calibrate

        if self._draft is None:
            p = self.profile
            draft = build_model("tiny-neox", p.vocab, p.draft, device=self.device, dtype=self.dtype, seed=1)
            self.pair().shape_draft(draft)
            log(f"calibrating the draft's greedy agreement with the target on {len(prompts)} prompts "
                "(bisection on its head noise)")
            self._calib = calibrate(self.pair(), self.target(), draft, prompts=prompts,
                                    new_tokens=p.sd_new_tokens, want=self.args.agreement)
            self._draft = draft
        return self._draft, self._calib

    def free(self) -> None:
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- 1. correctness

def parse_junit(path: Path) -> dict[str, dict]:
    tests = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome = "skipped" if kind == "skipped" else "failed"
                message = (node.get("message") or node.text or "").strip().splitlines()
                message = message[0][:300] if message else kind
                break
        tests[name] = {"outcome": outcome, "seconds": round(float(case.get("time", 0)), 2), "message": message}
    return tests


def parse_verbose(log_text: str) -> dict[str, dict]:
    """Per-test outcomes from ``pytest -v`` lines (what a killed run leaves instead of its junit)."""
    tests = {}
    for line in log_text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "::" in parts[0] and parts[1] in ("PASSED", "FAILED", "ERROR", "SKIPPED"):
            path, _, name = parts[0].partition("::")
            outcome = {"PASSED": "passed", "SKIPPED": "skipped"}.get(parts[1], "failed")
            tests[f"{Path(path).stem}::{name}"] = {"outcome": outcome, "seconds": None, "message": ""}
    return tests


def sec_correctness(ctx: Ctx, res: dict) -> None:
    work = ctx.work / "correctness"
    work.mkdir(parents=True, exist_ok=True)
    junit, log_file = work / "junit.xml", work / "pytest.log"
    env = child_env(**({"ADASPEC_GPU_TESTS_ON_CPU": "1"} if ctx.tiny else {}))
    cmd = [sys.executable, "-m", "pytest", "tests/gpu", "-m", "gpu", "-v", "-rfE", "-p", "no:cacheprovider",
           f"--basetemp={work / 'tmp'}", f"--junitxml={junit}", "-o", "addopts=--durations=8"]
    if importlib.util.find_spec("pytest_timeout"):
        cmd.append(f"--timeout={int(min(90, ctx.left() / 2))}")   # a hung test fails alone
    log("running " + " ".join(cmd[2:6]) + (" with ADASPEC_GPU_TESTS_ON_CPU=1" if ctx.tiny else ""))
    try:
        rc = run_cmd(cmd, timeout=ctx.left() - 2, env=env, log_file=log_file, echo=True)
    except SectionTimeout:
        res["tests"] = parse_verbose(log_file.read_text(errors="replace"))   # the tests that finished
        res["checks"] = {n: t["outcome"] == "passed" for n, t in res["tests"].items() if t["outcome"] != "skipped"}
        res["rows"] = [{"what": "GPU tests passed before the budget ran out",
                        "value": f"{sum(res['checks'].values())}/{len(res['checks'])} finished", "goal": "all",
                        "met": False}]
        raise
    if not junit.exists():
        raise RuntimeError(f"pytest exited {rc} without writing {junit.name}: {tail(log_file, 2)}")
    tests = parse_junit(junit)
    res["tests"] = tests
    res["checks"] = {name: t["outcome"] == "passed" for name, t in tests.items() if t["outcome"] != "skipped"}
    ran = [t for t in tests.values() if t["outcome"] != "skipped"]
    passed = sum(t["outcome"] == "passed" for t in ran)
    res["rows"] = [{"what": "GPU tests passed" + (" (on CPU: --tiny)" if ctx.tiny else ""),
                    "value": f"{passed}/{len(ran)}" + (f" ({len(tests) - len(ran)} skipped)" if len(ran) < len(tests)
                                                       else ""), "goal": "all", "met": passed == len(ran) > 0}]
    for name, t in tests.items():
        if t["outcome"] == "failed":
            res["rows"].append({"what": f"FAILED {name}", "value": t["message"], "goal": None, "met": False})
    if not ran:
        raise RuntimeError(f"no GPU test ran (pytest exit {rc}; all skipped: no CUDA?)")


# ----------------------------------------------------------------------------- 2. cache throughput

def _fits(model, batch: int, seq_len: int, prompt_len: int, vocab: int, device) -> bool:
    """One forward + top-64 of ``batch`` sequences without running out of memory? (Its own frame,
    so that the tensors of a failed try are gone before the caller retries.)"""
    import torch

    from adaspec_dist.sparse.target import topk_targets

    try:
        with torch.no_grad():
            logits = model(input_ids=torch.randint(4, vocab, (batch, seq_len), device=device)).logits
            topk_targets(logits[:, prompt_len:].reshape(-1, logits.shape[-1]), 64)
        return True
    except torch.cuda.OutOfMemoryError:
        return False


def _cache_batch(ctx: Ctx, model, vocab: int) -> tuple[int, int]:
    """Sequences per forward: the largest power of two under the profile's cap whose logits and
    activations fit in ~60 % of free memory, halved until a real forward + top-k fits.
    Returns (batch, batch memory would allow)."""
    import torch

    p = ctx.profile
    if ctx.device.type != "cuda":   # no memory to size by: the profile's batch (probed once all the same)
        assert _fits(model, p.cache_max_seqs, p.seq_len, p.prompt_len, vocab, ctx.device)
        return p.cache_max_seqs, p.cache_max_seqs
    free, _ = torch.cuda.mem_get_info(ctx.device)
    # per token: bf16 logits, their supervised copy and slack for the fp32 chunks; activations
    per_seq = p.seq_len * (vocab * 2 * 3 + model.config.hidden_size * 2 * 48)
    allowed = max(1, int(0.6 * free / per_seq))
    batch = 1 << (min(allowed, p.cache_max_seqs).bit_length() - 1)
    while not _fits(model, batch, p.seq_len, p.prompt_len, vocab, ctx.device):
        ctx.free()
        if batch == 1:
            raise RuntimeError("one sequence does not fit in GPU memory")
        batch //= 2
    ctx.free()
    return batch, allowed


def _cache_row(ctx: Ctx, name: str, model, vocab: int) -> dict:
    import statistics

    import torch

    from adaspec_dist.cache.produce import JobSpec, hf_target_fn, write_cache
    from adaspec_dist.models.load import param_count
    from cache_common import task_sequences
    from gpu_suite_lib import timed

    p, dev = ctx.profile, ctx.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    batch, allowed = _cache_batch(ctx, model, vocab)
    row: dict[str, Any] = {"params": param_count(model), "vocab": vocab, "batch_seqs": batch,
                           "attn_implementation": getattr(model.config, "_attn_implementation", None),
                           "batch_tokens": batch * p.seq_len, "memory_allows_seqs": allowed}
    log(f"{name}: {row['params'] / 1e6:.0f}M params, batch {batch} x {p.seq_len} tokens "
        f"(memory allows ~{allowed})")
    seqs = task_sequences(batch, p.seq_len, p.prompt_len, vocab, seed=1)
    ids = torch.tensor([s.input_ids for s in seqs], device=dev)
    attn = torch.ones_like(ids)
    with torch.no_grad():
        timed(lambda: model(input_ids=ids, attention_mask=attn).logits, dev)      # warm-up
        times: list[float] = []
        while len(times) < 3 or (len(times) < 10 and sum(times) < 2.0):
            times.append(timed(lambda: model(input_ids=ids, attention_mask=attn).logits, dev)[1])
    fwd_s = statistics.median(times)
    row["forward_tokens_per_s"] = batch * p.seq_len / fwd_s
    log(f"{name}: plain forward {row['forward_tokens_per_s']:,.0f} tokens/s ({fwd_s * 1000:.0f} ms per batch)")
    fn = hf_target_fn(model, scheme="topk", top_k=64)

    def spec(n_batches: int) -> JobSpec:
        return JobSpec(scheme="topk", top_k=64, value_dtype="fp16", batch_size=batch, shard_size=batch,
                       vocab_size=vocab, extra={"target": {"identity": name, "dtype": str(ctx.dtype), "tp": 1},
                                                "batches": n_batches})

    out = ctx.work / "cache" / name
    write_cache(task_sequences(batch, p.seq_len, p.prompt_len, vocab, seed=2), fn, spec(1), out / "warmup",
                device=dev)                                                      # warm-up (allocator, writer)
    n_batches = max(2, min(p.cache_batches, int((ctx.left() - 10) / max(3 * fwd_s, 1e-3))))
    seqs = task_sequences(batch * n_batches, p.seq_len, p.prompt_len, vocab, seed=3)
    manifest, secs = timed(lambda: write_cache(seqs, fn, spec(n_batches), out / "timed", device=dev), dev)
    tokens = sum(len(s.input_ids) for s in seqs)
    row.update(cache_tokens_per_s=tokens / secs, cache_seconds=secs, cache_tokens=tokens, batches=n_batches,
               supervised_tokens=manifest["num_supervised"],
               bytes_per_supervised_token=sum(f.stat().st_size for f in (out / "timed").rglob("shard-*") if f.is_file())
               / manifest["num_supervised"])
    row["ratio"] = row["cache_tokens_per_s"] / row["forward_tokens_per_s"]
    peak, _ = ctx.peak
    if peak:
        row["forward_mfu"] = 2 * row["params"] * row["forward_tokens_per_s"] / (peak * 1e12)
        row["cache_mfu"] = 2 * row["params"] * row["cache_tokens_per_s"] / (peak * 1e12)
    if dev.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
    log(f"{name}: cache job {row['cache_tokens_per_s']:,.0f} tokens/s = {row['ratio']:.3f} x the forward "
        f"(goal >= 0.85)" + (f"; MFU forward {row['forward_mfu']:.1%}, cache {row['cache_mfu']:.1%}" if peak else ""))
    return row


def sec_cache(ctx: Ctx, res: dict) -> None:
    from gpu_suite_lib import build_model

    p = ctx.profile
    peak, source = ctx.peak
    res.update(top_k=64, value_dtype="fp16", seq_len=p.seq_len, prompt_len=p.prompt_len, dtype=str(ctx.dtype),
               peak_tflops=peak, peak_source=source, flops_per_token="2 x params (all parameters, head included)",
               models={})
    res["rows"] = []
    for name in ("pythia-1.4b", "llama-1.1b"):
        if name == "llama-1.1b":
            if ctx.left() < (8 if ctx.tiny else 30):
                res["models"][name] = "not run (section budget spent)"
                continue
            model = build_model("tiny-llama", p.llama_vocab, p.llama, device=ctx.device, dtype=ctx.dtype, seed=2)
        else:
            model = ctx.target()
        res["models"][name] = row = _cache_row(ctx, name, model, p.vocab if name == "pythia-1.4b" else p.llama_vocab)
        res["rows"].append({"what": f"{name}: cache tokens/s ÷ forward tokens/s", "value":
                            f"{row['ratio']:.3f} ({row['cache_tokens_per_s']:,.0f} vs "
                            f"{row['forward_tokens_per_s']:,.0f})",
                            "goal": "≥ 0.85", "met": None if ctx.tiny else row["ratio"] >= 0.85})
        if "forward_mfu" in row:
            res["rows"].append({"what": f"{name}: MFU of forward / cache (2·params·tokens, peak {peak:g} TFLOP/s)",
                                "value": f"{row['forward_mfu']:.1%} / {row['cache_mfu']:.1%}", "goal": None,
                                "met": None})
        del model
        ctx.free()


# ----------------------------------------------------------------------------- 3. training throughput

def sec_train(ctx: Ctx, res: dict) -> None:
    from adaspec_dist.cache.produce import JobSpec, hf_target_fn, write_cache
    from adaspec_dist.cache.reference import ReferenceConfig, add_reference
    from adaspec_dist.config import build_config, merge
    from adaspec_dist.dist import shutdown
    from adaspec_dist.distill.train import TrainConfig
    from adaspec_dist.models.load import ModelConfig, load_causal_lm, param_count
    from cache_common import task_sequences
    from train_common import interleaved_rates

    p, dev = ctx.profile, ctx.device
    work = ctx.work / "train"
    target_dir = ctx.saved_target()
    n = p.train_micro * (p.train_steps + 2)
    cache = work / "cache"
    log(f"caching {n} sequences x {p.seq_len} tokens with the target (top-64) for the cached runs")
    write_cache(task_sequences(n, p.seq_len, p.prompt_len, p.vocab, seed=4),
                hf_target_fn(ctx.target(), scheme="topk", top_k=64),
                JobSpec(scheme="topk", top_k=64, batch_size=p.train_micro, shard_size=max(p.train_micro, 64),
                        vocab_size=p.vocab, extra={"target": {"identity": str(target_dir), "dtype": str(ctx.dtype),
                                                              "tp": 1}}), cache, device=dev)
    draft = {"preset": "tiny-neox", "overrides": p.draft, "seed": 5}
    reference = {"preset": "tiny-neox", "overrides": p.draft, "seed": 9}
    ref = load_causal_lm(ModelConfig(**reference), vocab_size=p.vocab, device=dev)
    add_reference(ReferenceConfig(cache_dir=str(cache), model="preset:pythia-31m(seed=9)",
                                  batch_size=p.train_micro), model=ref)
    res["params"] = {"target": param_count(ctx.target()), "draft": param_count(ref)}
    del ref
    ctx.free()
    base = {"objective": "adaspec", "draft": draft, "selection": {"reference": reference},
            "target": {"name_or_path": str(target_dir)},
            "cache_dir": str(cache), "max_steps": p.train_steps, "export": False, "seed": 0,
            "engine": {"zero_stage": 1, "micro_batch_size": p.train_micro, "lr": 1e-4, "schedule": "constant"}}
    runs = {"online": {"teacher_mode": "online"}, "cached": {}, "sft": {"objective": "sft"}}
    configs = {k: build_config(TrainConfig, merge(base, {**v, "run_dir": str(work / "runs" / k)}))
               for k, v in runs.items()}
    log(f"interleaving {p.train_steps} steps of online adaspec, cached adaspec and sft "
        f"(micro-batch {p.train_micro} x {p.seq_len}; first {p.train_warmup} not timed)")
    rate, tokens = interleaved_rates(configs, p.train_steps, warmup=p.train_warmup)
    import torch.distributed as dist

    res["process_group_backend"] = dist.get_backend() if dist.is_initialized() else None
    shutdown()
    ctx.free()
    online, sft = rate["cached"] / rate["online"], rate["cached"] / rate["sft"]
    res.update(tokens_per_s=rate, tokens=tokens, cached_over_online=online, cached_over_sft=sft,
               steps=p.train_steps, timed_steps=p.train_steps - p.train_warmup, micro_batch=p.train_micro,
               seq_len=p.seq_len, zero_stage=1, precision="bf16" if dev.type == "cuda" else "fp32",
               target_over_draft_params=res["params"]["target"] / res["params"]["draft"])
    log(f"tokens/s: online {rate['online']:,.0f}, cached {rate['cached']:,.0f}, sft {rate['sft']:,.0f}: "
        f"cached/online {online:.2f}x (goal >= 10), cached/sft {sft:.3f} (goal >= 0.9)")
    res["rows"] = [
        {"what": f"cached ÷ online AdaSPEC tokens/s (target {res['target_over_draft_params']:.0f}× the draft)",
         "value": f"{online:.2f}× ({rate['cached']:,.0f} vs {rate['online']:,.0f})", "goal": "≥ 10×",
         "met": None if ctx.tiny else online >= 10},
        {"what": "cached AdaSPEC ÷ SFT tokens/s", "value": f"{sft:.3f} ({rate['cached']:,.0f} vs {rate['sft']:,.0f})",
         "goal": "≥ 0.9", "met": None if ctx.tiny else sft >= 0.9}]


# ----------------------------------------------------------------------------- 4. speculative decoding

def _hf_rate(target, prompts: list[list[int]], new_tokens: int, device, assistant=None) -> tuple[float, list]:
    """Tokens/s of Hugging Face ``generate`` (greedy) one prompt at a time, optionally assisted."""
    import torch

    from gpu_suite_lib import timed

    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    if assistant is not None:   # gamma = 4, every step (no heuristic schedule, no confidence early stop)
        gen_cfg = assistant.generation_config
        gen_cfg.num_assistant_tokens, gen_cfg.num_assistant_tokens_schedule = 4, "constant"
        gen_cfg.assistant_confidence_threshold = 0.0
        kw["assistant_model"] = assistant
    with torch.no_grad():
        ids = torch.tensor([prompts[0]], device=device)
        target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, **kw)     # warm-up
        outs, tokens, secs = [], 0, 0.0
        for prompt in prompts:
            ids = torch.tensor([prompt], device=device)
            out, s = timed(lambda: target.generate(ids, attention_mask=torch.ones_like(ids),
                                                   max_new_tokens=new_tokens, **kw), device)
            outs.append(out[0, len(prompt):].tolist())
            tokens += len(outs[-1])
            secs += s
    return tokens / secs, outs


def sec_spec(ctx: Ctx, res: dict) -> None:
    import torch

    from adaspec_dist.models.load import param_count
    from adaspec_dist.speculative.decoder import speculative_generate
    from adaspec_dist.speculative.evaluate import EvalConfig, evaluate_drafts
    from adaspec_dist.speculative.metrics import theoretical_tau

    p = ctx.profile
    counts = {b: p.hf_prompts if b == 1 else b for b in p.sd_batches}   # prompts decoded per batch size
    prompts = torch.randint(3, p.vocab, (max(counts.values()), p.sd_prompt_len),
                            generator=torch.Generator().manual_seed(11)).tolist()
    target = ctx.target()
    draft, calib = ctx.draft(prompts)
    res["calibration"] = {k: v for k, v in calib.items() if k != "seqs"}
    res["params"] = {"target": param_count(target), "draft": param_count(draft)}
    log(f"draft agrees with the target's greedy tokens {calib['agreement']:.3f} (ceiling {calib['ceiling']:.3f}, "
        f"sigma {calib['sigma']:.3f})")
    pl = calib["prompt_len"]
    held_out = [(s, [-100] * pl + s[pl:]) for s in calib["seqs"]]
    res.update(gamma=4, temperature=0.0, new_tokens=p.sd_new_tokens, prompt_len=p.sd_prompt_len, batches={})
    speculative_generate(target, draft, prompts[:2], gamma=4, max_new_tokens=8)   # warm-up: the (gamma+1)-token shapes
    res["rows"] = []
    for b in p.sd_batches:
        if ctx.left() < (5 if ctx.tiny else 20):
            res["batches"][str(b)] = "not run (section budget spent)"
            continue
        cfg = EvalConfig(gammas=[4], batch_size=b, temperature=0.0, max_new_tokens=p.sd_new_tokens, seed=0)
        # alpha_logits on the same prompts' target continuations: in greedy decoding, the share of
        # positions where the draft's argmax is the target's (the per-token acceptance probability)
        out = evaluate_drafts(target, {"draft": draft}, prompts[:counts[b]], held_out[:counts[b]], cfg)
        d = out["drafts"]["draft"]
        r = d["by_gamma"]["4"]
        row = {"prompts": counts[b], "target_tokens_per_s": out["target"]["tokens_per_s"],
               "sd_tokens_per_s": r["tokens_per_s"], "speedup": r["speedup"], "alpha_logits": d["alpha_logits"],
               "acceptance_rate": r["acceptance_rate"], "per_position": r["per_position"], "tau": r["tau"],
               "tau_theory": theoretical_tau(d["alpha_logits"], 4), "c": d["cost_ratio"], "bound": r["speedup_bound"],
               "fraction_of_bound": r["speedup"] / r["speedup_bound"], "matches_target": r.get("matches_target"),
               "draft_tokens_per_s": d["draft_tokens_per_s"]}
        res["batches"][str(b)] = row
        log(f"batch {b}: target {row['target_tokens_per_s']:,.1f} tok/s, SD {row['sd_tokens_per_s']:,.1f} tok/s = "
            f"{row['speedup']:.2f}x; alpha {row['alpha_logits']:.3f} (accepted/drafted {row['acceptance_rate']:.3f}), "
            f"tau {row['tau']:.2f} (theory {row['tau_theory']:.2f}), c {row['c']:.3f}, bound {row['bound']:.2f}x "
            f"({row['fraction_of_bound']:.2f} of it)")
        res["rows"].append({"what": f"batch {b}: SD ÷ target-only tokens/s (α {row['alpha_logits']:.2f}, "
                                    f"τ {row['tau']:.2f}, c {row['c']:.3f})",
                            "value": f"{row['speedup']:.2f}× (bound τ/(γc+1) = {row['bound']:.2f}×)",
                            "goal": None, "met": None})
    if ctx.left() < (5 if ctx.tiny else 15):
        res["hf_assisted"] = "not run (section budget spent)"
        return
    hf_prompts = prompts[:p.hf_prompts]
    plain, plain_out = _hf_rate(target, hf_prompts, p.sd_new_tokens, ctx.device)
    assisted, assisted_out = _hf_rate(target, hf_prompts, p.sd_new_tokens, ctx.device, assistant=draft)
    ours = res["batches"].get("1", {})
    hf = {"prompts": len(hf_prompts), "hf_greedy_tokens_per_s": plain, "hf_assisted_tokens_per_s": assisted,
          "hf_assisted_speedup": assisted / plain,
          "assisted_equals_greedy": sum(a == b for a, b in zip(assisted_out, plain_out)) / len(hf_prompts)}
    if isinstance(ours, dict) and ours:
        hf["ours_sd_over_hf_assisted"] = ours["sd_tokens_per_s"] / assisted
        hf["ours_target_over_hf_greedy"] = ours["target_tokens_per_s"] / plain
    res["hf_assisted"] = hf
    log(f"HF batch 1: greedy {plain:,.1f} tok/s, assisted (gamma 4) {assisted:,.1f} tok/s = {assisted / plain:.2f}x"
        + (f"; ours/HF assisted {hf['ours_sd_over_hf_assisted']:.2f}x" if "ours_sd_over_hf_assisted" in hf else ""))
    res["rows"].append({"what": "batch 1: our SD ÷ HF assisted generation tokens/s (γ = 4)",
                        "value": f"{hf.get('ours_sd_over_hf_assisted', float('nan')):.2f}× "
                                 f"(HF assisted {hf['hf_assisted_speedup']:.2f}× HF greedy)", "goal": None,
                        "met": None})


# ----------------------------------------------------------------------------- 5. tensor parallelism

def sec_tp(ctx: Ctx, res: dict) -> None:
    import torch
    import yaml

    from adaspec_dist.cache.produce import CacheConfig, prepare_job, write_cache
    from adaspec_dist.cache.reader import CacheReader
    from adaspec_dist.config import load_config
    from adaspec_dist.data.tasks import DataConfig, load_examples
    from adaspec_dist.data.tokenizer import train_sentencepiece
    from adaspec_dist.models.load import build_preset, save_hf

    n_gpus = torch.cuda.device_count()
    on_cpu = ctx.device.type == "cpu"
    if n_gpus < 2 and not (on_cpu and ctx.args.tp_on_cpu):
        res["status"] = "skipped"
        res["reason"] = "not run (1 GPU)" if n_gpus == 1 else "not run (no GPU; --tp-on-cpu runs it with gloo)"
        res["rows"] = [{"what": "cache --tp 2 == cache --tp 1", "value": res["reason"], "goal": None, "met": None}]
        return
    p = ctx.profile
    work = ctx.work / "tp"
    examples = load_examples(DataConfig(task="arith", limit=max(p.tp_examples, 64)))
    tok = train_sentencepiece([e.prompt + e.answer for e in examples], p.tp_tok_vocab, work / "tok")
    model = build_preset("tiny-llama", len(tok), seed=3, **p.tp_arch)   # on the CPU: only saved
    save_hf(model, work / "target", tokenizer=tok)
    del model
    recipe = work / "cache.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"task": "arith", "limit": p.tp_examples, "max_length": p.tp_max_length},
        "model": {"name_or_path": str(work / "target"), "dtype": "float32"}, "tokenizer": str(work / "tok"),
        "scheme": "topk", "top_k": 64, "batch_size": 16, "shard_size": 32}))
    # TP = 1: the cache job's own code in this process (produce_cache minus the process group)
    log("tp1: the cache job in this process (HF model, full vocabulary)")
    t0 = time.monotonic()
    cfg = load_config(CacheConfig, recipe, [f"out_dir={work / 'tp1'}"])
    seqs, fn, spec = prepare_job(cfg, None, ctx.device)
    write_cache(seqs, fn, spec, cfg.out_dir, device=ctx.device)
    res["tp1_seconds"] = time.monotonic() - t0
    del fn
    ctx.free()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           f"--master_port={_free_port()}", "-m", "adaspec_dist.cli", "cache", "--config", str(recipe), "--tp", "2",
           f"out_dir={work / 'tp2'}"]
    log(f"tp2: {' '.join(cmd[2:])}")
    t0 = time.monotonic()
    rc = run_cmd(cmd, timeout=ctx.left() - 5, env=child_env(), log_file=work / "tp2.log")
    res["tp2_seconds"] = time.monotonic() - t0
    if rc != 0:
        raise RuntimeError(f"cache --tp 2 exited {rc}: {tail(work / 'tp2.log', 3)}")
    readers = [CacheReader(work / k, batch_size=16, shuffle=False) for k in ("tp1", "tp2")]
    ids_equal = value_err = 0.0
    rows = positions = 0
    same_inputs = readers[0].manifest["num_supervised"] == readers[1].manifest["num_supervised"]
    for a, b in zip(*readers):
        same_inputs &= torch.equal(a.input_ids, b.input_ids) and torch.equal(a.loss_mask, b.loss_mask)
        ids_equal += float((a.target.ids == b.target.ids).all(1).sum())
        # values by rank (both sorted): a near-tie may swap two ids, never the values
        value_err = max(value_err, float((a.target.logp - b.target.logp).abs().max()))
        positions += len(a.target)
        rows += len(a)
    share = ids_equal / max(positions, 1)
    res.update(model=p.tp_arch, vocab=len(tok), positions=positions, sequences=rows, same_inputs=bool(same_inputs),
               rows_ids_equal=share, logp_max_abs_diff=value_err, backend="gloo (CPU)" if on_cpu else "nccl")
    ok = bool(same_inputs) and share >= 0.99 and value_err <= 1e-2
    res["checks"] = {"cache --tp 2 == --tp 1 (ids up to near-ties, log-probs within 1e-2)": ok}
    log(f"tp2 vs tp1: {positions} positions, ids equal on {share:.4f}, max |logp diff| {value_err:.2e}")
    res["rows"] = [{"what": "cache --tp 2 == cache --tp 1 (fp32; ids, log-probs)",
                    "value": f"ids equal {share:.4f}, max |Δ log p| {value_err:.1e}", "goal": "≥ 0.99, ≤ 1e-2",
                    "met": ok}]


def _free_port() -> int:
    from adaspec_dist.dist import free_port

    return free_port()


SECTIONS: list[tuple[str, str, Callable[[Ctx, dict], None]]] = [
    ("correctness", "Correctness on the device (pytest -m gpu)", sec_correctness),
    ("cache", "Cache throughput", sec_cache),
    ("train", "Training throughput", sec_train),
    ("spec", "Speculative decoding", sec_spec),
    ("tp", "Tensor parallelism", sec_tp),
]


# ----------------------------------------------------------------------------- running and reporting

def preflight() -> dict:
    """Import every package the suite needs; say clearly what is missing before anything runs."""
    found, missing = {}, {}
    for mod, pip in PACKAGES.items():
        try:
            m = importlib.import_module(mod)
            found[mod] = str(getattr(m, "__version__", "present"))
        except Exception as err:  # noqa: BLE001  (any import failure is "missing" here)
            missing[mod] = f"{pip}: {one_line(err)}"
    gpu: dict[str, Any] = {}
    if "torch" in found:
        import torch

        gpu = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
               "device_count": torch.cuda.device_count()}
        if gpu["cuda_available"]:
            props = torch.cuda.get_device_properties(0)
            gpu.update(name=props.name, memory_gib=props.total_memory / 2 ** 30,
                       bf16=torch.cuda.is_bf16_supported(), capability=f"{props.major}.{props.minor}")
    return {"found": found, "missing": missing, "gpu": gpu}


def run_section(ctx: Ctx, name: str, title: str, fn, index: int, missing: dict) -> dict:
    budget = ctx.profile.budgets[name] * ctx.args.budget_scale
    res: dict[str, Any] = {"title": title, "budget_s": budget}
    lacking = [missing[m] for m in NEEDS[name] if m in missing]
    if lacking:
        res.update(status="skipped", reason="missing package(s): " + "; ".join(lacking), seconds=0.0)
        log(f"== {index}/{len(SECTIONS)} {title}: SKIPPED ({res['reason']})")
        return res
    log(f"== {index}/{len(SECTIONS)} {title} (budget {budget:.0f} s)")
    ctx.deadline = time.monotonic() + budget
    t0 = time.monotonic()

    def on_alarm(signum, frame):
        raise SectionTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, budget)
    try:
        fn(ctx, res)
        res.setdefault("status", "failed" if not all(res.get("checks", {}).values()) else "ok")
    except SectionTimeout:
        res.update(status="timeout", error=f"exceeded its {budget:.0f} s budget (numbers so far are kept)")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # noqa: BLE001  (record and go on)
        res.update(status="error", error=one_line(err))
        trace = ctx.work / f"{name}.traceback.txt"
        trace.write_text(traceback.format_exc())
        print("\n".join(traceback.format_exc().splitlines()[-8:]), flush=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        try:
            ctx.free()
        except Exception:  # noqa: BLE001
            pass
    res["seconds"] = round(time.monotonic() - t0, 1)
    log(f"== {title}: {res['status']} in {res['seconds']:.1f} s" + (f" -- {res['error']}" if res.get("error") else ""))
    return res


def exit_code(results: dict) -> int:
    if results.get("fatal"):
        return 3
    secs = results["sections"].values()
    if any(not ok for s in secs for ok in s.get("checks", {}).values()):
        return 1
    if any(s.get("status") in ("error", "timeout") for s in secs):
        return 2
    return 0


def render_md(results: dict) -> str:
    gpu = results["preflight"].get("gpu", {})
    lines = [f"# GPU suite ({results['mode']})", "",
             f"Machine: {gpu.get('name') or 'no GPU'}" + (f" ({gpu['memory_gib']:.0f} GiB, {gpu['device_count']} "
                                                          f"device(s))" if gpu.get("name") else "")
             + f"; torch {results['preflight']['found'].get('torch', '?')}; {results.get('date', '')}; "
             f"profile {results['profile'].get('name', '?')}; total {results.get('total_seconds', 0):.0f} s; "
             f"exit status {results.get('exit_code', '?')}."
             + (" Goals apply to the GPU shapes only: --tiny numbers just show that every section runs." if
                results["mode"].startswith("tiny") else ""), ""]
    if results["preflight"]["missing"]:
        lines += ["Missing packages: " + "; ".join(results["preflight"]["missing"].values()), ""]
    lines += ["| section | status | s | number | value | goal | met |", "| --- | --- | ---: | --- | --- | --- | --- |"]
    for name, sec in results["sections"].items():
        rows = sec.get("rows") or [{"what": "", "value": sec.get("error") or sec.get("reason") or "", "goal": None,
                                    "met": None}]
        for i, row in enumerate(rows):
            met = {True: "yes", False: "**no**", None: ""}[row.get("met")]
            head = (f"{name} | {sec.get('status', '')} | {sec.get('seconds', 0):.0f}" if i == 0 else " | | ")
            cells = [str(c).replace("|", "\\|") for c in (row["what"], row["value"], row.get("goal") or "")]
            lines.append(f"| {head} | {' | '.join(cells)} | {met} |")
        if sec.get("error") and sec.get("rows"):
            lines.append(f"| {name} | | | error | {sec['error']} | | |")
    return "\n".join(lines) + "\n"


def write_outputs(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results["total_seconds"] = round(time.monotonic() - T0, 1)
    results["exit_code"] = exit_code(results)
    (out / "gpu_suite.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "gpu_suite.md").write_text(render_md(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU run with shrunk shapes (a smoke test of the suite)")
    parser.add_argument("--out", help="results directory (default: benchmarks/results; --tiny: a new temp dir)")
    parser.add_argument("--work", help="scratch directory for models and caches (default: a new temp dir)")
    parser.add_argument("--only", help="comma-separated sections to run: " + ",".join(s[0] for s in SECTIONS))
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every section's time budget")
    parser.add_argument("--agreement", type=float, default=0.7, help="draft/target greedy agreement to calibrate to")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU for the MFU (default: by name)")
    parser.add_argument("--tp-on-cpu", action="store_true", help="run section 5 with 2 gloo ranks when there is no GPU")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else (RESULTS if not args.tiny else Path(tempfile.mkdtemp(prefix="gpu-suite-")))
    if args.tiny and out.resolve() == RESULTS.resolve():
        parser.error("--tiny must not write benchmarks/results (the GPU run's numbers); pass another --out")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu-suite-work-"))
    work.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else {s[0] for s in SECTIONS}

    log(f"GPU suite ({'tiny, CPU' if args.tiny else 'GPU'}): results -> {out}, scratch -> {work}")
    pre = preflight()
    for mod, why in pre["missing"].items():
        log(f"MISSING {why}")
    if pre["missing"]:
        log("install the missing packages (from wheels: pip install --no-index --find-links WHEEL_DIR NAME) and "
            "rerun; sections that need them are skipped")
    gpu = pre["gpu"]
    results: dict[str, Any] = {"suite": "gpu_suite", "mode": "tiny (CPU)" if args.tiny else "gpu",
                               "preflight": pre, "profile": {}, "sections": {}}
    fatal = None
    if "torch" in pre["missing"] or "adaspec_dist" in pre["missing"]:
        fatal = "torch or the package itself cannot be imported"
    elif not args.tiny and not gpu.get("cuda_available"):
        fatal = (f"no CUDA device visible (torch {pre['found'].get('torch')}, built for CUDA {gpu.get('torch_cuda')}): "
                 "the GPU suite needs one; `--tiny` runs its CPU smoke version")
    if fatal:
        log(f"CANNOT RUN: {fatal}")
        results["fatal"] = fatal
        write_outputs(results, out)
        return 3
    import logging

    import torch
    from results_io import machine

    from gpu_suite_lib import profile_for

    logging.basicConfig(level=logging.WARNING)
    device = torch.device("cuda", 0) if not args.tiny else torch.device("cpu")
    if args.tiny:
        torch.set_num_threads(1)
    profile = profile_for(args.tiny, gpu.get("memory_gib"))
    results.update(profile=asdict(profile), machine=machine())
    results["date"] = results["machine"]["date"]
    log(f"device {gpu.get('name', 'cpu')}; profile {profile.name}")
    ctx = Ctx(args, profile, device, work, gpu)
    write_outputs(results, out)
    for i, (name, title, fn) in enumerate(SECTIONS, 1):
        if name not in only:
            continue
        results["sections"][name] = run_section(ctx, name, title, fn, i, pre["missing"])
        write_outputs(results, out)
    write_outputs(results, out)
    print(render_md(results), flush=True)
    log(f"wrote {out / 'gpu_suite.json'} and {out / 'gpu_suite.md'}; exit status {results['exit_code']}")
    return results["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
