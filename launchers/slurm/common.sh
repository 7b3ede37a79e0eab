# Shared by the sbatch scripts (sourced, never run): find the repository, start one stage
# across the allocation, and turn preemption / time-limit signals into checkpoint + requeue.
#
# Launch modes (ADASPEC_LAUNCHER):
#   deepspeed (default)  one task per node: `deepspeed --no_ssh --node_rank $SLURM_NODEID`, master =
#                        first host of `scontrol show hostnames $SLURM_JOB_NODELIST`
#   torchrun             one task per node: torchrun --nnodes $SLURM_NNODES --node_rank $SLURM_NODEID
#   srun                 one task per GPU; adaspec_dist.dist derives RANK/WORLD_SIZE from
#                        SLURM_PROCID/SLURM_NTASKS (no launcher in between)
# Processes per node: ADASPEC_PROCS_PER_NODE, else the GPUs Slurm gave the node, else 1.

ADASPEC_REPO="${ADASPEC_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}"
if [ ! -f "$ADASPEC_REPO/launchers/env.sh" ]; then
    echo "adaspec-dist sbatch: error: no launchers/env.sh under '$ADASPEC_REPO'; submit from the repository root or export ADASPEC_REPO=/path/to/adaspec-dist" >&2
    exit 2
fi
export ADASPEC_REPO
# shellcheck disable=SC1091
. "$ADASPEC_REPO/launchers/env.sh"

adaspec_procs_per_node() {
    local gpus="${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}"
    gpus="${gpus##*:}"   # "a100:4" -> "4"
    echo "${ADASPEC_PROCS_PER_NODE:-${gpus:-1}}"
}

adaspec_master() {
    MASTER_ADDR="${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}"
    # One port per job id: two jobs sharing a node do not collide, and a requeued job
    # (same id) finds its old port free again.
    MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
    export MASTER_ADDR MASTER_PORT
}

# A requeued job (SLURM_RESTART_COUNT > 0) continues from its last checkpoint.
adaspec_is_restart() { [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; }

_adaspec_requeue=0
_adaspec_on_signal() {
    echo "adaspec-dist sbatch: got SIG$1 — asking the stage to checkpoint and stop, then requeueing" >&2
    _adaspec_requeue=1
    kill -TERM "$_adaspec_step" 2>/dev/null || true   # srun forwards SIGTERM to every task
}

# adaspec_launch STAGE [ARGS...]: run the stage on every node of the allocation and wait.
# On SIGUSR1 (sbatch --signal=B:USR1@T before the time limit) or SIGTERM (preemption,
# scancel, scontrol requeue) the ranks get SIGTERM, checkpoint and exit; the job is then
# requeued and, on restart, the stage resumes.
adaspec_launch() {
    adaspec_master
    local mode="${ADASPEC_LAUNCHER:-deepspeed}" procs
    procs="$(adaspec_procs_per_node)"
    # After the first task ends the others get this long (e.g. rank 0 exporting the model)
    # before srun ends them: a crashed node does not leave the rest hanging forever.
    local straggle="${ADASPEC_STRAGGLER_WAIT:-600}"
    echo "adaspec-dist sbatch: job $SLURM_JOB_ID ($SLURM_JOB_NODELIST, restart ${SLURM_RESTART_COUNT:-0}) mode=$mode procs/node=$procs master=$MASTER_ADDR:$MASTER_PORT: $*" >&2
    case "$mode" in
        deepspeed|torchrun)
            srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 --wait="$straggle" \
                bash "$ADASPEC_REPO/launchers/slurm/node_task.sh" "$mode" "$procs" "$@" & ;;
        srun)
            srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node="$procs" --wait="$straggle" \
                python -m adaspec_dist.cli "$@" & ;;
        *) echo "adaspec-dist sbatch: error: ADASPEC_LAUNCHER must be deepspeed, torchrun or srun, got '$mode'" >&2
           return 2 ;;
    esac
    _adaspec_step=$!
    trap '_adaspec_on_signal TERM' TERM
    trap '_adaspec_on_signal USR1' USR1
    local rc=0
    # `wait` returns early when a trapped signal arrives: keep waiting for the step itself.
    while kill -0 "$_adaspec_step" 2>/dev/null; do
        wait "$_adaspec_step" && rc=0 || rc=$?
    done
    trap - TERM USR1
    if [ "$_adaspec_requeue" = 1 ]; then
        # Under preemption Slurm requeues the job itself and this call fails harmlessly.
        scontrol requeue "$SLURM_JOB_ID" 2>/dev/null || true
        return 0
    fi
    return "$rc"
}
