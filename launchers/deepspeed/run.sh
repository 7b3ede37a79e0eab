#!/usr/bin/env bash
# Run any adaspec-dist stage (cache, train, eval, pipeline, ...) as a DeepSpeed job.
#
#   launchers/deepspeed/run.sh [OPTIONS] STAGE [STAGE ARGS...]
#
# One node:              run.sh --nproc 8 train --config R.yaml   (R.yaml: a TrainConfig recipe)
# N nodes over ssh:      run.sh --hostfile hosts train --config ...      (pdsh starts every node)
# N nodes without ssh:   run.sh --hostfile hosts --no-ssh --node-rank R train --config ...
#                        (run it on every node, R = 0..N-1, same hostfile and master)
#
# Options (before STAGE):
#   --hostfile FILE     "host slots=N" lines (launchers/deepspeed/hostfile.example); no hostfile = this node
#   --nproc N           ranks on this node when there is no hostfile (default: all GPUs; 1 on CPU)
#   --no-ssh            start only this node's ranks (clusters without ssh between nodes)
#   --node-rank R       this node's index in the hostfile (with --no-ssh)
#   --master-addr ADDR  rendezvous host (default: first hostfile host, or 127.0.0.1)
#   --master-port PORT  rendezvous port (default 29500)
#   --ssh-port PORT     ssh port of the nodes, when not 22
#   --venv-script FILE  sourced on every node first (default launchers/env.sh)
#   --module MOD        python module to run instead of adaspec_dist.cli (default $ADASPEC_MODULE or that)
#
# Environment forwarded to remote nodes: OMP/MKL threads, TOKENIZERS_PARALLELISM, TORCH_EXTENSIONS_DIR,
# HF_HOME and the HF offline switches, ADASPEC_VENV, ADASPEC_MODULE, plus any names
# listed in ADASPEC_EXPORT (space-separated). PYTHON* variables travel anyway (DeepSpeed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv_script="$(cd "$here/.." && pwd)/env.sh"
hostfile="" nproc="" no_ssh=0 node_rank="" master_addr="" master_port="29500" ssh_port="" module="${ADASPEC_MODULE:-adaspec_dist.cli}"

die() { echo "launchers/deepspeed/run.sh: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --hostfile) hostfile="$2"; shift 2 ;;
        --nproc) nproc="$2"; shift 2 ;;
        --no-ssh) no_ssh=1; shift ;;
        --node-rank) node_rank="$2"; shift 2 ;;
        --master-addr) master_addr="$2"; shift 2 ;;
        --master-port) master_port="$2"; shift 2 ;;
        --ssh-port) ssh_port="$2"; shift 2 ;;
        --module) module="$2"; shift 2 ;;
        --venv-script) venv_script="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "${BASH_SOURCE[0]}"; exit 0 ;;
        --*) die "unknown option $1; launcher options go before the stage name (see --help)" ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || [ "$module" != adaspec_dist.cli ] || die "no stage given; usage: run.sh [OPTIONS] STAGE [ARGS...] (see --help)"
# shellcheck disable=SC1090
. "$venv_script"

ds=(python -m deepspeed.launcher.runner --master_port "$master_port")
if [ -n "$hostfile" ]; then
    [ -f "$hostfile" ] || die "hostfile '$hostfile' does not exist"
    hostfile="$(cd "$(dirname "$hostfile")" && pwd)/$(basename "$hostfile")"
    # Default master: the first host of the hostfile (DeepSpeed would otherwise ssh to it
    # and take the first address of `hostname -I`, which may be the wrong network).
    [ -n "$master_addr" ] || master_addr="$(awk '!/^[[:space:]]*(#|$)/ {print $1; exit}' "$hostfile")"
    ds+=(--hostfile "$hostfile" --master_addr "$master_addr" --venv_script "$venv_script")
    [ -z "$ssh_port" ] || ds+=(--ssh_port "$ssh_port")
    if [ "$no_ssh" = 1 ]; then
        [ -n "$node_rank" ] || die "--no-ssh needs --node-rank (this node's index in $hostfile)"
        ds+=(--no_ssh --node_rank "$node_rank")
    fi
else
    [ "$no_ssh" = 0 ] || die "--no-ssh needs --hostfile listing every node"
    ds+=(--master_addr "${master_addr:-127.0.0.1}")
    [ -z "$nproc" ] || ds+=(--num_gpus "$nproc")
fi

# Variables the ranks on other nodes need; DeepSpeed exports the contents of DS_ENV_FILE
# into the pdsh command line (only PYTHON*-style prefixes travel by default).
env_file="$(mktemp "${TMPDIR:-/tmp}/adaspec-ds-env.XXXXXX")"
trap 'rm -f "$env_file"' EXIT
for name in OMP_NUM_THREADS MKL_NUM_THREADS TOKENIZERS_PARALLELISM TORCH_EXTENSIONS_DIR HF_HOME \
            HF_HUB_OFFLINE HF_DATASETS_OFFLINE TRANSFORMERS_OFFLINE ADASPEC_VENV ADASPEC_MODULE ${ADASPEC_EXPORT:-}; do
    if [ -n "${!name+x}" ]; then printf '%s=%s\n' "$name" "${!name}" >> "$env_file"; fi
done
export DS_ENV_FILE="$env_file"

# --no_local_rank: the stages read LOCAL_RANK from the environment (adaspec_dist.dist).
"${ds[@]}" --no_local_rank --module "$module" "$@" &
runner=$!
kids=""

# SIGTERM (preemption, scancel, Ctrl-C) must reach the ranks so they can checkpoint:
# over pdsh the runner relays it to every node; on one node it is its launch.py (the child)
# that stops the ranks gracefully, while the runner itself would just die.
forward_term() {
    if [ -n "$hostfile" ] && [ "$no_ssh" = 0 ]; then
        kill -TERM "$runner" 2>/dev/null || true
    else
        for pid in $kids $(pgrep -P "$runner" || true); do kill -TERM "$pid" 2>/dev/null || true; done
    fi
}
trap forward_term TERM INT

while kill -0 "$runner" 2>/dev/null; do
    now="$(pgrep -P "$runner" | tr '\n' ' ' || true)"
    [ -z "${now// /}" ] || kids="$now"
    sleep 1 & wait $! || true   # short waits so a trapped signal is handled promptly
done
set +e
wait "$runner"
rc=$?
# The runner may exit before launch.py has stopped its ranks (it grants them 30 s after a
# SIGTERM to checkpoint); leave only when they are gone, because a Slurm task that returns
# has whatever it leaves behind SIGKILLed.
for pid in $kids; do
    while kill -0 "$pid" 2>/dev/null; do sleep 1; done
done
exit "$rc"
