"""Every recipe in configs/ parses, its stage plan is complete and each stage's config is valid
for the component that owns it (TrainConfig, CacheConfig, EvalConfig) — no models are loaded.
The paper recipes are checked against a second, hand-written copy of the official AdaSPEC table
and against their generator (tools/make_paper_recipes.py), so neither can drift."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adaspec_dist.cache.produce import CacheConfig
from adaspec_dist.cache.reference import ReferenceConfig
from adaspec_dist.cli import SUBCOMMANDS
from adaspec_dist.config import ConfigError, build_config, to_dict
from adaspec_dist.distill.config import SelectionConfig, TrainConfig
from adaspec_dist.pipeline import JOBS, STAGE_ORDER, is_complete, load_pipeline_config, plan
from adaspec_dist.speculative.evaluate import EvalConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
PAIRS = {"pythia31m-1.4b": ("EleutherAI/pythia-1.4b", "EleutherAI/pythia-31m"),
         "codegen350m-phi2": ("microsoft/phi-2", "Salesforce/codegen-350M-mono")}
# The official README table (k = 0.4), written out again on purpose: an independent copy, so a
# typo in the generator fails here. recipe: (batch, lr, target epochs, reference epochs,
# AdaSPEC kept-token epochs); "-optimal" is the table's optimal column, the rest its 3-epoch one.
TABLE = {
    "gsm8k-pythia31m-1.4b": (16, 3e-4, 3, 3, 3),
    "gsm8k-pythia31m-1.4b-optimal": (16, 3e-4, 6, 15, 30),
    "gsm8k-codegen350m-phi2": (16, 3e-4, 3, 3, 3),
    "gsm8k-codegen350m-phi2-optimal": (16, 3e-4, 3, 30, 30),
    "alpaca-pythia31m-1.4b": (16, 3e-4, 3, 3, 3),
    "alpaca-pythia31m-1.4b-optimal": (16, 3e-4, 1, 15, 30),
    "alpaca-codegen350m-phi2": (16, 3e-4, 3, 3, 3),
    "alpaca-codegen350m-phi2-optimal": (16, 3e-4, 1, 20, 15),
    "mbpp-pythia31m-1.4b": (8, 1e-5, 3, 3, 3),
    "mbpp-pythia31m-1.4b-optimal": (8, 1e-5, 1, 30, 6),
    "mbpp-codegen350m-phi2": (8, 1e-4, 3, 3, 3),
    "mbpp-codegen350m-phi2-optimal": (8, 1e-4, 1, 10, 6),
    "cnn_dailymail-pythia31m-1.4b": (16, 1e-4, 3, 3, 3),
    "cnn_dailymail-pythia31m-1.4b-optimal": (16, 1e-4, 1, 10, 10),
    "cnn_dailymail-codegen350m-phi2": (16, 1e-4, 3, 3, 3),
    "cnn_dailymail-codegen350m-phi2-optimal": (16, 1e-4, 1, 10, 10),
    "xsum-pythia31m-1.4b": (16, 3e-4, 3, 3, 3),
    "xsum-pythia31m-1.4b-optimal": (16, 3e-4, 1, 10, 10),
    "xsum-codegen350m-phi2": (16, 1e-4, 3, 3, 3),
    "xsum-codegen350m-phi2-optimal": (16, 1e-4, 1, 10, 10),
}
PAPER = [CONFIGS / f"{name}.yaml" for name in TABLE]


def _recipes():
    # Pipeline recipes only (configs/ also holds DeepSpeed JSON and single-stage recipes).
    return PAPER + [p for p in (CONFIGS / "demo.yaml",) if p.is_file()]


def test_all_paper_recipes_exist():
    missing = [p.name for p in PAPER if not p.is_file()]
    assert not missing, missing


@pytest.mark.parametrize("path", _recipes(), ids=lambda p: p.name)
def test_recipe_parses_and_plans(path):
    cfg = load_pipeline_config(path)
    stages = plan(cfg)
    names = [s.name for s in stages]
    # Stages come in the pipeline's order, and the method's core is always there.
    assert names == [n for n in STAGE_ORDER if n in names]
    assert {"cache_train", "cache_eval", "reference", "add_reference", "adaspec", "eval"} <= set(names)
    # Three arms everywhere AdaSPEC is compared: the compute control runs and is evaluated.
    assert "distillspec_wide" in names

    # Each stage holds the typed config its job is called with (built, so valid, when planned).
    owners = {"cache": CacheConfig, "add_reference": ReferenceConfig, "train": TrainConfig, "eval": EvalConfig}
    assert all(isinstance(s.config, owners[s.job]) for s in stages if s.job in owners)
    # ... which is the class of its job's row, the one the job's subcommand builds too.
    assert all(isinstance(s.config, JOBS[s.job].config) for s in stages)
    assert all(s.command in SUBCOMMANDS for s in stages if s.command)
    by = {s.name: s for s in stages}
    # The reference column comes from the kd draft that the eval calls DistillSpec.
    ref_export = by["add_reference"].config.model
    assert by["eval"].config.drafts["distillspec"] == ref_export
    assert set(by["eval"].config.drafts) == {"distillspec", "adaspec", "distillspec_wide"}
    # The control is kd with AdaSPEC's batch rule and epochs, and no selection settings.
    wide, ada = by["distillspec_wide"], by["adaspec"]
    assert wide.config.objective == "kd" and "selection" not in wide.recipe
    assert all(wide.recipe.get(k) == ada.recipe.get(k) for k in ("kept_token_epochs", "budget", "filter_fraction", "engine"))
    assert all(getattr(wide.config, k) == getattr(ada.config, k)
               for k in ("kept_token_epochs", "budget", "filter_fraction", "engine"))
    assert by["reference"].config.objective == "kd" and ada.config.objective == "adaspec"
    # kd and adaspec start from the same draft initialisation and read the same cache.
    assert by["reference"].config.draft == ada.config.draft
    assert by["reference"].config.cache_dir == ada.config.cache_dir == by["add_reference"].config.cache_dir
    assert all(str(o).startswith(cfg.run_dir) for s in stages for o in s.outputs)
    # The record each stage writes (run_dir/configs/NAME.yaml) rebuilds exactly its config, so the
    # printed command line (`--config RECORD`) reruns the stage by hand.
    for s in stages:
        if s.record:
            assert s.command_line().endswith(f"--config {s.record}")
            again = build_config(type(s.config), yaml.safe_load(yaml.safe_dump(to_dict(s.config), sort_keys=False)))
            assert again == s.config, s.name


@pytest.mark.parametrize("name", TABLE)
def test_paper_hyperparameters(name):
    # Reads the YAML as written (not the plan), so it checks the recipe against the table whatever
    # the pipeline later derives from it (AdaSPEC's batch / k, the compute control).
    batch, lr, target_epochs, ref_epochs, kept_epochs = TABLE[name]
    r = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    task, pair = name.removesuffix("-optimal").split("-", 1)
    assert r["name"] == name and r["run_dir"] == f"runs/{name}"
    assert r["task"] == r["data"]["task"] == task
    assert (r["target"]["name_or_path"], r["draft"]["name_or_path"]) == PAIRS[pair] and r["tokenizer"] == PAIRS[pair][0]
    for stage in ("sft", "reference", "adaspec"):
        eng = r[stage]["engine"]
        # HF Trainer's AdamW defaults and the official scripts' weight decay / constant schedule.
        assert tuple(eng["betas"]) == (0.9, 0.999) and eng["eps"] == 1e-8 and eng["grad_clip"] == 1.0
        assert eng["weight_decay"] == 0.1 and eng["schedule"] == "constant"
    for stage in ("reference", "adaspec"):
        # adaspec states the reference's batch; budget: paper scales it by 1 / k.
        assert r[stage]["engine"]["global_batch_size"] == batch
        assert r[stage]["engine"]["lr"] == pytest.approx(lr)
    assert r["reference"]["passes"] == ref_epochs
    ada = r["adaspec"]
    assert ada["kept_token_epochs"] == kept_epochs and "passes" not in ada
    sel = ada["selection"]
    assert ada["budget"] == "paper" and sel["loss_normalization"] == "supervised"
    assert ada["filter_fraction"] == 0.4 and sel["scope"] == "local"
    # The published selection and normalisation, stated (they are also the defaults).
    assert sel["rule"] == "quantile" and sel["threshold_group"] is None
    assert ada["normalization_scope"] == r["reference"]["normalization_scope"] == "per_rank"
    assert SelectionConfig.rule == "quantile" and TrainConfig.normalization_scope == "per_rank"
    sft = r["sft"]
    assert sft["passes"] == target_epochs and sft["engine"]["global_batch_size"] == 16
    assert sft["engine"]["lr"] == pytest.approx(1e-5)
    assert r["divergence"] == "fkl"
    assert r["distillspec_wide"] == {}  # the compute control runs (derived from the adaspec section)


def test_paper_recipes_match_their_generator(tmp_path):
    # The committed recipes are exactly what tools/make_paper_recipes.py writes: edit the table there.
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_paper_recipes.py"), "--out", str(tmp_path)],
                   check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in PAPER)
    stale = [p.name for p in PAPER if (tmp_path / p.name).read_bytes() != p.read_bytes()]
    assert not stale, f"re-run tools/make_paper_recipes.py: {stale}"


def test_overrides_and_dry_run_cli(capsys):
    from adaspec_dist.cli import pipeline

    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    args = parser.parse_args([str(CONFIGS / "gsm8k-pythia31m-1.4b.yaml"), "run_dir=/tmp/x", "sft=null", "--dry-run"])
    assert pipeline.run(args) == 0
    out = capsys.readouterr().out
    assert "sft" not in out  # sft=null: the target is used as given
    assert "adaspec-dist cache --add-reference /tmp/x/reference/final /tmp/x/cache/train" in out


def test_unknown_key_and_bad_stage_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "gsm8k-pythia31m-1.4b.yaml").read_text() + "\nadaspecc: {}\n")
    with pytest.raises(ConfigError, match="adaspecc.*did you mean: adaspec"):
        load_pipeline_config(bad)
    cfg = load_pipeline_config(CONFIGS / "gsm8k-pythia31m-1.4b.yaml", ["adaspec.filter_fraction=1.5"])
    with pytest.raises(ValueError):
        plan(cfg)


@pytest.mark.parametrize("override,needle", [
    ("reference.engine.lrr=1", "unknown config key 'reference.engine.lrr'"),
    ("adaspec.filter_fractoin=0.3", "unknown config key 'adaspec.filter_fractoin'"),
    ("cache.scheme=dense", "config key 'cache.scheme' = 'dense' is not one of ['topk', 'sampled']"),
    ("cache.value_dtype=fp8", "config key 'cache.value_dtype' = 'fp8' is not one of ['fp16', 'bf16', 'int8']"),
    ("eval.gamas=[1]", "unknown config key 'eval.gamas'"),
    ("eval.data.splt=test", "unknown config key 'eval.data.splt'"),
    ("sft.objectiv=sft", "unknown config key 'sft.objectiv'"),
])
def test_a_bad_key_in_any_stage_section_fails_when_planned(override, needle):
    cfg = load_pipeline_config(CONFIGS / "gsm8k-pythia31m-1.4b.yaml", [override])
    with pytest.raises(ConfigError) as err:
        plan(cfg)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override,needle", [
    ("data.lmit=3", "unknown config key 'data.lmit'"),
    ("eval_data.splt=test", "unknown config key 'eval_data.splt'"),
    ("target.dtype=fp8", "config key 'target.dtype' = 'fp8' is not one of ['auto', 'float32', 'bfloat16', 'float16']"),
    ("draft.prest=x", "unknown config key 'draft.prest'"),
    ("divergence=kl", "config key 'divergence' = 'kl' is not one of ['fkl', 'rkl', 'jsd', 'tvd']"),
])
def test_a_bad_key_in_a_shared_section_fails_when_loaded(override, needle):
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(CONFIGS / "gsm8k-pythia31m-1.4b.yaml", [override])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_marker_of_another_config_is_refused(tmp_path):
    from adaspec_dist.pipeline import write_marker

    cfg = load_pipeline_config(CONFIGS / "gsm8k-pythia31m-1.4b.yaml", [f"run_dir={tmp_path}"])
    stage = {s.name: s for s in plan(cfg)}["cache_train"]
    assert not is_complete(cfg, stage)
    write_marker(cfg, stage, 1.0)
    Path(stage.outputs[0]).parent.mkdir(parents=True)
    Path(stage.outputs[0]).write_text("{}")
    assert is_complete(cfg, stage)
    other = load_pipeline_config(CONFIGS / "gsm8k-pythia31m-1.4b.yaml", [f"run_dir={tmp_path}", "cache.top_k=8"])
    with pytest.raises(ConfigError, match="cache_train.*different config"):
        is_complete(other, {s.name: s for s in plan(other)}["cache_train"])


def test_a_moved_run_directory_is_still_complete(tmp_path, monkeypatch):
    """A marker hashes what a stage computes, not where its files are: the run directory moved or
    renamed (or named relative vs absolute), and a target named relative vs absolute, still match."""
    from adaspec_dist.pipeline import write_marker

    (tmp_path / "models" / "tgt").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    recipe = CONFIGS / "gsm8k-pythia31m-1.4b.yaml"
    first = load_pipeline_config(recipe, ["run_dir=runs/a", f"target.name_or_path={tmp_path / 'models' / 'tgt'}"])
    for stage in plan(first):
        write_marker(first, stage, 1.0)
        for out in stage.outputs:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text("{}")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "a").rename(tmp_path / "elsewhere" / "b")
    moved = load_pipeline_config(recipe, [f"run_dir={tmp_path / 'elsewhere' / 'b'}", "target.name_or_path=models/tgt"])
    assert all(is_complete(moved, stage) for stage in plan(moved))
    # What the stage computes still counts.
    other = load_pipeline_config(recipe, [f"run_dir={tmp_path / 'elsewhere' / 'b'}", "target.name_or_path=models/tgt",
                                          "cache.top_k=8"])
    with pytest.raises(ConfigError, match="cache_train.*different config"):
        is_complete(other, {s.name: s for s in plan(other)}["cache_train"])


def test_a_pipeline_run_directory_in_use_is_refused(tmp_path, capsys):
    from adaspec_dist.cli import main
    from adaspec_dist.files import DirectoryClaim

    with DirectoryClaim.acquire(tmp_path / "run"):
        assert main(["pipeline", str(CONFIGS / "demo.yaml"), f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"pipeline run directory '{tmp_path / 'run'}' is in use by another job" in err
    assert not (tmp_path / "run" / "pipeline.yaml").exists()


def test_generated_training_data_adds_a_generate_stage():
    """train_data target / draft: a generate stage feeds the training cache (λ = generated_fraction);
    the held-out cache keeps the dataset's answers; draft needs the model that generates."""
    from adaspec_dist.speculative.generate import GenerateConfig

    demo = CONFIGS / "demo.yaml"
    assert "generate" not in [s.name for s in plan(load_pipeline_config(demo))]
    cfg = load_pipeline_config(demo, ["train_data=draft", "generate_model=runs/prev/adaspec/final",
                                      "generated_fraction=0.5", "generate.samples_per_prompt=2"])
    by = {s.name: s for s in plan(cfg)}
    gen = by["generate"].config
    assert isinstance(gen, GenerateConfig) and gen.role == "draft" and gen.samples_per_prompt == 2
    assert gen.model.name_or_path == "runs/prev/adaspec/final" and gen.max_new_tokens == 64  # max_length 128 / 2
    assert by["cache_train"].config.generated == gen.out_dir and by["cache_train"].config.generated_fraction == 0.5
    assert by["cache_eval"].config.generated is None
    assert by["generate"].command_line().startswith("adaspec-dist generate --config ")
    target = plan(load_pipeline_config(demo, ["train_data=target"]))
    assert [s for s in target if s.name == "generate"][0].config.model.name_or_path.endswith("target/final")
    with pytest.raises(ConfigError, match="train_data: draft needs generate_model"):
        load_pipeline_config(demo, ["train_data=draft"])


def test_a_sampled_pipeline_stores_log_probs_in_its_eval_cache_only():
    """Held-out α (1 − TVD) needs p at the drawn ids; the training cache keeps format 2's compact rows."""
    by = {s.name: s for s in plan(load_pipeline_config(CONFIGS / "demo.yaml", ["cache.scheme=sampled"]))}
    assert by["cache_eval"].config.store_logp and not by["cache_train"].config.store_logp
    demo = {s.name: s for s in plan(load_pipeline_config(CONFIGS / "demo.yaml"))}
    assert "store_logp" not in demo["cache_eval"].recipe  # a top-k pipeline's stage markers are unchanged


# The official GSM8K branches' run_train.sh on 8 GPUs (written out again: an independent copy of
# the generator's numbers): optimiser steps of the reference (the checkpoint the AdaSPEC script
# loads: checkpoint-1404 / -7020 / -14040) and of AdaSPEC (HF Trainer: ceil(epochs x
# ceil(7473 / 40)) = ceil(7.5 x 187) or 75 x 187). On the Pythia optimal branches AdaSPEC gets ~2x
# the reference's steps (30 kept-token epochs vs 15 epochs).
OFFICIAL_GSM8K_STEPS = {
    "gsm8k-pythia31m-1.4b": (1404, 1403), "gsm8k-pythia31m-1.4b-optimal": (7020, 14025),
    "gsm8k-codegen350m-phi2": (1404, 1403), "gsm8k-codegen350m-phi2-optimal": (14040, 14025),
}


@pytest.mark.parametrize("name", OFFICIAL_GSM8K_STEPS)
def test_gsm8k_recipes_take_the_official_branches_steps(name):
    from adaspec_dist.distill.config import budget_for

    by = {s.name: s for s in plan(load_pipeline_config(CONFIGS / f"{name}.yaml"))}
    ref_steps, ada_steps = OFFICIAL_GSM8K_STEPS[name]
    ref, ada, wide = (by[n].config for n in ("reference", "adaspec", "distillspec_wide"))
    ref_b, ada_b = budget_for(ref, 8), budget_for(ada, 8)
    assert ref_b.steps(7473, 8) == ref_steps and ada_b.steps(7473, 8) == ada_steps
    assert budget_for(wide, 8).steps(7473, 8) == ada_steps  # the compute control: AdaSPEC's steps
    # Per device as the scripts: 2 sequences for the reference, 5 for AdaSPEC, no accumulation;
    # so one selection threshold per 5 sequences.
    assert (ref_b.micro_batch, ref_b.grad_accum, ada_b.micro_batch, ada_b.grad_accum) == (2, 1, 5, 1)
    # One process emulates it: 8 micro-steps of 5 sequences, each its own threshold and denominator.
    one = budget_for(ada, 1)
    # (steps within 0.1 %: a pass ends on a partial batch of 5 instead of 40)
    assert (one.micro_batch, one.grad_accum) == (5, 8) and abs(one.steps(7473, 1) - ada_steps) <= ada_steps / 1000


# What adaspec-dist recorded (commit b9bb3d7, before TrainConfig had sections) in the markers of this
# recipe's train stages, run_dir=/nonexistent/run-a. If the recipe itself changes, these no longer
# apply: recompute them from a checkout of b9bb3d7 (pipeline.config_sha of each train stage).
MARKERS_BEFORE_SECTIONS = {
    "reference": "32045d63e9a91a6ec255a0dc9838805e37e27a8f6d8dc2227e28e08abb4ab083",
    "adaspec": "8ef4d69d9e00c3b102b2db1180898dceb14b2308128c636e0a9fb4aafbcdc4e2",
    "distillspec_wide": "03c500014cc46cb8ed6fe376bb22bc12ed48040a49eb5cfedc9cda34209821f0",
}


def test_a_run_made_before_the_config_sections_still_resumes(tmp_path):
    """Markers an earlier version wrote (flat keys: eval_cache_dir, selection_rule, ...) are the same
    stage, so finished stages are skipped rather than refused; another config is still refused."""
    from adaspec_dist.pipeline import accepted_shas, flat_spelling

    cfg = load_pipeline_config(CONFIGS / "gsm8k-pythia31m-1.4b.yaml", ["run_dir=/nonexistent/run-a"])
    stages = {s.name: s for s in plan(cfg)}
    for name, sha in MARKERS_BEFORE_SECTIONS.items():
        assert sha in accepted_shas(stages[name], cfg.run_dir), name
    changed = load_pipeline_config(CONFIGS / "gsm8k-pythia31m-1.4b.yaml", ["run_dir=/nonexistent/run-a",
                                                                         "adaspec.selection.rule=exact_k"])
    assert MARKERS_BEFORE_SECTIONS["adaspec"] not in accepted_shas({s.name: s for s in plan(changed)}["adaspec"],
                                                                   changed.run_dir)
    assert flat_spelling(TrainConfig, {"selection": {"rule": "q"}, "eval": {"cache_dir": "c", "x": 1}, "engine": {}}) \
        == {"selection_rule": "q", "eval_cache_dir": "c", "eval": {"x": 1}, "engine": {}}
