# Builds fastinfer._C: CPU sources always; CUDA sources (csrc/cuda, csrc/kernels/cuda) where a CUDA
# torch and nvcc exist, or as FASTINFER_CUDA=0/1 forces. ISA-specific kernels select their own target
# with `#pragma GCC target` per translation unit: never a build-machine-specific -march (the ISA is picked at run time).
import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    flag = os.environ.get("FASTINFER_CUDA")
    if flag is not None:
        return flag == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


cpu_sources = sources("csrc/registration.cpp") + sources("csrc/cpu/*.cc") + sources("csrc/cpu/*.cpp") + \
    sources("csrc/kernels/**/*.cc")
# -fopenmp at compile time only: at::parallel_for is an OpenMP region expanded in our code, and its
# GOMP_* calls bind to the libgomp torch already loads (linking a second OpenMP runtime would
# give two thread pools).
cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-Wall", "-Wno-unused-function"]
# CUDA: the entry layer (csrc/cuda/*.cpp, ATen) and the framework-free kernels (csrc/kernels/cuda/*.cu).
cuda_sources = sources("csrc/cuda/*.cpp") + sources("csrc/kernels/cuda/*.cu") if want_cuda() else []


def cutlass_include_dirs():
    """CUTLASS/CuTe headers from the nvidia-cutlass wheel (the sm_90a kernel needs them), or []."""
    # Located without importing it: the package's own imports (cuda-python, networkx, ...) are not
    # needed for the headers, and the GPU machine installs the wheel without them (--no-deps).
    import importlib.util
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.origin:
        return []
    root = os.path.join(os.path.dirname(spec.origin), "source")
    dirs = [os.path.join(root, "include"), os.path.join(root, "tools", "util", "include")]
    return dirs if all(os.path.isdir(d) for d in dirs) else []


# sm_80 and sm_90a machine code, plus sm_80 PTX for GPUs newer than both (the driver compiles it).
# --fmad=false: no multiply-add contraction, so the fp32 epilogue rounds like the CPU kernels and the
# reference (EPILOGUE.md); kernels that want an FMA call fmaf.
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr", "--fmad=false",
              "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a",
              "-gencode=arch=compute_80,code=compute_80"]

if cuda_sources:
    cutlass = cutlass_include_dirs()
    macros = [("FASTINFER_WITH_CUDA", "1")] + ([("FASTINFER_WITH_CUTLASS", "1")] if cutlass else [])
    ext = CUDAExtension(
        "fastinfer._C",
        cpu_sources + cuda_sources,
        include_dirs=cutlass,
        extra_compile_args={"cxx": cxx_flags, "nvcc": NVCC_FLAGS},
        define_macros=macros,
    )
else:
    ext = CppExtension("fastinfer._C", cpu_sources, extra_compile_args={"cxx": cxx_flags})

setup(
    name="fastinfer",
    packages=find_packages(include=["fastinfer", "fastinfer.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
