"""``adaspec-dist pipeline RECIPE.yaml``: the paper's whole method as resumable stages.

Contract
--------
* A recipe is a :class:`PipelineConfig`: shared settings (run_dir, data, tokenizer, target and
  draft models) plus one mapping per stage that is passed through to that stage's own config
  (``TrainConfig``, ``CacheConfig``, ``EvalConfig``), after the pipeline has filled in the
  paths that connect the stages. The pipeline owns no training, caching or decoding logic.
* :func:`plan` turns a recipe into an ordered list of :class:`Stage` s — pure, no I/O — so a
  dry run (``--dry-run``) and the recipe tests can inspect it::

      tokenizer -> sft -> cache_train -> cache_eval -> reference -> add_reference -> adaspec
                -> distillspec_wide -> eval

  The eval compares three arms at equal optimiser steps: ``distillspec`` (the reference: kd on
  every token at batch B), ``adaspec`` (the top-k tokens at batch B/k under ``budget: paper``)
  and the compute control ``distillspec_wide`` (kd on every token at AdaSPEC's batch and steps,
  built from the adaspec section; ``distillspec_wide: null`` skips it). Only the control
  separates the effect of *selection* from that of the larger batch.

  ``tokenizer`` only exists when the recipe trains one (the demo); ``sft`` only when the
  recipe fine-tunes the target (otherwise the target is used as given).
* Each stage is the project's own CLI subcommand (``cache``, ``train``, ``eval``) called
  in-process with the argv that the stage would get on the command line, so every stage is
  also runnable alone (``--stage NAME``, or the printed command line).
* Resumability: a stage that returns 0 gets ``run_dir/stages/NAME.done.json`` holding the
  sha256 of its resolved config; a rerun skips stages whose marker matches and whose
  outputs exist. A stage killed midway has no marker and is rerun; the stages themselves
  resume (the cache keeps complete shards, ``train --resume`` continues from its last
  checkpoint), so a killed pipeline finishes with the same results as an uninterrupted one.
  A marker whose config hash differs is refused (one line naming the stage and the fix).
* Launchers: every rank runs the pipeline (torchrun / deepspeed / srun start N copies of it);
  the stages are data-parallel themselves. Rank-0-only work (tokenizer, markers) is fenced by
  barriers, and every rank reads the markers from the shared run directory.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path


import yaml

from adaspec_dist.config import ConfigError, build_config, merge, read_yaml, parse_overrides, save_resolved
from adaspec_dist.data import tokenizer as tk
from adaspec_dist.data.tasks import DataConfig, known_rows, load_examples
from adaspec_dist.dist import barrier, init_distributed, keep_process_group, launch_env
from adaspec_dist.distill.train import TrainConfig, budget_for

logger = logging.getLogger(__name__)

STAGE_ORDER = ("tokenizer", "sft", "cache_train", "cache_eval", "reference", "add_reference", "adaspec",
               "distillspec_wide", "eval")
# Where `train` exports the final HF model inside its out_dir (the distill trainer's layout).
EXPORT_SUBDIR = "final"


@dataclass(kw_only=True)
class PipelineConfig:
    name: str
    """Recipe name (task-pair), recorded in the summary and the report."""
    run_dir: str
    """Everything the pipeline writes goes under here (one directory per stage)."""
    seed: int = 0
    """Seed of the run: data selection and order, training, caching, decoding (the report groups
    by it). A preset model's initialisation has its own seed (target.seed / draft.seed)."""
    task: str
    """Task name for reports (gsm8k, alpaca, mbpp, cnn_dailymail, xsum, arith, ...)."""
    data: dict = field(default_factory=dict)
    """data.tasks.DataConfig fields of the training split (task, source, max_length, limit...)."""
    eval_data: dict = field(default_factory=lambda: {"split": "test"})
    """Overrides of `data` for the held-out split (cached for α and used for decoding prompts)."""
    tokenizer: str | None = None
    """HF tokenizer dir or hub id; None = train a sentencepiece tokenizer (see tokenizer_train)."""
    tokenizer_train: dict | None = None
    """{vocab_size, limit_per_corpus}: train a sentencepiece on the embedded corpora (demo)."""
    target: dict
    """models.load.ModelConfig of the target (before sft, when sft is set)."""
    draft: dict
    """models.load.ModelConfig of the draft initialisation (shared by reference and AdaSPEC draft)."""
    sft: dict | None = None
    """TrainConfig overrides for fine-tuning the target on the task; None = use the target as is."""
    cache: dict = field(default_factory=dict)
    """CacheConfig overrides (scheme, top_k, batch_size, shard_size, ...)."""
    reference: dict = field(default_factory=dict)
    """TrainConfig overrides of the kd run: the reference, which is also the DistillSpec baseline."""
    adaspec: dict = field(default_factory=dict)
    """TrainConfig overrides of the AdaSPEC draft (filter fraction, epochs, ...)."""
    distillspec_wide: dict | None = field(default_factory=dict)
    """The compute control: kd on every token with the adaspec section's batch, steps and engine,
    then these overrides; None = skip it (two arms only)."""
    eval: dict = field(default_factory=dict)
    """EvalConfig overrides (gammas, num_prompts, batch_size, temperature, ...)."""
    divergence: str = "fkl"
    """Per-token divergence of kd, the reference column and AdaSPEC (one estimator on both sides)."""

    def validate(self) -> None:
        if self.tokenizer is None and self.tokenizer_train is None and not self.target.get("name_or_path"):
            raise ConfigError("pipeline needs a tokenizer: set tokenizer (HF dir / hub id), tokenizer_train "
                              "(train one) or a target.name_or_path that holds one")
        if self.divergence not in ("fkl", "rkl", "jsd", "tvd"):
            raise ConfigError(f"pipeline divergence '{self.divergence}' must be one of fkl, rkl, jsd, tvd")


@dataclass
class Stage:
    """One step of the plan: a CLI subcommand with its argv, config and the paths it makes."""

    name: str
    command: str | None
    """`cache` / `train` / `eval`; None for the pipeline's own tokenizer step."""
    argv: list[str]
    config: dict | None = None
    """Written to run_dir/configs/NAME.yaml and passed as --config (None: argv says it all)."""
    outputs: list[str] = field(default_factory=list)
    """Paths that exist once the stage is complete."""
    resume_dir: str | None = None
    """When this directory holds a checkpoint, the stage is resumed (train: --resume)."""
    workdir: str | None = None
    """The directory the stage owns; --force deletes it so the stage starts afresh."""
    rank0_only: bool = False
    """Single-process stages (eval): rank 0 runs it while the other ranks wait."""

    def command_line(self) -> str:
        return " ".join(["adaspec-dist", self.command or "pipeline RECIPE --stage " + self.name, *self.argv])


def load_pipeline_config(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineConfig:
    data = read_yaml(path)
    if overrides:
        data = merge(data, parse_overrides(overrides))
    return build_config(PipelineConfig, data)


# ----------------------------------------------------------------------------- the plan

def _paths(cfg: PipelineConfig) -> dict[str, str]:
    r = Path(cfg.run_dir)
    return {
        "tokenizer": str(r / "tokenizer"),
        "target_train": str(r / "target"),
        "cache_train": str(r / "cache" / "train"),
        "cache_eval": str(r / "cache" / "eval"),
        "reference": str(r / "reference"),
        "adaspec": str(r / "adaspec"),
        "distillspec_wide": str(r / "distillspec_wide"),
        "eval": str(r / "eval"),
        "configs": str(r / "configs"),
        "stages": str(r / "stages"),
    }


def tokenizer_path(cfg: PipelineConfig) -> str:
    if cfg.tokenizer:
        return cfg.tokenizer
    if cfg.tokenizer_train is not None:
        return _paths(cfg)["tokenizer"]
    return cfg.target["name_or_path"]


def target_model(cfg: PipelineConfig) -> dict:
    """The target the cache and eval use: the sft export when sft runs, else the given one."""
    if cfg.sft is not None:
        return {"name_or_path": str(Path(_paths(cfg)["target_train"]) / EXPORT_SUBDIR)}
    return dict(cfg.target)


def _train_stage(name: str, cfg: PipelineConfig, *, objective: str, out_dir: str, init: dict,
                 section: dict, extra: dict) -> Stage:
    conf = merge({"objective": objective, "run_dir": out_dir, "seed": cfg.seed, "draft": dict(init),
                  "tokenizer": tokenizer_path(cfg)}, extra)
    conf = merge(conf, section)
    # A killed run resumes from its newest checkpoint; without one it restarts (deterministically).
    return Stage(name, "train", ["--config", f"{{configs}}/{name}.yaml"], conf,
                 outputs=[str(Path(out_dir) / EXPORT_SUBDIR)], resume_dir=str(Path(out_dir) / "checkpoints"),
                 workdir=out_dir)


# Keys of the adaspec section that only concern selection: the compute control drops them.
_SELECTION_KEYS = ("selection_scope", "loss_normalization", "reference")


def wide_section(adaspec: dict) -> dict:
    """The compute control's TrainConfig overrides: the adaspec section's batch, budget, steps and
    engine (so ``budget: paper`` gives it batch B/k at the reference's steps) without selection."""
    return {k: v for k, v in adaspec.items() if k not in _SELECTION_KEYS}


def plan(cfg: PipelineConfig) -> list[Stage]:
    """The ordered stages of a recipe (pure; paths are under cfg.run_dir)."""
    p = _paths(cfg)
    tok = tokenizer_path(cfg)
    train_data = {**cfg.data, "split": cfg.data.get("split", "train"), "seed": cfg.data.get("seed", cfg.seed)}
    eval_data = merge(train_data, cfg.eval_data)
    stages: list[Stage] = []
    if cfg.tokenizer is None and cfg.tokenizer_train is not None:
        stages.append(Stage("tokenizer", None, [], dict(cfg.tokenizer_train), outputs=[p["tokenizer"]],
                            workdir=p["tokenizer"]))
    if cfg.sft is not None:
        stages.append(_train_stage("sft", cfg, objective="sft", out_dir=p["target_train"], init=cfg.target,
                                   section=cfg.sft, extra={"data": train_data}))
    target = target_model(cfg)
    for split, data in (("train", train_data), ("eval", eval_data)):
        conf = merge({"data": data, "model": target, "tokenizer": tok, "out_dir": p[f"cache_{split}"],
                      "seed": cfg.seed}, cfg.cache)
        stages.append(Stage(f"cache_{split}", "cache", ["--config", f"{{configs}}/cache_{split}.yaml"], conf,
                            outputs=[str(Path(p[f"cache_{split}"]) / "manifest.json")], workdir=p[f"cache_{split}"]))
    common = {"cache_dir": p["cache_train"], "eval_cache_dir": p["cache_eval"], "divergence": cfg.divergence}
    stages.append(_train_stage("reference", cfg, objective="kd", out_dir=p["reference"], init=cfg.draft,
                               section=cfg.reference, extra=common))
    ref_export = str(Path(p["reference"]) / EXPORT_SUBDIR)
    stages.append(Stage("add_reference", "cache",
                        ["--add-reference", ref_export, p["cache_train"], "--divergence", cfg.divergence],
                        outputs=[str(Path(p["cache_train"]) / "manifest.json")]))
    stages.append(_train_stage("adaspec", cfg, objective="adaspec", out_dir=p["adaspec"], init=cfg.draft,
                               section=cfg.adaspec, extra=common))
    drafts = {"distillspec": ref_export, "adaspec": str(Path(p["adaspec"]) / EXPORT_SUBDIR)}
    if cfg.distillspec_wide is not None:
        stages.append(_train_stage("distillspec_wide", cfg, objective="kd", out_dir=p["distillspec_wide"],
                                   init=cfg.draft, section=merge(wide_section(cfg.adaspec), cfg.distillspec_wide),
                                   extra=common))
        drafts["distillspec_wide"] = str(Path(p["distillspec_wide"]) / EXPORT_SUBDIR)
    eval_conf = merge({"target": target, "tokenizer": tok, "data": eval_data, "seed": cfg.seed,
                       "out_dir": p["eval"], "drafts": drafts}, cfg.eval)
    stages.append(Stage("eval", "eval", ["--config", f"{{configs}}/eval.yaml"], eval_conf,
                        outputs=[str(Path(p["eval"]) / "eval.json")], workdir=p["eval"], rank0_only=True))
    for s in stages:
        s.argv = [a.replace("{configs}", p["configs"]) for a in s.argv]
    return stages


def validate_stage_configs(stages: list[Stage], *, strict: bool = False) -> None:
    """Check each stage's config against the dataclass of the component that owns it.

    ``strict`` = a missing component is an error (tests); otherwise a warning (a partial install).
    """
    owners = {"cache": "adaspec_dist.cache.produce:CacheConfig", "train": "adaspec_dist.distill.train:TrainConfig",
              "eval": "adaspec_dist.speculative.evaluate:EvalConfig"}
    for s in stages:
        if s.config is None or s.command not in owners:
            continue
        module, cls = owners[s.command].split(":")
        try:
            owner = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError):
            if strict:
                raise
            logger.warning("stage %s: %s not importable; its config is not checked", s.name, owners[s.command])
            continue
        build_config(owner, s.config, prefix=f"{s.name}.")


# ----------------------------------------------------------------------------- running

def config_sha(stage: Stage) -> str:
    blob = json.dumps({"command": stage.command, "argv": stage.argv, "config": stage.config}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _marker(cfg: PipelineConfig, name: str) -> Path:
    return Path(_paths(cfg)["stages"]) / f"{name}.done.json"


def is_complete(cfg: PipelineConfig, stage: Stage) -> bool:
    """True when the stage's marker matches its config and its outputs exist.

    Raises ConfigError when the marker was made with another config: silently rerunning
    would mix the outputs of two recipes in one run directory.
    """
    marker = _marker(cfg, stage.name)
    if not marker.is_file():
        return False
    done = json.loads(marker.read_text())
    if done.get("config_sha") != config_sha(stage):
        raise ConfigError(f"stage '{stage.name}' in {cfg.run_dir} was completed with a different config; "
                          f"use a new run_dir, or pass --force {stage.name} to redo it and what follows")
    return all(Path(o).exists() for o in stage.outputs)


def _world() -> tuple[int, int]:
    env = launch_env()
    return env.rank, env.world_size


def _barrier() -> None:
    """All ranks meet (on the pipeline's one process group, made by the first caller)."""
    rank, world = _world()
    if world == 1:
        return

    init_distributed(1)
    barrier()


def _write_marker(cfg: PipelineConfig, stage: Stage, seconds: float) -> None:
    marker = _marker(cfg, stage.name)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"stage": stage.name, "config_sha": config_sha(stage), "seconds": round(seconds, 1),
                               "command": stage.command_line(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")},
                              indent=2))
    os.replace(tmp, marker)


def _run_tokenizer(cfg: PipelineConfig, stage: Stage) -> int:
    """Train the demo's sentencepiece tokenizer: on one embedded task's train split (``task``),
    or on all embedded corpora (the data module's ``embedded_tokenizer``)."""
    opts = dict(stage.config or {})
    vocab = int(opts.pop("vocab_size", 1024))
    task, limit = opts.pop("task", None), opts.pop("limit", None)
    if opts:
        raise ConfigError(f"unknown tokenizer_train keys {sorted(opts)}; use vocab_size, task and limit")
    # The tokenizer does not depend on the run's seed: every seed of a recipe shares its vocabulary.
    if task is None:
        tk.embedded_tokenizer(stage.outputs[0], vocab_size=vocab, seed=0, limit_per_corpus=limit)
        return 0

    examples = load_examples(DataConfig(task=task, limit=limit, seed=0), "train")
    tk.train_sentencepiece([e.prompt + e.answer for e in examples], vocab, stage.outputs[0], seed=0)
    return 0


def run_stage(cfg: PipelineConfig, stage: Stage) -> int:
    """Run one stage in this process (every rank calls this; the stage splits the work)."""
    from adaspec_dist.cli import SUBCOMMANDS

    rank, _ = _world()
    if stage.command is None:
        code = _run_tokenizer(cfg, stage) if rank == 0 else 0
        _barrier()
        return code

    if stage.config is not None and rank == 0:
        Path(_paths(cfg)["configs"]).mkdir(parents=True, exist_ok=True)
        path = Path(stage.argv[stage.argv.index("--config") + 1])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(stage.config, sort_keys=False))
        os.replace(tmp, path)
    _barrier()
    if stage.rank0_only and rank != 0:
        return 0  # the same number of barriers on every rank: the pipeline's next one waits for rank 0
    argv = list(stage.argv)
    if stage.resume_dir and (Path(stage.resume_dir) / "latest").is_file():  # DeepSpeed writes it last
        argv.append("--resume")
    module = importlib.import_module(SUBCOMMANDS[stage.command][0])
    parser = argparse.ArgumentParser(prog=f"adaspec-dist {stage.command}")
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    args.command, args.log_level = stage.command, logging.getLevelName(logging.getLogger().level)
    return int(module.run(args) or 0)


def run_pipeline(cfg: PipelineConfig, *, only: list[str] | None = None, force: list[str] | None = None,
                 echo=print) -> list[str]:
    """Run the plan, skipping complete stages; returns the names of the stages that ran."""
    # Chained stages share one process group (see keep_process_group).
    with keep_process_group():
        return _run_pipeline(cfg, only=only, force=force, echo=echo)


def _run_pipeline(cfg: PipelineConfig, *, only, force, echo) -> list[str]:
    stages = plan(cfg)
    names = [s.name for s in stages]
    for n in (only or []) + (force or []):
        if n not in names:
            raise ConfigError(f"unknown stage '{n}'; this recipe's stages are: {', '.join(names)}")
    rank, _ = _world()
    if rank == 0:
        save_resolved(cfg, cfg.run_dir, name="pipeline.yaml")
    else:
        echo = lambda *_: None  # noqa: E731  (rank 0 speaks for the job)
    forced_from = min((names.index(n) for n in force or []), default=len(names))
    if rank == 0:
        for stage in stages[forced_from:]:
            # Redo from scratch: no marker, and no checkpoint or partial output to resume from.
            _marker(cfg, stage.name).unlink(missing_ok=True)
            if stage.workdir and Path(stage.workdir).exists():
                shutil.rmtree(stage.workdir)
    ran = []
    for i, stage in enumerate(stages):
        if only and stage.name not in only:
            continue
        _barrier()
        if is_complete(cfg, stage):
            echo(f"[{i + 1}/{len(stages)}] {stage.name}: complete, skipped")
            continue
        echo(f"[{i + 1}/{len(stages)}] {stage.name}: {stage.command_line()}")
        start = time.time()
        code = run_stage(cfg, stage)
        if code != 0:
            raise RuntimeError(f"stage '{stage.name}' failed with exit code {code}; fix it and rerun the "
                               f"pipeline (complete stages are skipped)")
        _barrier()  # every rank is done (rank-0-only stages included) before outputs are checked
        missing = [o for o in stage.outputs if not Path(o).exists()]
        if missing:
            raise RuntimeError(f"stage '{stage.name}' returned 0 but did not write {missing[0]}")
        if rank == 0:
            _write_marker(cfg, stage, time.time() - start)
        _barrier()
        echo(f"[{i + 1}/{len(stages)}] {stage.name}: done in {time.time() - start:.0f}s")
        ran.append(stage.name)
    return ran


# ----------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="pipeline recipe YAML (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. run_dir=runs/x seed=1 adaspec.epochs=2")
    parser.add_argument("--stage", action="append", dest="only", metavar="NAME",
                        help="run only this stage (repeatable); its inputs must exist")
    parser.add_argument("--force", action="append", metavar="NAME",
                        help="redo this stage and every later one even if complete")
    parser.add_argument("--dry-run", action="store_true", help="print the stage plan and exit")


def budget_line(cfg: PipelineConfig, stage: Stage, dp_size: int) -> str | None:
    """A train stage's resolved budget for the dry run: optimiser steps, sequences per step and
    passes (steps need the training split's size: known for hub tasks and embedded corpora)."""
    if stage.command != "train":
        return None
    tc = build_config(TrainConfig, stage.config, prefix=f"{stage.name}.")
    b = budget_for(tc, dp_size)
    data = {**cfg.data, "split": cfg.data.get("split", "train"), "seed": cfg.data.get("seed", cfg.seed)}
    rows = known_rows(build_config(DataConfig, data, prefix="data."))
    steps = f"{tc.max_steps} steps" if tc.max_steps is not None else (
        f"{b.steps(rows, dp_size)} steps" if rows else "? steps (unknown split size)")
    kept = (f", ~{b.global_batch * tc.filter_fraction:g} sequences' tokens kept/step"
            if tc.objective == "adaspec" else "")
    over = f" over {rows} sequences" if rows else ""
    return (f"{steps} x {b.global_batch} sequences/step (micro {b.micro_batch} x accum {b.grad_accum} x "
            f"{dp_size} rank{'s' if dp_size > 1 else ''}), {b.passes:g} passes{over}{kept}")


def run(args: argparse.Namespace) -> int:
    cfg = load_pipeline_config(args.recipe, args.overrides)
    stages = plan(cfg)
    if args.dry_run:
        validate_stage_configs(stages)
        _, world = _world()
        for i, s in enumerate(stages, 1):
            print(f"{i}. {s.name:16s} {s.command_line()}")
            line = budget_line(cfg, s, world)
            if line:
                print(f"   {'':16s} {line}")
        return 0
    run_pipeline(cfg, only=args.only, force=args.force)
    return 0
