"""Offline, a hub id fails in one line within seconds (was ~50 s of retries and 20 warnings), and an
id already in the local Hugging Face cache loads from it without any network attempt.

Runs only where the Hub is unreachable (the test machine; a networked machine skips).
"""
from __future__ import annotations

import time

import pytest

from adaspec_dist.hub import hub_reachable
from tests.helpers import child_env, run_cli

pytestmark = pytest.mark.skipif(hub_reachable(), reason="the Hugging Face Hub is reachable from here")


@pytest.mark.parametrize("argv, kind", [
    (["data", "--task", "gsm8k", "--limit", "2"], "dataset 'openai/gsm8k'"),
    (["data", "--task", "arith", "--limit", "2", "--tokenizer", "EleutherAI/pythia-70m"], "tokenizer 'EleutherAI/pythia-70m'"),
    (["cache", "model.name_or_path=EleutherAI/pythia-160m", "data.task=arith", "out_dir=OUT"], "model 'EleutherAI/pythia-160m'"),
])
def test_an_unreachable_hub_id_is_one_line_at_once(argv, kind, tmp_path):
    env = child_env(HF_HOME=str(tmp_path / "hf"))  # an empty cache
    env.pop("HF_HUB_OFFLINE")  # the tests' default: here the probe itself must find the Hub unreachable
    argv = [a.replace("OUT", str(tmp_path / "c")) for a in argv]
    if argv[0] == "cache":  # the cache job needs a tokenizer before the model: give it a local one
        from adaspec_dist.data.tasks import DataConfig, load_examples
        from adaspec_dist.data.tokenizer import train_sentencepiece

        examples = load_examples(DataConfig(task="arith", limit=40))
        train_sentencepiece([e.prompt + e.answer for e in examples], 400, tmp_path / "tok")
        argv.append(f"tokenizer={tmp_path / 'tok'}")
    t0 = time.perf_counter()
    proc = run_cli(argv, check=False, timeout=120, env=env)
    elapsed = time.perf_counter() - t0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "[WARNING]" not in ln]
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1 and kind in errors[0] and "cannot be reached" in errors[0] and "HF_HUB_OFFLINE=1" in errors[0], proc.stderr[-2000:]
    assert "Retrying" not in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < 30, elapsed  # process start and imports; no back-off


def test_a_cached_hub_model_loads_offline_without_retries(tmp_path, monkeypatch):
    from adaspec_dist.models.load import build_preset, load_causal_lm

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(hub))
    repo = hub / "models--acme--tiny-draft"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    model = build_preset("tiny-llama", 64, seed=3)
    model.save_pretrained(repo / "snapshots" / "0123abcd")
    t0 = time.perf_counter()
    loaded = load_causal_lm("acme/tiny-draft")
    assert time.perf_counter() - t0 < 15
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert (a == b).all()
