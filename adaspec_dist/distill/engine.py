"""DeepSpeed engine construction and checkpoints: the ONLY deepspeed importer of the project.

Contract
--------
* ``EngineConfig`` (recipe section ``engine``) names a standard DeepSpeed JSON file from
  ``adaspec_dist/configs/`` (``ds_zero0..3.json``, package data) and the few fields a recipe overrides on top of it
  (ZeRO stage, precision, micro-batch, gradient accumulation, clipping, optimiser, LR schedule,
  activation checkpointing). ``ds_config(cfg, ...)`` returns the merged dict.
* ``build_engine(model, cfg=..., total_steps=..., device=...)`` -> DeepSpeedEngine with a client
  ``torch.optim.AdamW`` (no JIT-built fused/CPU Adam needed, so CPU runs need only DeepSpeed's
  shared-memory comm op that ``tools/warm_deepspeed.py`` builds once) and a ``LambdaLR``
  schedule (constant or cosine with linear warmup) that DeepSpeed steps and checkpoints.
  ``torch.distributed`` must be initialised already (``adaspec_dist.dist.init_distributed``);
  the data-parallel group is the world (tensor-parallel training is not supported here).
* Precision: the one vocabulary of models/precision.py (float32, bfloat16, float16; fp32, bf16,
  fp16 read as these); ``auto`` = bfloat16 on a CUDA device that supports it, else float16 on
  CUDA (with loss scaling), float32 on CPU. Half precision on CPU is refused in one line.
* ``save_checkpoint(engine, dir, step, client_state)`` / ``load_checkpoint(engine, dir)``:
  DeepSpeed checkpoints (module, optimiser, scheduler) with our client state (step, RNG,
  reader position); ``latest_step(dir)`` reads DeepSpeed's ``latest`` tag.
* Loading never unpickles arbitrary objects: ``build_engine`` makes the engine's checkpoint
  engine read every file with ``torch.load(weights_only=True)``, allowing only tensors, plain
  containers and the few DeepSpeed / numpy types its state holds (``CHECKPOINT_TYPES``). A file
  with anything else (a planted pickle) is refused in one ValueError naming it, before any of it
  runs. Every resume path (CLI ``--resume`` / ``--auto-resume``, the pipeline, Slurm's requeue)
  goes through ``load_checkpoint``.
* ``gathered_module(engine)``: context manager that makes the full parameters visible on
  every rank (a no-op below ZeRO-3), for export and evaluation-free inspection.
* ``Engine``: the slice of ``deepspeed.DeepSpeedEngine`` the trainer uses, as a Protocol, so
  that callers can be typed while deepspeed stays a deferred import.
* JIT-built ops go to ``extensions_dir()``: ``TORCH_EXTENSIONS_DIR`` when set, else this Python
  environment's own ``sys.prefix/torch_extensions`` (two venvs with different torch builds
  never load or rebuild each other's ops); ``build_engine`` says in one log line when the first
  run in an environment is about to compile (minutes, once), instead of waiting silently.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Protocol, get_args

from adaspec_dist.configs import shipped
from adaspec_dist.models.precision import Precision, canonical_precision, is_cuda, precision_field
from adaspec_dist.models.precision import resolve_precision as _resolve

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Schedule = Literal["constant", "cosine"]
SCHEDULES: tuple[Schedule, ...] = get_args(Schedule)
FusedHead = Literal["auto", "on", "off"]
FUSED_HEAD_MODES: tuple[FusedHead, ...] = get_args(FusedHead)


class Engine(Protocol):
    """What the trainer calls on a ``deepspeed.DeepSpeedEngine`` (it wraps the draft module)."""

    module: torch.nn.Module

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def backward(self, loss: torch.Tensor) -> Any: ...

    def step(self) -> None: ...

    def is_gradient_accumulation_boundary(self) -> bool: ...

    def zero_optimization_stage(self) -> int: ...

    def get_lr(self) -> list[float]: ...

    def get_global_grad_norm(self) -> float | None: ...

    def save_checkpoint(self, save_dir: str, tag: str | None = None, client_state: dict | None = None) -> Any: ...

    def load_checkpoint(self, load_dir: str, tag: str | None = None, *, load_optimizer_states: bool = True,
                        load_lr_scheduler_states: bool = True) -> tuple[str | None, dict | None]: ...


@dataclass(kw_only=True)
class EngineConfig:
    ds_config: str = "ds_zero1.json"
    """DeepSpeed JSON: a file name in configs/ or a path (fields below override it)."""
    zero_stage: int | None = None
    """ZeRO stage 0-3 (None = keep the JSON's)."""
    precision: Precision = precision_field()
    """auto (bfloat16, else float16, on GPU; float32 on CPU), float32, bfloat16 or float16 (fp32, bf16,
    fp16 are read as these: models/precision.py)."""
    global_batch_size: int | None = None
    """Sequences per optimiser step over all ranks. When set, micro_batch_size is an upper bound
    and grad_accum is derived from the world size (distill/budget.py); None = micro_batch_size x
    grad_accum x ranks."""
    micro_batch_size: int = 8
    """Sequences per rank per micro-step (the bound when global_batch_size is set)."""
    grad_accum: int = 1
    """Micro-steps per optimiser step (derived when global_batch_size is set)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    lr: float = 3e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay of the matrices (biases and norms get none)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas (the paper recipes use HF Trainer's defaults, (0.9, 0.999))."""
    eps: float = 1e-8
    """AdamW epsilon."""
    schedule: Schedule = "cosine"
    """constant or cosine (with linear warmup, decaying to min_lr_ratio·lr)."""
    warmup_steps: int = 0
    """Optimiser steps of linear warmup from 0 to lr (0 = none)."""
    min_lr_ratio: float = 0.1
    """cosine: the final LR as a fraction of lr."""
    activation_checkpointing: bool = False
    """Recompute activations in backward (HF gradient checkpointing)."""
    fused_head: FusedHead = "auto"
    """Run the draft's LM head and the loss in row chunks, never holding N x V logits
    (distill/fused_head.py): on, off (the plain path), or auto = on when a micro-batch's supervised
    positions x vocabulary exceed 2^27 (the largest micro-batch over the data-parallel ranks)."""
    head_chunk_rows: int | None = None
    """Rows per chunk of the fused head (None = as many as keep a chunk's logits at 2^24 values)."""

    def validate(self) -> None:
        if self.zero_stage is not None and self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"engine.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        canonical_precision(self.precision, "engine.precision")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"engine.schedule '{self.schedule}' must be one of {list(SCHEDULES)}")
        if self.micro_batch_size < 1 or self.grad_accum < 1:
            raise ValueError("engine.micro_batch_size and engine.grad_accum must be >= 1")
        if not self.lr > 0:  # "not >": NaN fails it too
            raise ValueError(f"engine.lr must be positive, got {self.lr}")
        # Silently clamped before (warmup -5 meant 0): a sign error should be told, not absorbed.
        if self.warmup_steps < 0:
            raise ValueError(f"engine.warmup_steps must be >= 0 (0 = no warmup), got {self.warmup_steps}")
        if not self.grad_clip >= 0:
            raise ValueError(f"engine.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"engine.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.fused_head not in FUSED_HEAD_MODES:
            raise ValueError(f"engine.fused_head '{self.fused_head}' must be one of {list(FUSED_HEAD_MODES)}")
        if self.head_chunk_rows is not None and (isinstance(self.head_chunk_rows, bool) or self.head_chunk_rows < 1):
            raise ValueError(f"engine.head_chunk_rows must be a positive number of rows or null, "
                             f"got {self.head_chunk_rows!r}")


def _resolve_json(name: str) -> Path:
    path = Path(name)
    for candidate in (path, shipped(name)):
        if candidate.is_file():
            return candidate
    raise ValueError(f"DeepSpeed config '{name}' not found; use one of ds_zero{{0,1,2,3}}.json (shipped in adaspec_dist/configs) or a path")


def resolve_precision(precision: str, device: Any) -> Precision:
    """The engine's concrete precision: models/precision.py's, with float16 as the GPU fallback
    (DeepSpeed scales its loss); half precision on CPU is refused."""
    resolved = _resolve(precision, device, half_fallback=True)
    if resolved != "float32" and not is_cuda(device):
        raise ValueError(f"engine.precision={precision} needs a GPU; use float32 (or auto) on CPU")
    return resolved


def ds_config(cfg: EngineConfig, *, dp_size: int, device: Any = "cpu") -> dict:
    """The DeepSpeed config dict: the JSON file with this recipe's overrides applied."""
    with open(_resolve_json(cfg.ds_config)) as fh:
        conf = json.load(fh)
    conf["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
    conf["gradient_accumulation_steps"] = cfg.grad_accum
    conf["train_batch_size"] = cfg.micro_batch_size * cfg.grad_accum * dp_size
    conf["gradient_clipping"] = cfg.grad_clip
    zero = conf.setdefault("zero_optimization", {})
    if cfg.zero_stage is not None:
        zero["stage"] = cfg.zero_stage
    precision = resolve_precision(cfg.precision, device)
    half = precision == "float16"  # DeepSpeed's sections are named by its short spellings
    conf["bf16"] = {"enabled": precision == "bfloat16"}
    conf["fp16"] = {"enabled": half, **({"initial_scale_power": 16} if half else {})}
    # A client torch optimizer under ZeRO is fine (AdamW is on DeepSpeed's tested list anyway).
    conf.setdefault("zero_allow_untested_optimizer", True)
    conf.setdefault("steps_per_print", 10 ** 9)  # we log ourselves
    conf.setdefault("wall_clock_breakdown", False)
    return conf


def lr_lambda(cfg: EngineConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak LR at optimiser step s (a picklable closure is not needed: DeepSpeed
    checkpoints the scheduler's state dict, which holds the step count, not the function)."""
    warm, floor = max(0, cfg.warmup_steps), cfg.min_lr_ratio

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, total_steps - warm)
        progress = min(1.0, (step - warm) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# The DeepSpeed op a CPU run compiles when its comm backend starts (GPU runs compile none: the
# optimiser is torch's AdamW).
CPU_OPS = ("deepspeed_shm_comm",)


def extensions_dir() -> Path:
    """Where torch/DeepSpeed JIT-build C++ ops for this process, set in the environment so the
    build uses it: TORCH_EXTENSIONS_DIR when the user set it, else ``sys.prefix/torch_extensions``
    (per environment: torch's default ~/.cache/torch_extensions/pyXY_cpu is shared by every venv
    of a user, whatever its torch version), or, when sys.prefix is read-only (a system-wide
    install), ~/.cache/torch_extensions/<python and torch version>."""
    import os
    import sys

    if "TORCH_EXTENSIONS_DIR" not in os.environ:
        mine = Path(sys.prefix) / "torch_extensions"
        if not (mine.is_dir() or os.access(sys.prefix, os.W_OK)):
            import torch

            tag = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}"
            mine = Path.home() / ".cache" / "torch_extensions" / tag
        os.environ["TORCH_EXTENSIONS_DIR"] = str(mine)
    return Path(os.environ["TORCH_EXTENSIONS_DIR"])


def ops_to_build(device: Any) -> list[Path]:
    """The build directories of the ops this run will compile before it can start (empty when
    they are built, and on CUDA)."""
    if str(device).startswith("cuda"):
        return []
    root = extensions_dir()
    return [root / name for name in CPU_OPS if not any((root / name).glob(f"{name}*.so"))]


def build_engine(model: torch.nn.Module, *, cfg: EngineConfig, total_steps: int, device: Any = "cpu") -> Engine:
    """Wrap ``model`` in a DeepSpeed engine (see the module docstring)."""
    pending = ops_to_build(device)  # also points the build at this environment's extensions dir
    import deepspeed
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("initialise torch.distributed first (adaspec_dist.dist.init_distributed)")
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    conf = ds_config(cfg, dp_size=dist.get_world_size(), device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    if pending and dist.get_rank() == 0:
        logger.info("DeepSpeed compiles its C++ op %s into %s: the first run in this environment waits "
                    "1-3 minutes, once (python tools/warm_deepspeed.py does it ahead of time)",
                    ", ".join(p.name for p in pending), pending[0].parent)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=conf, dist_init_required=False)
    restrict_checkpoint_loads(engine)
    logger.info("DeepSpeed engine: ZeRO-%d, %s, micro-batch %d x accum %d x dp %d, schedule %s",
                engine.zero_optimization_stage(), resolve_precision(cfg.precision, device),
                cfg.micro_batch_size, cfg.grad_accum, dist.get_world_size(), cfg.schedule)
    return engine


def current_lr(engine: Engine) -> float:
    return float(engine.get_lr()[0])


def raw_grad_norm(engine: Engine, fallback: float | None = None) -> float | None:
    """Global gradient norm of the last optimiser step: DeepSpeed's (ZeRO 1-3 compute it), else
    ``fallback`` (see :func:`full_grad_norm`), else None (not known)."""
    value = engine.get_global_grad_norm()
    if value is None:
        value = fallback
    return None if value is None else float(value)


def grad_norm(engine: Engine, fallback: float | None = None) -> float:
    """:func:`raw_grad_norm`, nan when not known (for logging)."""
    value = raw_grad_norm(engine, fallback)
    return float("nan") if value is None else value


def full_grad_norm(engine: Engine) -> float | None:
    """The L2 norm of the module's gradients before clipping, when every rank holds them whole
    (ZeRO-0, after backward's all-reduce at an accumulation boundary); None under ZeRO 1-3, whose
    optimiser reports the norm itself. DeepSpeed's plain fp32 path with a client optimiser computes
    none, which left train/grad_norm NaN."""
    import torch

    if engine.zero_optimization_stage() != 0:
        return None
    grads = [p.grad.detach().float() for p in engine.module.parameters() if p.grad is not None]
    if not grads:
        return None
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def save_checkpoint(engine: Engine, ckpt_dir: str | Path, step: int, client_state: dict) -> None:
    """Collective: every rank writes its ZeRO partition; DeepSpeed updates ``latest``."""
    engine.save_checkpoint(str(ckpt_dir), tag=tag_for(step), client_state=client_state)


def latest_step(ckpt_dir: str | Path) -> int | None:
    """Step of the newest complete checkpoint (DeepSpeed writes ``latest`` last), else None."""
    latest = Path(ckpt_dir) / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    return int(tag.removeprefix("step")) if tag.startswith("step") else None


def checkpoint_types() -> list:
    """What a checkpoint may hold besides tensors and plain containers: the DeepSpeed state
    objects its optimisers save (loss scaler, ZeRO stage enum, fragment addresses) and the numpy
    array of our client RNG state (``np.random.get_state``). Classes, not callables that run code."""
    import numpy as np
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address, _reconstruct, np.ndarray, np.dtype,
            type(np.dtype(np.uint32))]


def safe_torch_load(path: str | Path, map_location: Any = None) -> Any:
    """``torch.load`` that runs no code from the file: ``weights_only=True`` with
    :func:`checkpoint_types` allowed; anything else is a one-line ValueError naming the file."""
    import pickle

    import torch

    with torch.serialization.safe_globals(checkpoint_types()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
            what = found.group(1) if found else " ".join(str(err).split())[:200]
            raise ValueError(f"checkpoint file '{path}' holds an object that is not training state ({what}); "
                             "refusing to unpickle it (it could run code); "
                             "train into a new run_dir without --resume") from None


def restrict_checkpoint_loads(engine: Engine) -> None:
    """Make this engine's checkpoint engine load through :func:`safe_torch_load` (an attribute of
    this one engine object: DeepSpeed's TorchCheckpointEngine itself calls torch.load with
    weights_only=False, and patching it globally would change other users of deepspeed)."""
    ckpt_engine = getattr(engine, "checkpoint_engine", None)
    assert ckpt_engine is not None, "DeepSpeed engine without a checkpoint engine"

    def load(path: str, map_location: Any = None) -> Any:
        return safe_torch_load(path, map_location=map_location)

    ckpt_engine.load = load


def load_checkpoint(engine: Engine, ckpt_dir: str | Path) -> dict:
    """Restore module, optimiser and scheduler from the newest checkpoint; returns client state."""
    restrict_checkpoint_loads(engine)  # idempotent; also covers an engine not made by build_engine
    path, client = engine.load_checkpoint(str(ckpt_dir), load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if path is None:
        raise ValueError(f"no DeepSpeed checkpoint in '{ckpt_dir}'; drop --resume or point run_dir at a run")
    return client or {}


@contextlib.contextmanager
def gathered_module(engine: Engine) -> Iterator[torch.nn.Module]:
    """Yield the full (unpartitioned) module on every rank; collective under ZeRO-3."""
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            yield engine.module
    else:
        yield engine.module
