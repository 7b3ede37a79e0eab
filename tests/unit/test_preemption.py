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
