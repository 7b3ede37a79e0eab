"""Hostile or damaged caches: finite or refused, one line naming the file, and advice that works.

Each damaged file here is *re-sealed* (its sidecar and manifest record the new sha256 and size),
as a buggy writer or a bad disk before hashing would leave it: checksums cannot catch these.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from adaspec_dist.cache import format as fmt
from adaspec_dist.cache.reader import CacheReader
from adaspec_dist.cache.reference import ReferenceConfig, add_reference
from adaspec_dist.cache.writer import write_shard
from adaspec_dist.cli import main
from adaspec_dist.models.load import build_preset
from adaspec_dist.sparse.target import SparseTarget
from tests.unit.test_cache_store import V, build, corrupt_copy


@pytest.fixture(scope="module")
def target():
    return build_preset("tiny-llama", V, seed=0)


@pytest.fixture(scope="module")
def caches(tmp_path_factory, target) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    return {dt: build(root / dt, target, n=9, value_dtype=dt) for dt in ("fp16", "bf16")}


def reseal(cache: Path, shard: Path) -> None:
    """Record ``shard``'s current bytes and sha256 in its sidecar and in the manifest."""
    size, digest = shard.stat().st_size, fmt.sha256_file(shard)
    side = shard.with_name(shard.name.replace(".safetensors", ".json"))
    if shard.suffix == ".safetensors":
        meta = json.loads(side.read_text())
        meta.update(bytes=size, sha256=digest)
        side.write_text(json.dumps(meta))
    man = json.loads((cache / "manifest.json").read_text())
    for sh in man["shards"]:
        if sh["file"] == shard.name:
            sh.update(bytes=size, sha256=digest)
    for sh in (man.get("reference") or {}).get("shards", {}).values():
        if sh["file"] == shard.name:
            sh.update(bytes=size, sha256=digest)
    (cache / "manifest.json").write_text(json.dumps(man))


def poison(cache: Path, index: int, value: float) -> Path:
    """Put ``value`` into one log-prob of shard ``index`` (in the shard's own value type), re-sealed."""
    shard = cache / "shards" / f"shard-{index:05d}.safetensors"
    arrays, names, meta = fmt.open_safetensors(shard)
    data = {k: np.array(v) for k, v in arrays.items()}
    if names["logp"] == "BF16":
        bits = torch.tensor([value], dtype=torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        data["logp"].flat[5] = bits[0]
    else:
        data["logp"].flat[5] = value
    fmt.write_safetensors(shard, data, dtypes={"logp": names["logp"]}, metadata=meta)
    reseal(cache, shard)
    return shard


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_the_reader_refuses_non_finite_log_probs_naming_the_shard(caches, tmp_path, dtype, value):
    bad = corrupt_copy(caches[dtype], tmp_path / "bad")
    shard = poison(bad, 1, value)
    with pytest.raises(fmt.CacheError, match=rf"'{shard}' holds non-finite values \(NaN or inf: 1 in 'logp'\)"):
        list(CacheReader(bad, batch_size=4, shuffle=False))


def test_minus_inf_log_probs_are_zero_probabilities_not_damage(caches, tmp_path):
    ok = corrupt_copy(caches["bf16"], tmp_path / "ok")
    poison(ok, 1, float("-inf"))
    assert sum(len(b) for b in CacheReader(ok, batch_size=4, shuffle=False)) == 9


def test_the_writer_refuses_a_non_finite_target_and_writes_nothing(tmp_path):
    logp = torch.log_softmax(torch.randn(3, 4), -1)
    logp[1, 2] = float("nan")
    target = SparseTarget(ids=torch.arange(12).view(3, 4), logp=logp, weights=None, scheme="topk")
    with pytest.raises(fmt.CacheError, match=r"shard-00000.safetensors' holds non-finite values \(1 log-probs"):
        write_shard(tmp_path, 0, seq_ids=[0], input_ids=[np.arange(4)], loss_masks=[np.array([1, 1, 1, 0])],
                    target=target, vocab_size=V, value_dtype="fp16")
    assert not list(tmp_path.rglob("shard-*"))


def _inspect(cache: Path, capsys, *flags: str) -> tuple[int, str]:
    code = main(["inspect", str(cache), *flags])
    return code, capsys.readouterr().err.strip()


def test_inspect_names_a_shard_with_an_unknown_dtype_or_a_flipped_header(caches, tmp_path, capsys):
    for case in ("dtype", "utf8"):
        bad = corrupt_copy(caches["fp16"], tmp_path / case)
        shard = bad / "shards" / "shard-00001.safetensors"
        raw = bytearray(shard.read_bytes())
        (n,) = struct.unpack("<Q", raw[:8])
        if case == "dtype":
            header = raw[8:8 + n].replace(b'"F16"', b'"Z16"')
            raw[8:8 + n] = header
        else:
            raw[10] = 0xFF  # not UTF-8
        shard.write_bytes(bytes(raw))
        reseal(bad, shard)
        code, err = _inspect(bad, capsys)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"shard '{shard}'" in err and ("'Z16'" in err if case == "dtype" else "corrupt header" in err), err


@pytest.mark.parametrize("manifest", [
    {"format_version": 2, "complete": True},
    {"format_version": 2, "complete": True, "scheme": "topk", "params": {"value_dtype": "fp16"}, "vocab_size": 9,
     "shards": [{"file": "x"}]},
    [1, 2],
])
def test_a_manifest_of_the_wrong_shape_is_one_line_naming_the_key(tmp_path, capsys, manifest):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    code, err = _inspect(tmp_path / "c", capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"manifest '{tmp_path / 'c' / 'manifest.json'}'" in err and "rebuild the cache" in err
    if isinstance(manifest, dict) and "scheme" not in manifest:
        assert "'scheme'" in err


def test_a_deleted_reference_shard_is_recomputed_by_the_advised_command(tmp_path, target, capsys):
    """The reader's message names `cache --add-reference MODEL CACHE_DIR`; running it (no --replace)
    recomputes just the missing shard's column, and the cache reads again."""
    from adaspec_dist.cli.cache import run as cache_run  # noqa: F401  (the CLI module exists)
    from adaspec_dist.models.load import save_hf

    ref_dir = tmp_path / "ref"
    save_hf(build_preset("tiny-llama", V, seed=4), ref_dir)
    cache = build(tmp_path / "c", target, n=9)
    assert main(["cache", "--add-reference", str(ref_dir), str(cache), "--batch-size", "4"]) == 0
    before = (cache / "shards" / "shard-00001.ref.npy").read_bytes()
    (cache / "shards" / "shard-00001.ref.npy").unlink()
    capsys.readouterr()
    code, err = _inspect(cache, capsys, "--verify")
    assert code == 2 and len(err.splitlines()) == 1
    advice = f"adaspec-dist cache --add-reference {ref_dir} {cache}"
    assert "shard-00001.ref.npy' is missing" in err and advice in err, err
    assert main(advice.split()[1:]) == 0
    assert (cache / "shards" / "shard-00001.ref.npy").read_bytes() == before
    code, _ = _inspect(cache, capsys, "--verify")
    assert code == 0


def test_a_reference_column_with_nan_is_refused_naming_its_file(tmp_path, target):
    import io

    cache = build(tmp_path / "c", target, n=9)
    add_reference(ReferenceConfig(cache_dir=str(cache), model="ref-A", batch_size=4),
                  model=build_preset("tiny-llama", V, seed=4))
    ref = cache / "shards" / "shard-00000.ref.npy"
    col = np.load(ref)
    col[0] = np.nan
    buf = io.BytesIO()
    np.save(buf, col)
    ref.write_bytes(buf.getvalue())
    meta = json.loads((cache / "shards" / "shard-00000.ref.json").read_text())
    meta.update(sha256=fmt.sha256_file(ref))
    (cache / "shards" / "shard-00000.ref.json").write_text(json.dumps(meta))
    reseal(cache, ref)
    with pytest.raises(fmt.CacheError, match=rf"'{ref}' holds non-finite values .*1 in 'ref_loss'.*--add-reference ref-A"):
        list(CacheReader(cache, batch_size=4, shuffle=False))
