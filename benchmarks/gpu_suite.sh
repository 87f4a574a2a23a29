#!/usr/bin/env bash
# The whole GPU check, on a machine with a CUDA GPU and nvcc:
#   1. build the CPU and CUDA extensions against a CUDA torch (.ci/cuda_build.sh: its own venv,
#      a copy of the source in a build dir, the repository's own build untouched)
#   2. run tests/gpu there, with missing GPU backends counted as failures, not skips
#   3. run benchmarks/bench_kd.py --device cuda, where that file exists
#
#   benchmarks/gpu_suite.sh [VENV] [-- BENCH_ARGS...]
#
# VENV defaults to /tmp/adk-cuda-venv. Environment: ADK_CUDA_BUILD_DIR (default: a fresh temp
# dir, kept: it holds build.log and benchmark results), PYTEST_ARGS (extra pytest arguments),
# plus those of .ci/cuda_build.sh. Exits non-zero on any failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=/tmp/adk-cuda-venv
if [[ $# -gt 0 && "$1" != "--" ]]; then VENV=$1; shift; fi
[[ "${1:-}" == "--" ]] && shift
BENCH_ARGS=("$@")
PY="$VENV/bin/python"
BUILD=${ADK_CUDA_BUILD_DIR:-$(mktemp -d /tmp/adk-gpu-suite.XXXXXX)}
export ADK_CUDA_BUILD_DIR=$BUILD ADK_KEEP_BUILD=1

log() { echo "[gpu_suite] $*"; }
t0=$(date +%s)

bash "$ROOT/.ci/cuda_build.sh" "$VENV"
t_build=$(( $(date +%s) - t0 ))

cd "$BUILD"
export PYTHONPATH="$BUILD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'EOF'
import torch
if not torch.cuda.is_available():
    raise SystemExit("[gpu_suite] no CUDA device visible to torch: the build passed, nothing ran on a GPU")
print("[gpu_suite] device:", torch.cuda.get_device_name(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
EOF

t1=$(date +%s)
# shellcheck disable=SC2086
ADKERNELS_REQUIRE_GPU_BACKENDS=1 "$PY" -m pytest -q -p no:cacheprovider tests/gpu ${PYTEST_ARGS:-}
t_tests=$(( $(date +%s) - t1 ))

t_bench=0
if [[ -f benchmarks/bench_kd.py ]]; then
  t2=$(date +%s)
  "$PY" benchmarks/bench_kd.py --device cuda --out "$BUILD/benchmarks/results" "${BENCH_ARGS[@]}"
  t_bench=$(( $(date +%s) - t2 ))
  log "benchmark results in $BUILD/benchmarks/results"
else
  log "benchmarks/bench_kd.py not found: no benchmark run"
fi

log "OK: build ${t_build}s, tests/gpu ${t_tests}s, bench ${t_bench}s, total $(( $(date +%s) - t0 ))s (build dir $BUILD)"
