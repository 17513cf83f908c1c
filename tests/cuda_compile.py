"""Compile check of the CUDA sources without a GPU (CI runs it: tests/test_cuda_build.py, `make compile-check`).

    python tests/cuda_compile.py [--jobs 2]

Every kernel file csrc/kernels/cuda/*.cu is compiled with nvcc for sm_80 and sm_90a with the build's
flags (the CUTLASS headers of the nvidia-cutlass wheel when it is installed) and `-Xptxas -v`; a table of
registers and spill bytes per kernel and architecture is printed. The entry layer (csrc/cuda/*.cpp,
registration.cpp with FASTINFER_WITH_CUDA) is syntax-checked with the C++ compiler against the installed
torch's headers (a CPU wheel lacks one generated CUDA macro header, written to a temporary folder).
Exit status 1 when anything fails to compile.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# the build's own flags
from build_config import CUTLASS_MACROS, NVCC_ARCH_FLAGS, NVCC_FLAGS, cutlass_include_dirs  # noqa: E402


def nvcc_path() -> Optional[str]:
    return shutil.which("nvcc")


def compile_cu(path: str, nvcc: str, cutlass: List[str], out_dir: str) -> Tuple[str, int, str]:
    # The build's flags without the PTX target (nothing for ptxas to report) and with C++17 (the oldest
    # standard the torch versions we build against use).
    flags = [f for f in NVCC_FLAGS if f not in NVCC_ARCH_FLAGS] + NVCC_ARCH_FLAGS[:2] + \
        ["-std=c++17", "-Xptxas", "-v", "-c"]
    if cutlass:
        flags += [f"-D{name}={value}" for name, value in CUTLASS_MACROS] + [f"-I{d}" for d in cutlass]
    obj = os.path.join(out_dir, os.path.basename(path) + ".o")
    r = subprocess.run([nvcc, *flags, path, "-o", obj], capture_output=True, text=True)
    return path, r.returncode, r.stdout + r.stderr


def syntax_check(path: str, stub_dir: str) -> Tuple[str, int, str]:
    import torch  # noqa: F401  (headers of the installed torch)
    from torch.utils.cpp_extension import include_paths
    cuda_inc = [d for d in ("/usr/local/cuda/include", "/usr/local/cuda-13.0/include") if os.path.isdir(d)]
    nvcc = nvcc_path()
    if nvcc:
        cuda_inc.append(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include"))
    cmd = ["g++", "-std=c++20", "-fsyntax-only", "-Wall", "-Wno-unused-function", "-DFASTINFER_WITH_CUDA",
           f"-I{stub_dir}", *[f"-I{d}" for d in include_paths()], *[f"-I{d}" for d in cuda_inc],
           f"-I{sysconfig.get_paths()['include']}", path]
    r = subprocess.run(cmd, capture_output=True, text=True)
    return path, r.returncode, r.stdout + r.stderr


def ptxas_table(log: str) -> List[Dict]:
    """Rows {kernel, arch, registers, spill_bytes} from `-Xptxas -v` output."""
    rows, current = [], None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line)
        if m:
            current = {"kernel": m.group(1), "arch": m.group(2), "registers": None, "spill_bytes": 0}
            rows.append(current)
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["spill_bytes"] = int(m.group(1)) + int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
    return rows


def short_name(mangled: str) -> str:
    try:
        out = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip()
    except OSError:
        out = mangled
    if out.startswith("_Z") and "GemmUniversal" in out:  # too deep for c++filt: name the output type
        # The epilogue's output type sits between its schedule and its fusion tree in the mangled name
        # (further on, the store atoms name half_t whatever the output).
        head = mangled.split("Sm90TmaWarpSpecialized", 1)[-1].split("fusion", 1)[0]
        kind = "bf16" if "bfloat16_t" in head else "fp16" if "half_t" in head else "fp32"
        what = "2:4 sparse" if "Sparse" in out else "TMA warp-specialized"
        return f"cutlass GemmUniversal (sm90 {what}), {kind} out"
    if out.startswith("_Z") and "ConvUniversal" in out:  # the output type: the epilogue's first element type
        head = mangled.split("Sm90TmaWarpSpecialized", 1)[-1].split("fusion", 1)[0]
        kind = "int8" if re.search(r"Ea|int8_t", head) else "fp32"
        return f"cutlass ConvUniversal (sm90 implicit GEMM, TMA im2col), {kind} out"
    if out.startswith("_Z") and "SparseCompressor" in out:
        return "cutlass SM90StructuredSparseCompressor (2:4 weight compression)"
    out = re.sub(r"fastinfer::cuda_kernels::(\(anonymous namespace\)::)?", "", out)
    out = re.sub(r"\(.*\)$", "", out)  # drop the parameter list
    return out if len(out) <= 90 else out[:87] + "..."


def run(jobs: int = 2) -> int:
    nvcc = nvcc_path()
    if not nvcc:
        print("nvcc not found: nothing to check")
        return 0
    cutlass = cutlass_include_dirs()
    kernels = sorted(glob.glob(os.path.join(ROOT, "csrc", "kernels", "cuda", "*.cu")))
    entries = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp"))) + [os.path.join(ROOT, "csrc", "registration.cpp")]
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        stub = os.path.join(tmp, "stub", "c10", "cuda", "impl")
        os.makedirs(stub)
        with open(os.path.join(stub, "cuda_cmake_macros.h"), "w") as f:
            f.write("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            cu = [pool.submit(compile_cu, k, nvcc, cutlass, tmp) for k in kernels]
            cpp = [pool.submit(syntax_check, e, os.path.join(tmp, "stub")) for e in entries]
            results = [f.result() for f in cu]
            checks = [f.result() for f in cpp]
    print(f"nvcc: {nvcc}; CUTLASS headers: {'yes' if cutlass else 'no (sm90 kernel compiled out)'}")
    print(f"{'file':<22} {'arch':<7} {'regs':>5} {'spill B':>8}  kernel")
    for path, code, log in results:
        name = os.path.relpath(path, os.path.join(ROOT, "csrc", "kernels", "cuda"))
        if code != 0:
            failed += 1
            print(f"{name:<22} COMPILE ERROR\n{log}")
            continue
        for r in ptxas_table(log):
            flag = "  <- spills" if r["spill_bytes"] else ""
            print(f"{name:<22} {r['arch']:<7} {r['registers'] or 0:>5} {r['spill_bytes']:>8}  {short_name(r['kernel'])}{flag}")
        if "C7510" in log:  # ptxas serialized the wgmma pipeline: a Hopper kernel would run far below peak
            failed += 1
            print(f"{name:<22} WGMMA SERIALIZED (ptxas C7510): a function call inside the wgmma pipeline")
    for path, code, log in checks:
        name = os.path.relpath(path, ROOT)
        errors = [line for line in log.splitlines() if "error" in line]
        if code != 0:
            failed += 1
            print(f"{name}: SYNTAX CHECK FAILED\n" + "\n".join(errors[:40]))
        else:
            print(f"{name}: syntax check ok (FASTINFER_WITH_CUDA)")
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2)
    return run(p.parse_args(argv).jobs)


if __name__ == "__main__":
    sys.exit(main())
