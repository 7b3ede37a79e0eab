"""``adaspec-dist pipeline RECIPE.yaml``: the paper's whole method as resumable stages.

Contract
--------
* A recipe is a :class:`PipelineConfig`: shared settings (run_dir, data, tokenizer, target and
  draft models) plus one mapping per stage that overrides that stage's own config
  (``TrainConfig``, ``CacheConfig``, ``EvalConfig``) after the pipeline has filled in the paths
  that connect the stages. The pipeline owns no training, caching or decoding logic: it chains
  the jobs by calling them — ``produce_cache(CacheConfig)``, ``add_reference(ReferenceConfig)``,
  ``train(TrainConfig, resume=..., callbacks=...)``, ``evaluate(EvalConfig)`` — with typed configs.
* Each job is one row of :data:`JOBS`: its config class, its function, what its command prints
  at its end and its ``adaspec-dist`` subcommand. The pipeline (:func:`run_stage`,
  :func:`describe_result`, :meth:`Stage.command_line`) and the CLI subcommands (``cli/cache.py``,
  ``cli/generate.py``, ``cli/train.py``, ``cli/eval.py``) both read it: adding a job is one row
  (and its stage in :func:`plan`).
* :func:`plan` turns a recipe into an ordered list of :class:`Stage` s — pure, no I/O — so a
  dry run (``--dry-run``) and the recipe tests can inspect it::

      tokenizer -> sft -> [generate] -> cache_train -> cache_eval -> reference -> add_reference -> adaspec
                -> distillspec_wide -> eval

  ``generate`` exists when ``train_data`` is not ``dataset``: the training cache is then built on
  sequences sampled from the target (``target``) or from a trained draft (``draft``, the model
  at ``generate_model``), mixed with the dataset's answers at share λ = ``generated_fraction``
  (docs/data.md). A round (generate with the current draft -> cache -> continue training) is a
  run with ``train_data: draft``, ``generate_model`` and ``draft.name_or_path`` both set to the
  previous run's ``adaspec/final``. The held-out cache (α) stays on the dataset's answers.

  Each stage holds its typed config (``Stage.config``), built when the plan is made: an unknown
  or bad key in any section is a one-line ``ConfigError`` naming it (``reference.engine.lrr``)
  before anything runs. The shared sections (``data``, ``eval_data``, ``target``, ``draft``,
  ``tokenizer_train``) are checked when the recipe is loaded.

  The eval compares three arms at equal optimiser steps: ``distillspec`` (the reference: kd on
  every token at batch B), ``adaspec`` (the top-k tokens at batch B/k under ``budget: paper``)
  and the compute control ``distillspec_wide`` (kd on every token at AdaSPEC's batch and steps,
  built from the adaspec section less its ``selection``; ``distillspec_wide: null`` skips it). The
  control compares training the selected tokens with training every token of the same batches;
  what the ΔL criterion itself adds needs a random-selection arm (benchmarks/selection_real.py).

  ``tokenizer`` only exists when the recipe trains one (the demo); ``sft`` only when the
  recipe fine-tunes the target (otherwise the target is used as given).
* Every stage is also runnable alone: ``--stage NAME``, or its equivalent command line
  (:meth:`Stage.command_line`, echoed when it runs) with the stage's resolved config, which is
  written to ``run_dir/configs/NAME.yaml`` as a record before the stage runs.
* Resumability: a stage that completes gets ``run_dir/stages/NAME.done.json`` holding the
  sha256 of its config (:func:`config_sha`: paths relative to run_dir, so a moved run directory
  resumes; a train stage's marker written before TrainConfig had sections, with its flat keys,
  is the same stage: :func:`accepted_shas`); a rerun skips stages whose marker matches and whose outputs exist. A stage killed
  midway has no marker and is rerun; the stages themselves resume (the cache keeps complete
  shards, ``train`` continues from its last checkpoint when ``checkpoints/latest`` exists), so a
  killed pipeline finishes with the same results as an uninterrupted one. A marker whose config
  hash differs is refused (one line naming the stage and the fix).
* One pipeline at a time per run_dir: rank 0 claims it (``files.claim_for_job``) before writing.
* Launchers: every rank runs the pipeline (torchrun / deepspeed / srun start N copies of it);
  the stages are data-parallel themselves and share one process group
  (``dist.keep_process_group``). Rank-0-only work (tokenizer, markers, the eval) is fenced by
  barriers, and every rank reads the markers from the shared run directory.
* Nothing here prints: progress lines — each stage's command line when it starts, what its own
  command would print when it ends (:func:`describe_result`: the cache's line, the training
  summary, the eval table), its time — go to ``echo`` (default: the log); the CLI prints them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from adaspec_dist.cache.produce import CacheConfig, describe_cache, produce_cache
from adaspec_dist.cache.reference import ReferenceConfig, add_reference, describe_reference
from adaspec_dist.config import ConfigError, build_config, load_config, merge, save_resolved, upgrade
from adaspec_dist.data import tokenizer as tk
from adaspec_dist.data.tasks import DataConfig, known_rows, load_examples
from adaspec_dist.dist import barrier, init_distributed, keep_process_group, launch_env
from adaspec_dist.distill.config import SelectionConfig, TrainConfig, budget_for
from adaspec_dist.distill.train import train
from adaspec_dist.files import atomic_write_text, claim_for_job
from adaspec_dist.models.load import ModelConfig
from adaspec_dist.sparse.divergence import Divergence
from adaspec_dist.speculative.evaluate import EvalConfig, evaluate
from adaspec_dist.speculative.generate import GenerateConfig, describe_generated, generate
from adaspec_dist.speculative.report import format_table

logger = logging.getLogger(__name__)

STAGE_ORDER = ("tokenizer", "sft", "generate", "cache_train", "cache_eval", "reference", "add_reference", "adaspec",
               "distillspec_wide", "eval", "eval_greedy")
# Where `train` exports the final HF model inside its out_dir (the distill trainer's layout).
EXPORT_SUBDIR = "final"
# The file `evaluate` writes its result to inside its out_dir.
EVAL_RESULT = "eval.json"


@dataclass(kw_only=True)
class TokenizerTrainConfig:
    """The demo's sentencepiece tokenizer (the pipeline's own ``tokenizer`` stage)."""

    vocab_size: int = 1024
    task: str | None = None
    """Train on this embedded task's train split; None = on all embedded corpora."""
    limit: int | None = None
    """Examples (per corpus without ``task``) to train on; None = all."""


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
    """TokenizerTrainConfig fields {vocab_size, task, limit}: train a sentencepiece tokenizer (demo)."""
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
    eval_greedy: dict | None = None
    """A second eval at temperature 0 (the eval section with temperature 0, then these overrides;
    run_dir/eval_greedy): greedy SD, whose output must equal the target's. None = skip it."""
    divergence: Divergence = "fkl"
    """Per-token divergence of kd, the reference column and AdaSPEC (one estimator on both sides)."""
    train_data: Literal["dataset", "target", "draft"] = "dataset"
    """The training cache's sequences: the task's answers (dataset), samples of the target (target)
    or of a trained draft at generate_model (draft); the held-out cache keeps the dataset's answers."""
    generate_model: str | None = None
    """train_data: draft: the HF directory of the draft that generates (e.g. a previous run's adaspec/final)."""
    generated_fraction: float = 1.0
    """λ: the share of generated sequences in the training cache (the rest: the dataset's answers)."""
    generate: dict = field(default_factory=dict)
    """GenerateConfig overrides of the generate stage (samples_per_prompt, max_new_tokens, temperature,
    ...); max_new_tokens defaults to half of data.max_length."""

    def validate(self) -> None:
        """The shared sections, typed once (one-line errors naming ``data.*``, ``target.*``, ...);
        the stage sections are typed by :func:`plan`."""
        if self.tokenizer is None and self.tokenizer_train is None and not self.target.get("name_or_path"):
            raise ConfigError("pipeline needs a tokenizer: set tokenizer (HF dir / hub id), tokenizer_train "
                              "(train one) or a target.name_or_path that holds one")
        build_config(DataConfig, train_data(self), prefix="data.")
        build_config(DataConfig, merge(train_data(self), self.eval_data), prefix="eval_data.")
        build_config(ModelConfig, self.target, prefix="target.")
        build_config(ModelConfig, draft_init(self), prefix="draft.")
        if self.tokenizer_train is not None:
            build_config(TokenizerTrainConfig, self.tokenizer_train, prefix="tokenizer_train.")
        if self.train_data == "draft" and not self.generate_model:
            raise ConfigError("pipeline train_data: draft needs generate_model: DIR (a trained draft's HF directory, "
                              "e.g. a previous run's adaspec/final or reference/final)")


@dataclass(frozen=True)
class Job:
    """One job the pipeline chains and (``subcommand`` set) an ``adaspec-dist`` subcommand runs alone:
    a row of :data:`JOBS`, which both read."""

    config: type
    """The typed config the job is called with (a stage section and the subcommand's ``--config``)."""
    run: Callable[..., Any]
    """``run(config, **options)``: the job itself; every rank calls it (rank-0-only stages: rank 0)."""
    describe: Callable[[Any, Any], str] | None = None
    """``describe(config, result)``: what the job's command prints when it ends; None: nothing."""
    subcommand: str | None = None
    """The ``adaspec-dist`` subcommand that runs the job alone; None: only the pipeline runs it."""
    argv: Callable[[Any], list[str]] | None = None
    """The subcommand's arguments for a config; None: ``--config RECORD`` (the resolved config)."""
    resumes: bool = False
    """``run`` also takes ``resume=`` (continue from the stage's ``resume_dir``) and ``callbacks=``
    (the pipeline's ``train_callbacks``): train."""

    def describe_result(self, config: Any, result: Any) -> str | None:
        """``describe`` of a result; None when there is no result (other ranks) or nothing to say."""
        return None if result is None or self.describe is None else self.describe(config, result)


def _reference_argv(c: ReferenceConfig) -> list[str]:
    """``adaspec-dist cache --add-reference REF CACHE --divergence D`` (+ the options set off their defaults)."""
    args = ["--add-reference", str(c.model), str(c.cache_dir), "--divergence", c.divergence]
    defaults = ReferenceConfig(cache_dir="")
    if c.beta != defaults.beta:
        args += ["--beta", str(c.beta)]
    if c.batch_size != defaults.batch_size:
        args += ["--batch-size", str(c.batch_size)]
    return args


def train_tokenizer(tc: TokenizerTrainConfig, out_dir: str) -> None:
    """Train the demo's sentencepiece tokenizer: on one embedded task's train split (``task``),
    or on all embedded corpora (the data module's ``embedded_tokenizer``)."""
    # The tokenizer does not depend on the run's seed: every seed of a recipe shares its vocabulary.
    if tc.task is None:
        tk.embedded_tokenizer(out_dir, vocab_size=tc.vocab_size, seed=0, limit_per_corpus=tc.limit)
        return
    examples = load_examples(DataConfig(task=tc.task, limit=tc.limit, seed=0), "train")
    tk.train_sentencepiece([e.prompt + e.answer for e in examples], tc.vocab_size, out_dir, seed=0)


# Every job, once: adding a job is one row here (then a stage of it in `plan`, and, when it has a
# subcommand, a cli/ module that reads this row).
JOBS: dict[str, Job] = {
    "tokenizer": Job(TokenizerTrainConfig, train_tokenizer),
    "generate": Job(GenerateConfig, generate, lambda c, manifest: describe_generated(c.out_dir, manifest), "generate"),
    "cache": Job(CacheConfig, produce_cache, lambda c, manifest: describe_cache(c.out_dir, manifest), "cache"),
    "add_reference": Job(ReferenceConfig, add_reference, describe_reference, "cache", argv=_reference_argv),
    "train": Job(TrainConfig, train, lambda c, summary: json.dumps(summary, default=str), "train", resumes=True),
    "eval": Job(EvalConfig, evaluate, lambda c, result: format_table(result), "eval"),
}


@dataclass
class Stage:
    """One step of the plan: a job, its typed config and the paths it makes."""

    name: str
    job: str
    """The stage's row of :data:`JOBS`."""
    config: Any
    """What the job is called with: an instance of its row's ``config`` class."""
    recipe: dict | None = None
    """The mapping ``config`` was built from (the recipe's section over the pipeline's wiring);
    with the command line it is what the stage's marker hashes (:func:`config_sha`)."""
    record: str | None = None
    """run_dir/configs/NAME.yaml: the resolved config is written here before the stage runs, and
    the equivalent command line reads it (``--config``)."""
    outputs: list[str] = field(default_factory=list)
    """Paths that exist once the stage is complete."""
    resume_dir: str | None = None
    """When this directory holds a checkpoint (``latest``), the stage resumes from it (train)."""
    workdir: str | None = None
    """The directory the stage owns; --force deletes it so the stage starts afresh."""
    rank0_only: bool = False
    """Single-process stages (tokenizer, eval): rank 0 runs it while the other ranks wait."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the job besides its config (the tokenizer's ``out_dir``)."""

    @property
    def command(self) -> str | None:
        """The ``adaspec-dist`` subcommand that runs this stage alone (None: only the pipeline does)."""
        return JOBS[self.job].subcommand

    def cli_args(self) -> list[str]:
        """The arguments of that subcommand: ``--config RECORD``, or the row's own (``--add-reference ...``)."""
        argv = JOBS[self.job].argv
        if argv is not None:
            return argv(self.config)
        return ["--config", self.record] if self.record else []

    def command_line(self) -> str:
        # Quoted: a run_dir with a space or `$(...)` must paste into a shell as one argument, inert.
        return " ".join(["adaspec-dist", self.command or "pipeline RECIPE --stage " + self.name,
                         *map(shlex.quote, self.cli_args())])


def load_pipeline_config(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineConfig:
    return load_config(PipelineConfig, path, overrides)


# ----------------------------------------------------------------------------- the plan

def _paths(cfg: PipelineConfig) -> dict[str, str]:
    r = Path(cfg.run_dir)
    return {
        "tokenizer": str(r / "tokenizer"),
        "target_train": str(r / "target"),
        "generated": str(r / "generated"),
        "cache_train": str(r / "cache" / "train"),
        "cache_eval": str(r / "cache" / "eval"),
        "reference": str(r / "reference"),
        "adaspec": str(r / "adaspec"),
        "distillspec_wide": str(r / "distillspec_wide"),
        "eval": str(r / "eval"),
        "eval_greedy": str(r / "eval_greedy"),
        "configs": str(r / "configs"),
        "stages": str(r / "stages"),
    }


def tokenizer_path(cfg: PipelineConfig) -> str:
    if cfg.tokenizer:
        return cfg.tokenizer
    if cfg.tokenizer_train is not None:
        return _paths(cfg)["tokenizer"]
    return build_config(ModelConfig, cfg.target, prefix="target.").files


def target_model(cfg: PipelineConfig) -> dict:
    """The target the cache and eval use: the sft export when sft runs, else the given one."""
    if cfg.sft is not None:
        return {"name_or_path": str(Path(_paths(cfg)["target_train"]) / EXPORT_SUBDIR)}
    return dict(cfg.target)


def draft_init(cfg: PipelineConfig) -> dict:
    """The draft section every draft-training stage starts from; a ``from_target`` draft without its
    own ``target`` is made from the pipeline's target (the sft export when sft runs)."""
    draft = dict(cfg.draft)
    from_target = draft.get("from_target")
    if isinstance(from_target, dict) and not from_target.get("target"):
        draft["from_target"] = {**from_target, "target": target_model(cfg)}
    return draft


def train_data(cfg: PipelineConfig) -> dict:
    """The training split's DataConfig mapping (split and seed filled in)."""
    return {**cfg.data, "split": cfg.data.get("split", "train"), "seed": cfg.data.get("seed", cfg.seed)}


def _typed(cls: type, mapping: dict, section: str) -> Any:
    """A stage's config; an error names the recipe section it came from (``reference.engine.lrr``)."""
    return build_config(cls, mapping, prefix=f"{section}.")


def _train_stage(name: str, cfg: PipelineConfig, *, objective: str, out_dir: str, init: dict,
                 section: dict, extra: dict, section_name: str | None = None) -> Stage:
    conf = merge({"objective": objective, "run_dir": out_dir, "seed": cfg.seed, "draft": dict(init),
                  "tokenizer": tokenizer_path(cfg)}, extra)
    # Old flat keys (selection_rule, eval_every, ...) move to their sections first, so that they
    # override the defaults above (eval.cache_dir) instead of clashing with them.
    conf = merge(conf, upgrade(TrainConfig, section, prefix=f"{section_name or name}.", warn=True))
    # A killed run resumes from its newest checkpoint; without one it restarts (deterministically).
    return Stage(name, "train", _typed(TrainConfig, conf, section_name or name), conf,
                 record=str(Path(_paths(cfg)["configs"]) / f"{name}.yaml"),
                 outputs=[str(Path(out_dir) / EXPORT_SUBDIR)], resume_dir=str(Path(out_dir) / "checkpoints"),
                 workdir=out_dir)


# TrainConfig's section that only adaspec reads (SelectionConfig): the compute control drops it whole,
# so a selection key added later is dropped too.
_SELECTION_SECTION = next(name for name, tp in typing.get_type_hints(TrainConfig).items() if tp is SelectionConfig)


def wide_section(adaspec: dict) -> dict:
    """The compute control's TrainConfig overrides: the adaspec section's batch, budget, steps and
    engine (so ``budget: paper`` gives it batch B/k at the reference's steps) without its selection
    section (old flat selection keys are read into that section first, so they go with it)."""
    section = upgrade(TrainConfig, adaspec, prefix="adaspec.", warn=True)
    return {k: v for k, v in section.items() if k != _SELECTION_SECTION}


def plan(cfg: PipelineConfig) -> list[Stage]:
    """The ordered stages of a recipe, each with its typed config (pure; paths are under cfg.run_dir)."""
    p = _paths(cfg)
    tok = tokenizer_path(cfg)
    data = train_data(cfg)
    eval_data = merge(data, cfg.eval_data)
    stages: list[Stage] = []
    if cfg.tokenizer is None and cfg.tokenizer_train is not None:
        stages.append(Stage("tokenizer", "tokenizer", _typed(TokenizerTrainConfig, cfg.tokenizer_train, "tokenizer_train"),
                            dict(cfg.tokenizer_train), outputs=[p["tokenizer"]], workdir=p["tokenizer"],
                            rank0_only=True, options={"out_dir": p["tokenizer"]}))
    if cfg.sft is not None:
        stages.append(_train_stage("sft", cfg, objective="sft", out_dir=p["target_train"], init=cfg.target,
                                   section=cfg.sft, extra={"data": data}))
    target = target_model(cfg)
    generated: dict = {}
    if cfg.train_data != "dataset":
        model = target if cfg.train_data == "target" else {"name_or_path": cfg.generate_model}
        conf = merge({"data": data, "model": model, "role": cfg.train_data, "tokenizer": tok, "out_dir": p["generated"],
                      "seed": cfg.seed, "max_new_tokens": int(data.get("max_length", 512)) // 2}, cfg.generate)
        stages.append(Stage("generate", "generate", _typed(GenerateConfig, conf, "generate"), conf,
                            record=str(Path(p["configs"]) / "generate.yaml"),
                            outputs=[str(Path(p["generated"]) / "manifest.json")], workdir=p["generated"]))
        generated = {"generated": p["generated"], "generated_fraction": cfg.generated_fraction}
    for split, split_data in (("train", data), ("eval", eval_data)):
        name = f"cache_{split}"
        conf = merge({"data": split_data, "model": target, "tokenizer": tok, "out_dir": p[name], "seed": cfg.seed,
                      **(generated if split == "train" else {})}, cfg.cache)
        if split == "eval" and conf.get("scheme") == "sampled":
            conf = {**conf, "store_logp": True}  # held-out α = 1 − TVD needs p at the drawn ids (a small split)
        stages.append(Stage(name, "cache", _typed(CacheConfig, conf, "cache"), conf,
                            record=str(Path(p["configs"]) / f"{name}.yaml"),
                            outputs=[str(Path(p[name]) / "manifest.json")], workdir=p[name]))
    common = {"cache_dir": p["cache_train"], "eval": {"cache_dir": p["cache_eval"]}, "divergence": cfg.divergence}
    stages.append(_train_stage("reference", cfg, objective="kd", out_dir=p["reference"], init=draft_init(cfg),
                               section=cfg.reference, extra=common))
    ref_export = str(Path(p["reference"]) / EXPORT_SUBDIR)
    stages.append(Stage("add_reference", "add_reference",
                        ReferenceConfig(cache_dir=p["cache_train"], model=ref_export, divergence=cfg.divergence),
                        outputs=[str(Path(p["cache_train"]) / "manifest.json")]))
    stages.append(_train_stage("adaspec", cfg, objective="adaspec", out_dir=p["adaspec"], init=draft_init(cfg),
                               section=cfg.adaspec, extra=common))
    drafts = {"distillspec": ref_export, "adaspec": str(Path(p["adaspec"]) / EXPORT_SUBDIR)}
    if cfg.distillspec_wide is not None:
        stages.append(_train_stage("distillspec_wide", cfg, objective="kd", out_dir=p["distillspec_wide"],
                                   init=draft_init(cfg), section=merge(wide_section(cfg.adaspec), upgrade(
                                       TrainConfig, cfg.distillspec_wide, prefix="distillspec_wide.", warn=True)),
                                   extra=common))
        drafts["distillspec_wide"] = str(Path(p["distillspec_wide"]) / EXPORT_SUBDIR)
    eval_conf = merge({"target": target, "tokenizer": tok, "data": eval_data, "seed": cfg.seed,
                       "out_dir": p["eval"], "drafts": drafts}, cfg.eval)
    evals = [("eval", eval_conf)]
    if cfg.eval_greedy is not None:
        evals.append(("eval_greedy", merge(eval_conf, {"temperature": 0.0, "out_dir": p["eval_greedy"],
                                                       **cfg.eval_greedy})))
    for name, conf in evals:
        stages.append(Stage(name, "eval", _typed(EvalConfig, conf, name), conf,
                            record=str(Path(p["configs"]) / f"{name}.yaml"),
                            outputs=[str(Path(conf["out_dir"]) / EVAL_RESULT)], workdir=conf["out_dir"],
                            rank0_only=True))
    return stages


def eval_results(stages: Sequence[Stage]) -> list[tuple[str, Path]]:
    """(stage name, result file) of the plan's eval stages, in order; the file may not exist yet."""
    return [(s.name, Path(s.config.out_dir) / EVAL_RESULT) for s in stages if s.job == "eval"]


def budget_line(cfg: PipelineConfig, stage: Stage, dp_size: int) -> str | None:
    """A train stage's resolved budget for the dry run: optimiser steps, sequences per step and
    passes (steps need the training split's size: known for hub tasks and embedded corpora)."""
    if stage.job != "train":
        return None
    tc: TrainConfig = stage.config
    b = budget_for(tc, dp_size)
    rows = known_rows(build_config(DataConfig, train_data(cfg), prefix="data."))
    steps = f"{tc.max_steps} steps" if tc.max_steps is not None else (
        f"{b.steps(rows, dp_size)} steps" if rows else "? steps (unknown split size)")
    kept = (f", ~{b.global_batch * tc.filter_fraction:g} sequences' tokens kept/step"
            if tc.objective == "adaspec" else "")
    over = f" over {rows} sequences" if rows else ""
    return (f"{steps} x {b.global_batch} sequences/step (micro {b.micro_batch} x accum {b.grad_accum} x "
            f"{dp_size} rank{'s' if dp_size > 1 else ''}), {b.passes:g} passes{over}{kept}")


# ----------------------------------------------------------------------------- running

def _located(value: Any, run_dir: str | None) -> Any:
    """``value`` with every path made independent of where it is spelled from: a path inside
    ``run_dir`` becomes ``$RUN_DIR/...``, another existing path its absolute form."""
    if isinstance(value, dict):
        return {k: _located(v, run_dir) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_located(v, run_dir) for v in value]
    if not isinstance(value, str) or not value:
        return value
    absolute = os.path.abspath(value)
    if run_dir is not None:
        rel = os.path.relpath(absolute, os.path.abspath(run_dir))
        if rel != ".." and not rel.startswith(".." + os.sep):
            return "$RUN_DIR" if rel == "." else f"$RUN_DIR/{rel}"
    return absolute if os.path.exists(value) else value


def config_sha(stage: Stage, run_dir: str | None = None, *, recipe: dict | None = None) -> str:
    """The hash a stage's marker records: its command line and the mapping its config came from —
    what the stage computes, not where its files are: paths under ``run_dir`` count relative to it
    (a moved or renamed run directory is still complete, and resumes), other existing paths by
    their absolute form (a relative or an absolute spelling of the same files agree)."""
    mapping = stage.recipe if recipe is None else recipe
    blob = json.dumps(_located({"command": stage.command, "argv": stage.cli_args(), "config": mapping},
                               run_dir), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def flat_spelling(cls: type, mapping: dict | None) -> dict | None:
    """``mapping`` with the keys ``cls.RENAMED`` moved into sections spelled flat again, as earlier
    versions built a stage's mapping (the sections they did not have dropped when left empty)."""
    renamed = getattr(cls, "RENAMED", None)
    if not renamed or not isinstance(mapping, dict):
        return mapping
    flat = {k: dict(v) if isinstance(v, dict) else v for k, v in mapping.items()}
    moved_from = set()
    for old, new in renamed.items():
        section, key = new.split(".", 1)
        if isinstance(flat.get(section), dict) and key in flat[section]:
            flat[old] = flat[section].pop(key)
            moved_from.add(section)
    return {k: v for k, v in flat.items() if not (k in moved_from and v == {})}


def accepted_shas(stage: Stage, run_dir: str | None = None) -> set[str]:
    """The hashes that mean "this very stage": today's, and the one an earlier version recorded for
    the same recipe before its config had sections (``RENAMED`` keys spelled flat: train), so a
    run directory made before the regrouping still resumes instead of redoing finished stages."""
    flat = flat_spelling(JOBS[stage.job].config, stage.recipe)  # the same mapping for a job with no RENAMED
    return {config_sha(stage, run_dir), config_sha(stage, run_dir, recipe=flat)}


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
    if done.get("config_sha") not in accepted_shas(stage, cfg.run_dir):
        raise ConfigError(f"stage '{stage.name}' in {cfg.run_dir} was completed with a different config; "
                          f"use a new run_dir, or pass --force {stage.name} to redo it and what follows")
    return all(Path(o).exists() for o in stage.outputs)


def _is_main() -> bool:
    return launch_env().rank == 0


def _barrier() -> None:
    """All ranks meet (on the pipeline's one process group, made by the first caller)."""
    if launch_env().world_size == 1:
        return
    init_distributed(1)
    barrier()


def write_marker(cfg: PipelineConfig, stage: Stage, seconds: float) -> None:
    """Record that ``stage`` completed with its current config (rank 0 calls it)."""
    marker = _marker(cfg, stage.name)
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps({"stage": stage.name, "config_sha": config_sha(stage, cfg.run_dir),
                                          "seconds": round(seconds, 1), "command": stage.command_line(),
                                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))


def run_stage(stage: Stage, *, train_callbacks: Sequence = ()) -> Any:
    """Run one stage in this process (every rank calls this; the stage splits the work); returns
    what the job returned (None on the ranks that sit out a rank-0-only stage)."""
    main = _is_main()
    if stage.record and main:
        record = Path(stage.record)
        save_resolved(stage.config, record.parent, name=record.name)
    _barrier()
    if stage.rank0_only and not main:
        return None  # the same number of barriers on every rank: the pipeline's next one waits for rank 0
    job, options = JOBS[stage.job], dict(stage.options)
    if job.resumes:
        # `--resume` only when the trainer wrote a complete checkpoint (DeepSpeed writes `latest` last).
        resume = bool(stage.resume_dir) and (Path(stage.resume_dir) / "latest").is_file()
        options.update(resume=resume, callbacks=train_callbacks)
    return job.run(stage.config, **options)


def describe_result(stage: Stage, result: Any) -> str | None:
    """What the stage's own command prints when it ends: the cache's line, the training summary
    (one JSON line), the eval table; None when there is nothing to say."""
    return JOBS[stage.job].describe_result(stage.config, result)


def run_pipeline(cfg: PipelineConfig, *, only: list[str] | None = None, force: list[str] | None = None,
                 echo: Callable[[str], Any] = logger.info, train_callbacks: Sequence = ()) -> list[str]:
    """Run the plan, skipping complete stages; returns the names of the stages that ran.

    ``echo`` receives one line per stage on rank 0 (its command line, then its time);
    ``train_callbacks`` go to every ``train`` call (``distill.train.TrainCallback`` hooks)."""
    # Chained stages share one process group (see keep_process_group).
    with keep_process_group():
        return _run_pipeline(cfg, only=only, force=force, echo=echo, train_callbacks=train_callbacks)


def _run_pipeline(cfg: PipelineConfig, *, only, force, echo, train_callbacks) -> list[str]:
    stages = plan(cfg)
    names = [s.name for s in stages]
    for n in (only or []) + (force or []):
        if n not in names:
            raise ConfigError(f"unknown stage '{n}'; this recipe's stages are: {', '.join(names)}")
    main = _is_main()
    _barrier()  # (with several ranks: the process group the claim's answer travels on)
    claim = claim_for_job(cfg.run_dir, what="pipeline run directory",
                          fix="wait for that pipeline to finish or choose another run_dir")
    try:
        return _run_claimed(cfg, stages, names, main, only=only, force=force, echo=echo,
                            train_callbacks=train_callbacks)
    finally:
        if claim is not None:
            claim.release()


def _run_claimed(cfg: PipelineConfig, stages: list[Stage], names: list[str], main: bool, *, only, force, echo,
                 train_callbacks) -> list[str]:
    if main:
        save_resolved(cfg, cfg.run_dir, name="pipeline.yaml")
    else:
        echo = lambda *_: None  # noqa: E731  (rank 0 speaks for the job)
    forced_from = min((names.index(n) for n in force or []), default=len(names))
    if main:
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
        result = run_stage(stage, train_callbacks=train_callbacks)
        text = describe_result(stage, result)
        if text:
            echo(text)
        _barrier()  # every rank is done (rank-0-only stages included) before outputs are checked
        missing = [o for o in stage.outputs if not Path(o).exists()]
        if missing:
            raise RuntimeError(f"stage '{stage.name}' finished but did not write {missing[0]}")
        if main:
            write_marker(cfg, stage, time.time() - start)
        _barrier()
        echo(f"[{i + 1}/{len(stages)}] {stage.name}: done in {time.time() - start:.0f}s")
        ran.append(stage.name)
    return ran
