#!/usr/bin/env python
"""The offline caching tool: a thin wrapper over ``adaspec-dist cache`` (same arguments).

    python tools/cache_logits.py --config RECIPE.yaml out_dir=/data/cache
    torchrun --nproc_per_node 8 tools/cache_logits.py --config RECIPE.yaml
    python tools/cache_logits.py --add-reference REF_MODEL CACHE_DIR
"""
import sys

from adaspec_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["cache", *sys.argv[1:]]))
