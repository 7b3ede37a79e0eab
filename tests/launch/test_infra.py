"""The launch fixtures put things back even when the code inside them fails (no daemons needed)."""
from __future__ import annotations

import sys

import pytest

from tests.launch import infra


def test_edited_file_restores_bytes_and_absence_after_an_error(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_bytes(b"127.0.0.1 localhost")  # no trailing newline: restored exactly as it was
    absent = tmp_path / "sub" / "config"
    with pytest.raises(RuntimeError):
        with infra.edited_file(hosts, infra.hosts_text()), infra.edited_file(absent, "Host x\n", prepend=True):
            assert "127.0.0.2 node1" in hosts.read_text() and hosts.read_text().startswith("127.0.0.1 localhost\n")
            assert absent.read_text() == "Host x\n"
            raise RuntimeError("a failing test")
    assert hosts.read_bytes() == b"127.0.0.1 localhost"
    assert not absent.exists() and not absent.parent.exists()


def test_daemons_are_stopped_by_pid_even_if_they_ignore_sigterm(tmp_path):
    daemons = infra.Daemons()
    stubborn = daemons.start("stubborn", [sys.executable, "-c",
                                          "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                          "print('up', flush=True); time.sleep(600)"], tmp_path / "d.log")
    polite = daemons.start("polite", ["sleep", "600"], tmp_path / "d.log")
    infra.wait_for(lambda: "up" in (tmp_path / "d.log").read_text(), 30, "the stubborn daemon")
    daemons.check_alive()
    daemons.stop_all(grace=1)
    assert stubborn.poll() is not None and polite.poll() is not None
    assert daemons.procs == []
