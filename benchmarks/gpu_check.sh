#!/usr/bin/env bash
# One-command GPU check: mixed_float16 training and export against float32.
# Usage: bash benchmarks/gpu_check.sh [--out DIR] [options of gpu_check.py]
# Uses the repository's .venv when there is one, else python3. On a machine
# with no GPU it says so and exits 0 (3 with --require-gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=python3
if [ -x .venv/bin/python ]; then
  PYTHON=.venv/bin/python
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
"$PYTHON" -c "import keras_unetpp" 2>/dev/null || "$PYTHON" -m pip install --quiet -e .
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
