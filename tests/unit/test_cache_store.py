"""The cache on disk: a real tiny HF target written by the job, read back by the reader, refused when wrong."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adaspec_dist.cache import format as fmt
from adaspec_dist.cache.produce import JobSpec, hf_target_fn, write_cache
from adaspec_dist.cache.reader import CacheReader
from adaspec_dist.cache.reference import ReferenceConfig, add_reference
from adaspec_dist.cache.summary import summarise
from adaspec_dist.data.tokenize import TokenizedExample
from adaspec_dist.sparse.divergence import KINDS, per_token_divergence
from adaspec_dist.models.load import build_preset

V = 300


def make_sequences(n: int, seed: int = 0) -> list[TokenizedExample]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt, answer = int(rng.integers(1, 8)), int(rng.integers(1, 10))
        ids = rng.integers(4, V, prompt + answer).tolist()
        out.append(TokenizedExample(input_ids=ids, labels=[-100] * prompt + ids[prompt:]))
    return out


@pytest.fixture(scope="module")
def target():
    return build_preset("tiny-llama", V, seed=0)


def build(tmp: Path, target, scheme="topk", n=13, **kw) -> Path:
    spec = JobSpec(scheme=scheme, top_k=kw.pop("top_k", 8), draws=kw.pop("draws", 12), batch_size=3,
                   shard_size=kw.pop("shard_size", 4), value_dtype=kw.pop("value_dtype", "fp16"), vocab_size=V,
                   extra={"tokenizer_fingerprint": "tok-A", "split": "train"}, **kw)
    fn = hf_target_fn(target, scheme=scheme, top_k=spec.top_k, draws=spec.draws)
    write_cache(make_sequences(n), fn, spec, tmp, tensorboard_dir=str(tmp.parent / (tmp.name + "-tb")))
    return tmp


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def topk_cache(tmp_path_factory, target):
    return build(tmp_path_factory.mktemp("c") / "topk", target)


def test_reader_returns_the_targets_aligned_with_the_model(topk_cache, target):
    seqs = make_sequences(13)
    reader = CacheReader(topk_cache, batch_size=5, shuffle=False, vocab_size=V, tokenizer_fingerprint="tok-A")
    assert len(reader) == 3 and reader.manifest["num_sequences"] == 13
    seen = 0
    for batch in reader:
        for row, g in enumerate(batch.seq_ids.tolist()):
            s = seqs[g]
            L = len(s.input_ids)
            assert batch.input_ids[row, :L].tolist() == s.input_ids and (batch.input_ids[row, L:] == 0).all()
            assert batch.attention_mask[row].sum() == L
            # position t carries token t+1's distribution when labels[t+1] is supervised
            expected = [lab != -100 for lab in s.labels[1:]] + [False]
            assert batch.loss_mask[row, :L].tolist() == expected
        with torch.no_grad():
            logits = target(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        full = torch.log_softmax(logits[batch.loss_mask], -1)
        assert len(batch.target) == batch.loss_mask.sum()
        torch.testing.assert_close(batch.target.logp, full.gather(1, batch.target.ids), atol=2e-3, rtol=1e-3)
        assert torch.equal(batch.target.ids[:, 0], full.argmax(-1))
        seen += len(batch)
    assert seen == 13


def test_rerun_is_a_noop_and_another_job_is_refused(topk_cache, target):
    before = {k: v for k, v in snapshot(topk_cache).items()}
    mtimes = {p: p.stat().st_mtime_ns for p in (topk_cache / "shards").iterdir()}
    build(topk_cache, target)  # the same job: every shard is complete
    assert snapshot(topk_cache) == before
    assert {p: p.stat().st_mtime_ns for p in (topk_cache / "shards").iterdir()} == mtimes
    with pytest.raises(ValueError, match="different settings"):
        build(topk_cache, target, top_k=4)
    assert snapshot(topk_cache) == before


def test_rank_streams_are_disjoint_equal_length_and_cover_each_epoch(topk_cache):
    readers = [CacheReader(topk_cache, batch_size=2, dp_rank=r, dp_size=3, seed=5, prefetch=1) for r in range(3)]
    assert {len(r) for r in readers} == {3}  # ceil(13 / 6) on every rank
    orders = []
    for epoch in (0, 1):
        ids = []
        for r in readers:
            r.set_epoch(epoch)
            batches = [b.seq_ids.tolist() for b in r]
            assert len(batches) == 3
            ids += [i for b in batches for i in b]
        assert sorted(ids) == list(range(13))  # disjoint and covering
        orders.append(ids)
    assert orders[0] != orders[1]  # reshuffled per epoch
    again = CacheReader(topk_cache, batch_size=2, dp_rank=0, dp_size=3, seed=5)
    assert [b.seq_ids.tolist() for b in again] == [b.seq_ids.tolist() for b in CacheReader(
        topk_cache, batch_size=2, dp_rank=0, dp_size=3, seed=5)]  # deterministic per (seed, epoch)
    # The last batch of some rank is short or empty (13 = 6 + 6 + 1), and still a valid batch.
    last = [list(r)[-1] for r in readers]
    assert [len(b) for b in last] == [1, 0, 0]
    assert last[1].input_ids.shape == (0, 0) and len(last[1].target) == 0


def test_state_dict_resumes_mid_epoch_exactly(topk_cache):
    full = CacheReader(topk_cache, batch_size=2, seed=3)
    full.set_epoch(2)
    expected = [b.seq_ids.tolist() for b in full]
    part = CacheReader(topk_cache, batch_size=2, seed=3)
    part.set_epoch(2)
    it = iter(part)
    got = [next(it).seq_ids.tolist() for _ in range(3)]
    state = json.loads(json.dumps(part.state_dict()))  # survives a checkpoint file
    it.close()
    resumed = CacheReader(topk_cache, batch_size=2, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the trainer's usual call keeps the position of the same epoch
    got += [b.seq_ids.tolist() for b in resumed]
    assert got == expected
    with pytest.raises(ValueError, match="batch_size"):
        CacheReader(topk_cache, batch_size=3, seed=3).load_state_dict(state)


def test_sampled_cache_and_int8_values(tmp_path, target):
    d = build(tmp_path / "s", target, scheme="sampled", value_dtype="int8", draws=16, store_logp=True)
    reader = CacheReader(d, batch_size=4, shuffle=False)
    for b in reader:
        t = b.target
        assert t.scheme == "sampled" and t.weights is not None
        torch.testing.assert_close(t.weights.sum(-1), torch.ones(len(t)))
        with torch.no_grad():
            logits = target(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[b.loss_mask]
        lp = torch.log_softmax(logits, -1).gather(1, t.ids)
        real = t.weights > 0
        assert ((t.logp - lp).abs()[real] <= (24 * lp.abs()[real]).sqrt() / 255 + 1e-3).all()
    # the same seed writes the same bytes
    again = build(tmp_path / "s2", target, scheme="sampled", value_dtype="int8", draws=16, store_logp=True)
    assert snapshot(d / "shards") == snapshot(again / "shards")


def _batches(d: Path) -> list:
    return list(CacheReader(d, batch_size=5, shuffle=False, prefetch=0))


def test_compact_sampled_rows_give_the_same_fkl_and_refuse_the_other_divergences(tmp_path, target):
    """Format 2: a sampled cache without log-probs holds the same ids and weights as one with them,
    and its fkl (row constant − Σ w log q) equals the log-prob estimate, value and gradient."""
    lean = build(tmp_path / "lean", target, scheme="sampled", draws=16)
    full = build(tmp_path / "full", target, scheme="sampled", draws=16, store_logp=True, value_dtype="bf16")
    man = fmt.load_manifest(lean)
    assert man["format_version"] == 2 and fmt.supported_divergences(man) == ("fkl",)
    assert fmt.supported_divergences(fmt.load_manifest(full)) == KINDS
    n_bytes = [sum(sh["bytes"] for sh in fmt.load_manifest(d)["shards"]) for d in (lean, full)]
    assert n_bytes[0] < n_bytes[1]
    for a, b in zip(_batches(lean), _batches(full)):
        assert a.target.logp is None and b.target.logp is not None
        assert torch.equal(a.target.ids, b.target.ids) and torch.equal(a.target.weights, b.target.weights)
        assert torch.equal(a.target.counts.sum(-1), torch.full((len(a.target),), 16))
        torch.testing.assert_close(a.target.weights.sum(-1), torch.ones(len(a.target)))
        student = torch.randn(len(a.target), V, generator=torch.Generator().manual_seed(1), requires_grad=True)
        la = per_token_divergence(student, a.target, "fkl")
        (ga,) = torch.autograd.grad(la.sum(), student)
        lb = per_token_divergence(student, b.target, "fkl")
        (gb,) = torch.autograd.grad(lb.sum(), student)
        torch.testing.assert_close(la, lb, atol=0.02, rtol=0)  # bf16 log-probs vs the float32 row constant
        torch.testing.assert_close(ga, gb)  # the gradient never involves p
        with pytest.raises(ValueError, match="supports: fkl"):
            per_token_divergence(student, a.target, "tvd")
    with pytest.raises(fmt.CacheError, match="supports divergence fkl only, not jsd"):
        fmt.check_divergence(man, "jsd", str(lean))
    info = summarise(lean, verify=True)
    assert info["divergences"] == ["fkl"] and info["format_version"] == 2 and not info["warnings"]


def test_zlib_shards_read_back_identical_and_smaller(tmp_path, target):
    """compression: zlib stores each shard file DEFLATE-compressed; the reader serves the same batches."""
    for scheme in ("sampled", "topk"):
        plain = build(tmp_path / f"{scheme}-plain", target, scheme=scheme)
        packed = build(tmp_path / f"{scheme}-zlib", target, scheme=scheme, compression="zlib")
        sizes = [sum(sh["bytes"] for sh in fmt.load_manifest(d)["shards"]) for d in (plain, packed)]
        assert sizes[1] < sizes[0]
        for a, b in zip(_batches(plain), CacheReader(packed, batch_size=5, shuffle=False, prefetch=0, verify="full")):
            assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.target.ids, b.target.ids)
            assert torch.equal(a.target.weights if scheme == "sampled" else a.target.logp,
                               b.target.weights if scheme == "sampled" else b.target.logp)
        assert not summarise(packed)["warnings"]
        again = build(tmp_path / f"{scheme}-zlib2", target, scheme=scheme, compression="zlib")
        assert snapshot(again / "shards") == snapshot(packed / "shards")  # deterministic bytes
    shard = packed / "shards" / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-5])
    with pytest.raises(fmt.CacheError, match="truncated|not valid zlib"):
        CacheReader(packed, batch_size=5, verify="none").load_batch(np.arange(2))


def test_reference_column_on_compact_rows_gives_the_trainer_delta(tmp_path, target):
    """L_ref on a format-2 fkl-only cache is the trainer's estimator, and ΔL = L_draft − L_ref equals
    the log-prob form's (the row constant cancels); a divergence the cache cannot estimate is refused."""
    lean = build(tmp_path / "lean", target, scheme="sampled", draws=16, n=9)
    full = build(tmp_path / "full", target, scheme="sampled", draws=16, n=9, store_logp=True, value_dtype="bf16")
    ref, draft = build_preset("tiny-neox", V, seed=1), build_preset("tiny-neox", V, seed=2)
    with pytest.raises(fmt.CacheError, match="supports divergence fkl only, not rkl"):
        add_reference(ReferenceConfig(cache_dir=lean, model="ref-A", divergence="rkl", batch_size=2), model=ref)
    for d in (lean, full):
        add_reference(ReferenceConfig(cache_dir=d, model="ref-A", divergence="fkl", batch_size=2), model=ref)
    deltas = []
    for d in (lean, full):
        out = []
        for b in CacheReader(d, batch_size=4, shuffle=False, prefetch=0):
            with torch.no_grad():
                z_r = ref(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[b.loss_mask]
                z_d = draft(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[b.loss_mask]
            torch.testing.assert_close(b.ref_loss, per_token_divergence(z_r, b.target, "fkl"), atol=1e-4, rtol=1e-4)
            out.append(per_token_divergence(z_d, b.target, "fkl") - b.ref_loss)
        deltas.append(torch.cat(out))
    torch.testing.assert_close(deltas[0], deltas[1], atol=1e-4, rtol=1e-4)


def test_sampled_temperature_needs_log_probs_and_reweights_them(tmp_path, target):
    with pytest.raises(ValueError, match="needs store_logp: true"):
        build(tmp_path / "t", target, scheme="sampled", draws=16, temperature=2.0)
    d = build(tmp_path / "t2", target, scheme="sampled", draws=16, temperature=2.0, store_logp=True,
              value_dtype="bf16")
    for b in _batches(d):
        t = b.target
        live = t.counts > 0
        w = torch.where(live, t.counts * torch.exp(t.logp - t.logp / 2.0), 0.0)  # count * p / q (up to a row constant)
        torch.testing.assert_close(t.weights, w / w.sum(-1, keepdim=True))


def test_a_format_1_cache_still_reads(tmp_path):
    """tests/data/cache_v1 was written by the format-1 writer (tests/data/make_cache_v1.py)."""
    import shutil

    src = Path(__file__).resolve().parents[1] / "data" / "cache_v1"
    expected = json.loads((src / "expected.json").read_text())
    for scheme in ("sampled", "topk"):
        d = shutil.copytree(src / scheme, tmp_path / scheme)
        man = fmt.load_manifest(d)
        assert man["format_version"] == 1 and fmt.supported_divergences(man) == KINDS
        batch = next(iter(CacheReader(d, batch_size=7, shuffle=False, prefetch=0, verify="full")))
        t = batch.target
        assert len(t) == expected[scheme]["rows"] and t.ids[0].tolist() == expected[scheme]["ids_first_row"]
        student = torch.randn(len(t), V, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(per_token_divergence(student, t, "fkl"), torch.tensor(expected[scheme]["fkl"]))
        assert not summarise(d)["warnings"]
        # Rerunning the command that wrote it finds it complete (format 1 is still read): nothing is written.
        spec = JobSpec(scheme=scheme, top_k=8, draws=12, batch_size=3, shard_size=4, value_dtype="fp16", vocab_size=V,
                       extra={"tokenizer_fingerprint": "tok-A", "split": "train"})
        before = snapshot(d)

        def no_target(*args):
            raise AssertionError("a complete cache must not be recomputed")

        assert write_cache(make_sequences(7), no_target, spec, d)["format_version"] == 1
        assert snapshot(d) == before


def corrupt_copy(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_refusals_name_the_file_and_the_fix(topk_cache, tmp_path):
    with pytest.raises(fmt.CacheError, match="vocab size 300 but the model has 512"):
        CacheReader(topk_cache, batch_size=2, vocab_size=512)
    with pytest.raises(fmt.CacheError, match="another tokenizer"):
        CacheReader(topk_cache, batch_size=2, tokenizer_fingerprint="tok-B")
    # A flipped byte: found on first open ("open") or up front ("full").
    bad = corrupt_copy(topk_cache, tmp_path / "bad")
    shard = bad / "shards" / "shard-00001.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(fmt.CacheError, match=r"shard-00001.safetensors' fails its sha256.*rerun"):
        CacheReader(bad, batch_size=2, verify="full")
    with pytest.raises(fmt.CacheError, match="shard-00001.safetensors' fails its sha256"):
        list(CacheReader(bad, batch_size=20, shuffle=False))
    # A truncated file is caught from its size, whatever the verify mode.
    cut = corrupt_copy(topk_cache, tmp_path / "cut")
    shard = cut / "shards" / "shard-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(fmt.CacheError, match="shard-00002.safetensors' has .* truncated"):
        CacheReader(cut, batch_size=2, verify="none")
    with pytest.raises(fmt.CacheError, match="truncated"):
        fmt.open_safetensors(shard)
    (cut / "manifest.json").unlink()
    with pytest.raises(fmt.CacheError, match="did not finish; rerun the same command"):
        CacheReader(cut, batch_size=2)
    for e in (fmt.CacheError,):
        assert issubclass(e, ValueError)


def test_reference_column_matches_the_trainer_estimator(tmp_path, target):
    d = corrupt_copy(build(tmp_path / "r", target, n=9), tmp_path / "r2")
    shards_before = snapshot(d / "shards")
    ref = build_preset("tiny-neox", V, seed=1)
    man = add_reference(ReferenceConfig(cache_dir=d, model="ref-A", divergence="fkl", batch_size=2), model=ref)
    assert man["reference"]["model"] == "ref-A" and len(man["reference"]["shards"]) == 3
    after = snapshot(d / "shards")
    assert {k: v for k, v in after.items() if k in shards_before} == shards_before  # nothing rewritten
    reader = CacheReader(d, batch_size=4, shuffle=True, seed=1, verify="full")
    for b in reader:
        with torch.no_grad():
            logits = ref(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[b.loss_mask]
        expected = per_token_divergence(logits, b.target, kind="fkl")
        torch.testing.assert_close(b.ref_loss, expected, atol=1e-4, rtol=1e-4)
    # Rerun = resume (no change); another reference model is refused.
    add_reference(ReferenceConfig(cache_dir=d, model="ref-A", divergence="fkl", batch_size=2), model=ref)
    assert snapshot(d / "shards") == after
    with pytest.raises(ValueError, match="already has a reference column"):
        add_reference(ReferenceConfig(cache_dir=d, model="ref-A", divergence="rkl", batch_size=2), model=ref)
    info = summarise(d, verify=True)
    assert info["sequences"] == 9 and info["reference"]["model"] == "ref-A"
    assert info["mean_ref_loss"] > 0 and 0 <= info["mean_tail_mass"] < 1 and info["bytes_per_supervised_token"] > 0


def test_reference_is_identified_by_its_weights_not_its_path(tmp_path, target, monkeypatch):
    """The same saved reference named by a relative or an absolute path (or a copy) is the same
    reference: the rerun resumes instead of being refused. Another model's column, even one a
    killed run left in a sidecar before the manifest recorded it, is never reused."""
    d = build(tmp_path / "c", target, n=9)
    ref_dir = tmp_path / "refs" / "kd"
    build_preset("tiny-neox", V, seed=1).save_pretrained(ref_dir)
    monkeypatch.chdir(tmp_path)
    add_reference(ReferenceConfig(cache_dir=str(d), model="refs/kd", batch_size=4))
    done = snapshot(d / "shards")
    add_reference(ReferenceConfig(cache_dir=str(d), model=str(ref_dir.resolve()), batch_size=4))  # was refused
    copy = tmp_path / "copy-of-kd"
    copy.mkdir()
    for f in ref_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    add_reference(ReferenceConfig(cache_dir=str(d), model=str(copy), batch_size=4))
    assert snapshot(d / "shards") == done
    other = tmp_path / "refs" / "other"
    build_preset("tiny-neox", V, seed=2).save_pretrained(other)
    with pytest.raises(ValueError, match="already has a reference column"):
        add_reference(ReferenceConfig(cache_dir=str(d), model=str(other), batch_size=4))
    # A killed run of `other` (sidecars of its shards, no manifest record yet), then the job is
    # rerun with the first reference: the other model's columns are recomputed, not mixed in.
    man = json.loads((d / "manifest.json").read_text())
    man.pop("reference")
    (d / "manifest.json").write_text(json.dumps(man))
    add_reference(ReferenceConfig(cache_dir=str(d), model=str(other), batch_size=4))
    other_col = np.load(d / "shards" / "shard-00000.ref.npy")
    man = json.loads((d / "manifest.json").read_text())
    man.pop("reference")
    (d / "manifest.json").write_text(json.dumps(man))
    add_reference(ReferenceConfig(cache_dir=str(d), model="refs/kd", batch_size=4))
    assert snapshot(d / "shards") == done
    assert not np.array_equal(np.load(d / "shards" / "shard-00000.ref.npy"), other_col)


def test_leaving_an_iteration_early_joins_the_prefetch_thread(topk_cache):
    """No decoding thread outlives its iteration (one alive in torch's C++ code at interpreter exit
    aborts the process: exit 134 instead of a preempted run's 143)."""
    import threading

    reader = CacheReader(topk_cache, batch_size=2, shuffle=False, prefetch=2)
    it = iter(reader)
    next(it)
    assert any(t.name == "cache-prefetch" for t in threading.enumerate())
    it.close()
    assert not [t for t in threading.enumerate() if t.name == "cache-prefetch"]
    for _ in reader:  # a full pass ends its thread too
        pass
    assert not [t for t in threading.enumerate() if t.name == "cache-prefetch"]


def test_inspect_warns_about_impossible_numbers_naming_the_file_and_the_fix(tmp_path, target, capsys):
    """A damaged file whose bytes still pass the size check (and its sha256, when damaged before it
    was hashed) yields statistics no intact cache can: inspect says which file and what to do."""
    import io

    from adaspec_dist.cli import main

    d = build(tmp_path / "c", target, n=9)
    add_reference(ReferenceConfig(cache_dir=d, model="ref-A", divergence="fkl", batch_size=2),
                  model=build_preset("tiny-neox", V, seed=1))
    assert summarise(d)["warnings"] == []
    # A negative KL in one reference file (same size: only the values changed).
    ref = d / "shards" / "shard-00001.ref.npy"
    col = np.load(ref)
    buf = io.BytesIO()
    np.save(buf, -np.abs(col) - 1.0)
    ref.write_bytes(buf.getvalue())
    # Top-k log-probs above 0 (probabilities above 1) in one shard, same size.
    shard = d / "shards" / "shard-00002.safetensors"
    arrays, names, meta = fmt.open_safetensors(shard)
    data = {k: np.array(v) for k, v in arrays.items()}
    data["logp"] = np.full_like(data["logp"], 0.5)
    fmt.write_safetensors(shard, data, dtypes={"logp": names["logp"]}, metadata=meta)
    info = summarise(d)
    assert info["mean_ref_loss"] < 0  # what inspect printed, unflagged, before
    warnings = info["warnings"]
    assert len(warnings) == 2, warnings
    ref_line = next(w for w in warnings if "shard-00001.ref.npy" in w)
    assert "negative L_ref" in ref_line and "inspect --verify" in ref_line and "--add-reference" in ref_line \
        and "--replace" in ref_line
    shard_line = next(w for w in warnings if "shard-00002.safetensors" in w)
    assert "probabilities above 1" in shard_line and "rerun the cache job" in shard_line
    # The command prints them on stderr, one line each, and still its statistics.
    assert main(["inspect", str(d)]) == 0
    captured = capsys.readouterr()
    assert [ln for ln in captured.err.splitlines() if "warning:" in ln] == \
        [f"adaspec-dist inspect: {w}" for w in warnings]
    assert "mean_ref_loss" in captured.out
    # Counts that disagree with the manifest.
    man = json.loads((d / "manifest.json").read_text())
    man["num_supervised"] += 3
    (d / "manifest.json").write_text(json.dumps(man))
    assert any("manifest.json says num_supervised" in w for w in summarise(d)["warnings"])


@pytest.mark.parametrize("scheme", ["topk", "sampled"])
def test_the_chunked_head_writes_the_same_bytes(tmp_path, target, scheme, monkeypatch):
    """hf_target_fn's chunked head (no N x V logits) writes byte for byte the dense logits' cache,
    also when a batch spans several chunks (the encoders' chunk size shrunk to 7 rows)."""
    from adaspec_dist.sparse import target as sparse_target

    for name in ("topk_targets", "sampled_targets"):
        fn = getattr(sparse_target, name)
        monkeypatch.setattr("adaspec_dist.cache.produce." + name,
                            lambda *a, _fn=fn, **kw: _fn(*a, **kw, max_elems=7 * V))
    spec = JobSpec(scheme=scheme, top_k=8, draws=12, batch_size=5, shard_size=6, value_dtype="fp16", vocab_size=V,
                   extra={"tokenizer_fingerprint": "tok-A", "split": "train"})
    calls = []
    handle = target.get_output_embeddings().register_forward_hook(lambda m, a, out: calls.append(out.shape))
    snaps = {}
    for chunked in (False, True):
        calls.clear()
        out = tmp_path / f"c{chunked}"
        fn = hf_target_fn(target, scheme=scheme, top_k=8, draws=12, chunked=chunked)
        write_cache(make_sequences(13), fn, spec, out, tensorboard_dir=str(tmp_path / f"tb{chunked}"))
        snaps[chunked] = snapshot(out)
        if chunked:  # rows of at most 7, and the forward's own head saw zero positions
            assert max(s[0] for s in calls if len(s) == 2) <= 7 and all(s[1] == 0 for s in calls if len(s) == 3)
    handle.remove()
    snaps = {k: {n: b for n, b in v.items() if not n.endswith(".lock")} for k, v in snaps.items()}
    assert snaps[True].keys() == snaps[False].keys() and len(snaps[True]) > 3
    for name in snaps[True]:
        assert snaps[True][name] == snaps[False][name], name
