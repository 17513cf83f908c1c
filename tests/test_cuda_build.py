"""The CUDA sources compile without a GPU: every kernel file for sm_80 and sm_90a (nvcc, -Xptxas -v; the
register/spill table is printed), the CUDA entry layer syntax-checked against torch's headers.
Skipped where nvcc is not installed. The kernels themselves run in tests/test_cuda.py (GPU only)."""
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_sources_compile_for_sm80_and_sm90a():
    r = subprocess.run([sys.executable, os.path.join(HERE, "cuda_compile.py"), "--jobs", "2"], capture_output=True,
                       text=True)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    for arch in ("sm_80", "sm_90a"):  # the tensor-core GEMM was really built for both
        assert any("int8_gemm_kernel<Tile<128, 128" in line and arch in line for line in lines), arch
    assert "COMPILE ERROR" not in r.stdout and "SYNTAX CHECK FAILED" not in r.stdout
    assert "WGMMA SERIALIZED" not in r.stdout
    if "CUTLASS headers: yes" in r.stdout:  # the Hopper kernels, dense and 2:4 sparse, were really built
        assert any("sm90 TMA warp-specialized" in line and "sm_90a" in line for line in lines)
        assert any("sm90 2:4 sparse" in line and "sm_90a" in line for line in lines)


def test_build_info_and_devices_are_consistent():
    import torch

    from fastinfer import ops
    assert set(ops.BUILD) >= {"cuda", "cutlass_sm90"}
    assert ops.SUPPORTED_DEVICES == ("cpu",)
    assert ops.LINEAR_DEVICES == (("cpu", "cuda") if ops.BUILD["cuda"] else ("cpu",))
    assert ops.cuda_available() == (ops.BUILD["cuda"] and torch.cuda.is_available())
    if not ops.BUILD["cuda"]:
        assert ops.cuda_last_kernel() == "" and ops.cuda_last_kernel("quantize") == ""
        assert not ops.BUILD["cutlass_sm90"]
    with pytest.raises(ValueError, match="family must be 'gemm' or 'quantize', got 'conv'"):
        ops.cuda_last_kernel("conv")


def test_cpu_build_refuses_cuda_tensors_clearly():
    import torch

    from fastinfer import ops
    if ops.BUILD["cuda"]:
        pytest.skip("this build has CUDA kernels")
    meta = torch.empty(4, 8, device="meta")
    with pytest.raises(ValueError, match="kernels for cpu only"):
        ops.quantize_per_token(meta)
