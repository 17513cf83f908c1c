# Builds fastinfer._C: CPU sources always; CUDA sources (csrc/cuda, csrc/kernels/cuda) where a CUDA
# torch and nvcc exist, or as FASTINFER_CUDA=0/1 forces. ISA-specific kernels select their own target
# with `#pragma GCC target` per translation unit: never a build-machine-specific -march (the ISA is picked at run time).
import glob
import os
import re
import sys

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)  # the PEP 517 backend does not put the project on sys.path
from build_config import CUTLASS_MACROS, NVCC_FLAGS, cutlass_include_dirs  # noqa: E402

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


def loaded_libstdcxx():
    """The libstdc++ this process (Python with torch imported) has mapped, or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                path = fields[5] if len(fields) > 5 else ""
                if os.path.basename(path).startswith("libstdc++.so"):
                    return path
    except OSError:
        pass
    return None


# The extension links the libstdc++ torch runs with, by path, never a static copy of its own: a toolchain that
# links libstdc++ statically (the H200 image's /opt/gcc/bin/g++ does, even given -lstdc++) gave an extension
# whose first `ostream << long` (cpu_capabilities; every c10::str / TORCH_CHECK message with a number) ran the
# copy's code on the shared library's locale facets and died with SIGSEGV. Relinked with the shared library
# named by path, the same objects passed the CUDA suite there. With an ordinary toolchain it changes nothing.
link_args = [p for p in [loaded_libstdcxx()] if p]

# CUDA: the entry layer (csrc/cuda/*.cpp, ATen) and the framework-free kernels (csrc/kernels/cuda/*.cu).
cuda_sources = sources("csrc/cuda/*.cpp") + sources("csrc/kernels/cuda/*.cu") if want_cuda() else []


if cuda_sources:
    cutlass = cutlass_include_dirs()
    macros = [("FASTINFER_WITH_CUDA", "1")] + (CUTLASS_MACROS if cutlass else [])
    ext = CUDAExtension(
        "fastinfer._C",
        # The CUTLASS kernel units (sm90_<family>_<type>.cu, about a minute each) listed first, the 2:4 ones
        # leading. ninja picks its own order among ready jobs (the 2-core build here started two entry-layer
        # units first). On the 16-core GPU host, 16 of the 37 units run at a time.
        sorted(cuda_sources, key=lambda f: (not re.search(r"sm90_\w+_(f32|bf16|f16|int8)\.cu$", f),
                                            "sm90_sparse" not in f)) + cpu_sources,
        include_dirs=cutlass,
        extra_compile_args={"cxx": cxx_flags, "nvcc": NVCC_FLAGS},
        extra_link_args=link_args,
        define_macros=macros,
    )
else:
    ext = CppExtension("fastinfer._C", cpu_sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_args)

setup(
    name="fastinfer",
    packages=find_packages(include=["fastinfer", "fastinfer.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
