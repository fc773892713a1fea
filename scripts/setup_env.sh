#!/usr/bin/env bash
# Creates (or reuses) .venv and installs the project with its dev extras.
# torch is installed first, pinned to the CPU wheel these machines carry, so nothing pulls a multi-GB CUDA build.
# On a GPU cluster, install your own CUDA torch into the venv first; `TORCH_SPEC=skip` leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp="$VENV/.installed-$(cat pyproject.toml scripts/setup_env.sh | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if [ "$TORCH_SPEC" != skip ]; then "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"; fi
"$VENV/bin/python" -m pip install -q -e ".[dev]"
rm -f "$VENV"/.installed-*; touch "$stamp"
echo "environment ready: $VENV"
