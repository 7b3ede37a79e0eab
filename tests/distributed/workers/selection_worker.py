"""2-rank worker: global selection applies the rule (published quantile, and exact_k) to all ranks'
ΔL at once, same threshold on every rank."""
import json
import sys

import torch

from adaspec_dist.dist import init_distributed, shutdown
from adaspec_dist.distill.selection import keep_mask, n_keep, select_tokens

state = init_distributed(tp_size=1)
out = {}
g = torch.Generator().manual_seed(123)
# Unequal token counts per rank (rank 1 also gets a tie block) — the realistic case.
full = [torch.randn(37, generator=g), torch.cat([torch.randn(20, generator=g), torch.full((6,), 0.25)])]
mine = full[state.dp_rank]
for rule in ("quantile", "exact_k"):
    for fraction in (0.4, 0.25):
        key = f"{rule}-{fraction}"
        sel = select_tokens(mine, fraction, "global", group=state.dp_group, rule=rule)
        everything = torch.cat(full)
        expected = keep_mask(everything, fraction, rule)
        offset = 0 if state.dp_rank == 0 else full[0].shape[0]
        cut = (float(torch.quantile(everything, 1 - fraction)) if rule == "quantile"
               else float(everything[expected].min()))
        out[key] = dict(
            match=bool(torch.equal(sel.keep_N, expected[offset:offset + mine.shape[0]])),
            threshold=sel.threshold, kept_global=sel.kept_global, total=sel.total_global,
            expected_kept=int(expected.sum()), expected_threshold=cut,
            exact_k=n_keep(everything.shape[0], fraction))
        local = select_tokens(mine, fraction, "local", group=state.dp_group, rule=rule)
        out[key]["local_kept"] = int(local.keep_N.sum())
        out[key]["local_expected"] = int(keep_mask(mine, fraction, rule).sum())
        out[key]["local_kept_global"] = local.kept_global
with open(f"{sys.argv[1]}/rank{state.rank}.json", "w") as fh:
    json.dump(out, fh)
shutdown()
