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
                        every train position); only the top-k fraction by ΔL is kept
                        (``select_tokens``); loss = sum of kept L_draft / number of supervised
                        tokens of the step (the published scale). Scope ``local``: one threshold
                        per 1/8 of the step's sequences (the published 8-GPU runs: 40 / 8 = 5
                        sequences per device); ``global``: one threshold over the whole step.
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
* Arms: AdamW (no weight decay), peak lr 0.03, 5 % linear warm-up then cosine to 10 % of the
  peak, grad-norm clip 1.0, fp32, one thread; 1000 steps (h32 also 2000).
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
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from results_io import RESULTS, write_result  # noqa: E402
from adaspec_dist.data.embedded import generate  # noqa: E402
from adaspec_dist.data.tokenize import tokenize_examples  # noqa: E402
from adaspec_dist.data.tokenizer import train_sentencepiece  # noqa: E402
from adaspec_dist.sparse.divergence import dense_alpha, dense_divergence  # noqa: E402
from adaspec_dist.distill.selection import select_tokens  # noqa: E402
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

def build_data(work: Path) -> dict:
    """Tokenizer + padded train/test tensors (ids, mask of supervised positions, next-token targets)."""
    tr, te = generate(CORPUS, split="train", seed=0), generate(CORPUS, split="test", seed=0)
    tok_dir = work / "tokenizer"
    if (tok_dir / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(tok_dir))
    else:
        tok = train_sentencepiece([p + a for p, a in tr], VOCAB, tok_dir, seed=0)
    out = {"vocab": len(tok)}
    for split, pairs in (("train", tr), ("test", te)):
        seqs = tokenize_examples([SimpleNamespace(prompt=p, answer=a) for p, a in pairs], tok, max_length=MAX_LEN)
        n = len(seqs)
        ids = torch.zeros(n, MAX_LEN, dtype=torch.long)          # right padding with pad id 0
        mask = torch.zeros(n, MAX_LEN, dtype=torch.bool)         # position t predicts token t+1
        for b, s in enumerate(seqs):
            ids[b, :len(s.input_ids)] = torch.tensor(s.input_ids)
            mask[b, :len(s.labels) - 1] = torch.tensor(s.labels[1:]) != -100
        tgt = torch.roll(ids, -1, dims=1)
        count = mask.sum(1)
        off = torch.zeros(n + 1, dtype=torch.long)
        off[1:] = count.cumsum(0)
        out[split] = {"ids": ids, "mask": mask, "tgt": tgt, "off": off, "n": n}
    return out


def rows_of(split: dict, idx: torch.Tensor) -> torch.Tensor:
    """Indices into the concatenated supervised positions of the sequences ``idx`` (in order)."""
    off = split["off"]
    return torch.cat([torch.arange(int(off[i]), int(off[i + 1])) for i in idx.tolist()])


def logits_at(model, split: dict, idx: torch.Tensor) -> torch.Tensor:
    """Logits at the supervised positions of sequences ``idx``: (N, V), row-major order.

    No attention mask: padding is on the right and attention is causal, so it never reaches a
    real position (and the sdpa causal path is faster)."""
    ids = split["ids"][idx]
    width = int(split["mask"][idx].any(0).nonzero().max()) + 1   # trim common right padding
    hidden = model.model(input_ids=ids[:, :width]).last_hidden_state
    return model.lm_head(hidden[split["mask"][idx][:, :width]])


# ----------------------------------------------------------------------------- schedule / batches

def lr_at(step: int, steps: int, peak: float) -> float:
    warm = max(1, int(0.05 * steps))
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


class Stream:
    """Seeded epochs of shuffled sequence indices; ``take(n)`` returns the next n."""

    def __init__(self, n: int, seed: int):
        self.n, self.gen, self.buf = n, torch.Generator().manual_seed(seed), torch.empty(0, dtype=torch.long)

    def take(self, k: int) -> torch.Tensor:
        while len(self.buf) < k:
            self.buf = torch.cat([self.buf, torch.randperm(self.n, generator=self.gen)])
        out, self.buf = self.buf[:k], self.buf[k:]
        return out


# ----------------------------------------------------------------------------- target

def train_target(work: Path, data: dict, steps: int, lr: float) -> dict:
    path = work / f"target_s{steps}.pt"
    model = build_preset("demo-target", data["vocab"], seed=1, **TARGET)
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        model.load_state_dict(torch.load(path))
        return {"model": model.eval(), **json.loads(meta_path.read_text())}
    tr, te = data["train"], data["test"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    stream, curve, t0 = Stream(tr["n"], 12345), [], time.time()
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr)
        idx = stream.take(16)
        logits = logits_at(model, tr, idx)
        loss = torch.nn.functional.cross_entropy(logits, tr["tgt"][idx][tr["mask"][idx]])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % max(1, steps // 5) == 0 or step + 1 == steps:
            ce = heldout_ce(model, te)
            curve.append([step + 1, round(ce, 4)])
            log(f"target step {step + 1}/{steps}: train CE {loss.item():.3f}, held-out CE {ce:.4f}")
            model.train()
    meta = {"steps": steps, "lr": lr, "curve_heldout_ce": curve, "heldout_ce": curve[-1][1],
            "train_seconds": round(time.time() - t0, 1), "params": sum(p.numel() for p in model.parameters())}
    torch.save(model.state_dict(), path)
    meta_path.write_text(json.dumps(meta))
    return {"model": model.eval(), **meta}


@torch.no_grad()
def heldout_ce(model, split: dict) -> float:
    model.eval()
    total, n = 0.0, 0
    for a in range(0, split["n"], 32):
        idx = torch.arange(a, min(a + 32, split["n"]))
        lg = logits_at(model, split, idx)
        total += float(torch.nn.functional.cross_entropy(lg, split["tgt"][idx][split["mask"][idx]], reduction="sum"))
        n += lg.shape[0]
    return total / n


@torch.no_grad()
def teacher_logprobs(model, split: dict) -> torch.Tensor:
    """(N_supervised, V) fp16 log-probs of the target at every supervised position, in order."""
    out = []
    for a in range(0, split["n"], 32):
        idx = torch.arange(a, min(a + 32, split["n"]))
        out.append(logits_at(model, split, idx).float().log_softmax(-1).half())
    return torch.cat(out)


# ----------------------------------------------------------------------------- drafts

@torch.no_grad()
def evaluate(model, split: dict, teacher: torch.Tensor) -> dict:
    """Held-out mean forward KL, α and CE over all supervised test positions."""
    model.eval()
    kl = al = ce = 0.0
    n = 0
    for a in range(0, split["n"], 64):
        idx = torch.arange(a, min(a + 64, split["n"]))
        lg = logits_at(model, split, idx)
        tl = teacher[rows_of(split, idx)].float()
        kl += float(dense_divergence(lg, tl, "fkl").sum())
        al += float(dense_alpha(lg, tl).sum())
        ce += float(torch.nn.functional.cross_entropy(lg, split["tgt"][idx][split["mask"][idx]], reduction="sum"))
        n += lg.shape[0]
    model.train()
    return {"kl": kl / n, "alpha": al / n, "ce": ce / n}


@torch.no_grad()
def per_token_kl(model, split: dict, teacher: torch.Tensor) -> torch.Tensor:
    """L_ref: the reference's forward KL at every supervised train position, (N,) fp32."""
    model.eval()
    out = []
    for a in range(0, split["n"], 64):
        idx = torch.arange(a, min(a + 64, split["n"]))
        out.append(dense_divergence(logits_at(model, split, idx), teacher[rows_of(split, idx)].float(), "fkl"))
    return torch.cat(out)


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
    tr, te = data["train"], data["test"]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    stream, t0 = Stream(tr["n"], 5000 + seed), time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr)
        idx = stream.take(16)
        loss = torch.nn.functional.cross_entropy(logits_at(model, tr, idx), tr["tgt"][idx][tr["mask"][idx]])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    info = {"steps": steps, "lr": lr, "heldout_ce": round(heldout_ce(model, te), 4),
            "seconds": round(time.time() - t0, 1)}
    torch.save(model.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps(info))
    log(f"pretrained draft h{h} seed {seed}: held-out CE {info['heldout_ce']:.4f} in {info['seconds']:.0f} s")
    return model.state_dict(), info


def train_draft(spec: dict, data: dict, teach: dict, ref_kl: torch.Tensor | None, ckpt: Path | None,
                init: dict | None = None) -> tuple[dict, object]:
    """One run. spec: arm, h, seed, steps, batch, lr, k, scope; ``init``: the shared start weights."""
    tr, te = data["train"], data["test"]
    model = build_preset("demo-draft", data["vocab"], seed=spec["seed"], **draft_arch(spec["h"])).train()
    if init is not None:
        model.load_state_dict(init)
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=0.0)
    stream = Stream(tr["n"], 1000 + spec["seed"])
    rng = torch.Generator().manual_seed(777 + spec["seed"])
    steps, evals = spec["steps"], sorted({round(spec["steps"] * i / 8) for i in range(9)})
    curve, t0 = [], time.time()
    kept_frac = []
    for step in range(steps + 1):
        if step in evals:
            m = evaluate(model, te, teach["test"])
            curve.append({"step": step, **{k: round(v, 5) for k, v in m.items()}})
        if step == steps:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, spec["lr"])
        idx = stream.take(spec["batch"])
        rows = rows_of(tr, idx)
        lg = logits_at(model, tr, idx)
        l_draft = dense_divergence(lg, teach["train"][rows].float(), "fkl")
        if spec["arm"] in ("adaspec", "random_k"):
            if spec["arm"] == "random_k":  # control: the same count and loss scale, tokens drawn at random
                delta = torch.rand(l_draft.shape[0], generator=rng)
            else:
                delta = l_draft.detach() - ref_kl[rows]
            if spec["scope"] == "global":
                keep = select_tokens(delta, spec["k"], "global").keep_N
            else:  # one threshold per micro-batch: the step's sequences split over RANKS "devices"
                cnt = [int(c.sum()) for c in torch.tensor_split(tr["mask"][idx].sum(1), RANKS)]
                keep = torch.cat([select_tokens(d, spec["k"], "local").keep_N for d in torch.split(delta, cnt)])
            loss = l_draft[keep].sum() / l_draft.shape[0]
            kept_frac.append(float(keep.float().mean()))
        else:
            loss = l_draft.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
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

def plan(quick: bool) -> list[dict]:
    """Groups of (size, seed, settings), main experiment first. Each group trains (or reuses) its
    distillspec reference first; every (k, scope) setting adds an adaspec run and, for local scope,
    the distillspec_wide control at the same batch B/k."""
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
    for a in range(0, split["n"], 64):
        idx = torch.arange(a, min(a + 64, split["n"]))
        lg, tl = logits_at(model, split, idx), teacher[rows_of(split, idx)].float()
        al.append(dense_alpha(lg, tl))
        kl.append(dense_divergence(lg, tl, "fkl"))
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
        ref_kl = per_token_kl(models["distillspec"], data["train"], teach["train"])
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
    return base + (f"_k{spec['k']:g}_{spec['scope']}" if spec["arm"] in ("adaspec", "random_k") else "")


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
    steps = args.steps or (300 if args.quick else 1000)
    pre_steps = args.pretrain_steps if args.pretrain_steps is not None else (1000 if args.quick else 4000)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    work = Path(args.work)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    data = build_data(work)
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
    for g in plan(args.quick):
        init, info = pretrain_draft(work, data, g["h"], g["seed"], pre_steps, args.pretrain_lr)
        pretrained[f"h{g['h']}_s{g['seed']}"] = info
        common = {"h": g["h"], "seed": g["seed"], "steps": steps * g.get("steps_factor", 1), "lr": args.lr,
                  "pretrain_steps": pre_steps,
                  "part": g["part"]}
        ref, ref_model = cached_run(work, {**common, "arm": "distillspec", "batch": B}, data, teach, init,
                                    keep_model=True)
        if all(r.get("name") != ref["name"] for r in results):
            results.append(ref)
        ref_kl = per_token_kl(ref_model, data["train"], teach["train"])
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
                                                           "pretrain_steps": pre_steps, "part": "main"},
                                       pretrain_draft(work, data, 8, 0, pre_steps, args.pretrain_lr)[0], B)
    wall = time.time() - t_start
    compute = (target["train_seconds"] + sum(v.get("seconds", 0) for v in pretrained.values())
               + sum(r["seconds"] for r in results))
    summary = summarise(results)
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
