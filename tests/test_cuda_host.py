"""Parts of the CUDA kernels written as plain functions for both sides (FI_HOST_DEVICE), checked on the CPU
without a GPU: each tests/*_host.cc program runs them against a direct reference, built with AddressSanitizer
and UBSan so a read outside a buffer fails too.
- dwconv_strip_host.cc: the depthwise strip kernel's arithmetic (csrc/kernels/cuda/dwconv_strip.cuh) for every
  thread of random geometries, bit for bit against a direct int32 sum (on a GPU the kernel itself is checked by
  tests/test_cuda_conv.py::test_depthwise_kernels_exact);
- weight_layout_host.cc: the weight-only kernels' weight addressing (params.h, weight_offset) in both layouts:
  every 16-byte chunk they read holds the weight's own bytes (on a GPU: tests/test_cuda.py::test_weight_only_tiles)."""
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


# (program, at least this many cases, at least this many checked items: outputs or chunks)
@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
@pytest.mark.parametrize("source,min_cases,min_items", [("dwconv_strip_host.cc", 300, 100_000),
                                                        ("weight_layout_host.cc", 300, 50_000)])
def test_host_program(tmp_path, source, min_cases, min_items):
    exe = str(tmp_path / source.replace(".cc", ""))
    flags = ["-std=c++17", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-Wall",
             "-Wextra", "-Wno-unknown-pragmas", "-Werror"]
    build = subprocess.run([CXX, *flags, "-I", os.path.join(ROOT, "csrc", "kernels", "cuda"),
                            os.path.join(HERE, source), "-o", exe], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([exe], capture_output=True, text=True, env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0"})
    assert run.returncode == 0 and run.stdout.startswith("ok "), run.stdout[-2000:] + run.stderr[-4000:]
    cases, items = (int(v) for v in run.stdout.split()[1:3])
    assert cases >= min_cases and items >= min_items, run.stdout
