"""Launched by tests under torchrun: initialise the grid and check the groups by all-reduce."""
import json
import sys

import torch
import torch.distributed as dist

from adaspec_dist.dist import grid_groups, init_distributed, shutdown

tp = int(sys.argv[1])
out = sys.argv[2]
ps = init_distributed(tp_size=tp)
x = torch.tensor([float(ps.rank)])
tp_sum = x.clone()
dist.all_reduce(tp_sum, group=ps.tp_group)
dp_sum = x.clone()
dist.all_reduce(dp_sum, group=ps.dp_group)
# The other split of the same world (what an online TP teacher of a DP trainer asks for): cached.
other = ps.world_size // tp
grid = grid_groups(other)
g_tp_sum, g_dp_sum = x.clone(), x.clone()
dist.all_reduce(g_tp_sum, group=grid.tp_group)
dist.all_reduce(g_dp_sum, group=grid.dp_group)
with open(f"{out}.{ps.rank}.json", "w") as fh:
    json.dump(dict(rank=ps.rank, world=ps.world_size, tp_rank=ps.tp_rank, dp_rank=ps.dp_rank,
                   tp_sum=tp_sum.item(), dp_sum=dp_sum.item(), backend=ps.backend,
                   grid=dict(tp_size=grid.tp_size, tp_rank=grid.tp_rank, dp_rank=grid.dp_rank,
                             tp_sum=g_tp_sum.item(), dp_sum=g_dp_sum.item(),
                             cached=grid_groups(other) is grid)), fh)
shutdown()
