"""The real `generate` job: 1 process vs 2 torchrun ranks, and SIGKILL + rerun, compared byte for byte."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, run_torchrun, sigkill_when

pytestmark = pytest.mark.distributed
TOOL = str(REPO / "tools" / "generate_data.py")
SHARDS = 60


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    from adaspec_dist.data.tasks import DataConfig, load_examples
    from adaspec_dist.data.tokenizer import train_sentencepiece
    from adaspec_dist.models.load import build_preset, save_hf

    root = tmp_path_factory.mktemp("gen-job")
    examples = load_examples(DataConfig(task="arith", limit=60))
    tok = train_sentencepiece([e.prompt + e.answer for e in examples], 400, root / "tok")
    save_hf(build_preset("tiny-llama", len(tok), seed=0), root / "draft", tokenizer=tok)
    cfg = {"data": {"task": "arith", "limit": SHARDS, "max_length": 96},
           "model": {"name_or_path": str(root / "draft")}, "role": "draft",
           "samples_per_prompt": 2, "max_new_tokens": 24, "temperature": 1.0, "top_p": 0.95,
           "batch_size": 2, "shard_size": 1, "seed": 5}
    path = root / "generate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def finished(d: Path) -> int:
    return len(list((d / "shards").glob("gen-?????.json"))) if (d / "shards").is_dir() else 0


def content(d: Path) -> dict[str, bytes]:
    files = sorted((d / "shards").iterdir()) + [d / "manifest.json", d / "job.json"]
    return {str(p.relative_to(d)): p.read_bytes() for p in files}


def test_two_ranks_and_a_killed_run_equal_one_uninterrupted_process(recipe, tmp_path):
    from adaspec_dist.config import load_config
    from adaspec_dist.speculative.generate import GenerateConfig, generate

    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    manifest = generate(load_config(GenerateConfig, recipe, [f"out_dir={one}"]))
    reference = content(one)
    assert manifest["num_sequences"] == 2 * SHARDS and finished(one) == SHARDS
    assert manifest["model"]["role"] == "draft" and manifest["sampling"]["top_p"] == 0.95

    run_torchrun([TOOL, "--config", str(recipe), f"out_dir={two}"], nproc=2)
    assert content(two) == reference

    # SIGKILL once the first shards are on disk, then rerun the same command (on 2 ranks this time).
    sigkill_when([TOOL, "--config", str(recipe), f"out_dir={killed}"], lambda: finished(killed) >= 3)
    done = finished(killed)
    assert 3 <= done < SHARDS and not (killed / "manifest.json").exists(), f"kill landed after {done} shards"
    run_torchrun([TOOL, "--config", str(recipe), f"out_dir={killed}"], nproc=2)
    assert content(killed) == reference
    assert not list(killed.rglob("*.tmp")) and not (killed / ".lock").exists()
