"""Claim: the sparse (top-k + rest) per-token loss needs far less peak memory than the full-vocab
loss at the same batch, because the teacher enters as N x K ids/log-probs instead of N x V logits.

Each variant runs in a FRESH subprocess: student logits (N x V fp32, requires grad) are created
first; then the teacher's representation is materialised (full logits, counted in the peak: the
full-vocab loss needs them; or a top-k SparseTarget built in row chunks, as the cache hands it
over) and loss + backward are computed. The logits' gradient (N x V) is counted in both. Peak memory = the rise of the process's max RSS
(getrusage ru_maxrss) over the level after the student logits existed — big tensors are mmap'd
by the allocator, so RSS follows them. N = 512 positions, V = 50304 (Pythia vocabulary), K = 64,
forward KL, reduced by the package's ``objective``. Usage: python benchmarks/train_loss_memory.py
"""
from __future__ import annotations

import json
import subprocess
import sys

from train_common import write_result

N, V, K = 512, 50304, 64

CHILD = r"""
import json, resource, sys, torch
torch.set_num_threads(1)
from adaspec_dist.sparse.target import SparseTarget
from adaspec_dist.distill import objectives as obj
from adaspec_dist.sparse.divergence import per_token_divergence
mode, n, v, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
g = torch.Generator().manual_seed(0)
student = torch.randn(n, v, generator=g).mul_(2).requires_grad_(True)  # no temporary
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base = rss()
if mode == "sparse":
    # What the cache hands the trainer: N x K ids and fp32 log-probs, produced here in row chunks
    # (as the cache job does offline) so no N x V teacher tensor ever exists in this process.
    ids, vals = [], []
    for a in range(0, n, 32):
        chunk = torch.log_softmax(torch.randn(min(32, n - a), v, generator=g) * 2, -1)
        top = chunk.topk(k, -1)
        ids.append(top.indices)
        vals.append(top.values)
    target = SparseTarget(ids=torch.cat(ids), logp=torch.cat(vals), weights=None, scheme="topk")
    base = rss()
    loss, _ = obj.objective("kd", obj.TokenLosses(per_token_divergence(student, target, "fkl"), None))
else:
    teacher = torch.randn(n, v, generator=g).mul_(2)  # the online teacher's full logits
    loss, _ = obj.objective("kd", obj.token_losses("kd", student, None, target_NV=teacher))
loss.backward()
print(json.dumps({"peak_bytes": rss() - base}))
"""


def measure(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(N), str(V), str(K)], capture_output=True,
                         text=True, check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def main() -> None:
    dense = min(measure("dense") for _ in range(2))
    sparse = min(measure("sparse") for _ in range(2))
    nv = N * V * 4
    print(f"peak over student logits: full-vocab {dense / 2**20:.0f} MiB ({dense / nv:.2f} x N*V*4), "
          f"sparse top-{K} {sparse / 2**20:.0f} MiB ({sparse / nv:.2f} x N*V*4); ratio {dense / sparse:.2f}x")
    write_result("train_loss_memory", {"claim": "peak memory of the full-vocab loss / sparse loss (same batch)",
                                       "ratio": dense / sparse, "dense_bytes": dense, "sparse_bytes": sparse,
                                       "N": N, "V": V, "K": K, "NxVx4_bytes": nv, "divergence": "fkl"})


if __name__ == "__main__":
    main()
