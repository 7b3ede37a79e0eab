"""``python -m adaspec_dist.cli ...`` (what torchrun, the deepspeed launcher and srun run): the console script."""
import sys

from adaspec_dist.cli import main

if __name__ == "__main__":
    sys.exit(main())
