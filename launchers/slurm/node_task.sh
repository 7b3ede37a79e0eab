#!/usr/bin/env bash
# One Slurm task per node (started by common.sh's adaspec_launch through srun):
#   node_task.sh deepspeed|torchrun PROCS_PER_NODE STAGE [ARGS...]
# starts this node's ranks with the node rank Slurm assigned and the job's master.
set -euo pipefail
mode="$1" procs="$2"
shift 2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ "$mode" = torchrun ]; then
    exec bash "$here/../torchrun/run.sh" --nproc "$procs" --nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID" \
        --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" "$@"
fi

# The hostfile is derived from the allocation on every node (no shared filesystem needed);
# node ids follow the order of `scontrol show hostnames`.
hostfile="$(mktemp "${TMPDIR:-/tmp}/adaspec-hosts.${SLURM_JOB_ID}.XXXXXX")"
trap 'rm -f "$hostfile"' EXIT
trap ':' TERM INT   # the ranks and launchers get Slurm's signal themselves; outlive them
scontrol show hostnames "$SLURM_JOB_NODELIST" | awk -v n="$procs" '{print $1 " slots=" n}' > "$hostfile"
set +e
bash "$here/../deepspeed/run.sh" --hostfile "$hostfile" --no-ssh --node-rank "$SLURM_NODEID" \
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" "$@"
rc=$?
# A trapped signal interrupts the foreground wait only after run.sh returns, which is what we want.
exit "$rc"
