"""Claim: a draft trained from a compact cache is as good as one trained on full logits: held-out
α_logits within 0.005 of full-vocabulary online kd on every seed; and AdaSPEC's token selection
(ΔL = L_draft − L_ref) picks nearly the same tokens from the cache as from full logits.

Setup (the demo's shapes, configs/demo.yaml): the embedded ``arith`` task, the demo tokenizer
(1024 pieces), the demo target (Llama, hidden 96 x 3 layers) trained by SFT here, and the demo
draft (hidden 32 x 1 layer). Five arms train the draft with forward-KL kd (the demo's reference
stage) at the SAME optimiser steps, batch, learning rate, initial weights and batch order per seed:
  (a) full-vocabulary online logits (the target runs every step; ``dense_divergence``),
  (b) top-64 cache, (c) top-8 cache (fp16 values, format 2 = format 1 for top-k),
  (d) sampled 16 draws, (e) sampled 64 draws (format 2 compact rows: ids + counts + the row constant);
  and a control, (a') = (a) with the target's logits rounded to bf16: how far α moves when the
  training signal changes by a rounding only (the noise floor of a per-seed comparison).
Every cache is written by the cache job (``write_cache``) and read back by ``CacheReader`` exactly
as training reads it. Held-out α_logits = mean over the test split's supervised positions of
Σ_x min(p, q) on full logits (``dense_alpha``), the demo's α_logits. Seeds 0, 1, 2 (draft init and
batch order). The trainer here is a plain AdamW loop in one process (the pipeline's DeepSpeed
engine adds nothing to what is compared: the loss and its gradient), but the batches (``collate`` /
``CacheReader``), the per-token losses and the objective are the package's; steps: --steps.

Selection: with the kd reference (arm (a), seed 0) as the reference model and a draft (fresh, and
trained for a few steps), each batch's kept set (``select_tokens``, k = 0.4, local scope, the
package's default rule) from each cache's ΔL against the one from full-logit ΔL: Jaccard
|A∩B| / |A∪B|, averaged over batches. (The recorded Jaccards used the earlier ``exact_k`` rule.)

Writes benchmarks/results/cache_training_equivalence.json and .png (α vs bytes/token), and saves
the trained target and kd reference as ``WORK/{target,reference}/final`` + ``WORK/tokenizer`` (the
layout of ``runs/demo``) for ``cache_kl_error_transformer.py``.

    python benchmarks/cache_training_equivalence.py [--steps 300] [--name NAME] [--seeds 0,1,2] [--arms full,...]
    python benchmarks/cache_training_equivalence.py --replot NAME     # the PNG again from results/NAME.json
    python benchmarks/cache_training_equivalence.py --smoke           # ~1 min plumbing check, writes no results
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import RESULTS, write_result  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "1")
WORK = Path(os.environ.get("ADASPEC_BENCH_DIR", Path(tempfile.gettempdir()) / "adaspec-bench-equiv"))
TARGET = dict(hidden_size=96, num_hidden_layers=3, intermediate_size=288, num_attention_heads=4, num_key_value_heads=4)
DRAFT = dict(hidden_size=32, num_hidden_layers=1, intermediate_size=96, num_attention_heads=4, num_key_value_heads=4)
ARMS = [("full", None), ("full_bf16", None), ("top64", dict(scheme="topk", top_k=64)), ("top8", dict(scheme="topk", top_k=8)),
        ("sampled16", dict(scheme="sampled", draws=16)), ("sampled64", dict(scheme="sampled", draws=64))]
BATCH, LR = 16, 3e-3


def batch_of(seqs):
    """The package's batch (``collate``) of tokenized examples."""
    from adaspec_dist.distill.batches import collate

    return collate(seqs)


def train_target(seqs, vocab, steps):
    """SFT of the demo target through the package's sft objective (random batches of 16)."""
    import numpy as np
    import torch
    from adaspec_dist.distill import objectives as obj
    from adaspec_dist.models.load import build_preset

    model = build_preset("demo-target", vocab, seed=1, **TARGET).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    rng = np.random.default_rng(0)
    for step in range(steps):
        batch = batch_of([seqs[i] for i in rng.choice(len(seqs), BATCH, replace=False)])
        loss, _ = obj.objective("sft", obj.token_losses("sft", obj.supervised_logits(model, batch), batch))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model.eval()


def held_out_alpha(draft, target, test) -> float:
    import torch
    from adaspec_dist.distill.objectives import supervised_logits
    from adaspec_dist.sparse.divergence import dense_alpha

    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(test), 50):
            batch = batch_of(test[i:i + 50])
            a = dense_alpha(supervised_logits(draft, batch), supervised_logits(target, batch))
            total, n = total + float(a.double().sum()), n + a.numel()
    return total / n


def train_kd(arm, cache, target, vocab, seed, steps):
    """Forward-KL kd of a fresh demo draft for ``steps`` batches of the cache (seeded order): the
    package's ``token_losses("kd")`` + ``objective`` on the cache's sparse rows, or, for the full
    arms, on the target's full logits run online (the online teacher mode)."""
    import torch
    from adaspec_dist.cache.reader import CacheReader
    from adaspec_dist.distill import objectives as obj
    from adaspec_dist.models.load import build_preset

    draft = build_preset("demo-draft", vocab, seed=100 + seed, **DRAFT).train()
    opt = torch.optim.AdamW(draft.parameters(), lr=LR)
    reader = CacheReader(cache, batch_size=BATCH, seed=seed, prefetch=0, verify="none")
    step, epoch = 0, 0
    while step < steps:
        reader.set_epoch(epoch)
        for b in reader:
            if len(b) == 0 or step >= steps:
                break
            logits = obj.supervised_logits(draft, b)
            t_logits = None
            if arm.startswith("full"):
                with torch.no_grad():
                    t_logits = obj.supervised_logits(target, b)
                if arm == "full_bf16":  # the control: the same full logits, rounded as a bf16 target would give them
                    t_logits = t_logits.bfloat16().float()
            loss, _ = obj.objective("kd", obj.token_losses("kd", logits, b, target_NV=t_logits))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
        epoch += 1
    return draft.eval()


def jaccard_rows(caches, target, reference, draft, batches=12) -> dict:
    """Mean Jaccard of AdaSPEC's kept sets (k = 0.4, the package's default rule, one threshold per
    batch) from each cache vs from full logits, same batches; ΔL from the package's
    ``token_losses("adaspec")`` (cache: the reference run through the same sparse estimator)."""
    import torch
    from adaspec_dist.cache.reader import CacheReader
    from adaspec_dist.distill import objectives as obj
    from adaspec_dist.distill.selection import select_tokens

    readers = {name: CacheReader(d, batch_size=BATCH, shuffle=False, prefetch=0, verify="none")
               for name, d in caches.items()}
    out = {name: [] for name in caches}
    with torch.no_grad():
        for bi, batch_set in enumerate(zip(*readers.values())):
            if bi >= batches:
                break
            b0 = batch_set[0]
            z_d, z_r = obj.supervised_logits(draft, b0), obj.supervised_logits(reference, b0)
            z_t = obj.supervised_logits(target, b0)
            full_l = obj.token_losses("adaspec", z_d, b0, target_NV=z_t, ref_NV=z_r)
            full = select_tokens(full_l.l_draft - full_l.l_ref, 0.4).keep_N
            for name, b in zip(readers, batch_set):
                cached = obj.token_losses("adaspec", z_d, b, ref_NV=z_r)
                keep = select_tokens(cached.l_draft - cached.l_ref, 0.4).keep_N
                out[name].append(float((keep & full).sum()) / max(1, int((keep | full).sum())))
    return {name: round(sum(v) / len(v), 4) for name, v in out.items()}


def main() -> None:
    import numpy as np
    import torch
    from adaspec_dist.cache.produce import JobSpec, hf_target_fn, write_cache
    from adaspec_dist.data.tasks import DataConfig, load_examples
    from adaspec_dist.data.tokenize import tokenize_examples
    from adaspec_dist.data.tokenizer import embedded_tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300, help="kd steps per arm (the demo's reference: 300)")
    ap.add_argument("--target-steps", type=int, default=400)
    ap.add_argument("--train-limit", type=int, default=2000)
    ap.add_argument("--name", default="cache_training_equivalence", help="results/NAME.json and NAME.png")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    ap.add_argument("--arms", default=",".join(name for name, _ in ARMS), help="comma-separated arms (full first)")
    ap.add_argument("--smoke", action="store_true",
                    help="plumbing check in ~1 min: tiny sizes, one seed, its own work dir, writes no results")
    args = ap.parse_args()
    work = WORK
    if args.smoke:
        args.steps, args.target_steps, args.train_limit, args.seeds = 6, 6, 64, "0"
        work = WORK / "smoke"  # never overwrite the real run's target / reference
    torch.set_num_threads(1)
    t_start = time.time()
    seeds = [int(x) for x in args.seeds.split(",")]
    arms = [a for a in ARMS if a[0] in args.arms.split(",")]
    assert arms and arms[0][0] == "full", "the arms must include full (the baseline)"
    work.mkdir(parents=True, exist_ok=True)
    tok = embedded_tokenizer(work / "tokenizer", vocab_size=1024)
    vocab = len(tok)
    train = tokenize_examples(load_examples(DataConfig(task="arith", split="train", limit=args.train_limit)), tok,
                              max_length=128)
    test = tokenize_examples(load_examples(DataConfig(task="arith", split="test", limit=200)), tok, max_length=128)
    torch.manual_seed(0)
    target = train_target(train, vocab, args.target_steps)
    target.save_pretrained(work / "target" / "final")
    tok.save_pretrained(work / "target" / "final")
    print(f"target trained ({args.target_steps} steps, {time.time() - t_start:.0f} s)")

    caches, bytes_per_token = {}, {}
    for name, kw in ARMS[2:]:
        d = work / f"cache-{name}-{args.train_limit}-{args.target_steps}"
        spec = JobSpec(**kw, batch_size=32, shard_size=500, vocab_size=vocab, seed=0)
        t0 = time.perf_counter()
        man = write_cache(train, hf_target_fn(target, scheme=spec.scheme, top_k=spec.top_k, draws=spec.draws),
                          spec, d, tensorboard_dir=str(work / "tb"))
        caches[name] = d
        bytes_per_token[name] = sum(sh["bytes"] for sh in man["shards"]) / man["num_supervised"]
        print(f"cache {name}: {bytes_per_token[name]:.1f} B/supervised token (V = {vocab}), "
              f"{time.perf_counter() - t0:.1f} s")
    caches["full"] = caches["full_bf16"] = caches["top64"]  # the online arms read the same batches (targets: live)

    alphas = {name: [] for name, _ in arms}
    reference = None
    for seed in seeds:
        for name, _ in arms:
            t0 = time.perf_counter()
            draft = train_kd(name, caches[name], target, vocab, seed, args.steps)
            alphas[name].append(round(held_out_alpha(draft, target, test), 5))
            if name == "full" and reference is None:
                draft.save_pretrained(work / "reference" / "final")
                reference = draft
            print(f"seed {seed} {name:10s}: held-out α {alphas[name][-1]:.4f} ({time.perf_counter() - t0:.0f} s)")
    rows = []
    for name, _ in arms:
        diffs = [a - f for a, f in zip(alphas[name], alphas["full"])]
        rows.append({"arm": name, "bytes_per_token": round(bytes_per_token[name], 1) if name in bytes_per_token else None,
                     "alpha": alphas[name], "alpha_mean": round(float(np.mean(alphas[name])), 5),
                     "alpha_minus_full": [round(x, 5) for x in diffs],
                     "max_abs_diff_vs_full": round(max(abs(x) for x in diffs), 5),
                     "within_0.005_every_seed": all(abs(x) <= 0.005 for x in diffs)})
        print(f"{name:10s} α {rows[-1]['alpha_mean']:.4f}  max |Δα| vs full {rows[-1]['max_abs_diff_vs_full']:.4f}"
              f"  {'within' if rows[-1]['within_0.005_every_seed'] else 'NOT within'} 0.005 on every seed")

    cache_only = {k: v for k, v in caches.items() if not k.startswith("full") and k in alphas}
    fresh = build_draft(vocab, 7)
    early = train_kd("top64", caches["top64"], target, vocab, 7, max(1, args.steps // 6))
    jac = {"fresh_draft": jaccard_rows(cache_only, target, reference, fresh),
           "draft_after_%d_steps" % max(1, args.steps // 6): jaccard_rows(cache_only, target, reference, early)}
    for k, v in jac.items():
        print(f"Jaccard of kept sets vs full logits ({k}): {v}")
    if args.smoke:  # plumbing only: nothing written to benchmarks/results
        print(f"smoke run done ({time.time() - t_start:.0f} s)")
        return
    png = plot(rows, RESULTS / f"{args.name}.png", vocab, args.steps)
    path = write_result(args.name, {
        "claim": "kd from a compact cache reaches held-out α_logits within 0.005 of full-logit online kd on every seed",
        "steps": args.steps, "batch": BATCH, "lr": LR, "target_sft_steps": args.target_steps,
        "train_sequences": len(train), "test_sequences": len(test), "vocab_size": vocab, "rows": rows,
        "seeds": seeds, "full_alpha_seed_std": round(float(np.std(alphas["full"], ddof=1)), 5),
        "paired_diff_mean_and_sd": {r["arm"]: [round(float(np.mean(r["alpha_minus_full"])), 5),
                                              round(float(np.std(r["alpha_minus_full"], ddof=1)), 5)]
                                    for r in rows if r["arm"] != "full"},
        "selection_jaccard_k0.4": jac, "plot": png.name, "wall_s": round(time.time() - t_start),
        "note": "demo-shaped target/draft; plain AdamW loop, same init + batch order per seed across arms; "
                "caches written by write_cache (format 2) and read by CacheReader; bytes/token at this V = 1024 "
                "(cache_bytes_per_token.json has V = 50304)"})
    print(f"wrote {path}")


def build_draft(vocab, seed):
    from adaspec_dist.models.load import build_preset

    return build_preset("demo-draft", vocab, seed=100 + seed, **DRAFT).eval()


def plot(rows, path: Path, vocab: int, steps: int) -> Path:
    """Left: held-out α vs bytes/token (seeds and their mean); right: α − full-logit α per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    full = next(r for r in rows if r["arm"] == "full")
    control = next((r for r in rows if r["arm"] == "full_bf16"), None)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, r in enumerate(r for r in rows if not r["arm"].startswith("full")):
        x = r["bytes_per_token"]
        color = f"C{i}"
        ax.scatter([x] * len(r["alpha"]), r["alpha"], s=14, alpha=0.5, color=color)
        ax.scatter([x], [r["alpha_mean"]], s=50, color=color, label=f"{r['arm']} ({x:.0f} B/token)")
        bx.scatter([x] * len(r["alpha_minus_full"]), r["alpha_minus_full"], s=20, color=color, label=r["arm"])
    ax.axhline(full["alpha_mean"], color="k", lw=1, label=f"full logits (online): mean of {len(full['alpha'])} seeds")
    for s_alpha in full["alpha"]:
        ax.axhline(s_alpha, color="k", lw=0.5, ls=":")
    bx.axhspan(-0.005, 0.005, color="k", alpha=0.08, label="goal ±0.005")
    bx.axhline(0.0, color="k", lw=1)
    if control is not None:
        for d in control["alpha_minus_full"]:
            bx.axhline(d, color="grey", lw=1, ls="--")
        bx.plot([], [], color="grey", ls="--", label="control: full logits rounded to bf16")
    for a, title in ((ax, "held-out α_logits after kd (dotted: each seed of full logits)"),
                     (bx, "α − α(full logits), same seed")):
        a.set_xscale("log")
        a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        a.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        a.set_xticks([10, 20, 40, 100, 250])
        a.set_xlabel(f"cache bytes per supervised token (V = {vocab})")
        a.set_title(title, fontsize=9)
        a.legend(fontsize=7)
    fig.suptitle(f"kd from a cache vs full logits: demo shapes, {steps} steps, {len(full['alpha'])} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def replot(name: str) -> None:
    """Redraw results/NAME.png from results/NAME.json."""
    import json

    data = json.loads((RESULTS / f"{name}.json").read_text())
    plot(data["rows"], RESULTS / data["plot"], data["vocab_size"], data["steps"])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--replot"]:
        replot(sys.argv[2])
    else:
        main()
