# Sourced by every launcher script, and by `deepspeed --venv_script` on every node before the
# ranks start, so that all nodes run the same environment.
#
# It activates the project's virtual environment ($ADASPEC_VENV, default <repo>/.venv; on a
# cluster point it at a venv/conda prefix on the shared filesystem) and sets thread counts
# that do not oversubscribe a node. Edit or replace it for site modules (`module load cuda`).
_adaspec_launchers="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export ADASPEC_REPO="${ADASPEC_REPO:-$(cd "$_adaspec_launchers/.." && pwd)}"
ADASPEC_VENV="${ADASPEC_VENV:-$ADASPEC_REPO/.venv}"
if [ -f "$ADASPEC_VENV/bin/activate" ]; then
    # shellcheck disable=SC1091
    . "$ADASPEC_VENV/bin/activate"
fi
# One intra-op thread per rank unless the user chose otherwise: N ranks share a node's cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
export PYTHONPATH="$ADASPEC_REPO${PYTHONPATH:+:$PYTHONPATH}"
unset _adaspec_launchers
