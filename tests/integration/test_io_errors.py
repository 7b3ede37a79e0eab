"""A write that fails for lack of room (here: the file-size limit, as a full disk would) is one line of
its own naming the file and the fix, not a path-less errno glued to a progress bar."""
from __future__ import annotations

import errno
import resource
import subprocess
import sys

from adaspec_dist.cli import one_line
from adaspec_dist.files import atomic_write_bytes
from tests.helpers import child_env


def test_a_failed_write_names_its_file(tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, block):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(builtins, "open", lambda p, m="r", *a, **k: Full(real_open(p, m)) if "w" in m else
                        real_open(p, m, *a, **k))
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"x")
    except OSError as err:
        line = one_line(err)
    monkeypatch.undo()
    assert line == (f"[Errno 28] No space left on device; free space on that filesystem (or write elsewhere) and "
                    f"rerun the same command: '{tmp_path / 'f.bin'}'")
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp file left


def test_the_cache_job_over_the_file_size_limit_says_which_file_on_its_own_line(tmp_path):
    from tests.fixtures import tiny_tokenizer_dir

    tok = tiny_tokenizer_dir(tmp_path)
    out = tmp_path / "cache"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (40 * 1024, 40 * 1024))

    proc = subprocess.run([sys.executable, "-m", "adaspec_dist.cli", "cache", "model.preset=tiny-llama", f"tokenizer={tok}",
                           "data.task=arith", "data.limit=64", "data.max_length=48", "top_k=64", "shard_size=64",
                           f"out_dir={out}"], env=child_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.rstrip("\n").split("\n")[-1]
    assert last.startswith("adaspec-dist cache: error: [Errno 27] File too large; the file-size limit (ulimit -f)"), last
    assert last.endswith(f"'{out / 'shards' / 'shard-00000.safetensors'}'"), last
