"""tests/gpu: the CUDA paths (marker ``gpu``), skipped without a CUDA device.

``ADASPEC_GPU_TESTS_ON_CPU=1`` runs the same tests on the CPU (DeepSpeed in fp32 instead of bf16,
since the engine refuses bf16 without a GPU): ``benchmarks/gpu_suite.py --tiny`` does that, so the
checks the first GPU run depends on are exercised by every normal test run and cannot rot.

Fixtures: ``device`` (cuda, or cpu under the variable above) and ``assets`` (session scope: a
sentencepiece tokenizer trained on the embedded ``arith`` corpus, a peaky tiny-llama target and a
noisy copy of it as the draft, both saved in HF format).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ON_CPU = os.environ.get("ADASPEC_GPU_TESTS_ON_CPU") == "1"
CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if CUDA or ON_CPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (ADASPEC_GPU_TESTS_ON_CPU=1 runs the logic on CPU)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if CUDA else "cpu")


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict:
    from adaspec_dist.data.tasks import DataConfig, load_examples
    from adaspec_dist.data.tokenizer import train_sentencepiece
    from adaspec_dist.models.load import build_preset, save_hf
    from tests.gpu.checks import noisy_copy

    root: Path = tmp_path_factory.mktemp("gpu-assets")
    examples = load_examples(DataConfig(task="arith", limit=64))
    tok = train_sentencepiece([e.prompt + e.answer for e in examples], 400, root / "tok")
    target = build_preset("tiny-llama", len(tok), seed=0, initializer_range=0.2)
    save_hf(target, root / "target", tokenizer=tok)
    save_hf(noisy_copy(target, 0.03, seed=1), root / "draft", tokenizer=tok)
    return {"root": root, "tokenizer": root / "tok", "target": root / "target", "draft": root / "draft",
            "vocab": len(tok)}
