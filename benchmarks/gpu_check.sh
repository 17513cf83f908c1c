#!/usr/bin/env bash
# One-call GPU check (the device tool's H100/H200 machine: torch with CUDA, nvcc, ninja, no package
# registry): build the CUDA extension in parallel, look for the tensor-core instructions in the SASS,
# run the CUDA tests (dense int8, 2:4 sparse, int8 conv), compute-sanitizer memcheck on a subset, the GPU
# linear, 2:4 and conv benchmarks, and print a short table last. Budget: under 6 minutes on a 16-core H100 host.
#
# Wheels the machine lacks travel in .whl (ignored by git: `echo /.whl/ >> .git/info/exclude`), fetched
# here beforehand:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform any -d .whl nvidia-cutlass==4.2.0.0 expecttest==0.3.0
# Call: device run with carry [".whl"], command `bash benchmarks/gpu_check.sh`, timeout_s 420.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "no GPU visible to torch"; exit 1; }

stamp "build (FASTINFER_CUDA=1, ninja, $(nproc) jobs)"
if ! FASTINFER_CUDA=1 MAX_JOBS=$(nproc) $PY setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
$PY -c "import fastinfer, json; from fastinfer import ops; print('fastinfer build', ops.BUILD, 'cuda_available', ops.cuda_available())"

stamp "SASS: the tensor-core instructions of every kernel (tests/sass_check.py; make cuda-check does it off-GPU)"
if command -v cuobjdump >/dev/null; then
  $PY tests/sass_check.py "$(ls fastinfer/_C*.so | head -1)" >"$OUT/sass_check.txt" 2>&1
  grep -E "FAILED|passed" "$OUT/sass_check.txt"
fi

stamp "CUDA tests"
$PY -m pytest -q tests/test_cuda.py tests/test_cuda_sparse.py tests/test_cuda_conv.py tests/test_cuda_build.py 2>&1 | tee "$OUT/tests.log" | tail -25
tests_rc=${PIPESTATUS[0]}

stamp "compute-sanitizer memcheck (subset)"
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest -q -x tests/test_cuda.py \
    -k "m_sweep and 13 or weight_only and 13 and 17 or quantize_per_token or scaled_mm_epilogue_exact and 513" \
    >"$OUT/sanitizer.log" 2>&1
  san_rc=$?
  tail -8 "$OUT/sanitizer.log"
  compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest -q -x tests/test_cuda_sparse.py \
    -k "bit_exact and 7-2323 and float32 or not_2_4" >"$OUT/sanitizer_sparse.log" 2>&1
  san_sparse_rc=$?
  tail -4 "$OUT/sanitizer_sparse.log"
  compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest -q -x tests/test_cuda_conv.py \
    -k "matches_reference and int8out-relu] and (c64-3x3 or c3-cout13 or dw-odd)" >"$OUT/sanitizer_conv.log" 2>&1
  san_conv_rc=$?
  tail -4 "$OUT/sanitizer_conv.log"
else
  san_rc=0; san_sparse_rc=0; san_conv_rc=0; echo "compute-sanitizer not found"
fi

stamp "GPU benchmark"
$PY benchmarks/bench_linear.py --device cuda --json "$OUT/bench_cuda.json" >"$OUT/bench.log" 2>&1
bench_rc=$?
grep -E "^ *(1|16|128|2048|8192) " "$OUT/bench.log" | head -60
$PY benchmarks/bench_sparse.py --device cuda --json "$OUT/bench_sparse_cuda.json" >"$OUT/bench_sparse.log" 2>&1
bench_sparse_rc=$?
grep -vE "^(#|targets| )" "$OUT/bench_sparse.log" | head -40
$PY benchmarks/bench_conv.py --device cuda --json "$OUT/bench_conv_cuda.json" >"$OUT/bench_conv.log" 2>&1
bench_conv_rc=$?
grep -vE "^(#|targets| )" "$OUT/bench_conv.log" | head -40

stamp "summary"
echo "tests rc=$tests_rc  sanitizer rc=$san_rc (sparse $san_sparse_rc, conv $san_conv_rc)  bench rc=$bench_rc (sparse $bench_sparse_rc, conv $bench_conv_rc)"
sed -n '/targets (from this run)/,$p' "$OUT/bench.log"
sed -n '/targets (issue #5/,$p' "$OUT/bench_sparse.log"
sed -n '/targets (issue #6/,$p' "$OUT/bench_conv.log"
