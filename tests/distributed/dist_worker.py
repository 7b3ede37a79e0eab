"""Launched by tests under torchrun: initialise the grid and check the groups by all-reduce."""
import json
import sys

import torch
import torch.distributed as dist

from adaspec_dist.dist import init_distributed, shutdown

tp = int(sys.argv[1])
out = sys.argv[2]
ps = init_distributed(tp_size=tp)
x = torch.tensor([float(ps.rank)])
tp_sum = x.clone()
dist.all_reduce(tp_sum, group=ps.tp_group)
dp_sum = x.clone()
dist.all_reduce(dp_sum, group=ps.dp_group)
with open(f"{out}.{ps.rank}.json", "w") as fh:
    json.dump(dict(rank=ps.rank, world=ps.world_size, tp_rank=ps.tp_rank, dp_rank=ps.dp_rank,
                   tp_sum=tp_sum.item(), dp_sum=dp_sum.item(), backend=ps.backend), fh)
shutdown()
