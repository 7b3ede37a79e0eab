"""StopSignal: a SIGTERM/SIGUSR1 only sets a flag; handlers are restored; Preempted exits 143.

The collective agreement across ranks and the checkpoint + requeue + resume path run for real
in tests/launch/test_slurm.py (a 2-node Slurm job preempted with `scontrol requeue`).
"""
from __future__ import annotations

import os
import signal

import pytest

from adaspec_dist.preemption import Preempted, StopSignal


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_sets_the_flag_instead_of_killing(sig):
    before = signal.getsignal(sig)
    stop = StopSignal.install()
    try:
        assert not stop.requested()
        os.kill(os.getpid(), sig)  # would end the test process without the handler
        assert stop.requested()
        assert stop.requested()  # stays set
    finally:
        stop.restore()
    assert signal.getsignal(sig) == before


def test_preempted_is_a_systemexit_with_status_143():
    with pytest.raises(SystemExit) as info:
        raise Preempted(step=7)
    assert info.value.code == 143 and info.value.step == 7


class _Leave(Exception):
    """Raised by the stand-in for os._exit."""


def _preempted_command(monkeypatch):
    """A subcommand whose job is stopped by a signal (what train does after its stop checkpoint)."""
    import sys
    import types

    import adaspec_dist.cli as cli

    module = types.ModuleType("adaspec_test_preempted_cmd")
    module.add_arguments = lambda parser: None

    def run(args):
        raise Preempted(step=3)

    module.run = run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.SUBCOMMANDS, "stopped", (module.__name__, "a job a signal stops"))
    released = []
    monkeypatch.setattr(cli, "_release_process_group", lambda: released.append(True))
    return cli, released


def test_the_program_leaves_a_preempted_job_with_143_and_no_teardown(monkeypatch):
    """As the program (argv None), a preempted job ends by os._exit(143) once its process group is
    released: the interpreter's teardown, where a thread alive in C++ code aborts the process with
    134, never runs."""
    cli, released = _preempted_command(monkeypatch)
    exits = []

    def fake_exit(code):
        exits.append((code, list(released)))
        raise _Leave

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr("sys.argv", ["adaspec-dist", "stopped"])
    with pytest.raises(_Leave):
        cli.main()
    assert exits == [(143, [True])]


def test_in_process_callers_get_the_systemexit(monkeypatch):
    cli, released = _preempted_command(monkeypatch)
    monkeypatch.setattr(cli.os, "_exit", lambda code: pytest.fail("os._exit in an in-process call"))
    with pytest.raises(Preempted) as info:
        cli.main(["stopped"])
    assert info.value.code == 143 and released
