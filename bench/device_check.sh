#!/usr/bin/env bash
# One prepared check for the device machine: one H200, Python 3.12, torch 2.11 + CUDA 13, triton, transformers;
# no megatron-core, no Transformer Engine, no network; at most 64 MiB of files travel with the run.
#
#   bash bench/fetch_device_wheels.sh      # on the CPU machine, once: pinned wheels into .whl/ (git-ignored)
#   bash bench/device_check.sh --dry-run   # on the CPU machine: checks .whl/ and the carried size, prints the plan
#   bash bench/device_check.sh             # on the device: install what is missing, pytest -m gpu, the bench
#
# Writes into $OUT (default ./device_check_out): env.txt, pytest.log/.xml, case-<name>.json/.log per bench case,
# device_check.json and device_check.md (the table for bench/RESULTS.md). The whole run keeps under
# DEVICE_CHECK_BUDGET_S seconds (default 540, for a 10-minute command limit): each step has a cap, and a bench case
# whose cap would overrun the budget is skipped and listed as such. Cases run in priority order.
# DEVICE_CHECK_SMOKE=1 runs the cases at tiny shapes (a CPU rehearsal of the whole script).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHL="${WHL:-$ROOT/.whl}"
OUT="${OUT:-$ROOT/device_check_out}"
BUDGET_S="${DEVICE_CHECK_BUDGET_S:-540}"
PY="${PYTHON:-python3}"
SITE="${DEVICE_SITE:-${TMPDIR:-/tmp}/huatuo-device-site}"
MAX_CARRY_MIB=64
PYTEST_CAP=200
# bench case: cap in seconds (priority order)
CASES=(
  "matmul-peak:40"
  "baichuan2-7b-sdpa:120"
  "baichuan2-7b-hf:100"
  "baichuan2-13b-attention:150"
  "baichuan2-13b-flex:150"
  "yi-34b-sdpa:110"
  "baichuan2-13b-flex-isolated:150"
)
GPU_TESTS=(tests/models/test_attention_gpu.py tests/models/test_gpu.py)

START=$(date +%s)
say() { echo "[device_check +$(( $(date +%s) - START ))s] $*"; }

# "name==version" lines of bench/device_wheels.txt -> expected wheel file prefix (name with - as _)
wheel_prefixes() {
  grep -v '^\s*#' "$ROOT/bench/device_wheels.txt" | grep -v '^\s*$' | while read -r spec; do
    name="${spec%%==*}"; version="${spec##*==}"
    echo "${name//-/_}-${version}-"
  done
}

check_wheels() {
  local missing=0
  for prefix in $(wheel_prefixes); do
    if compgen -G "$WHL/${prefix}*.whl" > /dev/null; then
      echo "  wheel ok: $(basename "$(compgen -G "$WHL/${prefix}*.whl" | head -1)")"
    else
      echo "  MISSING: ${prefix}*.whl in $WHL (run: bash bench/fetch_device_wheels.sh)"
      missing=1
    fi
  done
  return $missing
}

carried_mib() {
  # what travels with a run: tracked + untracked-not-ignored files, plus the wheel folder
  local bytes
  bytes=$(cd "$ROOT" && { git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null \
          | awk '/\ttotal$/ {s += $1} END {print s + 0}'; })
  local whl_bytes=0
  if [ -d "$WHL" ]; then whl_bytes=$(du -cb "$WHL"/*.whl 2>/dev/null | awk '/\ttotal$/ {print $1}'); fi
  echo $(( (bytes + ${whl_bytes:-0}) / 1048576 ))
}

plan() {
  echo "plan (budget ${BUDGET_S} s, output in \$OUT=${OUT}):"
  echo "  1. record the device (nvidia-smi, python, torch, CUDA) -> env.txt"
  echo "  2. install the wheels of .whl/ whose module is missing (pip --no-index --no-deps --target ${SITE})"
  echo "  3. pytest -m gpu ${GPU_TESTS[*]} (cap ${PYTEST_CAP} s) -> pytest.log, pytest.xml"
  local i=4
  for entry in "${CASES[@]}"; do
    echo "  ${i}. bench case ${entry%%:*} (cap ${entry##*:} s) -> case-${entry%%:*}.json"
    i=$((i + 1))
  done
  echo "  ${i}. table -> device_check.md, device_check.json"
}

if [ "${1:-}" = "--dry-run" ]; then
  echo "device check dry run: wheels in $WHL"
  status=0
  check_wheels || status=1
  mib=$(carried_mib)
  if [ "$mib" -ge "$MAX_CARRY_MIB" ]; then
    echo "  TOO BIG: ${mib} MiB would travel (limit ${MAX_CARRY_MIB} MiB)"; status=1
  else
    echo "  carried size ok: ${mib} MiB of ${MAX_CARRY_MIB} MiB"
  fi
  plan
  exit $status
fi

mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-${TMPDIR:-/tmp}/huatuo-inductor}"
export CUDA_DEVICE_MAX_CONNECTIONS=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
plan

say "1. device"
{ nvidia-smi -L 2>&1; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} | tee "$OUT/env.txt"

say "2. wheels"
mkdir -p "$SITE"
missing=$("$PY" - "$WHL" <<'PYEOF'
import importlib.util, pathlib, sys
modules = {"megatron_core": "megatron.core", "pytest": "pytest", "pluggy": "pluggy", "iniconfig": "iniconfig",
           "pytest_timeout": "pytest_timeout", "packaging": "packaging"}
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    dist = wheel.name.split("-")[0]
    module = modules.get(dist, dist)
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        print(wheel)
PYEOF
)
if [ -n "$missing" ]; then
  echo "installing: $(echo $missing | xargs -n1 basename | tr '\n' ' ')"
  # shellcheck disable=SC2086
  "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" $missing 2>&1 | tail -5
else
  echo "nothing to install"
fi
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import megatron.core, pytest; from megatron_huatuo.compat import check_megatron_core; print('megatron-core', check_megatron_core())" \
  2>&1 | tee -a "$OUT/env.txt"

say "3. pytest -m gpu"
(cd "$ROOT" && timeout "$PYTEST_CAP" "$PY" -m pytest -m gpu "${GPU_TESTS[@]}" -q -p no:cacheprovider \
   --junitxml="$OUT/pytest.xml" > "$OUT/pytest.log" 2>&1)
echo "pytest exit $?: $(tail -1 "$OUT/pytest.log")"

step=4
for entry in "${CASES[@]}"; do
  name="${entry%%:*}"; cap="${entry##*:}"
  left=$(( BUDGET_S - ($(date +%s) - START) ))
  if [ "$left" -lt "$cap" ]; then
    say "${step}. skip ${name}: ${left} s left, cap ${cap} s"
    echo "{\"case\": \"${name}\", \"kind\": \"skipped\", \"error\": \"skipped: ${left} s of the budget left, cap ${cap} s\"}" \
      > "$OUT/case-${name}.json"
  else
    say "${step}. ${name}"
    (cd "$ROOT" && timeout "$cap" "$PY" bench/gpu_throughput.py --case "$name" --out "$OUT" \
       ${DEVICE_CHECK_SMOKE:+--smoke} > "$OUT/case-${name}.log" 2>&1)
    rc=$?
    grep -E "^== |^hf step|^attention \{|^train \{" "$OUT/case-${name}.log" | tail -4
    if [ ! -s "$OUT/case-${name}.json" ]; then
      echo "{\"case\": \"${name}\", \"kind\": \"failed\", \"error\": \"exit ${rc} (124 = over its ${cap} s cap); see case-${name}.log\"}" \
        > "$OUT/case-${name}.json"
    fi
  fi
  step=$((step + 1))
done

say "${step}. table"
(cd "$ROOT" && "$PY" bench/gpu_throughput.py --report "$OUT")
say "done"
