"""A training run killed right after a checkpoint, for the resume tests.

``KillAfter(step)`` is a ``TrainCallback``: once the checkpoint of optimiser step ``step`` is on
disk on every rank, it ends the process at once with ``os._exit(17)`` — no cleanup, no exception
handlers, no atexit, like a SIGKILL or a lost node. Pass it in-process:
``train(cfg, callbacks=[KillAfter(3)])`` (tests/distributed/workers/train_worker.py).

As a script, it runs a pipeline recipe with that callback on the pipeline's train stages, the
same way ``adaspec-dist pipeline`` would (tests/integration/test_pipeline_demo.py)::

    python tests/helpers_kill.py STEP RECIPE [key=value ...] [--force STAGE ...]

and exits with 17 when the kill happened (1 when the recipe finished without one).
"""
from __future__ import annotations

import os
import sys

from adaspec_dist.dist import barrier
from adaspec_dist.distill.train import Run, TrainCallback

KILLED = 17
"""The exit status of a killed process."""


class KillAfter(TrainCallback):
    """Exit abruptly after the checkpoint of optimiser step ``step`` (see the module docstring)."""

    def __init__(self, step: int):
        self.step = step

    def after_checkpoint(self, step: int, run: Run) -> None:
        if step != self.step:
            return
        barrier()  # every rank's partition is on disk before anyone dies
        print(f"KillAfter: exiting abruptly after the checkpoint of step {step} (simulated kill)",
              file=sys.stderr, flush=True)
        os._exit(KILLED)


def main(argv: list[str]) -> int:
    import argparse
    import logging

    from adaspec_dist.pipeline import load_pipeline_config, run_pipeline

    parser = argparse.ArgumentParser(prog="helpers_kill.py", description=__doc__.splitlines()[0])
    parser.add_argument("step", type=int, help="kill after the checkpoint of this optimiser step")
    parser.add_argument("recipe", help="pipeline recipe YAML")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, as for `adaspec-dist pipeline`")
    parser.add_argument("--force", action="append", metavar="STAGE", help="redo this stage and every later one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_pipeline_config(args.recipe, args.overrides)
    run_pipeline(cfg, force=args.force, train_callbacks=[KillAfter(args.step)])
    print(f"helpers_kill.py: the pipeline finished without reaching the checkpoint of step {args.step}",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
