# Builds fastinfer._C: CPU sources always; CUDA sources (csrc/cuda/*.cu) where a CUDA torch and
# nvcc exist, or as FASTINFER_CUDA=0/1 forces. ISA-specific kernels select their own target
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
cuda_sources = sources("csrc/cuda/*.cu") if want_cuda() else []

if cuda_sources:
    ext = CUDAExtension(
        "fastinfer._C",
        cpu_sources + cuda_sources,
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": ["-O3", "-std=c++17", "-gencode=arch=compute_80,code=sm_80",
                     "-gencode=arch=compute_90a,code=sm_90a"],
        },
        define_macros=[("FASTINFER_WITH_CUDA", "1")],
    )
else:
    ext = CppExtension("fastinfer._C", cpu_sources, extra_compile_args={"cxx": cxx_flags})

setup(
    name="fastinfer",
    packages=find_packages(include=["fastinfer", "fastinfer.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
