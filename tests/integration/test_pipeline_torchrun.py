"""The pipeline under a launcher: torchrun starts 2 ranks (gloo), every rank runs the plan, the
training and cache stages are data-parallel over both, rank 0 alone trains the tokenizer, runs
the eval and writes the markers; a second launch skips every complete stage."""
from __future__ import annotations

import json

import pytest

from tests.helpers import REPO, run_torchrun
from tests.integration.test_pipeline_demo import SHRINK

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_pipeline_two_ranks_then_skip(tmp_path):
    run_dir = tmp_path / "run"
    args = ["-m", "adaspec_dist.cli", "pipeline", str(REPO / "configs" / "demo.yaml"), f"run_dir={run_dir}",
            *SHRINK]
    first = run_torchrun(args, nproc=2, timeout=400)
    log = first.stdout + first.stderr
    # sft, reference, adaspec and the wide control: each engine is built on both ranks, data-parallel over 2
    assert log.count("x dp 2") == 8, log[-3000:]
    assert log.count("draft adaspec: alpha_logits") == 1  # eval ran on rank 0 only
    assert log.count("[9/9] eval: done") == 1  # rank 0 speaks for the job
    assert len(list((run_dir / "stages").glob("*.done.json"))) == 9
    result = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert set(result["drafts"]) == {"distillspec", "adaspec", "distillspec_wide"}

    again = run_torchrun(args, nproc=2, timeout=300)
    assert again.stdout.count("complete, skipped") == 9, again.stdout[-2000:]
