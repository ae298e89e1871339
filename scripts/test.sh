#!/usr/bin/env bash
# Sets up a virtual environment (if needed) and runs the whole test suite:
# ruff (lint and format), every test under the TensorFlow backend (the memory-measuring ones a
# second time with oneDNN off), then the backend-agnostic core
# tests (model, pruning, losses, metrics, serialization) under JAX and PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet -e ".[test]"
# KServe (export/kserve_predictor.py, its live test) without its pins of
# protobuf<7 and psutil<6; its other requirements come with the test extra.
pip install --quiet --no-deps "kserve==0.21.0"
export TF_CPP_MIN_LOG_LEVEL=2
ruff check keras_unetpp tests export benchmarks scripts
ruff format --check keras_unetpp tests export benchmarks scripts
# One pytest-xdist worker per core (at most 4, for memory), a test file's
# tests on one worker so that its module fixtures (trained runs, exports) are
# built once; `bash scripts/test.sh -n 0` runs the TensorFlow suite in one
# process.
PARALLEL="-n auto --maxprocesses=4 --dist loadfile"
python -m pytest -q $PARALLEL "$@"
# The memory-measuring tests once more without oneDNN: the path of CPUs without
# AVX-512, where TensorFlow's CPU allocator keeps no statistics by itself.
echo "== memory tests with TF_ENABLE_ONEDNN_OPTS=0"
TF_ENABLE_ONEDNN_OPTS=0 python -m pytest -q -p no:cacheprovider $PARALLEL \
  tests/test_recompute.py::test_training_step_needs_less_memory tests/test_benchmarks.py
CORE_TESTS="tests/test_model.py tests/test_model3d.py tests/test_description.py tests/test_pruning.py tests/test_losses.py tests/test_imbalance_losses.py tests/test_lovasz_loss.py tests/test_metrics.py tests/test_serialization.py tests/test_api.py"
for backend in jax torch; do
  echo "== core tests under KERAS_BACKEND=$backend"
  # JAX on CPU: cheaper XLA compilation of the many tiny test programs.
  KERAS_BACKEND=$backend JAX_PLATFORMS=cpu \
    XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true" \
    python -m pytest -q -p no:cacheprovider $PARALLEL $CORE_TESTS
done
