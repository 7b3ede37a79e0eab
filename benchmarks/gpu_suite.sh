#!/usr/bin/env bash
# The prepared GPU check in one command (< 8 minutes on one GPU):
#
#   bash benchmarks/gpu_suite.sh            # -> benchmarks/results/gpu_suite.{json,md}
#   srun --gres=gpu:1 --cpus-per-task=16 --time=00:12:00 bash benchmarks/gpu_suite.sh
#   bash benchmarks/gpu_suite.sh --tiny --out /tmp/gpu-suite    # CPU smoke run of the same code
#
# Runs from the repository root with .venv/bin/python when present (else $PYTHON or python3).
# Nothing is downloaded: models are random-initialised from real configs, data is embedded.
# Every section has its own hard budget inside benchmarks/gpu_suite.py (450 s in all); the
# `timeout` below is only a backstop. Exit status: see benchmarks/gpu_suite.py (0 = all passed).
set -u
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TRANSFORMERS_VERBOSITY=${TRANSFORMERS_VERBOSITY:-error}
# Fewer fragmentation OOMs while the cache section sizes its batch to the free memory.
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
echo "gpu_suite: $($PY -c 'import sys; print(sys.executable, sys.version.split()[0])' 2>&1) on $(hostname)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout -k 15 "${GPU_SUITE_TIMEOUT:-480}" "$PY" benchmarks/gpu_suite.py "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "gpu_suite: killed by the ${GPU_SUITE_TIMEOUT:-480} s backstop; the sections finished so far are in the results files" >&2
fi
exit "$rc"
