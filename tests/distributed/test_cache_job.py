"""The real `cache` job: 1 process vs 2 torchrun ranks, and SIGKILL + rerun, compared byte for byte."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, run_torchrun, sigkill_when

pytestmark = pytest.mark.distributed
TOOL = str(REPO / "tools" / "cache_logits.py")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    from adaspec_dist.data.tasks import DataConfig, load_examples
    from adaspec_dist.data.tokenizer import train_sentencepiece
    from adaspec_dist.models.load import build_preset, save_hf

    root = tmp_path_factory.mktemp("job")
    examples = load_examples(DataConfig(task="arith", limit=60))
    tok = train_sentencepiece([e.prompt + e.answer for e in examples], 400, root / "tok")
    save_hf(build_preset("tiny-llama", len(tok), seed=0), root / "target", tokenizer=tok)
    cfg = {"data": {"task": "arith", "limit": 60, "max_length": 64},
           "model": {"name_or_path": str(root / "target")},
           "scheme": "sampled", "draws": 8, "batch_size": 2, "shard_size": 2, "seed": 3}
    path = root / "cache.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def finished(d: Path) -> int:
    return len(list((d / "shards").glob("shard-?????.json"))) if (d / "shards").is_dir() else 0


def check_reference(cache: Path, ref_dir: Path) -> None:
    """L_ref in the cache = the trainer's estimator of the reference model against the cached target."""
    import torch

    from adaspec_dist.cache.reader import CacheReader
    from adaspec_dist.sparse.divergence import per_token_divergence
    from adaspec_dist.models.load import load_causal_lm

    ref = load_causal_lm(str(ref_dir))
    reader = CacheReader(cache, batch_size=7, seed=1, verify="full")
    assert reader.manifest["reference"]["divergence"] == "fkl"
    for batch in reader:
        with torch.no_grad():
            logits = ref(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        expected = per_token_divergence(logits[batch.loss_mask], batch.target, kind="fkl")
        torch.testing.assert_close(batch.ref_loss, expected, atol=1e-4, rtol=1e-4)


def content(d: Path) -> dict[str, bytes]:
    """Every file that defines the cache (tensorboard logs and the resolved config's out_dir aside)."""
    files = sorted((d / "shards").iterdir()) + [d / "manifest.json", d / "job.json"]
    return {str(p.relative_to(d)): p.read_bytes() for p in files}


def test_two_ranks_and_a_killed_run_equal_one_uninterrupted_process(recipe, tmp_path, capsys):
    from adaspec_dist.cache.produce import CacheConfig, prepare_job, write_cache
    from adaspec_dist.config import load_config

    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    # The uninterrupted single-process run, in this process (no process group needed).
    cfg = load_config(CacheConfig, recipe, [f"out_dir={one}"])
    write_cache(*prepare_job(cfg), one)
    reference = content(one)
    assert len([k for k in reference if k.endswith(".safetensors")]) == 30  # 60 sequences / shard_size 2

    run_torchrun([TOOL, "--config", str(recipe), f"out_dir={two}"], nproc=2)
    assert content(two) == reference

    # SIGKILL once the first shards are on disk, then rerun the same command (on 2 ranks this time).
    sigkill_when([TOOL, "--config", str(recipe), f"out_dir={killed}"], lambda: finished(killed) >= 3)
    done = finished(killed)
    assert 3 <= done < 30 and not (killed / "manifest.json").exists(), f"kill landed after {done} shards"
    run_torchrun([TOOL, "--config", str(recipe), f"out_dir={killed}"], nproc=2)
    assert content(killed) == reference
    assert not list(killed.rglob("*.tmp"))

    # The reference column, data-parallel over 2 ranks, through the CLI.
    ref_dir = recipe.parent / "target"
    run_torchrun([TOOL, "--add-reference", str(ref_dir), str(killed), "--batch-size", "3"], nproc=2)
    assert {k: v for k, v in content(killed).items() if k in reference and k != "manifest.json"} == \
        {k: v for k, v in reference.items() if k != "manifest.json"}  # shards untouched
    check_reference(killed, ref_dir)

    # `adaspec-dist inspect --verify` reads it back and re-hashes every shard.
    from adaspec_dist.cli import main
    assert main(["inspect", str(killed), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "sequences                    60" in out and "verify" in out and "sampled" in out
    # A corrupt shard: the one-line CLI error names the file.
    shard = killed / "shards" / "shard-00007.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1] + b"x")
    assert main(["inspect", str(killed), "--verify"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shard-00007.safetensors' fails its sha256" in err[0]
