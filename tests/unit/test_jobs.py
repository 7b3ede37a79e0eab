"""The sharded-job skeleton (``adaspec_dist.jobs``) on a toy job with real files and real claims.

A toy job writes shard j as ``j``'s bytes and a sidecar; ranks are played one after another in
one process (each with its own ``Roles``), so the rank-ownership, resume and manifest rules are
checked without the launcher (the real multi-process runs of the three jobs are in
tests/distributed/test_cache_job.py and test_generate_job.py).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from adaspec_dist.files import DirectoryClaim
from adaspec_dist.jobs import JobFile, Roles, ShardedJob, job_roles, owned_shards, run_sharded


class Toy(ShardedJob):
    what, name, unit = "toy directory", "toy", "items"

    def __init__(self, directory: Path, *, n_shards: int = 5, seed: int = 0, fail_at: int | None = None,
                 legacy: tuple[str, ...] = ()):
        self.directory, self.n_shards, self.seed, self.fail_at = directory, n_shards, seed, fail_at
        self.ran: list[int] = []
        self.job_file = JobFile(directory, f"toy-{seed}-{n_shards}", what=self.what, kind="toy",
                                other_job="holds another toy job", legacy=legacy)

    def data(self, j: int) -> bytes:
        return hashlib.sha256(f"{self.seed}:{j}".encode()).digest() * (j + 1)

    def paths(self, j: int) -> tuple[Path, Path]:
        base = self.directory / "shards" / f"toy-{j}"
        return base.with_suffix(".bin"), base.with_suffix(".json")

    def completed(self):
        return self.job_file.finished_manifest(self.directory / "manifest.json", self.finished)

    def admit(self):
        self.job_file.admit()

    def finished(self, j):
        data, side = self.paths(j)
        if not (data.is_file() and side.is_file()):
            return None
        meta = json.loads(side.read_text())
        return meta if hashlib.sha256(data.read_bytes()).hexdigest() == meta["sha256"] else None

    def work(self, j):
        return j + 1

    def run_shard(self, j, *, writes, advance):
        if j == self.fail_at:
            raise KeyboardInterrupt("killed")
        self.ran.append(j)
        advance(j + 1)
        if writes:
            data, side = self.paths(j)
            data.write_bytes(self.data(j))
            side.write_text(json.dumps({"index": j, "sha256": hashlib.sha256(self.data(j)).hexdigest()}))

    def write_manifest(self):
        manifest = {"complete": True, "shards": [self.finished(j) for j in range(self.n_shards)]}
        (self.directory / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
        return manifest


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _rank(r: int, n: int) -> Roles:
    return Roles(dp_rank=r, dp_size=n, is_main=r == 0, writes=True, barrier=lambda: None)


def test_ranks_own_shards_round_robin_and_two_ranks_equal_one(tmp_path):
    assert owned_shards(5, _rank(0, 2)) == [0, 2, 4] and owned_shards(5, _rank(1, 2)) == [1, 3]
    one = Toy(tmp_path / "one")
    manifest = run_sharded(one, job_roles(None))
    assert one.ran == [0, 1, 2, 3, 4] and manifest["complete"]
    # Two ranks replayed in one process: rank 0 claims and computes its shards; its first barrier
    # (where the real rank 0 waits for the others) runs rank 1, then rank 0 seals the manifest.
    two_dir = tmp_path / "two"
    r0, r1 = Toy(two_dir), Toy(two_dir)
    others = []

    def barrier():
        if not others:
            others.append(run_sharded(r1, _rank(1, 2)))

    assert run_sharded(r0, Roles(dp_rank=0, dp_size=2, is_main=True, writes=True, barrier=barrier))["complete"]
    assert r0.ran == [0, 2, 4] and r1.ran == [1, 3] and others == [None]
    assert _tree(two_dir) == _tree(tmp_path / "one")
    assert not (two_dir / ".lock").exists()  # the claim is released with its lock file


def test_a_killed_job_resumes_its_missing_shards_only_and_ends_byte_identical(tmp_path):
    run_sharded(Toy(tmp_path / "ref"), job_roles(None))
    killed = Toy(tmp_path / "job", fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_sharded(killed, job_roles(None))
    assert killed.ran == [0, 1, 2] and not (tmp_path / "job" / "manifest.json").exists()
    (tmp_path / "job" / "shards" / "toy-1.bin").write_bytes(b"damaged")  # a damaged shard is redone too
    (tmp_path / "job" / "shards" / "x.bin.123.abcd.tmp").write_bytes(b"left by the kill")
    again = Toy(tmp_path / "job")
    run_sharded(again, job_roles(None))
    assert again.ran == [1, 3, 4]
    assert _tree(tmp_path / "job") == _tree(tmp_path / "ref")  # the stale temp file is gone too


def test_a_complete_job_does_nothing_and_claims_nothing(tmp_path):
    first = run_sharded(Toy(tmp_path), job_roles(None))
    with DirectoryClaim.acquire(tmp_path, what="toy directory"):  # even while someone holds it
        again = Toy(tmp_path)
        assert run_sharded(again, job_roles(None)) == first and again.ran == []
    assert run_sharded(Toy(tmp_path), _rank(1, 2)) is None  # the manifest is the main rank's to return


def test_another_job_or_a_foreign_directory_is_refused_in_one_line_and_left_untouched(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_sharded(Toy(tmp_path / "a", fail_at=2), job_roles(None))
    before = _tree(tmp_path / "a")
    with pytest.raises(ValueError, match=r"^toy directory '.*a' holds another toy job \(see .*job.json\); choose a "
                                         r"new out_dir or delete that directory$"):
        run_sharded(Toy(tmp_path / "a", seed=1), job_roles(None))
    assert _tree(tmp_path / "a") == before
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"^directory '.*b' is not empty and holds no toy job; choose a new out_dir$"):
        run_sharded(Toy(tmp_path / "b"), job_roles(None))
    assert _tree(tmp_path / "b") == {"notes.txt": b"mine"}
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "job.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"^job file '.*job.json' cannot be read .*; delete it and rerun"):
        run_sharded(Toy(tmp_path / "c"), job_roles(None))


def test_a_directory_in_use_is_refused_and_a_legacy_job_file_is_adopted(tmp_path):
    with DirectoryClaim.acquire(tmp_path / "busy", what="toy directory"):
        with pytest.raises(ValueError, match="toy directory .* is in use by another job .*choose another out_dir"):
            run_sharded(Toy(tmp_path / "busy"), job_roles(None))
    old = tmp_path / "old"
    (old / "shards").mkdir(parents=True)
    (old / "job.json").write_text(json.dumps({"fingerprint": "toy-v0"}))
    job = Toy(old, legacy=("toy-v0",))
    run_sharded(job, job_roles(None))
    assert json.loads((old / "job.json").read_text()) == {"fingerprint": "toy-0-5"} and job.ran == [0, 1, 2, 3, 4]
