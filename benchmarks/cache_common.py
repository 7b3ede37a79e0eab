"""Shared bits of the cache benchmarks: machine info, result files, synthetic task sequences."""
from __future__ import annotations

import os
from pathlib import Path
from results_io import machine, write_result  # noqa: F401  (re-exported to the cache_* scripts)

os.environ.setdefault("OMP_NUM_THREADS", "1")
RESULTS = Path(__file__).resolve().parent / "results"






def task_sequences(n: int, length: int, prompt: int, vocab: int, seed: int = 0):
    """``n`` sequences of ``length`` random ids, the first ``prompt`` of them masked as prompt."""
    import numpy as np
    from adaspec_dist.data.tokenize import TokenizedExample

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(4, vocab, length).tolist()
        out.append(TokenizedExample(input_ids=ids, labels=[-100] * prompt + ids[prompt:]))
    return out


def sampled_error_rows(draft, teacher, full_total: float, draws_list=(8, 16, 32, 64), seeds: int = 5,
                       report=print) -> list[dict]:
    """Forward-KL error of format-2 sampled rows (the fkl-only layout: ids, counts, the row constant
    ``plogp = Σ w log p``) against the full KL ``full_total`` (summed over positions), per draw count.

    Also the alternative row constant: the exact entropy (−H(p) from the full row) in place of the
    sampled Σ w log p — equally unbiased, but without the log p − log q pairing (a control variate):
    recorded to show why format 2 stores the sampled one. ``row_bytes_v50304`` = what a row costs at
    V = 50,304 with the measured unique ids U: 2 B id + 1 B count per id, 1 B length + 4 B constant."""
    import torch
    from adaspec_dist.sparse.divergence import per_token_divergence
    from adaspec_dist.sparse.target import SparseTarget, sampled_targets

    lp = teacher.float().log_softmax(-1)
    neg_h = (lp.exp() * lp).sum(-1)
    lq = draft.float().log_softmax(-1)
    rows = []
    for draws in draws_list:
        est, est_h, uniq = [], [], []
        for seed in range(seeds):
            t = sampled_targets(teacher, draws, torch.Generator().manual_seed(seed))
            compact = SparseTarget(ids=t.ids, logp=None, weights=t.weights, scheme="sampled", plogp=t.plogp)
            est.append(float(per_token_divergence(draft, compact, kind="fkl").sum()))
            est_h.append(float((neg_h - (t.weights * lq.gather(1, t.ids)).sum(-1)).sum()))
            uniq.append(float((t.weights > 0).sum(-1).float().mean()))
        rel = [abs(e - full_total) / full_total for e in est]
        rel_h = [abs(e - full_total) / full_total for e in est_h]
        u = sum(uniq) / len(uniq)
        rows.append({"scheme": "sampled", "draws": draws, "layout": "format 2 (ids + counts + plogp)",
                     "relative_error": round(rel[0], 5), "relative_error_max_of_seeds": round(max(rel), 5),
                     "relative_error_mean_of_seeds": round(sum(rel) / seeds, 5),
                     "relative_error_mean_estimate": round(abs(sum(est) / seeds - full_total) / full_total, 5),
                     "exact_entropy_constant_relative_error_max_of_seeds": round(max(rel_h), 5),
                     "seeds": seeds, "unique_ids_mean": round(u, 2),
                     "row_bytes_v50304": round(3 * u + 5, 1), "row_bytes_v50304_with_logp_fp16": round(5 * u + 5, 1)})
        report(f"sampled draws={draws:2d}: {u:5.1f} unique ids/row -> {3 * u + 5:5.1f} B/row at V=50304; "
               f"relative error seed 0 {100 * rel[0]:.2f} %, worst of {seeds} seeds {100 * max(rel):.2f} % "
               f"(exact-entropy constant: worst {100 * max(rel_h):.2f} %)")
    return rows
