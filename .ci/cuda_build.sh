#!/usr/bin/env bash
# Compile and link the CUDA extension (adkernels._C_cuda) against a CUDA build of torch, and
# check that it imports and registers a CUDA kernel for every op that has a CPU one. Needs nvcc,
# not a GPU.
#
#   .ci/cuda_build.sh [VENV]        VENV defaults to /tmp/adk-cuda-venv (kept between runs)
#
# Environment: ADK_CUDA_TORCH (torch version, pinned; default 2.14.1), ADK_CUDA_BUILD_DIR
# (where the source is copied and built; default a fresh temp dir, removed on exit unless
# ADK_KEEP_BUILD=1), TORCH_CUDA_ARCH_LIST (default "8.0;9.0+PTX"), MAX_JOBS, PYTHON.
#
# The repository's own build (the CPU extension in adkernels/ and build/) is never touched:
# the tracked and untracked-but-not-ignored files are copied into the build dir first.
set -euo pipefail

t_start=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${1:-/tmp/adk-cuda-venv}
TORCH_VERSION=${ADK_CUDA_TORCH:-2.14.1}
PYTHON=${PYTHON:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0+PTX"}

log() { echo "[cuda_build] $*"; }
die() { echo "[cuda_build] ERROR: $*" >&2; exit 1; }

# --- toolkit ---------------------------------------------------------------------------------
NVCC=$(command -v nvcc || true)
[[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]] && NVCC=/usr/local/cuda/bin/nvcc
[[ -n "$NVCC" ]] || die "nvcc not found on PATH (install a CUDA toolkit)"
NVCC=$(readlink -f "$NVCC")
# nvcc may be a wrapper script (e.g. /usr/local/bin/nvcc exec-ing the real one): ask nvcc
# where it lives (_HERE_ of --dryrun) and take the folder above its bin/.
here=$("$NVCC" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -n1 || true)
[[ -n "$here" ]] && NVCC=$(readlink -f "$here/nvcc")
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}
[[ -x "$CUDA_HOME/bin/nvcc" ]] || die "CUDA_HOME=$CUDA_HOME has no bin/nvcc"
[[ -f "$CUDA_HOME/include/cuda_runtime.h" ]] || die "CUDA_HOME=$CUDA_HOME has no include/cuda_runtime.h"
export PATH="$CUDA_HOME/bin:$PATH"
log "nvcc: $("$CUDA_HOME/bin/nvcc" --version | grep -o 'release [0-9.]*') at $CUDA_HOME; arch list $TORCH_CUDA_ARCH_LIST"

# --- venv with a pinned CUDA torch (reused when it already has the right one) ----------------
t0=$(date +%s)
have_torch() {
  [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" - "$TORCH_VERSION" <<'EOF' 2>/dev/null
import sys, torch
ok = torch.__version__.split("+")[0] == sys.argv[1] and torch.version.cuda is not None
sys.exit(0 if ok else 1)
EOF
}
if have_torch; then
  log "reusing $VENV"
else
  log "creating $VENV with torch==$TORCH_VERSION (CUDA build)"
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" numpy setuptools wheel pytest hypothesis expecttest \
    > "$VENV/pip-install.log" 2>&1 || { tail -n 30 "$VENV/pip-install.log" >&2; die "pip install failed"; }
  have_torch || die "torch==$TORCH_VERSION in $VENV is not a CUDA build"
fi
PY="$VENV/bin/python"
t_venv=$(( $(date +%s) - t0 ))
log "torch $("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)') (${t_venv}s)"

# CUDA runtime headers that torch's wheel depends on (nvidia/cu13/include); setup.py globs them.
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
shopt -s nullglob
nv_inc=("$SITE"/nvidia/cu*/include)
shopt -u nullglob
if (( ${#nv_inc[@]} )); then log "nvidia include dirs: ${nv_inc[*]}"; else log "no site-packages/nvidia/cu*/include (toolkit headers only)"; fi

# --- copy the source and build there ----------------------------------------------------------
if [[ -n "${ADK_CUDA_BUILD_DIR:-}" ]]; then
  BUILD=$ADK_CUDA_BUILD_DIR
  mkdir -p "$BUILD"
else
  BUILD=$(mktemp -d /tmp/adk-cuda-build.XXXXXX)
  [[ "${ADK_KEEP_BUILD:-0}" == 1 ]] || trap 'rm -rf "$BUILD"' EXIT
fi
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -C "$BUILD" -xf -
log "building in $BUILD"

t0=$(date +%s)
(cd "$BUILD" && MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" setup.py -q build_ext --inplace) > "$BUILD/build.log" 2>&1 || {
  tail -n 60 "$BUILD/build.log" >&2
  die "build failed (full log: $BUILD/build.log)"
}
t_build=$(( $(date +%s) - t0 ))
so=$(cd "$BUILD" && ls adkernels/_C_cuda*.so 2>/dev/null || true)
[[ -n "$so" ]] || { tail -n 40 "$BUILD/build.log" >&2; die "adkernels/_C_cuda*.so was not built (was CUDA found by setup.py?)"; }
# Warnings of the CUDA sources only (the CPU extension is checked by the ordinary build).
if grep -q -E "csrc/cuda/.*warning" "$BUILD/build.log"; then
  log "warnings in csrc/cuda:"; grep -E -A3 "csrc/cuda/.*warning" "$BUILD/build.log" | head -n 40
fi

# --- import check (works without a GPU) -------------------------------------------------------
(cd "$BUILD" && "$PY" - <<'EOF')
import torch
import adkernels

assert adkernels._C_loaded(), adkernels._C_error
assert adkernels._cuda_loaded(), adkernels._cuda_error
# Every op with a CPU kernel must have a CUDA kernel too (schemas: csrc/ops.cpp).
ops = sorted(
    name for name in torch._C._dispatch_get_all_op_names()
    if name.startswith("adkernels::") and torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU")
)
assert ops, "no adkernels ops registered for CPU"
missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")]
assert not missing, f"no CUDA kernel for {missing}"
print(f"[cuda_build] import ok: CUDA kernels for {len(ops)} ops ({', '.join(o.split('::')[1] for o in ops)});",
      "cuda available:", torch.cuda.is_available())
EOF

sizes=$(cd "$BUILD" && du -h "$so" | cut -f1)
log "OK: torch $TORCH_VERSION, sm ${TORCH_CUDA_ARCH_LIST}; venv ${t_venv}s, build ${t_build}s ($so, $sizes), total $(( $(date +%s) - t_start ))s"
