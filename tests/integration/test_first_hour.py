"""What a new user meets in the first hour (issue 15), through the real console script.

Each case failed before the fix: a rerun that dropped the reference column, a vocabulary mismatch
that trained anyway, a run of zero steps that exported an untrained draft, tracebacks where one
line belongs, an export whose config does not stop at the tokenizer's EOS, NaN grad norms.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tokenizer, a tiny target and a reference draft saved as HF directories, and a cache recipe."""
    from adaspec_dist.data.tasks import DataConfig, load_examples
    from adaspec_dist.data.tokenizer import train_sentencepiece
    from adaspec_dist.models.load import build_preset, save_hf

    root = tmp_path_factory.mktemp("first-hour")
    examples = load_examples(DataConfig(task="arith", limit=60))
    tok = train_sentencepiece([e.prompt + e.answer for e in examples], 400, root / "tok")
    save_hf(build_preset("tiny-llama", len(tok), seed=0), root / "target", tokenizer=tok)
    save_hf(build_preset("tiny-llama", len(tok), seed=1), root / "ref", tokenizer=tok)
    recipe = root / "cache.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"task": "arith", "limit": 24, "max_length": 64},
                                      "model": {"name_or_path": str(root / "target")},
                                      "top_k": 16, "batch_size": 8, "shard_size": 12}))
    return {"root": root, "tok": root / "tok", "target": root / "target", "ref": root / "ref", "recipe": recipe}


def one_line_error(proc, *needles: str) -> str:
    """The process failed with exit 2 and exactly one stderr line (no traceback) holding the needles."""
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower() or "Traceback" in ln]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def cache(world, out: Path, *extra: str, check: bool = True):
    return run_cli(["cache", "--config", str(world["recipe"]), f"out_dir={out}", *extra], timeout=240, check=check)


def test_rerun_keeps_the_reference_column_and_replace_recomputes_it(world, tmp_path):
    out = tmp_path / "cache"
    cache(world, out)
    run_cli(["cache", "--add-reference", str(world["ref"]), str(out)], timeout=240)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["reference"]["divergence"] == "fkl"
    cache(world, out)  # the same command again: complete, and nothing is lost
    again = json.loads((out / "manifest.json").read_text())
    assert again.get("reference") == manifest["reference"]
    # The same reference again resumes (a no-op); another model is refused (one line naming the fix)
    # and --replace recomputes the column with it.
    run_cli(["cache", "--add-reference", str(world["ref"]), str(out)], timeout=240)
    refused = run_cli(["cache", "--add-reference", str(world["target"]), str(out)], timeout=240, check=False)
    one_line_error(refused, "already has a reference column", "--replace")
    ref_file = sorted((out / "shards").glob("*.ref.npy"))[0]
    before = ref_file.read_bytes()
    run_cli(["cache", "--add-reference", str(world["target"]), str(out), "--replace"], timeout=240)
    replaced = json.loads((out / "manifest.json").read_text())["reference"]
    assert replaced["model"] == str(world["target"]) and ref_file.read_bytes() != before
    # A deleted shard is rewritten by the same cache command (byte-identical), the column kept.
    shard = sorted((out / "shards").glob("*.safetensors"))[0]
    data = shard.read_bytes()
    shard.unlink()
    cache(world, out)
    assert shard.read_bytes() == data
    assert json.loads((out / "manifest.json").read_text())["reference"] == replaced


def _train(world, run_dir: Path, cache_dir: Path, *extra: str, check: bool = True):
    return run_cli(["train", "objective=kd", f"cache_dir={cache_dir}", f"run_dir={run_dir}",
                    f"tokenizer={world['tok']}", "draft.preset=tiny-llama", "engine.ds_config=ds_zero0.json",
                    "engine.micro_batch_size=4", "engine.lr=1e-3", *extra], timeout=300, check=check)


def test_vocabulary_mismatch_and_empty_runs_are_refused(world, tmp_path):
    out = tmp_path / "cache"
    cache(world, out)
    # max_steps <= 0 would export an untrained draft: refused before anything is written.
    for bad in ("0", "-5"):
        proc = _train(world, tmp_path / f"run{bad}", out, f"max_steps={bad}", check=False)
        one_line_error(proc, "max_steps")
        assert not (tmp_path / f"run{bad}" / "final").exists()
    # A manifest whose vocabulary disagrees with the tokenizer names the cache, not the eval cache.
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["vocab_size"] = 2048
    (out / "manifest.json").write_text(json.dumps(manifest))
    proc = _train(world, tmp_path / "run", out, "max_steps=1", check=False)
    one_line_error(proc, "2048", str(out))
    assert not (tmp_path / "run" / "final").exists()


def test_tensorboard_has_numbers_an_alpha_curve_and_the_config(world, tmp_path):
    """grad norms are numbers (were NaN), α has a curve by default (was: start and end only),
    and the resolved config is in the HPARAMS tab and as text."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = tmp_path / "cache"
    cache(world, out)
    _train(world, tmp_path / "run", out, "max_steps=20", f"eval.cache_dir={out}", "eval.batches=1")
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    norms = [e.value for e in acc.Scalars("train/grad_norm")]
    assert len(norms) == 20 and all(v == v and v > 0 for v in norms), norms  # v == v: not NaN
    alpha_steps = [e.step for e in acc.Scalars("eval/alpha")]
    assert alpha_steps == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20], alpha_steps  # ceil(20 / 10) = 2
    hp = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["objective"].string_value == "kd"
    assert start.hparams["engine.lr"].number_value == pytest.approx(1e-3)
    assert start.hparams["cache_dir"].string_value == str(out)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"eval/alpha", "eval/fkl"}
    assert "config" in "".join(acc.Tags()["tensors"])


def test_the_export_says_how_to_prompt_it_and_what_it_measured(world, tmp_path):
    """run_dir/final carries the task's prompt as its tokenizer's chat template (plain transformers
    gives the exact ids the draft was trained to continue) and a model card with the held-out α."""
    from transformers import AutoTokenizer

    from adaspec_dist.data.tasks import DataConfig, load_examples
    from adaspec_dist.data.tokenize import prompt_ids

    out = tmp_path / "cache"
    cache(world, out)
    _train(world, tmp_path / "run", out, "max_steps=2", f"eval.cache_dir={out}")
    final = tmp_path / "run" / "final"
    tok = AutoTokenizer.from_pretrained(final)
    example = load_examples(DataConfig(task="arith", limit=1))[0]
    question = example.prompt.removeprefix("Question: ").removesuffix("\nAnswer: ")
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert ids == prompt_ids(example, tok)
    card = (final / "README.md").read_text()
    assert "Question: {input}" in card and "objective | `kd`" in card and "Held-out α" in card
    assert "τ(γ=3)" in card and str(world["target"]) in card


def test_export_stops_at_the_tokenizers_eos(world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world["target"])
    config = json.loads((world["target"] / "config.json").read_text())
    generation = json.loads((world["target"] / "generation_config.json").read_text())
    for cfg in (config, generation):
        assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (tok.bos_token_id, tok.eos_token_id)
    # Plain transformers: generation ends at the EOS the tokenizer knows.
    model = AutoModelForCausalLM.from_pretrained(world["target"])
    assert model.generation_config.eos_token_id == tok.eos_token_id


@pytest.mark.parametrize("case", ["yaml_syntax", "empty_dataset", "out_is_a_file", "missing_model",
                                  "unwritable_out"])
def test_user_errors_are_one_line(world, tmp_path, case):
    if case == "yaml_syntax":
        bad = tmp_path / "bad.yaml"
        bad.write_text("data:\n  task: arith\n   limit: 3\n")
        one_line_error(run_cli(["cache", "--config", str(bad)], check=False), str(bad), "line")
    elif case == "empty_dataset":
        empty = tmp_path / "empty.jsonl"
        empty.write_text("")
        proc = run_cli(["cache", "--config", str(world["recipe"]), "data.task=gsm8k", f"data.source={empty}",
                        f"out_dir={tmp_path / 'c'}"], check=False)
        one_line_error(proc, str(empty), "no rows")
    elif case == "out_is_a_file":
        f = tmp_path / "file"
        f.write_text("x")
        one_line_error(cache(world, f, check=False), str(f), "not a directory")
    elif case == "missing_model":
        proc = run_cli(["cache", "--config", str(world["recipe"]), "model.name_or_path=./no/such/model",
                        f"out_dir={tmp_path / 'c'}"], check=False)
        one_line_error(proc, "no/such/model")
    elif case == "unwritable_out":
        one_line_error(cache(world, Path("/proc/adaspec-cache"), check=False), "/proc/adaspec-cache")


def test_corrupt_shard_header_names_the_shard(world, tmp_path):
    out = tmp_path / "cache"
    cache(world, out)
    shard = sorted((out / "shards").glob("*.safetensors"))[0]
    shard.write_bytes(b"\xff\xfe" + shard.read_bytes()[2:])
    proc = run_cli(["inspect", str(out)], check=False)
    one_line_error(proc, shard.name)


def test_version():
    from importlib.metadata import version

    proc = run_cli(["--version"])
    assert proc.stdout.strip() == f"adaspec-dist {version('adaspec-dist')}"
