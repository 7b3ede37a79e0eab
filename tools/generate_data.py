#!/usr/bin/env python
"""The on-policy data tool: a thin wrapper over ``adaspec-dist generate`` (same arguments).

    python tools/generate_data.py --config RECIPE.yaml out_dir=/data/gen
    torchrun --nproc_per_node 8 tools/generate_data.py --config RECIPE.yaml
"""
import sys

from adaspec_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
