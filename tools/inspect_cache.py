#!/usr/bin/env python
"""Summarise (and with ``--verify`` re-hash) a logit cache: ``adaspec-dist inspect`` as a script."""
import sys

from adaspec_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["inspect", *sys.argv[1:]]))
