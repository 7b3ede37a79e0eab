"""``python -m adaspec_dist.cli ...`` (what torchrun, the deepspeed launcher and srun run): the console script."""
import sys

from adaspec_dist.cli import main

sys.exit(main())
