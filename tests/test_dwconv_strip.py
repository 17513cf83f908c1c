"""The CUDA depthwise strip kernel's arithmetic (csrc/kernels/cuda/dwconv_strip.cuh) on the CPU, without a GPU:
tests/dwconv_strip_host.cc runs it for every thread of random geometries against a direct int32 reference,
built with AddressSanitizer and UBSan so a read outside the input or the weight fails too. On a GPU the kernel
itself is checked by tests/test_cuda_conv.py::test_depthwise_kernels_exact."""
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_strip_sums_match_the_reference(tmp_path):
    exe = str(tmp_path / "dwconv_strip_host")
    flags = ["-std=c++17", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-Wall",
             "-Wextra", "-Wno-unknown-pragmas", "-Werror"]
    build = subprocess.run([CXX, *flags, "-I", os.path.join(ROOT, "csrc", "kernels", "cuda"),
                            os.path.join(HERE, "dwconv_strip_host.cc"), "-o", exe], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([exe], capture_output=True, text=True, env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0"})
    assert run.returncode == 0 and run.stdout.startswith("ok "), run.stdout[-2000:] + run.stderr[-4000:]
    cases, outputs = (int(v) for v in run.stdout.split()[1:3])
    assert cases >= 300 and outputs >= 100_000, run.stdout
