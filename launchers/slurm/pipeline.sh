#!/usr/bin/env bash
# Submit the whole pipeline as a chain of Slurm jobs, one per stage, each starting only if
# the previous one succeeded (--dependency=afterok); a failed stage cancels the rest.
#
#   launchers/slurm/pipeline.sh [--dry-run] [--sbatch OPTION]... RECIPE.yaml [OVERRIDES...]
#
#   --sbatch OPTION   passed to every sbatch (repeatable), e.g. --sbatch --partition=gpu
#                     --sbatch --gpus-per-node=8 (SBATCH_PARTITION / SBATCH_ACCOUNT work too)
#   --dry-run         print the sbatch commands instead of submitting them
#
# The stages are those of `adaspec-dist pipeline RECIPE --dry-run`; each job runs
# `adaspec-dist pipeline RECIPE --stage NAME` through launchers/slurm/stage.sbatch, so a
# resubmitted chain skips the stages already complete. The tokenizer and eval stages get
# one node; the others the sbatch script's default (or your --sbatch --nodes=N).
# Prints "STAGE JOBID" per line.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC1091
. "$here/../env.sh"

dry=0 extra=()
die() { echo "launchers/slurm/pipeline.sh: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1; shift ;;
        --sbatch) extra+=("$2"); shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "${BASH_SOURCE[0]}"; exit 0 ;;
        --*) die "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || die "usage: pipeline.sh [--dry-run] [--sbatch OPTION]... RECIPE.yaml [OVERRIDES...]"
[ -f "$1" ] || die "recipe '$1' does not exist"
# Absolute, since the jobs are submitted from the repository root.
set -- "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")" "${@:2}"
recipe="$1"

stages="$(python - "$@" <<'PY'
import sys
from adaspec_dist.pipeline import load_pipeline_config, plan
print(" ".join(s.name for s in plan(load_pipeline_config(sys.argv[1], sys.argv[2:]))))
PY
)"
[ -n "$stages" ] || die "the recipe '$recipe' plans no stage"

cd "$ADASPEC_REPO"   # the jobs find the repository through their submit directory
prev=""
for stage in $stages; do
    cmd=(sbatch --parsable --job-name="adaspec-$stage")
    case "$stage" in tokenizer|eval) cmd+=(--nodes=1) ;; esac
    [ -z "$prev" ] || cmd+=(--dependency="afterok:$prev" --kill-on-invalid-dep=yes)
    cmd+=(${extra[@]+"${extra[@]}"} "$here/stage.sbatch" pipeline "$@" --stage "$stage")
    if [ "$dry" = 1 ]; then
        printf '%q ' "${cmd[@]}"; echo
        prev="JOB_$stage"
    else
        prev="$("${cmd[@]}")"
        prev="${prev%%;*}"
        echo "$stage $prev"
    fi
done
