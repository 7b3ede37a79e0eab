"""Does AdaSPEC's token *selection itself* raise acceptance once the draft is converged?

Question
--------
docs/demo-research.md found that at equal optimiser steps AdaSPEC never beat plain KD
(DistillSpec), but its drafts were still learning (not capacity-limited). Here every draft is
trained to a plateau of its held-out KL, in a regime where the draft is far too small to follow
the target, and three arms start from the same weights and get the SAME number of optimiser steps:

* ``distillspec``       forward KL(p_target || q_draft) on all supervised tokens, batch B = 16
                        (mean over the step's tokens). This converged model is also AdaSPEC's
                        reference.
* ``adaspec``           batch B/k; per-token ΔL = L_draft - L_ref against the converged
                        distillspec draft of the same size and seed (L_ref precomputed once on
                        every train position, like the cache's reference column); the package's
                        ``objective`` keeps the tokens its ``selection.rule`` picks (``--rule``,
                        default the published quantile rule) and normalises as
                        ``--normalization-scope`` says (default per_rank: each of the 8 emulated
                        devices divides its kept sum by its own supervised tokens). Scope
                        ``local``: one threshold per 1/8 of the step's sequences
                        (``selection.threshold_group``: the published 8-GPU runs, 40 / 8 = 5 sequences per
                        device); ``global``: one threshold over the whole step.
* ``distillspec_wide``  compute control: forward KL on all tokens at batch B/k.

Acceptance α = mean over held-out answer tokens of Σ_x min(p, q) (teacher-forced, ``dense_alpha``).

Setting
-------
* Corpus: embedded ``stdlib_code`` (docstring -> code of Python stdlib functions; split by
  module, so held-out modules are unseen): 4537 train / 414 test sequences. Sentencepiece BPE
  with 1024 pieces trained on the train split (``train_sentencepiece``); ``tokenize_examples``
  with max_length 128 (prompt masked): 369k / 36k supervised tokens.
* Target: HF Llama 4 layers x 128 (~1.0M parameters), cross-entropy on the answers, 800 steps
  of 16 sequences (held-out CE 2.88 nats/token). Its log-probabilities at every supervised
  train/test position are computed once (full vocabulary, fp16) and reused by every draft.
* Drafts: HF Llama (``build_preset``), 1 layer, hidden 8 / 16 / 32 (17k / 36k / 78k parameters,
  mostly the 1024-row embedding and head); 3 seeds for h8, 1 for the others.
* Shared initialisation (the "pretrained small LM" that both DistillSpec and AdaSPEC start
  from in the paper): per (size, seed), 4000 cross-entropy steps on the train answers (batch 16,
  lr 0.1). From random weights the drafts did not plateau within an affordable number of KD
  steps (see docs/selection-effect.md, calibration).
* Arms: AdamW (no weight decay), peak lr 0.03, the package's schedule (``lr_lambda``: 5 % linear
  warm-up then cosine to 10 % of the peak), grad-norm clip 1.0, fp32, one thread; 1000 steps
  (h32 also 2000). Batches: the package's ``TokenStream`` / ``collate``; every loss (target and
  initialisation CE included) is the package's ``token_losses`` + ``objective``, so this measures
  the shipped code (tests/unit/test_benchmarks_use_the_package.py keeps it so).
* The recorded results (benchmarks/results/selection_effect.json, docs/selection-effect.md) predate
  that: they came from an in-script copy with the ``exact_k`` rule, one denominator per step and
  its own batch order; a rerun now gives different (not comparable run-for-run) numbers.
* Plateau: held-out KL is evaluated at 9 evenly spaced points; a run has plateaued when the
  relative improvement of held-out KL over its last quarter of steps, (KL@0.75S - KL@S) / KL@0.75S,
  is < 1 %. The JSON records the value and the verdict for every run.
* Control ``random_k`` (h8, 3 seeds): AdaSPEC's batch, kept count and loss scale, but the kept
  tokens drawn uniformly at random instead of by ΔL: separates the criterion from "k of the
  tokens of B/k sequences".
* Extra settings (what the method's logic suggests when selection does not win), on h8 seed 0
  unless stated: global scope; k = 0.2 and 0.6 (each with its own distillspec_wide control);
  a larger capacity gap (h4 draft); h32 with twice the steps. Every setting is in the JSON.
* Breakdown: for h8 seed 0, held-out α of each arm per quintile of the reference's own
  per-token KL (easy -> hard tokens for this draft).

Run
---
    nice -n 10 python benchmarks/selection_effect.py --smoke    # ~20 s: every code path, writes no results
    nice -n 10 python benchmarks/selection_effect.py --quick    # ~3 min: plumbing and sizing, not the result
    nice -n 10 python benchmarks/selection_effect.py            # ~50 min of one idle core (91 min wall on 2 shared cores)
    python benchmarks/selection_effect.py --report              # table + plot again from the JSON

Trained targets, shared initialisations, draft checkpoints and per-run results are cached under
``runs/selection_effect/`` (``--work``), so a rerun after a crash resumes where it stopped.
Writes benchmarks/results/selection_effect.json and benchmarks/results/selection_effect.png
(``--quick`` writes selection_effect_quick.* instead). Not part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from results_io import RESULTS, write_result  # noqa: E402
from adaspec_dist.data.embedded import generate  # noqa: E402
from adaspec_dist.data.tasks import Example  # noqa: E402
from adaspec_dist.data.tokenize import supervised_count, tokenize_examples  # noqa: E402
from adaspec_dist.data.tokenizer import train_sentencepiece  # noqa: E402
from adaspec_dist.sparse.divergence import dense_alpha  # noqa: E402
from adaspec_dist.distill import objectives as obj  # noqa: E402
from adaspec_dist.distill.batches import TokenStream, collate  # noqa: E402
from adaspec_dist.distill.engine import EngineConfig, lr_lambda  # noqa: E402
from adaspec_dist.distill.selection import threshold_groups  # noqa: E402
from adaspec_dist.models.load import build_preset  # noqa: E402

VOCAB, MAX_LEN, CORPUS = 1024, 128, "stdlib_code"
TARGET = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
          "intermediate_size": 344}
RANKS = 8  # local scope: one threshold per 1/8 of the step, as the published 8-GPU runs (40 / 8 = 5 sequences)
PLATEAU_REL = 0.01


def draft_arch(h: int) -> dict:
    return {"hidden_size": h, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "intermediate_size": 3 * h}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- data

def build_data(work: Path, limit: tuple[int, int] | None = None) -> dict:
    """Tokenizer + tokenized train/test examples (prompt masked) and, per split, the offsets of each
    sequence's supervised positions in the concatenation of all of them (``rows_of``). ``limit``:
    (train, test) sequences to keep (the smoke run)."""
    tr, te = generate(CORPUS, split="train", seed=0), generate(CORPUS, split="test", seed=0)
    if limit is not None:
        tr, te = tr[:limit[0]], te[:limit[1]]
    tok_dir = work / "tokenizer"
    if (tok_dir / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(tok_dir))
    else:
        tok = train_sentencepiece([p + a for p, a in tr], VOCAB, tok_dir, seed=0)
    out = {"vocab": len(tok)}
    for split, pairs in (("train", tr), ("test", te)):
        seqs = tokenize_examples([Example(prompt=p, answer=a) for p, a in pairs], tok, max_length=MAX_LEN)
        # Supervised positions per sequence, as ``collate`` marks them.
        count = torch.tensor([supervised_count(s) for s in seqs])
        off = torch.zeros(len(seqs) + 1, dtype=torch.long)
        off[1:] = count.cumsum(0)
        out[split] = {"examples": seqs, "off": off, "n": len(seqs)}
    return out


def rows_of(split: dict, idx: torch.Tensor) -> torch.Tensor:
    """Indices into the concatenated supervised positions of the sequences ``idx`` (in order)."""
    off = split["off"]
    return torch.cat([torch.arange(int(off[i]), int(off[i + 1])) for i in idx.tolist()])


def batch_of(split: dict, idx: torch.Tensor):
    """The package's batch (``collate``) of sequences ``idx``; supervised rows come row-major,
    i.e. in the order of ``rows_of(split, idx)``."""
    return collate([split["examples"][i] for i in idx.tolist()])


def chunks(split: dict, size: int):
    """(idx, batch) over the whole split in order, ``size`` sequences at a time."""
    for a in range(0, split["n"], size):
        idx = torch.arange(a, min(a + size, split["n"]))
        yield idx, batch_of(split, idx)


def batches(split: dict, batch_size: int, seed: int):
    """Endless training batches: the package's ``TokenStream`` (one process), epoch after epoch."""
    stream = TokenStream(split["examples"], batch_size=batch_size, seed=seed)
    epoch = 0
    while True:
        stream.set_epoch(epoch)
        yield from stream
        epoch += 1


def optimiser(model, lr: float, steps: int, weight_decay: float = 0.0):
    """AdamW + the package's lr schedule (``lr_lambda``: 5 % linear warm-up, cosine to 10 %)."""
    cfg = EngineConfig(lr=lr, schedule="cosine", warmup_steps=max(1, int(0.05 * steps)), min_lr_ratio=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, steps))


def step_optimiser(model, opt, sched) -> None:
    """Clip, step and advance the schedule after the caller's backward()."""
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def sft_steps(model, split: dict, steps: int, lr: float, seed: int, every: int = 0, on_eval=None) -> None:
    """``steps`` cross-entropy steps at batch 16 through the package's sft objective."""
    opt, sched = optimiser(model, lr, steps)
    stream = batches(split, 16, seed)
    model.train()
    for step in range(steps):
        batch = next(stream)
        logits = obj.supervised_logits(model, batch)
        loss, _ = obj.objective("sft", obj.token_losses("sft", logits, batch))
        loss.backward()
        step_optimiser(model, opt, sched)
        if on_eval is not None and ((step + 1) % every == 0 or step + 1 == steps):
            on_eval(step + 1, float(loss.detach()))
            model.train()


# ----------------------------------------------------------------------------- target

def train_target(work: Path, data: dict, steps: int, lr: float) -> dict:
    path = work / f"target_s{steps}.pt"
    model = build_preset("demo-target", data["vocab"], seed=1, **TARGET)
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        model.load_state_dict(torch.load(path))
        return {"model": model.eval(), **json.loads(meta_path.read_text())}
    curve, t0 = [], time.time()

    def on_eval(step: int, train_ce: float) -> None:
        ce = heldout_ce(model, data["test"])
        curve.append([step, round(ce, 4)])
        log(f"target step {step}/{steps}: train CE {train_ce:.3f}, held-out CE {ce:.4f}")

    sft_steps(model, data["train"], steps, lr, seed=12345, every=max(1, steps // 5), on_eval=on_eval)
    meta = {"steps": steps, "lr": lr, "curve_heldout_ce": curve, "heldout_ce": curve[-1][1],
            "train_seconds": round(time.time() - t0, 1), "params": sum(p.numel() for p in model.parameters())}
    torch.save(model.state_dict(), path)
    meta_path.write_text(json.dumps(meta))
    return {"model": model.eval(), **meta}


@torch.no_grad()
def heldout_ce(model, split: dict) -> float:
    model.eval()
    total, n = 0.0, 0
    for _, batch in chunks(split, 32):
        ce = obj.token_losses("sft", obj.supervised_logits(model, batch), batch).l_draft
        total, n = total + float(ce.sum()), n + ce.shape[0]
    return total / n


@torch.no_grad()
def teacher_logprobs(model, split: dict) -> torch.Tensor:
    """(N_supervised, V) fp16 log-probs of the target at every supervised position, in order."""
    return torch.cat([obj.supervised_logits(model, b).float().log_softmax(-1).half() for _, b in chunks(split, 32)])


# ----------------------------------------------------------------------------- drafts

@torch.no_grad()
def evaluate(model, split: dict, teacher: torch.Tensor) -> dict:
    """Held-out mean forward KL, α and CE over all supervised test positions."""
    model.eval()
    kl = al = ce = 0.0
    n = 0
    for idx, batch in chunks(split, 64):
        lg = obj.supervised_logits(model, batch)
        tl = teacher[rows_of(split, idx)].float()
        kl += float(obj.token_losses("kd", lg, batch, target_NV=tl).l_draft.sum())
        al += float(dense_alpha(lg, tl).sum())
        ce += float(obj.token_losses("sft", lg, batch).l_draft.sum())
        n += lg.shape[0]
    model.train()
    return {"kl": kl / n, "alpha": al / n, "ce": ce / n}


@torch.no_grad()
def reference_losses(model, split: dict, teacher: torch.Tensor) -> torch.Tensor:
    """L_ref: the reference's forward KL at every supervised train position, (N,) fp32 (the
    stand-in for the cache's reference column)."""
    model.eval()
    return torch.cat([obj.token_losses("kd", obj.supervised_logits(model, b), b,
                                       target_NV=teacher[rows_of(split, idx)].float()).l_draft
                      for idx, b in chunks(split, 64)])


def pretrain_draft(work: Path, data: dict, h: int, seed: int, steps: int, lr: float) -> tuple[dict, dict]:
    """The shared initialisation of every arm of (h, seed): the preset's seeded random weights
    trained with cross-entropy on the train answers (ground truth, no teacher) for ``steps`` at
    batch 16 -- the stand-in for the pretrained small LM that AdaSPEC and DistillSpec start from.
    Cached; returns (state_dict, info)."""
    path = work / "pretrain" / f"h{h}_s{seed}_n{steps}_lr{lr:g}.pt"
    model = build_preset("demo-draft", data["vocab"], seed=seed, **draft_arch(h))
    if steps == 0:
        return model.state_dict(), {"steps": 0}
    if path.exists() and path.with_suffix(".json").exists():
        return torch.load(path), json.loads(path.with_suffix(".json").read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sft_steps(model, data["train"], steps, lr, seed=5000 + seed)
    info = {"steps": steps, "lr": lr, "heldout_ce": round(heldout_ce(model, data["test"]), 4),
            "seconds": round(time.time() - t0, 1)}
    torch.save(model.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps(info))
    log(f"pretrained draft h{h} seed {seed}: held-out CE {info['heldout_ce']:.4f} in {info['seconds']:.0f} s")
    return model.state_dict(), info


def train_draft(spec: dict, data: dict, teach: dict, ref_kl: torch.Tensor | None, ckpt: Path | None,
                init: dict | None = None) -> tuple[dict, object]:
    """One run. spec: arm, h, seed, steps, batch, lr, k, scope, rule, norm; ``init``: the shared
    start weights. Every arm's loss is the package's ``objective``: per-token forward KL
    (``token_losses``), AdaSPEC's selection (``select_tokens`` inside it) and its normalisation.
    Local scope: one threshold per 1/8 of the step's sequences (``selection.threshold_group``), as the
    published 8-GPU runs; ``norm`` per_rank divides each of those 8 groups by its own tokens
    (every arm, so DistillSpec at B = 16 is 8 devices x 2 sequences)."""
    tr, te = data["train"], data["test"]
    model = build_preset("demo-draft", data["vocab"], seed=spec["seed"], **draft_arch(spec["h"])).train()
    if init is not None:
        model.load_state_dict(init)
    opt, sched = optimiser(model, spec["lr"], spec["steps"])
    stream = batches(tr, spec["batch"], 1000 + spec["seed"])
    rng = torch.Generator().manual_seed(777 + spec["seed"])
    steps, evals = spec["steps"], sorted({round(spec["steps"] * i / 8) for i in range(9)})
    per_device = math.ceil(spec["batch"] / RANKS)
    scope = spec.get("scope") or "local"
    curve, t0 = [], time.time()
    kept_frac = []
    for step in range(steps + 1):
        if step in evals:
            m = evaluate(model, te, teach["test"])
            curve.append({"step": step, **{k: round(v, 5) for k, v in m.items()}})
        if step == steps:
            break
        batch = next(stream)
        rows = rows_of(tr, batch.seq_ids)
        lg = obj.supervised_logits(model, batch)
        losses = obj.token_losses("kd", lg, batch, target_NV=teach["train"][rows].float())
        groups = threshold_groups(batch.loss_mask, per_device) if scope == "local" else None
        common = dict(normalization_scope=spec["norm"], groups_N=groups)
        if spec["arm"] in ("adaspec", "random_k"):
            if spec["arm"] == "random_k":
                # control: ΔL := U(0, 1) per token, so the same rule keeps the same count at the
                # same loss scale, but the tokens are random.
                l_ref = losses.l_draft.detach() - torch.rand(losses.l_draft.shape[0], generator=rng)
            else:
                l_ref = ref_kl[rows]
            loss, stats = obj.objective("adaspec", obj.TokenLosses(losses.l_draft, l_ref), fraction=spec["k"],
                                        scope=scope, rule=spec["rule"], **common)
            kept_frac.append(stats["kept"] / max(1, stats["tokens"]))
        else:
            loss, _ = obj.objective("kd", losses, **common)
        loss.backward()
        step_optimiser(model, opt, sched)
    q = next(c for c in curve if c["step"] == round(0.75 * steps))
    rel = (q["kl"] - curve[-1]["kl"]) / q["kl"]
    if ckpt is not None:
        torch.save(model.state_dict(), ckpt)
    res = {**spec, "final": curve[-1], "curve": curve, "plateau_rel_improvement_last_quarter": round(rel, 5),
           "plateaued": bool(rel < PLATEAU_REL), "seconds": round(time.time() - t0, 1),
           "params": sum(p.numel() for p in model.parameters())}
    if kept_frac:
        res["mean_kept_fraction"] = round(sum(kept_frac) / len(kept_frac), 4)
    return res, model


# ----------------------------------------------------------------------------- experiment plan

def plan(quick: bool, smoke: bool = False) -> list[dict]:
    """Groups of (size, seed, settings), main experiment first. Each group trains (or reuses) its
    distillspec reference first; every (k, scope) setting adds an adaspec run and, for local scope,
    the distillspec_wide control at the same batch B/k."""
    if smoke:  # every code path once: local and global selection, the random control
        return [{"h": 8, "seed": 0, "settings": [(0.4, "local"), (0.4, "global")], "random": [0.4], "part": "smoke"}]
    if quick:
        return [{"h": 8, "seed": 0, "settings": [(0.4, "local")], "part": "quick"}]
    # random_k: AdaSPEC's batch, kept count and loss scale with the kept tokens drawn at random
    # (isolates the ΔL criterion from "a few tokens from each of more sequences").
    groups = [{"h": 8, "seed": sd, "settings": [(0.4, "local")], "random": [0.4], "part": "main"} for sd in (0, 1, 2)]
    groups += [{"h": h, "seed": 0, "settings": [(0.4, "local")], "part": "main"} for h in (16, 32)]
    # What the method's own logic suggests when selection does not win (smallest draft, seed 0):
    # another kept fraction, one threshold over the whole step, a larger capacity gap.
    groups.append({"h": 8, "seed": 0, "settings": [(0.4, "global"), (0.2, "local"), (0.6, "local")],
                   "part": "extra"})
    groups.append({"h": 4, "seed": 0, "settings": [(0.4, "local")], "part": "extra"})
    # The 1000-step h32 reference did not meet the plateau criterion (2.3 % in its last quarter):
    # the same group with twice the steps.
    groups.append({"h": 32, "seed": 0, "settings": [(0.4, "local")], "part": "extra", "steps_factor": 2})
    return groups


@torch.no_grad()
def per_position(model, split: dict, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α, forward KL) at every supervised position of ``split``, each (N,)."""
    model.eval()
    al, kl = [], []
    for idx, batch in chunks(split, 64):
        lg, tl = obj.supervised_logits(model, batch), teacher[rows_of(split, idx)].float()
        al.append(dense_alpha(lg, tl))
        kl.append(obj.token_losses("kd", lg, batch, target_NV=tl).l_draft)
    return torch.cat(al), torch.cat(kl)


def hardness_breakdown(work: Path, data, teach, common: dict, init, B: int) -> dict:
    """Where the arms differ: held-out positions split into quintiles of the reference's
    (distillspec's) own KL there -- easy (low) to hard (high) for this draft size -- with each
    arm's mean α per quintile (k = 0.4, local scope). Models come from the cache (retrained,
    deterministically, if a checkpoint is missing)."""
    te = data["test"]
    specs = {"distillspec": {**common, "arm": "distillspec", "batch": B},
             "distillspec_wide": {**common, "arm": "distillspec_wide", "batch": round(B / 0.4), "k": 0.4},
             "adaspec": {**common, "arm": "adaspec", "batch": round(B / 0.4), "k": 0.4, "scope": "local"}}
    models = {}
    _, models["distillspec"] = cached_run(work, specs["distillspec"], data, teach, init, keep_model=True)
    ref_kl = None
    if not (work / "runs" / f"{run_name(specs['adaspec'])}.pt").exists():
        ref_kl = reference_losses(models["distillspec"], data["train"], teach["train"])
    for arm in ("distillspec_wide", "adaspec"):
        _, models[arm] = cached_run(work, specs[arm], data, teach, init, ref_kl, keep_model=True)
    per = {arm: per_position(m, te, teach["test"]) for arm, m in models.items()}
    ref_kl_test = per["distillspec"][1]
    edges = torch.quantile(ref_kl_test, torch.tensor([0.2, 0.4, 0.6, 0.8]))
    bins = torch.bucketize(ref_kl_test, edges)
    out = {"bins": "quintiles of distillspec's per-token held-out KL (q1 = easiest)",
           "reference_kl_edges": [round(float(e), 4) for e in edges], "alpha": {}, "kl": {}}
    for arm, (al, kl) in per.items():
        out["alpha"][arm] = [round(float(al[bins == b].mean()), 5) for b in range(5)]
        out["kl"][arm] = [round(float(kl[bins == b].mean()), 5) for b in range(5)]
    log(f"hardness breakdown (alpha per quintile of reference KL): {out['alpha']}")
    return out


def run_name(spec: dict) -> str:
    base = (f"{spec['arm']}_h{spec['h']}_s{spec['seed']}_p{spec['pretrain_steps']}_n{spec['steps']}"
            f"_b{spec['batch']}_lr{spec['lr']:g}")
    base += f"_{spec['norm']}"
    return base + (f"_k{spec['k']:g}_{spec['scope']}_{spec['rule']}" if spec["arm"] in ("adaspec", "random_k") else "")


def cached_run(work: Path, spec: dict, data, teach, init, ref_kl=None, keep_model=False):
    name = run_name(spec)
    js, pt = work / "runs" / f"{name}.json", work / "runs" / f"{name}.pt"
    if js.exists() and (not keep_model or pt.exists()):
        res = json.loads(js.read_text())
        model = None
        if keep_model:
            model = build_preset("demo-draft", data["vocab"], seed=spec["seed"], **draft_arch(spec["h"]))
            model.load_state_dict(torch.load(pt))
        log(f"cached {name}: alpha {res['final']['alpha']:.4f}")
        return res, model
    res, model = train_draft(spec, data, teach, ref_kl, pt, init)  # every checkpoint is kept (< 1 MB)
    res["name"] = name
    js.write_text(json.dumps(res))
    log(f"{name}: held-out alpha {res['final']['alpha']:.4f} KL {res['final']['kl']:.4f} "
        f"(last-quarter KL improvement {100 * res['plateau_rel_improvement_last_quarter']:.2f} %) "
        f"in {res['seconds']:.0f} s")
    return res, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short calibration run (smallest draft, one seed)")
    ap.add_argument("--smoke", action="store_true",
                    help="plumbing check in about a minute: 300/40 sequences, a few steps, nothing written to results/")
    ap.add_argument("--rule", choices=["quantile", "exact_k"], default="quantile",
                    help="selection.rule of the package (default: the published quantile rule)")
    ap.add_argument("--normalization-scope", choices=["per_rank", "global"], default="per_rank",
                    help="the package's normalization_scope; per_rank: each of the 8 emulated devices divides "
                         "by its own tokens (published)")
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps of every arm (default 1000; quick 300)")
    ap.add_argument("--pretrain-steps", type=int, default=None,
                    help="cross-entropy steps of the shared initialisation (default 4000; quick 1000)")
    ap.add_argument("--pretrain-lr", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=16, help="B: sequences per distillspec step")
    ap.add_argument("--lr", type=float, default=0.03, help="peak lr of the three arms")
    ap.add_argument("--target-steps", type=int, default=800)
    ap.add_argument("--target-lr", type=float, default=3e-3)
    ap.add_argument("--work", default="runs/selection_effect")
    ap.add_argument("--report", action="store_true",
                    help="only re-read benchmarks/results/selection_effect.json: print the table, redraw the plot")
    args = ap.parse_args()
    if args.report:
        name = "selection_effect_quick" if args.quick else "selection_effect"
        res = json.loads((RESULTS / f"{name}.json").read_text())
        print(markdown_table(summarise(res["runs"])))
        plot(res["runs"], RESULTS / f"{name}.png")
        return
    if args.smoke:
        args.quick = True
        args.steps, args.target_steps = args.steps or 16, 10
        args.pretrain_steps = args.pretrain_steps if args.pretrain_steps is not None else 8
        args.work = args.work if args.work != "runs/selection_effect" else "runs/selection_effect_smoke"
    steps = args.steps or (300 if args.quick else 1000)
    pre_steps = args.pretrain_steps if args.pretrain_steps is not None else (1000 if args.quick else 4000)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    work = Path(args.work)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    data = build_data(work, limit=(300, 40) if args.smoke else None)
    log(f"data: {data['train']['n']} train / {data['test']['n']} test sequences, "
        f"{int(data['train']['off'][-1])} / {int(data['test']['off'][-1])} supervised tokens, vocab {data['vocab']}")
    target = train_target(work, data, args.target_steps, args.target_lr)
    log(f"target: held-out CE {target['heldout_ce']:.4f} ({target['params']} params)")
    teach = {s: teacher_logprobs(target["model"], data[s]) for s in ("train", "test")}
    p = teach["test"].float().exp()
    target_entropy = float(-(p * teach["test"].float()).sum(-1).mean())
    del p
    log(f"teacher log-probs ready ({time.time() - t_start:.0f} s)")

    B = args.batch
    results, pretrained = [], {}
    for g in plan(args.quick, args.smoke):
        init, info = pretrain_draft(work, data, g["h"], g["seed"], pre_steps, args.pretrain_lr)
        pretrained[f"h{g['h']}_s{g['seed']}"] = info
        common = {"h": g["h"], "seed": g["seed"], "steps": steps * g.get("steps_factor", 1), "lr": args.lr,
                  "pretrain_steps": pre_steps, "rule": args.rule, "norm": args.normalization_scope,
                  "part": g["part"]}
        ref, ref_model = cached_run(work, {**common, "arm": "distillspec", "batch": B}, data, teach, init,
                                    keep_model=True)
        if all(r.get("name") != ref["name"] for r in results):
            results.append(ref)
        ref_kl = reference_losses(ref_model, data["train"], teach["train"])
        for k, scope in g["settings"]:
            wide = round(B / k)
            results.append(cached_run(work, {**common, "arm": "adaspec", "batch": wide, "k": k, "scope": scope},
                                      data, teach, init, ref_kl)[0])
            if scope == "local":
                results.append(cached_run(work, {**common, "arm": "distillspec_wide", "batch": wide, "k": k},
                                          data, teach, init)[0])
        for k in g.get("random", []):
            results.append(cached_run(work, {**common, "arm": "random_k", "batch": round(B / k), "k": k,
                                             "scope": "local"}, data, teach, init)[0])
        log(f"group h{g['h']} seed {g['seed']} done ({time.time() - t_start:.0f} s)")
    breakdown = None
    if not args.quick:
        breakdown = hardness_breakdown(work, data, teach, {"h": 8, "seed": 0, "steps": steps, "lr": args.lr,
                                                           "pretrain_steps": pre_steps, "rule": args.rule,
                                                           "norm": args.normalization_scope, "part": "main"},
                                       pretrain_draft(work, data, 8, 0, pre_steps, args.pretrain_lr)[0], B)
    wall = time.time() - t_start
    compute = (target["train_seconds"] + sum(v.get("seconds", 0) for v in pretrained.values())
               + sum(r["seconds"] for r in results))
    summary = summarise(results)
    if args.smoke:  # plumbing only: nothing written to benchmarks/results
        print(markdown_table(summary))
        log(f"smoke run done ({wall:.0f} s)")
        return
    name = "selection_effect_quick" if args.quick else "selection_effect"
    out = write_result(name, {
        "question": "does AdaSPEC's token selection raise acceptance over plain KD at equal optimiser steps "
                    "once the draft is capacity-limited and converged?",
        "corpus": CORPUS, "vocab": data["vocab"], "max_length": MAX_LEN,
        "train_sequences": data["train"]["n"], "test_sequences": data["test"]["n"],
        "train_supervised_tokens": int(data["train"]["off"][-1]),
        "test_supervised_tokens": int(data["test"]["off"][-1]),
        "target": {"arch": TARGET, "steps": target["steps"], "lr": target["lr"], "params": target["params"],
                   "heldout_ce": target["heldout_ce"], "heldout_entropy": round(target_entropy, 4),
                   "curve_heldout_ce": target["curve_heldout_ce"]},
        "draft_arch": {"layers": 1, "heads": 2, "kv_heads": 1, "intermediate": "3 x hidden"},
        "shared_initialisation": {"what": "cross-entropy on the train answers (no teacher), batch 16, AdamW, "
                                          "5% warm-up + cosine to 10%", "steps": pre_steps,
                                  "lr": args.pretrain_lr, "per_draft": pretrained},
        "optimiser": {"name": "AdamW", "weight_decay": 0.0, "peak_lr": args.lr, "steps_every_arm": steps,
                      "schedule": "5% linear warm-up, cosine to 10% of peak", "grad_clip": 1.0,
                      "batch_distillspec": B, "local_selection_groups_per_step": RANKS},
        "selection": {"rule": args.rule, "normalization_scope": args.normalization_scope,
                      "implementation": "the package's token_losses / objective / select_tokens, collate + "
                                        "TokenStream batches, lr_lambda schedule"},
        "plateau_criterion": f"(KL@0.75S - KL@S)/KL@0.75S < {PLATEAU_REL} on held-out forward KL",
        "alpha": "mean over held-out supervised positions of sum_x min(p,q), teacher-forced, full vocabulary",
        "summary": summary, "hardness_breakdown_h8_seed0": breakdown, "runs": results,
        "wall_seconds_this_invocation": round(wall, 1),
        "training_seconds_total": round(compute, 1)})
    log(f"wrote {out} ({wall:.0f} s)")
    plot(results, RESULTS / f"{name}.png")
    print(markdown_table(summary))


def markdown_table(summary: list[dict]) -> str:
    """The summary as the markdown table of docs/selection-effect.md."""
    def pm(row, m, digits=4):
        v = f"{row[m]:+.{digits}f}" if m.startswith("d_") else f"{row[m]:.{digits}f}"
        return v + (f" ± {row[m + '_std']:.{digits}f}" if m + "_std" in row else "")

    lines = ["| draft h (params) | arm | k | scope | steps | batch | seeds | α | Δα vs DistillSpec | held-out KL | "
             "last-quarter KL gain | plateau |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in summary:
        gain = ", ".join(f"{100 * g:.2f} %" for g in r["last_quarter_rel_improvement"])
        lines.append(f"| {r['h']} ({r['params'] / 1000:.0f}k) | {r['arm']} | {r['k'] if r['k'] else '–'} | "
                     f"{r['scope'] or '–'} | {r['steps']} | {r['batch']} | {len(r['seeds'])} | {pm(r, 'alpha')} | "
                     f"{'–' if r['arm'] == 'distillspec' else pm(r, 'd_alpha_vs_distillspec')} | {pm(r, 'kl')} | "
                     f"{gain} | {'yes' if all(r['plateaued']) else 'NO'} |")
    return "\n".join(lines)


def hardness_table(breakdown: dict) -> str:
    """α per quintile of the reference's per-token held-out KL, with each arm's difference to DistillSpec."""
    a = breakdown["alpha"]
    lines = ["| arm | q1 | q2 | q3 | q4 | q5 |", "| --- | ---: | ---: | ---: | ---: | ---: |",
             "| distillspec | " + " | ".join(f"{v:.4f}" for v in a["distillspec"]) + " |"]
    for arm in ("adaspec", "distillspec_wide"):
        lines.append(f"| {arm} | " + " | ".join(f"{v:.4f} ({v - d:+.4f})" for v, d in zip(a[arm], a["distillspec"])) + " |")
    return "\n".join(lines)


def _ds_alpha(results: list[dict], r: dict) -> float:
    return next(x["final"]["alpha"] for x in results if x["arm"] == "distillspec" and x["h"] == r["h"]
                and x["seed"] == r["seed"] and x["steps"] == r["steps"])


def summarise(results: list[dict]) -> list[dict]:
    """Per (h, arm, k, scope): α / KL / CE and the paired Δα vs distillspec (same size and seed);
    mean, and the std over seeds only where there are >= 2 seeds."""
    groups: dict = {}
    for r in results:
        key = (r["h"], r["arm"], r.get("k"), r.get("scope"), r["steps"])
        groups.setdefault(key, []).append(r)
    rows = []
    order = {"distillspec": 0, "distillspec_wide": 1, "random_k": 2, "adaspec": 3}
    for (h, arm, k, scope, steps), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][4], order[kv[0][1]],
                                                                                 kv[0][2] or 0, kv[0][3] or "")):
        row = {"h": h, "params": rs[0]["params"], "arm": arm, "k": k, "scope": scope, "steps": steps,
               "batch": rs[0]["batch"], "seeds": [r["seed"] for r in rs], "plateaued": [r["plateaued"] for r in rs],
               "last_quarter_rel_improvement": [r["plateau_rel_improvement_last_quarter"] for r in rs]}
        per = {"alpha": [r["final"]["alpha"] for r in rs], "kl": [r["final"]["kl"] for r in rs],
               "ce": [r["final"]["ce"] for r in rs],
               "d_alpha_vs_distillspec": [r["final"]["alpha"] - _ds_alpha(results, r) for r in rs]}
        for m, vals in per.items():
            t = torch.tensor(vals, dtype=torch.float64)
            row[m] = round(float(t.mean()), 5)
            row[f"{m}_per_seed"] = [round(v, 5) for v in vals]
            if len(vals) > 1:
                row[f"{m}_std"] = round(float(t.std()), 5)
        rows.append(row)
    return rows


def plot(results: list[dict], path: Path) -> None:
    """Left: α vs draft size per arm (line = mean over seeds, dots = seeds). Right: the paired
    difference α(arm) − α(distillspec, same size and seed), with the extra settings."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [("distillspec", None, None, "DistillSpec, batch B", "C0", "o"),
            ("distillspec_wide", 0.4, None, "DistillSpec wide, batch B/k (k=0.4)", "C2", "s"),
            ("adaspec", 0.4, "local", "AdaSPEC k=0.4 local, batch B/k", "C3", "^"),
            ("random_k", 0.4, "local", "random 40 % of tokens, batch B/k (control)", "C7", "x"),
            ("adaspec", 0.4, "global", "AdaSPEC k=0.4 global", "C1", "v"),
            ("adaspec", 0.2, "local", "AdaSPEC k=0.2 local", "C4", "<"),
            ("distillspec_wide", 0.2, None, "DistillSpec wide, batch B/0.2", "C8", "D"),
            ("adaspec", 0.6, "local", "AdaSPEC k=0.6 local", "C5", ">"),
            ("distillspec_wide", 0.6, None, "DistillSpec wide, batch B/0.6", "C9", "P")]
    # Per size, the longest runs only (h32 was rerun with twice the steps to reach its plateau).
    longest = {h: max(r["steps"] for r in results if r["h"] == h) for h in {r["h"] for r in results}}
    results = [r for r in results if r["steps"] == longest[r["h"]]]
    hs = sorted(longest)
    from matplotlib.lines import Line2D

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5.6))
    handles = []
    for j, (arm, k, scope, label, col, mk) in enumerate(arms):
        sel = [r for r in results if r["arm"] == arm and (k is None or r.get("k") == k)
               and (scope is None or r.get("scope") == scope)]
        if not sel:
            continue
        xs, means, dxs, dmeans, ok = [], [], [], [], []
        for h in hs:
            rs = [r for r in sel if r["h"] == h]
            if not rs:
                continue
            x = h * 2 ** (0.045 * (j - 4))
            vals = [r["final"]["alpha"] for r in rs]
            dvals = [r["final"]["alpha"] - _ds_alpha(results, r) for r in rs]
            face = [col if r["plateaued"] else "none" for r in rs]  # hollow: missed the plateau criterion
            if j < 3:
                ax.scatter([x] * len(vals), vals, facecolors=face, edgecolors=col, marker=mk, s=16, alpha=0.5)
                xs.append(x)
                means.append(sum(vals) / len(vals))
            bx.scatter([x] * len(dvals), dvals, facecolors=face, edgecolors=col, marker=mk, s=16, alpha=0.5)
            dxs.append(x)
            dmeans.append(sum(dvals) / len(dvals))
            ok.append(all(r["plateaued"] for r in rs))
        faces = [col if o else "none" for o in ok]
        if xs:
            ax.plot(xs, means, color=col, lw=1.2)
            ax.scatter(xs, means, facecolors=faces, edgecolors=col, marker=mk, s=40, zorder=3)
        if len(dxs) > 1:
            bx.plot(dxs, dmeans, color=col, lw=1.2)
        bx.scatter(dxs, dmeans, facecolors=faces, edgecolors=col, marker=mk, s=40, zorder=3)
        handles.append(Line2D([], [], color=col, marker=mk, label=label, lw=1.2 if len(dxs) > 1 else 0))
    handles.append(Line2D([], [], color="grey", marker="o", markerfacecolor="none", lw=0,
                          label="hollow: run(s) missed the plateau criterion"))
    for a in (ax, bx):
        a.set_xscale("log", base=2)
        a.set_xticks(hs, [str(h) for h in hs])
        a.minorticks_off()
        a.set_xlabel("draft hidden size (1-layer Llama; log scale)")
        a.grid(alpha=0.3)
    ax.set_ylabel("held-out acceptance α (teacher-forced)")
    ax.set_title("α per arm (big marker: mean over seeds; small: seeds)", fontsize=10)
    bx.axhline(0.0, color="k", lw=0.8)
    bx.set_ylabel("α(arm) − α(DistillSpec), same size and seed")
    bx.set_title("paired difference vs DistillSpec (equal optimiser steps)", fontsize=10)
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7.5, frameon=False)
    fig.suptitle("stdlib_code; optimiser steps per arm: " + ", ".join(f"h{h}: {longest[h]}" for h in hs)
                 + "; h4, h16, h32 one seed, h8 three", fontsize=10)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=120)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
