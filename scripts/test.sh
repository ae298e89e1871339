#!/usr/bin/env bash
# Sets up a virtual environment (if needed) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet -e ".[test]"
ruff check keras_unetpp tests export benchmarks
python -m pytest -q "$@"
