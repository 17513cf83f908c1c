#!/usr/bin/env bash
# One-call GPU check (the device tool's H100/H200 machine: torch with CUDA, nvcc, ninja, no package
# registry): build the CUDA extension in parallel, look for the tensor-core instructions in the SASS,
# run the CUDA tests (dense int8, 2:4 sparse, int8 conv), compute-sanitizer memcheck on a subset, the GPU
# linear, 2:4 and conv benchmarks, a torch.profiler look at the cases that missed (gpu_profile.py) and their
# hardware counters (gpu_ncu.py, where Nsight Compute is installed), and print a short table last.
# Budget: GPU_CHECK_SECONDS (480 s) on a 16-core H100/H200 host: each step gets a share of
# what is left (`timeout`), correctness first, so the summary always prints. A machine start took about 30 s
# on 2026-12-04, so a full call costs about 6 of the session's 15 minutes: room for a rerun (with the carried
# build below, a rerun after a Python-only change skips the build; a machine still warm keeps build/ and
# ninja rebuilds only what changed).
#
# Wheels the machine lacks travel in .whl (ignored by git: `echo /.whl/ >> .git/info/exclude`), fetched
# here beforehand:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform any -d .whl nvidia-cutlass==4.2.0.0 expecttest==0.3.0
# Call: device run with carry [".whl"], command `bash benchmarks/gpu_check.sh`, timeout_s 510. What comes back
# under $OUT (at most 8 files): logs.tgz (every log), the benchmark and profile JSONs, summary.txt, prebuilt.tgz (the
# built extension: copy it to .gpubuild/ and carry [".whl", ".gpubuild"] so that a rerun skips the build).
# GPU_CHECK_SKIP_BENCH=1 stops after the tests and the sanitizer (a correctness rerun), GPU_CHECK_SKIP_SASS=1
# skips the SASS read (20 s). Seen on an H200 host (2026-12-04): build 74 s (8 CUTLASS units; 14 since), tests
# 67 s (4 pytest processes, 329 tests), sanitizer subset 5 s, benchmarks about 130 s; a machine start 30 s;
# the whole call 308-332 s.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build: benchmarks/*.py import fastinfer from here
PY=${PY:-python3}
RESULT=${OUT:-/tmp/gpu_check_out}  # what the device tool brings back: at most 8 files, so logs travel as one tgz
OUT=/tmp/gpu_check_logs            # logs and JSONs while the steps run
mkdir -p "$OUT" "$RESULT"
t0=$(date +%s)
BUDGET=${GPU_CHECK_SECONDS:-480}
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
# cap WANT RESERVE: seconds for the next step: WANT, or less so that RESERVE seconds of the budget remain
cap() { local r=$(( BUDGET - ($(date +%s) - t0) - $2 )); (( r < $1 )) || r=$1; (( r >= 5 )) || r=5; echo "$r"; }
# After every step: what exists so far goes to $RESULT, so a call killed at its limit still brings it back.
save() { cp "$OUT"/*.json "$RESULT"/ 2>/dev/null; tar czf "$RESULT/logs.tgz" -C "$OUT" . 2>/dev/null; true; }

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "no GPU visible to torch"; exit 1; }
# torch builds in parallel only with the ninja binary on PATH (else one unit at a time: ~10 minutes)
if ! command -v ninja >/dev/null; then
  nb=$($PY -c "import ninja; print(ninja.BIN_DIR)" 2>/dev/null) && export PATH="$nb:$PATH"
fi
command -v ninja >/dev/null || echo "WARNING: no ninja: torch will compile one unit at a time"

# A build from an earlier call of this session travels back in .gpubuild/prebuilt.tgz (the device machine keeps
# nothing): where the sources it was built from are unchanged (same hash of csrc/, setup.py, build_config.py),
# it is used as is and the 2-4 minute build is skipped, so a rerun after a Python-only fix fits the lease.
src_hash=$(find csrc setup.py build_config.py -type f | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)
prebuilt=0
if [[ -f .gpubuild/prebuilt.tgz ]] && tar xzf .gpubuild/prebuilt.tgz -C /tmp && [[ "$(cat /tmp/prebuilt/src_hash 2>/dev/null)" == "$src_hash" ]] \
    && cp /tmp/prebuilt/_C*.so fastinfer/; then
  prebuilt=1; stamp "build: reusing the carried build of these sources ($src_hash)"
else
  stamp "build (FASTINFER_CUDA=1, ninja, $(nproc) jobs, nvcc --threads 3)"
  if ! FASTINFER_CUDA=1 FASTINFER_NVCC_THREADS=3 MAX_JOBS=$(nproc) timeout "$(cap 260 80)" $PY setup.py build_ext --inplace \
      >"$OUT/build.log" 2>&1; then
    tail -60 "$OUT/build.log"; save; echo "BUILD FAILED (rc 124: out of time)"; exit 1
  fi
  stamp "build done"
fi
$PY -c "import fastinfer, json; from fastinfer import ops; print('fastinfer build', ops.BUILD, 'cuda_available', ops.cuda_available())"
# The extension must use the process's libstdc++ (setup.py's link_args say why); its first iostream use,
# cpu_capabilities, is where a static copy crashed (H200 image, 2026-12-04).
readelf -d fastinfer/_C*.so | grep -q 'libstdc++' || echo "WARNING: fastinfer/_C*.so does not link libstdc++.so (a static copy?)"
if ! $PY -c "import fastinfer; print('CPU', fastinfer.cpu_capabilities()['detected'])"; then
  save; echo "SMOKE TEST FAILED: fastinfer.cpu_capabilities() (rc 139: SIGSEGV)"; exit 1
fi
# On Hopper the CUTLASS kernels must be in: without the carried nvidia-cutlass wheel they are not, and the
# sm90 tests would skip (and the conv tests expect the gathered path) instead of failing.
if ! $PY -c "import sys, torch; from fastinfer import ops; sys.exit(0 if torch.cuda.get_device_capability()[0] != 9 or (ops.BUILD['cutlass_sm90'] and ops.BUILD['sparse24']) else 1)"; then
  save; echo "BUILD INCOMPLETE: a Hopper GPU but no CUTLASS kernels (carry .whl with nvidia-cutlass: see the header)"; exit 1
fi
save
if (( ! prebuilt )); then  # the build, for a rerun (under 16 MiB compressed, the most one returned file may hold)
  mkdir -p /tmp/prebuilt && rm -f /tmp/prebuilt/* && cp fastinfer/_C*.so /tmp/prebuilt/ && echo "$src_hash" >/tmp/prebuilt/src_hash \
    && tar czf "$RESULT/prebuilt.tgz" -C /tmp prebuilt && ls -la "$RESULT/prebuilt.tgz"
  (( $(stat -c %s "$RESULT/prebuilt.tgz" 2>/dev/null || echo 0) < 16000000 )) || rm -f "$RESULT/prebuilt.tgz"
fi

stamp "SASS: the tensor-core instructions of every kernel (tests/sass_check.py; make cuda-check does it off-GPU)"
if command -v cuobjdump >/dev/null && [[ -z "${GPU_CHECK_SKIP_SASS:-}" ]]; then
  timeout 30 $PY tests/sass_check.py "$(ls fastinfer/_C*.so | head -1)" >"$OUT/sass_check.txt" 2>&1
  grep -E "FAILED|passed" "$OUT/sass_check.txt"
fi

stamp "CUDA tests"
# The image's many pytest plugins stay unloaded (the suite needs none; the first run on an H200 died with
# SIGSEGV before pytest printed a line), and a crash prints its Python stack.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONFAULTHANDLER=1
xdist=(); $PY -c "import xdist" 2>/dev/null && xdist=(-p xdist.plugin -n 4)  # 4 processes share the GPU
# Seconds the steps after the tests keep: the sanitizer (60) always; the benchmarks (150 more: the linear one
# sweeps the Hopper GEMM's compositions and swizzles) only while the tests' 170 s still fit, so that a short
# budget cuts benchmarks, not tests (on 2026-12-04 a 440 s budget left the tests 90 s and cut them at 61%).
skip_bench=${GPU_CHECK_SKIP_BENCH:+1}
left=$(( BUDGET - ($(date +%s) - t0) ))
test_reserve=$(( skip_bench || left < 170 + 210 ? 60 : 210 )) san_reserve=$(( skip_bench ? 0 : 150 ))
# The nvcc compile check is deselected: the build above compiled every kernel (make cuda-check covers it).
# -rs: the reason of every skip (a skip on a GPU host is a finding).
timeout "$(cap 170 $test_reserve)" $PY -m pytest -q -rs "${xdist[@]}" tests/test_cuda.py tests/test_cuda_sparse.py tests/test_cuda_conv.py \
  tests/test_cuda_build.py --deselect tests/test_cuda_build.py::test_cuda_sources_compile_for_sm80_and_sm90a 2>&1 \
  | tee "$OUT/tests.log" | tail -25
tests_rc=${PIPESTATUS[0]}
save

stamp "compute-sanitizer memcheck (a subset, one process; before the benchmarks: correctness first)"
# Each kernel family on shapes that miss its tiles: the sm_80 GEMM (M sweep to 127, K=13, N=7), the sm90
# GEMM (513 rows, bf16 out, bias; its pingpong and wide compositions at 65 x 272 x 136), the weight-only
# kernels (16 rows fp32; 17 and 48 rows on tensor cores with a K split, 17 rows of K=13 without; the 256-k
# rounds at 16, 33 and 64 rows; the Tiles8x64 weight layout at 3 rows fp32, 9 and 17 rows, 33 rows in 256-k
# rounds) and its cuBLAS side (65 rows), the quantize kernels (vectorized: K=1000 bf16;
# scalar: K=1001 fp32), the 2:4 GEMM and compressor (N=7, K=2323; each composition), and the conv paths (sm90
# implicit GEMM in its three compositions, a dynamically quantized input, gathered rows with C=3, depthwise 3x3
# (4-byte loads; single bytes for odd C) and 5x5, the depthwise strip kernel (3x3 stride 2, 7x7 padded 3 with
# 23 columns, 7x7 stride 2 padded 7 in strips of 4, 3 columns in strips of 4), stride 9 gathered, the direct
# grouped kernel's three ways: dp4a with fp32 out, dp4a with groups across a quad, single bytes). Without
# torch's caching allocator, so that every tensor is its own allocation and an access past one is caught
# (inside a pooled block it would not be); torch's and cuBLAS's own failing-but-handled API calls are not
# counted as errors.
if command -v compute-sanitizer >/dev/null; then
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$(cap 80 $san_reserve)" compute-sanitizer --tool memcheck --report-api-errors no \
    --error-exitcode 9 $PY -m pytest -q -x \
    "tests/test_cuda.py::test_int8_mm_m_sweep[13-7]" \
    "tests/test_cuda.py::test_int8_scaled_mm_epilogue_exact[513-4096-136-True-out_dtype1]" \
    "tests/test_cuda.py::test_hopper_gemm_variants_exact[65-272-136-pingpong]" \
    "tests/test_cuda.py::test_hopper_gemm_variants_exact[65-272-136-wide]" \
    "tests/test_cuda.py::test_weight_only[13-7-16-dtype0]" "tests/test_cuda.py::test_weight_only[4096-300-17-dtype1]" \
    "tests/test_cuda.py::test_weight_only[1000-70-48-dtype2]" "tests/test_cuda.py::test_weight_only[13-7-17-dtype1]" \
    "tests/test_cuda.py::test_weight_only[4096-300-65-dtype1]" \
    "tests/test_cuda.py::test_weight_only_round_256[2064-520-16-dtype0]" \
    "tests/test_cuda.py::test_weight_only_round_256[1000-70-33-dtype1]" \
    "tests/test_cuda.py::test_weight_only_round_256[4096-300-64-dtype0]" \
    "tests/test_cuda.py::test_weight_only_tiles[1000-70-3-0-64]" \
    "tests/test_cuda.py::test_weight_only_tiles[13-7-9-1-64]" \
    "tests/test_cuda.py::test_weight_only_tiles[4096-300-17-2-64]" \
    "tests/test_cuda.py::test_weight_only_tiles[2064-520-33-1-256]" \
    tests/test_cuda.py::test_quantize_per_token "tests/test_cuda.py::test_quantize_kernels[1000-dtype1]" \
    "tests/test_cuda.py::test_quantize_kernels[1001-dtype0]" \
    "tests/test_cuda_sparse.py::test_sparse24_linear_bit_exact[out0-7-2323]" \
    "tests/test_cuda_sparse.py::test_sparse24_variants_exact[7-2323-pingpong]" \
    "tests/test_cuda_sparse.py::test_sparse24_variants_exact[7-2323-wide]" \
    tests/test_cuda_sparse.py::test_refuses_a_weight_that_is_not_2_4 \
    "tests/test_cuda_conv.py::test_conv_matches_reference[c64-3x3-int8out-relu]" \
    "tests/test_cuda_conv.py::test_conv_matches_reference[c64-3x3-dynamic]" \
    "tests/test_cuda_conv.py::test_sm90_conv_compositions_exact[stride2-cooperative]" \
    "tests/test_cuda_conv.py::test_sm90_conv_compositions_exact[wide-layer-small]" \
    "tests/test_cuda_conv.py::test_conv_matches_reference[c3-cout13-int8out-relu]" \
    "tests/test_cuda_conv.py::test_conv_matches_reference[dw-odd-int8out-relu]" \
    "tests/test_cuda_conv.py::test_conv_matches_reference[dw-static-relu]" \
    "tests/test_cuda_conv.py::test_conv_matches_reference[dw-5x5-int8out-relu]" \
    "tests/test_cuda_conv.py::test_depthwise_kernels_exact[dw1-strip]" \
    "tests/test_cuda_conv.py::test_depthwise_kernels_exact[dw4-strip]" \
    "tests/test_cuda_conv.py::test_depthwise_kernels_exact[dw5-strip4]" \
    "tests/test_cuda_conv.py::test_depthwise_kernels_exact[dw7-strip4]" \
    "tests/test_cuda_conv.py::test_conv_matches_reference[stride9-int8out-relu]" \
    "tests/test_cuda_conv.py::test_conv_matches_reference[g32-static-relu]" \
    "tests/test_cuda_conv.py::test_conv_matches_reference[g6-c4-int8out]" \
    "tests/test_cuda_conv.py::test_conv_matches_reference[g3-c2-int8out-relu]" >"$OUT/sanitizer.log" 2>&1
  san_rc=$?
  tail -8 "$OUT/sanitizer.log"
  # Shared-memory races: racecheck on the weight-only kernel's cp.async rings (64-k and 256-k rounds), the
  # sm_80 GEMM's multistage pipeline and the depthwise strip kernel (a few seconds; memcheck cannot see them).
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$(cap 40 $san_reserve)" compute-sanitizer --tool racecheck \
    --report-api-errors no --error-exitcode 9 $PY -m pytest -q -x \
    "tests/test_cuda.py::test_weight_only[1000-70-48-dtype2]" \
    "tests/test_cuda.py::test_weight_only_round_256[4096-300-64-dtype0]" \
    "tests/test_cuda.py::test_int8_mm_m_sweep[13-7]" \
    "tests/test_cuda_conv.py::test_depthwise_kernels_exact[dw4-strip]" >"$OUT/racecheck.log" 2>&1
  race_rc=$?
  tail -4 "$OUT/racecheck.log"
else
  san_rc=0; race_rc=0; echo "compute-sanitizer not found"
fi
save

if (( skip_bench )); then  # a rerun that only checks correctness
  stamp "benchmarks skipped (GPU_CHECK_SKIP_BENCH)"; tail -30 "$OUT/tests.log"; exit 0
fi
stamp "GPU benchmarks"
timeout "$(cap 100 45)" $PY benchmarks/bench_linear.py --device cuda --json "$OUT/bench_cuda.json" >"$OUT/bench.log" 2>&1
bench_rc=$?
grep -E "^#|^ *(1|16|128|2048|8192) " "$OUT/bench.log" | head -60
save
timeout "$(cap 30 20)" $PY benchmarks/bench_sparse.py --device cuda --json "$OUT/bench_sparse_cuda.json" >"$OUT/bench_sparse.log" 2>&1
bench_sparse_rc=$?
grep -E "^ *[0-9]+ " "$OUT/bench_sparse.log" | head -40
save
timeout "$(cap 50 5)" $PY benchmarks/bench_conv.py --device cuda --json "$OUT/bench_conv_cuda.json" >"$OUT/bench_conv.log" 2>&1
bench_conv_rc=$?
grep -vE "^(#|targets| )" "$OUT/bench_conv.log" | head -40

save
stamp "profile: where the time of the cases that missed goes (benchmarks/gpu_profile.py; torch.profiler)"
timeout "$(cap 40 5)" $PY benchmarks/gpu_profile.py --json "$OUT/profile.json" >"$OUT/profile.log" 2>&1
grep -E "^==|^ +[0-9.]+ +[0-9.]+ +[0-9]+ " "$OUT/profile.log" | head -60

save
stamp "ncu: hardware counters of those kernels (benchmarks/gpu_ncu.py: DRAM rate, occupancy, stall reasons)"
mkdir -p "$OUT/ncu"
timeout "$(cap 75 5)" $PY benchmarks/gpu_ncu.py --json "$OUT/ncu/ncu.json" >"$OUT/ncu/ncu.log" 2>&1
head -70 "$OUT/ncu/ncu.log"

stamp "summary (rc 124: the step ran out of its share of the budget)"
{
  echo "tests rc=$tests_rc  sanitizer rc=$san_rc (racecheck $race_rc)  bench rc=$bench_rc (sparse $bench_sparse_rc, conv $bench_conv_rc)"
  grep -E "passed|failed" "$OUT/tests.log" | tail -1
  sed -n '/targets (from this run)/,$p' "$OUT/bench.log"
  sed -n '/targets (issue #5/,$p' "$OUT/bench_sparse.log"
  sed -n '/targets (issue #6/,$p' "$OUT/bench_conv.log"
} | tee "$OUT/summary.txt"
cp "$OUT/summary.txt" "$RESULT"/
save
stamp "done"
