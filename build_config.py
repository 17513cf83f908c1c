"""CUDA build settings shared by setup.py and the CI compile check (tests/cuda_compile.py), so both compile
the kernels the same way. Plain Python: no torch, no import of fastinfer."""
from __future__ import annotations

import importlib.util
import os
from typing import List

# sm_80 and sm_90a machine code, plus sm_80 PTX for GPUs newer than both (the driver compiles it).
# --fmad=false: no multiply-add contraction, so the fp32 epilogue rounds like the CPU kernels and the
# reference (EPILOGUE.md); kernels that want an FMA call fmaf.
# -DNDEBUG: CUTLASS's device-side asserts are function calls, and a call inside the wgmma pipeline makes
# ptxas serialize every wgmma of the Hopper kernels (warning C7510, seen on both sm90 GEMMs without it;
# tests/cuda_compile.py fails on it).
NVCC_ARCH_FLAGS = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a",
                   "-gencode=arch=compute_80,code=compute_80"]
NVCC_FLAGS = ["-O3", "-DNDEBUG", "--expt-relaxed-constexpr", "--fmad=false", *NVCC_ARCH_FLAGS]
# FASTINFER_NVCC_THREADS=n: each nvcc runs its three targets' passes on up to n threads. The build's
# length is its slowest CUTLASS unit (60-100 s a target on this project's CI machine), so on a many-core
# GPU host (benchmarks/gpu_check.sh) this shortens the build; on 2 cores it would only oversubscribe them.
if os.environ.get("FASTINFER_NVCC_THREADS"):
    NVCC_FLAGS += ["--threads", str(int(os.environ["FASTINFER_NVCC_THREADS"]))]


# With the CUTLASS headers: the kernels that use them, and CUTLASS's TMA descriptor encoding calling the driver
# functions by name (csrc/kernels/cuda/tma_driver.cu defines them, looking the driver's entry points up once;
# CUTLASS's default looks each one up by its name string on every call, several per GEMM or conv launch).
CUTLASS_MACROS = [("FASTINFER_WITH_CUTLASS", "1"), ("CUTLASS_ENABLE_DIRECT_CUDA_DRIVER_CALL", "1")]


def cutlass_include_dirs() -> List[str]:
    """CUTLASS/CuTe header folders from the nvidia-cutlass wheel (the sm_90a kernel needs them), or [].

    Found without importing the package: its own imports (cuda-python, networkx, ...) are not needed
    for the headers, and the GPU machine installs the wheel without them (--no-deps)."""
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.origin:
        return []
    root = os.path.join(os.path.dirname(spec.origin), "source")
    dirs = [os.path.join(root, "include"), os.path.join(root, "tools", "util", "include")]
    return dirs if all(os.path.isdir(d) for d in dirs) else []
