#!/usr/bin/env bash
# Run any adaspec-dist stage under torchrun, on one node or many.
#
#   launchers/torchrun/run.sh [OPTIONS] STAGE [STAGE ARGS...]
#
# One node:            run.sh --nproc 8 train --config R.yaml   (R.yaml: a TrainConfig recipe)
# N nodes, static:     on node R of N:  run.sh --nnodes N --node-rank R --master-addr HOST0 --master-port P train ...
# N nodes, c10d:       on every node:   run.sh --nnodes N --rdzv c10d --master-addr HOST0 --master-port P \
#                                              --rdzv-id JOB train ...   (torchrun assigns the node ranks)
#
# Options (before STAGE):
#   --nproc N           processes on this node (default: GPUs on this node, or 1)
#   --nnodes N          nodes in the job (default 1)
#   --node-rank R       this node's rank, static rendezvous only (default 0)
#   --master-addr ADDR  node 0's address / the c10d endpoint host (default 127.0.0.1)
#   --master-port PORT  rendezvous port (default 29500)
#   --rdzv static|c10d  rendezvous kind (default static)
#   --rdzv-id ID        job id shared by all nodes for c10d (default adaspec)
#   --module MOD        python module to run instead of adaspec_dist.cli (default $ADASPEC_MODULE or that)
# torchrun forwards SIGTERM to the ranks and waits for them, so a preempted stage can checkpoint.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC1091
. "$here/../env.sh"

nproc="" nnodes=1 node_rank=0 master_addr=127.0.0.1 master_port=29500 rdzv=static rdzv_id=adaspec
module="${ADASPEC_MODULE:-adaspec_dist.cli}"
die() { echo "launchers/torchrun/run.sh: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --nproc) nproc="$2"; shift 2 ;;
        --nnodes) nnodes="$2"; shift 2 ;;
        --node-rank) node_rank="$2"; shift 2 ;;
        --master-addr) master_addr="$2"; shift 2 ;;
        --master-port) master_port="$2"; shift 2 ;;
        --rdzv) rdzv="$2"; shift 2 ;;
        --rdzv-id) rdzv_id="$2"; shift 2 ;;
        --module) module="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "${BASH_SOURCE[0]}"; exit 0 ;;
        --*) die "unknown option $1; launcher options go before the stage name (see --help)" ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || [ "$module" != adaspec_dist.cli ] || die "no stage given; usage: run.sh [OPTIONS] STAGE [ARGS...]"
if [ -z "$nproc" ]; then
    nproc="$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')"
fi

tr=(python -m torch.distributed.run --nproc_per_node "$nproc" --nnodes "$nnodes")
case "$rdzv" in
    static) tr+=(--node_rank "$node_rank" --master_addr "$master_addr" --master_port "$master_port") ;;
    c10d) tr+=(--rdzv_backend c10d --rdzv_endpoint "$master_addr:$master_port" --rdzv_id "$rdzv_id") ;;
    *) die "--rdzv must be static or c10d, got '$rdzv'" ;;
esac
exec "${tr[@]}" --module "$module" "$@"
