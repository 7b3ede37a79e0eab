"""adaspec-dist: train better speculative-decoding drafts with selective distillation (AdaSPEC).

Importing the package is cheap: torch, deepspeed and megatron-core are imported only by the
modules that need them (``distill/engine.py`` and ``models/tensor_parallel.py`` respectively).
"""
__version__ = "0.1.0"
