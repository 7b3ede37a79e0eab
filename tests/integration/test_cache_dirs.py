"""Cache directories as users meet them (issue 15), through the real console script.

* Two jobs into one directory — started together, any timing, or one holding the directory while
  the other starts — : exactly one proceeds, the other gets one line.
* A job refused for a setting it could have checked first (top_k past the vocabulary, a
  tokenizer that is not the target's, sequences past the position limit) writes nothing, so the
  corrected command runs into the same directory.
* What a job's fingerprint holds is what determines the bytes, not where the files are: a moved
  cache, rerun with a relative instead of an absolute target path, is complete, and a
  half-finished one resumes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import child_env, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    from adaspec_dist.data.tokenizer import load_tokenizer
    from adaspec_dist.models.load import build_preset, save_hf
    from tests.fixtures import tiny_tokenizer_dir

    root = tmp_path_factory.mktemp("cache-dirs")
    tok = load_tokenizer(tiny_tokenizer_dir(root))
    save_hf(build_preset("tiny-llama", len(tok), seed=0), root / "models" / "target", tokenizer=tok)
    recipe = root / "cache.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"task": "arith", "limit": 24, "max_length": 64},
                                      "model": {"name_or_path": str(root / "models" / "target")},
                                      "top_k": 8, "batch_size": 8, "shard_size": 12}))
    return {"root": root, "target": root / "models" / "target", "recipe": recipe, "vocab": len(tok)}


def cache_argv(world, out: Path, *extra: str) -> list[str]:
    return ["cache", "--config", str(world["recipe"]), f"out_dir={out}", *extra]


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one stderr line of a refused command (exit 2, no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def start(argv: list[str], cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "adaspec_dist.cli", *argv], env=child_env(), cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_intact(out: Path, top_k: int) -> None:
    from adaspec_dist.cache.summary import summarise

    info = summarise(out, verify=True)  # every shard re-hashed against the manifest
    assert info["params"]["top_k"] == top_k and info["sequences"] == 24, info
    assert not list(out.rglob("*.tmp")) and not (out / ".lock").exists()


@pytest.mark.parametrize("rep", range(2))
def test_two_jobs_started_together_one_proceeds(world, tmp_path, rep):
    out = tmp_path / "cache"
    procs = [start(cache_argv(world, out, f"top_k={k}")) for k in (8, 16)]
    done = [finish(p) for p in procs]
    ok = [i for i, p in enumerate(done) if p.returncode == 0]
    assert len(ok) == 1, [(p.returncode, p.stderr[-2000:]) for p in done]
    line = error_line(done[1 - ok[0]])
    assert str(out) in line and ("in use by another job" in line or "different settings" in line), line
    assert_intact(out, (8, 16)[ok[0]])


def test_a_job_started_while_another_holds_the_directory_is_refused(world, tmp_path):
    """The forced interleaving: the directory is claimed (as a running job's main rank holds it)
    when the second job reaches its claim; once released, the same command runs."""
    from adaspec_dist.files import DirectoryClaim

    out = tmp_path / "cache"
    with DirectoryClaim.acquire(out, what="cache directory"):
        line = error_line(finish(start(cache_argv(world, out))))
        assert "in use by another job" in line and f"pid {os.getpid()}" in line and str(out) in line, line
        assert not (out / "job.json").exists()
    run_cli(cache_argv(world, out))
    assert_intact(out, 8)


@pytest.mark.parametrize("bad,needle", [
    ("top_k=100000", "top_k=100000 exceeds the target's vocabulary"),
    ("data.max_length=400", "past the target's max_position_embeddings (256)"),
])
def test_a_refused_job_writes_nothing_and_the_corrected_one_runs(world, tmp_path, bad, needle):
    out = tmp_path / "cache"
    line = error_line(run_cli(cache_argv(world, out, bad), check=False))
    assert needle in line, line
    assert not out.exists()  # no job.json left behind to refuse the corrected command
    run_cli(cache_argv(world, out))
    assert_intact(out, 8)


def test_a_moved_cache_with_a_relative_target_path_is_complete_and_a_half_finished_one_resumes(world, tmp_path):
    first = tmp_path / "first"
    run_cli(cache_argv(world, first))  # the target by its absolute path
    files = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file() and "tb" not in p.parts}
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(str(first), moved)
    # The same files, named relative to another working directory: complete, nothing rewritten.
    relative = os.path.relpath(world["target"], world["root"])
    proc = start(cache_argv(world, moved, f"model.name_or_path={relative}"), cwd=world["root"])
    done = finish(proc)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already complete" in done.stderr and f"cache {moved}:" in done.stdout
    # Half-finished (killed after its first shard, before the manifest), then moved: it resumes.
    (moved / "manifest.json").unlink()
    for p in (moved / "shards").glob("shard-00001*"):
        p.unlink()
    kept = (moved / "shards" / "shard-00000.safetensors").stat().st_mtime_ns
    again = tmp_path / "again"
    shutil.move(str(moved), again)
    done = finish(start(cache_argv(world, again, f"model.name_or_path={relative}"), cwd=world["root"]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 of its 2 shards are already complete" in done.stderr
    assert (again / "shards" / "shard-00000.safetensors").stat().st_mtime_ns == kept
    now = {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file() and "tb" not in p.parts}
    assert now.keys() == files.keys()
    # Byte-identical but for the records that name paths (the resolved config, the target's identity).
    assert {k for k in files if now[k] != files[k]} <= {Path("config.yaml"), Path("manifest.json")}


def _legacy_job_file(out: Path, world) -> str:
    """job.json as adaspec-dist <= c93f46a wrote it: the JobSpec with the target named by its path
    and no weights fingerprint (the formula re-derived here from the manifest, independently of
    produce.legacy_fingerprints)."""
    import hashlib
    import json

    man = json.loads((out / "manifest.json").read_text())
    p = man["params"]
    extra = {"target": {k: v for k, v in man["target"].items() if k != "weights"},
             "tokenizer_fingerprint": man["tokenizer_fingerprint"],
             "data": {k: man["data"][k] for k in ("task", "split", "limit", "max_length", "fingerprint")},
             "split": man["split"]}
    spec = {"scheme": man["scheme"], "top_k": p["top_k"], "draws": p["draws"], "temperature": p["temperature"],
            "value_dtype": p["value_dtype"], "batch_size": p["batch_size"], "shard_size": p["shard_size"],
            "seed": p["seed"], "vocab_size": man["vocab_size"], "extra": extra,
            "num_sequences": man["num_sequences"]}
    legacy = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    (out / "job.json").write_text(json.dumps({"fingerprint": legacy}))
    return legacy


def test_a_cache_of_the_previous_version_is_complete_or_resumes(world, tmp_path):
    """A cache whose job.json an earlier version wrote (was: refused as 'different settings')."""
    import json

    out = tmp_path / "old"
    run_cli(cache_argv(world, out))
    shards = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    legacy = _legacy_job_file(out, world)
    proc = run_cli(cache_argv(world, out))
    assert "already complete" in proc.stderr + proc.stdout
    # Half-finished (a shard and the manifest gone): resumes, rewrites the same bytes, adopts the job file.
    (out / "manifest.json").unlink()
    (out / "shards" / "shard-00001.safetensors").unlink()
    (out / "shards" / "shard-00001.json").unlink()
    run_cli(cache_argv(world, out))
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == shards
    assert json.loads((out / "job.json").read_text())["fingerprint"] != legacy
    # Other settings are still another job.
    (out / "job.json").write_text(json.dumps({"fingerprint": legacy}))
    assert "different settings" in error_line(run_cli(cache_argv(world, out, "top_k=4"), check=False))
