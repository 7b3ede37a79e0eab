"""adaspec_dist.files: temp names no two writers share, and one job at a time per directory."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from adaspec_dist import files
from adaspec_dist.files import ClaimError, DirectoryClaim, LOCK_FILE, atomic_write_bytes, claim_for_job


def test_temp_names_are_unique_per_writer(tmp_path):
    names = {files.tmp_path(tmp_path / "manifest.json").name for _ in range(100)}
    assert len(names) == 100
    assert all(n.startswith(f"manifest.json.{os.getpid()}.") and n.endswith(".tmp") for n in names)


def test_concurrent_writers_of_one_file_never_tear_it(tmp_path):
    """Threads replacing one file at once: every read sees one writer's whole content, no writer
    fails, and no temp file is left (a shared NAME.tmp made writers rename each other's files)."""
    target = tmp_path / "job.json"
    payloads = [bytes([65 + i]) * 200_000 for i in range(6)]
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            for _ in range(20):
                atomic_write_bytes(target, data)
        except BaseException as err:  # noqa: BLE001  (collected for the assertion)
            errors.append(err)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    seen = set()
    while any(t.is_alive() for t in threads):
        if target.exists():
            seen.add(target.read_bytes() in payloads)
    for t in threads:
        t.join()
    assert not errors, errors
    assert seen <= {True} and target.read_bytes() in payloads
    assert not list(tmp_path.glob("*.tmp"))


def test_a_claimed_directory_is_refused_until_released(tmp_path):
    d = tmp_path / "cache"
    claim = DirectoryClaim.acquire(d, what="cache directory", fix="choose another out_dir")
    assert (d / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} on host ")
    with pytest.raises(ClaimError) as err:
        DirectoryClaim.acquire(d, what="cache directory", fix="choose another out_dir")
    msg = str(err.value)
    assert f"cache directory '{d}' is in use by another job (pid {os.getpid()}" in msg
    assert msg.endswith("; choose another out_dir") and "\n" not in msg
    claim.release()
    assert not (d / LOCK_FILE).exists()  # nothing left behind in a finished directory
    with DirectoryClaim.acquire(d):
        pass


def test_a_killed_holder_leaves_no_claim(tmp_path):
    """The kernel drops the lock of a dead process: its leftover lock file does not block a rerun."""
    d = tmp_path / "run"
    code = ("import sys, time; from adaspec_dist.files import DirectoryClaim; "
            f"DirectoryClaim.acquire({str(d)!r}); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(ClaimError, match=f"pid {proc.pid}"):
            DirectoryClaim.acquire(d)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (d / LOCK_FILE).exists()  # stale file, no lock
    DirectoryClaim.acquire(d).release()


def test_claims_refuse_a_file_and_an_unwritable_place(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ClaimError, match="exists and is not a directory"):
        DirectoryClaim.acquire(f, what="run directory")
    with pytest.raises(ClaimError, match="cannot create run directory '/proc/adaspec-x'"):
        DirectoryClaim.acquire("/proc/adaspec-x", what="run directory")


def test_claim_for_job_in_one_process(tmp_path):
    claim = claim_for_job(tmp_path / "r", what="run directory", fix="choose another run_dir")
    try:
        with pytest.raises(ClaimError, match="in use by another job"):
            claim_for_job(tmp_path / "r", what="run directory", fix="choose another run_dir")
    finally:
        claim.release()
    claim_for_job(tmp_path / "r", what="run directory", fix="x").release()
