"""Graceful stop on SIGTERM / SIGUSR1: checkpoint at a step boundary, then exit for a requeue.

Contract
--------
* ``StopSignal.install()`` makes SIGTERM (preemption, ``scancel``, ``scontrol requeue``, a
  launcher stopping its ranks) and SIGUSR1 (``sbatch --signal=USR1@T`` before the time limit)
  only set a flag, so a step in flight is never torn.
* ``requested()`` is COLLECTIVE when ``torch.distributed`` is initialised: an all-reduce (MAX)
  of the flag over the default group, so every rank answers the same at the same step even
  though the signal reaches them at different moments — the checkpoint that follows is
  collective too. Call it on every rank at the same point of the loop (once per optimiser step).
* ``Preempted`` is a ``SystemExit`` with code 143 (128 + SIGTERM): the job ends non-zero, so a
  pipeline does not run the next stage on an unfinished draft, and the launcher scripts
  (launchers/slurm) requeue it; the rerun resumes from the checkpoint (``train --resume``).
* ``restore()`` puts the previous handlers back.
"""
from __future__ import annotations

import logging
import signal
from typing import Any

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """Raised after the stop checkpoint is written; exit status 143 like a SIGTERM death."""

    def __init__(self, step: int):
        super().__init__(143)
        self.step = step


class StopSignal:
    """A flag set by SIGTERM/SIGUSR1 and agreed on by all ranks (see the module contract)."""

    def __init__(self) -> None:
        self._flag = False
        self._previous: dict[int, Any] = {}

    @classmethod
    def install(cls) -> "StopSignal":
        stop = cls()
        for sig in STOP_SIGNALS:
            try:
                stop._previous[sig] = signal.signal(sig, stop._handle)
            except ValueError:  # not the main thread: leave signals to the caller
                logger.warning("cannot install a %s handler outside the main thread", signal.Signals(sig).name)
        return stop

    def _handle(self, signum: int, frame: Any) -> None:
        if not self._flag:
            logger.warning("received %s: will checkpoint and stop at the next step", signal.Signals(signum).name)
        self._flag = True

    def requested(self) -> bool:
        """True on every rank once any rank got a stop signal (collective when distributed)."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self._flag
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        flag = torch.tensor([1 if self._flag else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
