#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with torch first, then this project and its stack.
#   bash scripts/setup.sh            # CPU machine: torch==2.13.0 (local CPU wheel), never a resolver's CUDA build
#   TORCH_SPEC="torch==2.9.1" bash scripts/setup.sh   # another torch, e.g. on a GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"Python >= 3.10 is needed, found {sys.version.split()[0]}: set PYTHON=/path/to/python3.x")
PY

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch before anything else, so that no dependency resolver picks a multi-GB CUDA build
.venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[pipeline,export,dev]"
# DeepSpeed JIT-builds a CPU communication op the first time a process group starts: build it once, here
.venv/bin/python -c "from pipelines.train import prebuild_deepspeed_ops; prebuild_deepspeed_ops()"
.venv/bin/python -c "import torch, transpose; print(f'ready: torch {torch.__version__}, transpose {transpose.__version__}')"
