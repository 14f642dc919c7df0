#!/usr/bin/env bash
# Sets up .venv with cxrsynth and everything it needs, from the package registries only.
# CPU torch by default (torch==2.13.0, a local CPU build on this kind of machine);
# CXRSYNTH_TORCH=cuda leaves torch to pip, which installs the default CUDA build for GPU sites.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
quiet() { { "$@" 2>&1; } | { grep -v -e '^WARNING: Location' -e 'is ignored: it is neither' || true; }; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
quiet .venv/bin/python -m pip install -q --upgrade pip
if [ "${CXRSYNTH_TORCH:-cpu}" = "cpu" ]; then
  .venv/bin/python -c "import torch" 2>/dev/null || quiet .venv/bin/python -m pip install -q "torch==2.13.0"
fi
quiet .venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import cxrsynth, torch; print('cxrsynth ready in .venv (torch', torch.__version__ + ')')"
