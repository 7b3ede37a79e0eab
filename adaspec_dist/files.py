"""Files several processes may write at once: atomic replacement and exclusive directory claims.

Contract
--------
* ``tmp_path(path)`` -> a sibling name no other writer uses (``NAME.<pid>.<random>.tmp``), so two
  processes writing the same file never write into one temp file; ``atomic_write_bytes`` /
  ``atomic_write_text`` write there, fsync and ``os.replace``: readers see the old file or the
  whole new one. ``remove_stale_tmp(directory)`` deletes the ``*.tmp`` files a killed writer left
  (call it only while holding the directory's claim).
* ``DirectoryClaim.acquire(directory, what=...)``: one job at a time per directory. An exclusive,
  non-blocking ``flock`` on ``directory/.lock`` held until ``release()`` (or the process dies:
  the kernel drops it, so a crashed job never leaves a stale claim). A second claimant gets
  :class:`ClaimError` (a ``ValueError``: one line naming the directory, the holder's pid and host,
  and the fix). The claim is per JOB, not per process: the caller's main rank claims, the other
  ranks wait for its answer (``claim_for_job``; ``cache/produce.py``, ``distill/setup.py``,
  ``pipeline.py``).
  ``release`` removes the lock file, so a finished directory holds nothing extra. Where the
  filesystem cannot lock (``ENOLCK``/``ENOTSUP``) it logs a warning and proceeds unlocked.
"""
from __future__ import annotations

import errno
import logging
import os
import secrets
import socket
import time
from pathlib import Path

from adaspec_dist.dist import broadcast_object, launch_env

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class ClaimError(ValueError):
    """Another job holds the directory (one line: which directory, who holds it, what to do)."""


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/adaspec_dist`` (default ``~/.cache/adaspec_dist``): what is derived once per
    user and reused by every run (the stdlib corpus, GGUF conversions)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "adaspec_dist"


def tmp_path(path: str | os.PathLike) -> Path:
    """A temp sibling of ``path`` unique to this process and call (``NAME.<pid>.<hex>.tmp``)."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview | list) -> None:
    """Write ``data`` (bytes or a list of blocks) to a unique temp file, fsync, rename onto ``path``."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            for block in ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data):
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _naming(err, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# errno -> what a user can do about it, when a write fails for lack of room.
_ROOM = {errno.ENOSPC: "free space on that filesystem (or write elsewhere) and rerun the same command",
         errno.EDQUOT: "free space within your quota (or write elsewhere) and rerun the same command",
         errno.EFBIG: "the file-size limit (ulimit -f) is below the file's size: raise it and rerun the same command"}


def _naming(err: OSError, path: Path) -> OSError:
    """``err`` with ``path`` as its filename: a failed write() (disk full, file-size limit) carries
    none, and the one-line error then named no file. The fix is said for the cases of room."""
    if err.filename is not None:
        return err
    reason = err.strerror or str(err)
    if err.errno in _ROOM:
        reason = f"{reason}; {_ROOM[err.errno]}"
    return type(err)(err.errno, reason, str(path))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def remove_stale_tmp(directory: str | os.PathLike) -> int:
    """Delete the ``*.tmp`` files (and directories) under ``directory``; returns how many."""
    import shutil

    n = 0
    for p in Path(directory).rglob("*.tmp"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        n += 1
    return n


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


class DirectoryClaim:
    """An exclusive claim on a directory (see the module contract)."""

    def __init__(self, directory: Path, fd: int | None):
        self.directory = directory
        self._fd = fd

    @classmethod
    def acquire(cls, directory: str | os.PathLike, *, what: str = "directory",
                fix: str = "wait for it to finish or choose another directory") -> "DirectoryClaim":
        """Create ``directory`` if needed and claim it, or raise :class:`ClaimError`."""
        import fcntl

        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise ClaimError(f"{what} '{directory}' exists and is not a directory; choose another path")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ClaimError(f"cannot create {what} '{directory}': {err.strerror}; choose a writable path") from None
        path = directory / LOCK_FILE
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise ClaimError(f"cannot write in {what} '{directory}': {err.strerror}; "
                                 "choose a writable path") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ClaimError(f"{what} '{directory}' is in use by another job ({_holder(path)}); "
                                     f"{fix}") from None
                logger.warning("cannot lock %s (%s): proceeding without an exclusive claim", path, err.strerror)
                return cls(directory, None)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file between our open and our lock: take the new one
        stamp = f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, stamp.encode(), 0)
        return cls(directory, fd)

    def release(self) -> None:
        """Drop the claim and its lock file (the file goes first, while still held)."""
        if self._fd is None:
            return
        try:
            (self.directory / LOCK_FILE).unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirectoryClaim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_for_job(directory: str | os.PathLike, *, what: str, fix: str) -> DirectoryClaim | None:
    """The job's claim on ``directory``: global rank 0 acquires it and every rank gets its answer
    (collective once ``torch.distributed`` is initialised). Returns the claim on rank 0 (release it
    when the job ends), None elsewhere; raises :class:`ClaimError` on every rank when refused."""
    env = launch_env()
    if env.world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():  # the answer travels on the job's process group
            raise RuntimeError("claim_for_job with several ranks needs the process group: init_distributed first")
    rank = env.rank
    claim, refusal = None, None
    if rank == 0:
        try:
            claim = DirectoryClaim.acquire(directory, what=what, fix=fix)
        except ClaimError as err:
            refusal = str(err)
    refusal = broadcast_object(refusal)
    if refusal:
        raise ClaimError(refusal)
    return claim

