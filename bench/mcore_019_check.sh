#!/usr/bin/env bash
# Rerun the CPU test areas that touch megatron-core internals against megatron-core 0.19.2 (the device machine's
# release) on this machine's Python 3.11, without changing the worktree venv (which stays at 0.16.1 for CI).
#
# 0.19.2 is a Python-3.12-only wheel but pure Python: unpacked on PYTHONPATH it imports on 3.11 once `triton` is
# importable (0.19 imports it unconditionally). Both go into a git-ignored folder (.mcore019/), ahead of the venv's
# site-packages on PYTHONPATH; megatron_huatuo.compat then reports 0.19.2 (its dist-info is found first).
#
# Usage: bash bench/mcore_019_check.sh [pytest args...]      (default: the four areas, -q)
#   e.g. bash bench/mcore_019_check.sh tests/training/test_trust.py -x
# Needs network once (pip download of the wheel and of triton); later runs reuse .mcore019/.
# Not part of CI. Record in docs/models.md (Versions) what you ran and what differed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
DIR="${MCORE019_DIR:-$ROOT/.mcore019}"
MCORE="${MCORE_SPEC:-megatron-core==0.19.2}"
TRITON="${TRITON_SPEC:-triton==3.9.0}"  # the release that was used with torch 2.13 CPU (2026-12-03)

if [ ! -d "$DIR/src/megatron" ]; then
  mkdir -p "$DIR/wheel" "$DIR/src"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 \
    -d "$DIR/wheel" "$MCORE"
  "$PY" -m zipfile -e "$DIR"/wheel/megatron_core-*.whl "$DIR/src"
fi
if [ ! -d "$DIR/deps/triton" ]; then
  "$PY" -m pip install --quiet --no-deps --target "$DIR/deps" "$TRITON"  # for this venv's Python
fi

export PYTHONPATH="$DIR/src:$DIR/deps${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
"$PY" -c "from megatron_huatuo.compat import check_megatron_core as c; print('megatron-core', '.'.join(map(str, c())))"
if [ "$#" -eq 0 ]; then
  set -- tests/models tests/training tests/checkpoints_tools tests/eval -q -p no:warnings
fi
exec "$PY" -m pytest "$@"
