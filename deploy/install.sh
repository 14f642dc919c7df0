#!/usr/bin/env bash
# Sets up .venv with cxrsynth and everything it needs. CPU torch by default;
# CXRSYNTH_TORCH=cuda installs the default (CUDA) torch build from the registry instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ "${CXRSYNTH_TORCH:-cpu}" = "cpu" ]; then
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[test]"
echo "cxrsynth installed in $(pwd)/.venv"
