#!/usr/bin/env bash
# Fetch the pinned Python 3.12 wheels of bench/device_wheels.txt into .whl/ (git-ignored) for bench/device_check.sh.
# Runs on the CPU machine (the device machine has no network). Usage: bash bench/fetch_device_wheels.sh [DEST]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.whl}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" -r "$ROOT/bench/device_wheels.txt"
ls -l "$DEST"
du -ch "$DEST"/*.whl | tail -1
