#!/usr/bin/env bash
# The whole CUDA build, checked on a machine with nvcc and no GPU (`make cuda-check`; CI runs it):
#   1. a virtualenv (.venv-cuda) with the GPU machine's torch, a CUDA 13.0 build (CUDA_TORCH, 2.11.0+cu130),
#      plus the CUTLASS headers and NVIDIA's cuobjdump/nvdisasm from their wheels;
#   2. the extension built with its CUDA kernels (FASTINFER_CUDA=1, sm_80 + sm_90a) in a scratch copy of the
#      tree (build/cuda-check/src), as benchmarks/gpu_check.sh builds it there;
#   3. the built module loaded under that torch (an unresolved symbol or an ABI mismatch fails here, not in
#      the GPU session), the build flags read back, and the tests that touch a CUDA build run on the CPU
#      (the GPU tests collect and skip);
#   4. the SASS read: every kernel holds the tensor-core instructions it was written for (tests/sass_check.py).
# Tests/tensor-core kernels themselves only run on a GPU (benchmarks/gpu_check.sh).
# Needs nvcc (else it says so and stops: nothing to check) and pip access to torch==$CUDA_TORCH and its CUDA
# wheels (about 4.6 GB installed). First run about 6 minutes on 2 cores, later runs rebuild what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CUDA_TORCH=${CUDA_TORCH:-2.11.0}
VENV=${CUDA_VENV:-$ROOT/.venv-cuda}
WORK=${CUDA_CHECK_DIR:-$ROOT/build/cuda-check}
PY=$VENV/bin/python
t0=$(date +%s)
stamp() { echo "[cuda-check $(( $(date +%s) - t0 )) s] $*"; }

if ! command -v nvcc >/dev/null; then
  echo "cuda-check: nvcc is not installed: no CUDA build to check"
  exit 0
fi
if [ -z "${CUDA_HOME:-}" ]; then  # the toolkit nvcc runs from (it may be a wrapper script on PATH)
  top=$(nvcc -dryrun -c -x cu /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
  CUDA_HOME=$(cd "${top:-/usr/local/cuda}" && pwd -P)
fi
export CUDA_HOME

stamp "virtualenv $VENV (torch==$CUDA_TORCH with CUDA)"
deps="$VENV/.deps-$CUDA_TORCH"
if [ ! -f "$deps" ]; then
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -m pip install -qq --no-cache-dir "torch==$CUDA_TORCH" numpy tqdm scikit-learn pytest expecttest ninja \
    "setuptools>=64,<82" wheel
  "$PY" -m pip install -qq --no-cache-dir --no-deps nvidia-cutlass==4.2.0.0 nvidia-cuda-cuobjdump==13.2.86 \
    nvidia-cuda-nvdisasm==13.5.37
  touch "$deps"
fi
"$PY" - <<'EOF'
import subprocess, torch
nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); nvcc: {nvcc}")
assert torch.version.cuda, "this torch has no CUDA: the check needs a CUDA build of torch"
EOF

stamp "copy of the tree -> $WORK/src (mtimes kept: ninja rebuilds what changed)"
mkdir -p "$WORK/src"
rm -rf "$WORK/src/csrc" "$WORK/src/tests" "$WORK/src/benchmarks"  # files deleted here must not linger there
git ls-files -z -co --exclude-standard -- csrc fastinfer tests benchmarks setup.py build_config.py pyproject.toml \
  | xargs -0 sh -c 'for f; do if [ -e "$f" ]; then cp -p --parents "$f" "$0"; fi; done' "$WORK/src"

stamp "build: FASTINFER_CUDA=1, sm_80 + sm_90a"
cd "$WORK/src"
if ! FASTINFER_CUDA=1 MAX_JOBS=${MAX_JOBS:-2} "$PY" setup.py build_ext --inplace >"$WORK/build.log" 2>&1; then
  grep -E "error|Error" "$WORK/build.log" | head -30
  tail -30 "$WORK/build.log"
  echo "cuda-check: BUILD FAILED (log: $WORK/build.log)"
  exit 1
fi

stamp "load under torch $CUDA_TORCH"
"$PY" - <<'EOF'
import fastinfer
from fastinfer import ops
want = {"cuda": True, "cutlass_sm90": True, "sparse24": True}
got = {k: ops.BUILD.get(k) for k in want}
print("fastinfer", fastinfer.__version__, "BUILD", ops.BUILD, "GPU visible:", ops.cuda_available())
assert got == want, f"the CUDA build lacks kernels: {got}"
assert ops.LINEAR_DEVICES == ("cpu", "cuda")
EOF

stamp "tests that touch the CUDA build (the GPU ones collect and skip here)"
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_build.py tests/test_cuda.py tests/test_cuda_sparse.py \
  tests/test_cuda_conv.py tests/test_bad_input.py tests/test_demo.py \
  --deselect tests/test_cuda_build.py::test_cuda_sources_compile_for_sm80_and_sm90a 2>&1 | tail -4
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || { echo "cuda-check: TESTS FAILED"; exit 1; }

stamp "SASS"
bin=$(echo "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin)
chmod +x "$bin"/* 2>/dev/null || true
PATH=$bin:$PATH "$PY" tests/sass_check.py fastinfer/_C*.so --cuobjdump "$bin/cuobjdump"
stamp "passed"
