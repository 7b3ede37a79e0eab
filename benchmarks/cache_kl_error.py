"""Claim: on a trained model's real next-token distributions, the sparse forward KL that training
uses is within 2 % of the full-vocabulary KL at k = 64 (top-k), and the sampled scheme is unbiased;
format 2's compact sampled rows (ids + draw counts + one row constant) at 8/16/32/64 draws: their
error (worst of 5 seeds) and their bytes at V = 50,304 from the unique ids the draws hit.

The models: interpolated (Witten-Bell) bigram language models, trained by counting on real text
(CPython's pydoc topics, tokenized with the project's sentencepiece tokenizer, V = 8000). The
target is trained on all training text, the draft on 10 % of it, so KL(p_target || q_draft) is
that of a real weak draft. Why n-grams: on this 2-core machine a neural model trained for a
minute stays near-unigram and far flatter than a real target, whereas smoothed n-gram rows have
the shape real LM rows have (a few likely tokens and a Zipf tail). Evaluated on held-out text.

The baseline is the exact full-vocabulary KL of the same positions (``dense_divergence``); the
estimates are ``per_token_divergence`` on targets that went through the stored value coding.
Prints |sparse - full| / full (summed over positions, as the training loss sums them);
writes benchmarks/results/cache_kl_error.json.

    python benchmarks/cache_kl_error.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_common import sampled_error_rows, write_result  # noqa: E402

VOCAB = 8000


def bigram_logp(stream, vocab: int, contexts):
    """Witten-Bell interpolated bigram log p(. | a) for each context id in ``contexts``: (N, V)."""
    import torch

    s = torch.tensor(stream)
    pair = torch.zeros(vocab, vocab, dtype=torch.float32)
    pair.index_put_((s[:-1], s[1:]), torch.ones(len(s) - 1), accumulate=True)
    uni = torch.bincount(s, minlength=vocab).float() + 0.5
    uni = uni / uni.sum()
    rows = pair[contexts]  # (N, V)
    n_a = rows.sum(-1, keepdim=True)
    t_a = (rows > 0).sum(-1, keepdim=True).float()
    lam = n_a / (n_a + t_a).clamp_min(1e-9)
    p = lam * rows / n_a.clamp_min(1e-9) + (1 - lam) * uni
    return p.log()


def main() -> None:
    import torch
    from pydoc_data.topics import topics

    from adaspec_dist.sparse.target import decode_values, encode_values, sampled_targets, topk_targets
    from adaspec_dist.data.tokenizer import train_sentencepiece
    from adaspec_dist.sparse.divergence import dense_divergence, per_token_divergence

    torch.set_num_threads(1)
    keys = sorted(topics)
    train = [topics[k] for i, k in enumerate(keys) if i % 10]
    test = [topics[k] for i, k in enumerate(keys) if not i % 10]
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_sentencepiece(train, VOCAB, tmp)
    enc = lambda texts: [t for x in texts for t in tok(x, add_special_tokens=False)["input_ids"]]  # noqa: E731
    train_ids, test_ids = enc(train), enc(test)
    draft_ids = enc(train[::10])
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, len(test_ids) - 1, (3000,), generator=g)
    contexts = torch.tensor(test_ids)[pos]
    teacher = bigram_logp(train_ids, VOCAB, contexts)  # (N, V) log-probs = logits
    draft = bigram_logp(draft_ids, VOCAB, contexts)
    full = dense_divergence(draft, teacher, kind="fkl")  # (N,)
    total = float(full.sum())
    p_sorted = teacher.exp().sort(-1, descending=True).values
    stats = {"positions": len(pos), "train_tokens": len(train_ids), "draft_train_tokens": len(draft_ids),
             "mean_full_kl": round(total / len(pos), 4),
             "teacher_mean_entropy_nats": round(float(-(teacher.exp() * teacher).sum(-1).mean()), 3),
             "teacher_mean_top1_prob": round(float(p_sorted[:, 0].mean()), 3),
             "teacher_mean_top64_mass": round(float(p_sorted[:, :64].sum(-1).mean()), 4)}
    print("distributions:", stats)
    rows = []

    def report(label, target, extra):
        est = per_token_divergence(draft, target, kind="fkl")
        rel = abs(float(est.sum()) - total) / total
        rows.append({**extra, "mean_sparse_kl": round(float(est.mean()), 4), "relative_error": round(rel, 5)})
        print(f"{label:36s} mean KL {float(est.mean()):.4f} vs full {total / len(pos):.4f}: "
              f"relative error {100 * rel:6.2f} %")

    for k in (8, 16, 32, 64):
        t = topk_targets(teacher, k)
        for vd in ("fp16", "int8"):
            t.logp = decode_values(encode_values(t.logp, vd), vd)  # what the reader hands the trainer
            report(f"topk k={k} {vd}", t, {"scheme": "topk", "k": k, "value_dtype": vd})
            t = topk_targets(teacher, k)
    rows += sampled_error_rows(draft, teacher, total)
    # How the top-k error depends on the tail: positions binned by the target's top-64 mass.
    est64 = per_token_divergence(draft, topk_targets(teacher, 64), kind="fkl")
    mass64 = p_sorted[:, :64].sum(-1)
    bins = []
    for lo, hi in ((0.0, 0.8), (0.8, 0.95), (0.95, 0.99), (0.99, 1.01)):
        sel = (mass64 >= lo) & (mass64 < hi)
        if sel.any():
            rel = abs(float(est64[sel].sum() - full[sel].sum())) / float(full[sel].sum())
            bins.append({"top64_mass": [lo, min(hi, 1.0)], "positions": int(sel.sum()), "relative_error": round(rel, 5)})
            print(f"  top-64 mass in [{lo:.2f}, {min(hi, 1.0):.2f}): {int(sel.sum()):5d} positions, "
                  f"top-64 relative error {100 * rel:6.2f} %")
    best64 = min(r["relative_error"] for r in rows if r.get("k") == 64)
    print(f"goal: <= 2 % at k=64 -> {100 * best64:.2f} % ({'met' if best64 <= 0.02 else 'NOT met'})")
    path = write_result("cache_kl_error", {
        "claim": "sparse forward KL within 2% of full-vocabulary KL at k=64; sampled unbiased; format-2 sampled rows "
                 "<= 40 B/token at V=50304 within 1% KL error",
        "models": "Witten-Bell bigram LMs trained on pydoc topics (target: 90% of topics; draft: 1/10 of that)",
        "vocab_size": VOCAB, "distributions": stats, "rows": rows, "topk64_error_by_tail_mass": bins})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
