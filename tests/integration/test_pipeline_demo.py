"""The demo end to end on a shrunken recipe, through the real console script: tokenizer, target
sft, caches, kd reference, reference column, AdaSPEC, speculative-decoding eval, final table.

Then the kill test: the AdaSPEC stage is redone and the process dies abruptly right after a
mid-stage checkpoint (tests/helpers_kill.py runs the pipeline with a ``KillAfter`` training
callback, which calls ``os._exit``); rerunning the same command skips the complete stages,
resumes AdaSPEC from its checkpoint and ends with the same draft weights and the same eval
numbers as the uninterrupted run.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, child_env, run_cli

pytestmark = pytest.mark.slow

# Small enough for ~2 minutes on 2 busy cores; the same stages and code paths as the full demo.
SHRINK = ["data.limit=96", "data.max_length=96", "eval_data.limit=24", "tokenizer_train.limit=300",
          "tokenizer_train.vocab_size=384", "sft.passes=1", "reference.passes=1", "adaspec.passes=2",
          "eval.num_prompts=4", "eval.gammas=[1,2]", "eval.max_new_tokens=8", "eval.batch_size=4",
          "cache.shard_size=48"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_demo_end_to_end_then_kill_and_resume(tmp_path):
    run_dir = tmp_path / "demo"
    proc = run_cli(["demo", "--run-dir", str(run_dir), "--seed", "3", *SHRINK], timeout=600)
    out = proc.stdout
    # The final table: the three arms with the four numbers, and the one-line verdict.
    assert "| DistillSpec |" in out and "| AdaSPEC |" in out and "| DistillSpec-wide (control) |" in out, out[-3000:]
    assert "α_logits" in out and "the compute control DistillSpec-wide" in out
    for name in ("demo_table.md", "demo_summary.png", "eval/eval.json", "eval/tau_vs_gamma.png",
                 "eval/per_position_acceptance.png", "pipeline.yaml"):
        assert (run_dir / name).is_file(), name
    stages = sorted(p.name for p in (run_dir / "stages").glob("*.done.json"))
    assert len(stages) == 9, stages
    first = json.loads((run_dir / "eval" / "eval.json").read_text())
    for draft in ("distillspec", "adaspec", "distillspec_wide"):
        a = first["drafts"][draft]["alpha_logits"]
        assert 0.0 < a <= 1.0
    w_first = _weights(run_dir / "adaspec" / "final")

    # Redo AdaSPEC, dying right after the checkpoint of step 1 (a real abrupt exit mid-stage).
    recipe = [str(REPO / "configs" / "demo.yaml"), f"run_dir={run_dir}", "seed=3", *SHRINK]
    killed = subprocess.run([sys.executable, str(REPO / "tests" / "helpers_kill.py"), "1", *recipe,
                             "adaspec.checkpoint.every=1", "--force", "adaspec"],
                            env=child_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == 17, killed.stderr[-3000:]
    assert not (run_dir / "stages" / "adaspec.done.json").exists()
    assert (run_dir / "adaspec" / "checkpoints" / "latest").is_file()
    assert not (run_dir / "eval").exists()  # --force adaspec cleared what follows it

    # Rerun: earlier stages are skipped, AdaSPEC resumes from its checkpoint, eval reruns.
    again = run_cli(["pipeline", *recipe], timeout=300)
    assert "cache_train: complete, skipped" in again.stdout and "reference: complete, skipped" in again.stdout
    assert "resumed at step 1" in again.stderr
    w_again = _weights(run_dir / "adaspec" / "final")
    assert w_first.keys() == w_again.keys()
    for k in w_first:
        torch.testing.assert_close(w_again[k], w_first[k], rtol=0, atol=1e-6)
    second = json.loads((run_dir / "eval" / "eval.json").read_text())
    for draft in ("distillspec", "adaspec"):
        assert second["drafts"][draft]["alpha_logits"] == pytest.approx(first["drafts"][draft]["alpha_logits"], abs=1e-6)
        for g, row in first["drafts"][draft]["by_gamma"].items():
            assert second["drafts"][draft]["by_gamma"][g]["acceptance_rate"] == row["acceptance_rate"]

    # The same arms on draft-generated data (demo --generated): the dataset run is complete and
    # skipped; the DistillSpec draft generates, the target is cached on its samples, both arms
    # train again and the table compares fixed vs generated data.
    gen = run_cli(["demo", "--run-dir", str(run_dir), "--seed", "3", *SHRINK, "--generated"], timeout=600)
    assert "adaspec: complete, skipped" in gen.stdout and "generate: adaspec-dist generate --config" in gen.stdout
    table = (run_dir / "demo_generated.md").read_text()
    assert table.count("| draft-generated |") == 2 and table.count("| dataset |") == 2, table
    assert "the arms on fixed (dataset) vs draft-generated training data" in gen.stdout
    manifest = json.loads((run_dir / "on_draft_data" / "generated" / "manifest.json").read_text())
    assert manifest["model"]["role"] == "draft" and manifest["num_sequences"] == manifest["num_prompts"] > 0
    cache = json.loads((run_dir / "on_draft_data" / "cache" / "train" / "manifest.json").read_text())
    assert cache["data"]["generated"]["model"]["weights"] == manifest["model"]["weights"] and "reference" in cache
