"""2-rank worker: global selection keeps the exact global top fraction, same threshold on every rank."""
import json
import sys

import torch

from adaspec_dist.dist import init_distributed, shutdown
from adaspec_dist.distill.selection import n_keep, select_tokens, top_fraction_mask

state = init_distributed(tp_size=1)
out = {}
g = torch.Generator().manual_seed(123)
# Unequal token counts per rank (rank 1 also gets a tie block) — the realistic case.
full = [torch.randn(37, generator=g), torch.cat([torch.randn(20, generator=g), torch.full((6,), 0.25)])]
mine = full[state.dp_rank]
for fraction in (0.4, 0.25):
    sel = select_tokens(mine, fraction, "global", group=state.dp_group)
    everything = torch.cat(full)
    expected = top_fraction_mask(everything, fraction)
    offset = 0 if state.dp_rank == 0 else full[0].shape[0]
    out[str(fraction)] = dict(
        match=bool(torch.equal(sel.keep_N, expected[offset:offset + mine.shape[0]])),
        threshold=sel.threshold, kept_global=sel.kept_global, total=sel.total_global,
        expected_kept=n_keep(everything.shape[0], fraction),
        expected_threshold=float(everything[expected].min()))
    local = select_tokens(mine, fraction, "local", group=state.dp_group)
    out[str(fraction)]["local_kept"] = int(local.keep_N.sum())
    out[str(fraction)]["local_kept_global"] = local.kept_global
with open(f"{sys.argv[1]}/rank{state.rank}.json", "w") as fh:
    json.dump(out, fh)
shutdown()
