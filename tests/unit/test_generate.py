"""The generate job (on-policy data) on a tiny real model: batch-invariant, resumable, one-line
errors, first tokens drawn from the model's tempered distribution (chi-square), and `cache`
reading it (alone and as a λ-mixture), with the reference column computed on those sequences."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adaspec_dist.cli import main
from adaspec_dist.data.tasks import DataConfig
from adaspec_dist.models.load import ModelConfig, build_preset, save_hf
from adaspec_dist.speculative.generate import GenerateConfig, generate, generate_rows
from tests.fixtures import spm_tokenizer, spm_tokenizer_dir  # noqa: F401  (pytest fixtures)
from tests.helpers import first_two_chisquare


@pytest.fixture(scope="module")
def models(tmp_path_factory, spm_tokenizer):  # noqa: F811
    root = tmp_path_factory.mktemp("gen-models")
    save_hf(build_preset("tiny-llama", len(spm_tokenizer), seed=0), root / "target", tokenizer=spm_tokenizer)
    return root


def _cfg(models: Path, out: Path, **kw) -> GenerateConfig:
    base = dict(data=DataConfig(task="arith", limit=10, max_length=80), model=ModelConfig(name_or_path=str(models / "target")),
                out_dir=str(out), samples_per_prompt=2, max_new_tokens=12, batch_size=5, shard_size=3, seed=7)
    base.update(kw)
    return GenerateConfig(**base)


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((d / "shards").iterdir())} | {"manifest": (d / "manifest.json").read_bytes()}


def test_output_is_batch_invariant_resumable_and_self_describing(models, tmp_path):
    a = generate(_cfg(models, tmp_path / "a"))
    rows = [json.loads(x) for x in (tmp_path / "a/shards/gen-00000.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["sample"]) for r in rows] == [(i, s) for i in range(3) for s in range(2)]
    r = rows[0]
    n_prompt = sum(1 for x in r["labels"] if x == -100)
    assert r["labels"][n_prompt:] == r["input_ids"][n_prompt:] and 1 <= len(r["input_ids"]) - n_prompt <= 12
    assert rows[0]["input_ids"] != rows[1]["input_ids"]  # two samples of one prompt differ
    assert a["num_sequences"] == 20 and a["model"]["role"] == "target" and a["sampling"]["seed"] == 7
    assert len(a["model"]["weights"]) == 64 and a["eos_token_id"] == 3
    # Another batch size: the same bytes (each sample has its own stream; batch_size is recorded).
    b = generate(_cfg(models, tmp_path / "b", batch_size=2))
    ref = _files(tmp_path / "a")
    assert {k: v for k, v in _files(tmp_path / "b").items() if k != "manifest"} == \
        {k: v for k, v in ref.items() if k != "manifest"}
    assert b["batch_size"] == 2
    # A lost shard is rewritten byte-identically; a finished job is a no-op.
    (tmp_path / "a/shards/gen-00002.jsonl").unlink()
    (tmp_path / "a/manifest.json").unlink()
    generate(_cfg(models, tmp_path / "a"))
    assert _files(tmp_path / "a") == ref
    assert generate(_cfg(models, tmp_path / "a")) == a
    # Another seed into the same directory is refused, the directory untouched.
    with pytest.raises(ValueError, match="holds data generated with another model, prompts or settings"):
        generate(_cfg(models, tmp_path / "a", seed=8))
    assert _files(tmp_path / "a") == ref


def test_bad_inputs_are_one_line_errors(models, tmp_path, capsys, spm_tokenizer_dir):  # noqa: F811
    from adaspec_dist.data.tokenizer import train_sentencepiece

    from adaspec_dist.data.tasks import load_examples

    other_tok = train_sentencepiece([e.prompt + e.answer for e in load_examples(DataConfig(task="arith", limit=60))],
                                    400, tmp_path / "other-tok")
    save_hf(build_preset("tiny-llama", len(other_tok), seed=1), tmp_path / "other", tokenizer=other_tok)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    base = ["generate", "data.task=arith", "data.limit=4", "data.max_length=64", f"out_dir={tmp_path / 'o'}",
            "max_new_tokens=16"]
    cases = {
        "max_new_tokens=0 must be >= 1": [f"model.name_or_path={models / 'target'}", "max_new_tokens=0"],
        "leaves no room for the prompt": [f"model.name_or_path={models / 'target'}", "max_new_tokens=64"],
        "has no rows": [f"model.name_or_path={models / 'target'}", "data.task=gsm8k", f"data.source={empty}"],
        "built for another tokenizer": [f"model.name_or_path={tmp_path / 'other'}", f"tokenizer={spm_tokenizer_dir}"],
        "makes all 2 samples of a prompt identical": [f"model.name_or_path={models / 'target'}", "temperature=0",
                                                      "samples_per_prompt=2"],
    }
    capsys.readouterr()
    for message, extra in cases.items():
        assert main(base + extra) == 2, message
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if "error:" in ln]  # (transformers' loading bars aside)
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, (message, err)
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_first_tokens_follow_the_tempered_target(temperature):
    """Samples of one prompt: the first two tokens' joint law is softmax(logits / T)'s (chi-square);
    the law at another temperature is rejected, so the test can fail."""
    V, N = 8, 3000
    model = build_preset("tiny-llama", V, seed=5, initializer_range=0.3)
    prompt = [1, 4, 2]

    def joint(T):
        with torch.no_grad():
            p1 = torch.softmax(model(torch.tensor([prompt])).logits[0, -1].double() / T, -1)
            p2 = torch.softmax(model(torch.tensor([prompt + [a] for a in range(V)])).logits[:, -1].double() / T, -1)
        return (p1[:, None] * p2).flatten()

    cfg = GenerateConfig(data=DataConfig(task="arith", max_length=16), model=ModelConfig(preset="tiny-llama"),
                         out_dir="unused", samples_per_prompt=N, max_new_tokens=2, temperature=temperature,
                         batch_size=1000, seed=3)
    rows = generate_rows(model, [(0, prompt)], cfg, eos=None, vocab=V, pad_id=0)
    firsts = [r["input_ids"][len(prompt):] for r in rows]
    assert all(len(s) == 2 for s in firsts)
    assert first_two_chisquare(firsts, joint(temperature), V) > 0.01
    assert first_two_chisquare(firsts, joint(1.0), V) < 1e-4


def test_cache_reads_generated_data_and_mixtures(models, tmp_path):
    from adaspec_dist.cache.produce import CacheConfig, produce_cache
    from adaspec_dist.cache.reader import CacheReader
    from adaspec_dist.cache.reference import ReferenceConfig, add_reference
    from adaspec_dist.data.generated import read_generated

    gen = tmp_path / "gen"
    generate(_cfg(models, gen))
    rows = read_generated(gen).rows
    common = dict(data=DataConfig(task="arith", limit=10, max_length=80), model=ModelConfig(name_or_path=str(models / "target")),
                  top_k=4, shard_size=8, seed=1)
    m = produce_cache(CacheConfig(out_dir=str(tmp_path / "c1"), generated=str(gen), **common))
    assert m["num_sequences"] == 20 and m["data"]["generated"]["model"]["role"] == "target"
    assert m["num_supervised"] == sum(sum(1 for x in r["labels"][1:] if x != -100) for r in rows)
    batch = next(iter(CacheReader(tmp_path / "c1", batch_size=20, shuffle=False, verify="full")))
    assert batch.input_ids[0, :len(rows[0]["input_ids"])].tolist() == rows[0]["input_ids"]
    assert int(batch.loss_mask.sum()) == m["num_supervised"]
    # The reference column is computed on the generated sequences, as on dataset answers.
    ref = add_reference(ReferenceConfig(cache_dir=str(tmp_path / "c1"), model=str(models / "target")))
    assert ref["reference"]["divergence"] == "fkl"
    # λ = 0.5: some rows are generated, the others the dataset's answer to the same prompt.
    m5 = produce_cache(CacheConfig(out_dir=str(tmp_path / "c5"), generated=str(gen), generated_fraction=0.5, **common))
    assert m5["num_sequences"] == 20 and m5["data"]["fingerprint"] != m["data"]["fingerprint"]
    from adaspec_dist.data.generated import generated_sequences
    from adaspec_dist.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(models / "target"))
    mixed, _ = generated_sequences(common["data"], tok, gen, 0.5, 1)
    own = [r["input_ids"] for r in rows]
    n_gen = sum(s.input_ids == o for s, o in zip(mixed, own))
    assert 3 <= n_gen <= 17
    only_data, _ = generated_sequences(common["data"], tok, gen, 0.0, 1)
    from adaspec_dist.data.generated import dataset_by_prompt
    from adaspec_dist.data.tasks import load_examples

    answers = dataset_by_prompt(load_examples(common["data"]), tok, max_length=80)
    assert only_data == [answers[r["prompt"]] for r in rows]  # λ = 0: the dataset's answers, per sample
    # Other prompts than the generate job's are refused for a mixture.
    with pytest.raises(ValueError, match="gives other prompts than the generated data"):
        generated_sequences(DataConfig(task="arith", limit=10, seed=5, max_length=80), tok, gen, 0.5, 1)
