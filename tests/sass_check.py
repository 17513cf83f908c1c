"""Reads the SASS of a built fastinfer extension and checks that every CUDA kernel holds the instructions it
was written for: the sm_80 GEMM's mma.sync (IMMA.16832.S8.S8) fed by cp.async (LDGSTS) and ldmatrix (LDSM),
the weight-only kernel's bf16/fp16 mma.sync (HMMA.16816.F32),
the Hopper GEMMs' and convolution's wgmma (IGMMA) fed by TMA (UTMALDG), the 2:4 GEMM's sparse wgmma
(IGMMA.SP), the depthwise strip kernel's dp4a (IDP.4A). A kernel that compiled to the wrong thing (an arch
guard that emptied it, a serialized pipeline without tensor-core instructions) fails here, on a machine without
a GPU.

    python tests/sass_check.py path/to/_C.so [--cuobjdump PATH]     (cuobjdump needs nvdisasm on PATH)

Prints one row per (arch, kernel) with the counts, then FAILED lines; exits 1 on a failure."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from typing import Dict, List, Tuple

# Instruction classes counted per kernel (a SASS line counts for the first pattern it matches).
COUNTED = [("IGMMA.SP", re.compile(r"\bIGMMA\.SP\b|\bIGMMA\S*\.SP\b")), ("IGMMA", re.compile(r"\bIGMMA\b")),
           ("IMMA", re.compile(r"\bIMMA\.16832\.S8\.S8\b")), ("HMMA", re.compile(r"\bHMMA\.16816\.F32\b")),
           ("UTMALDG", re.compile(r"\bUTMALDG\b")),
           ("UTMASTG", re.compile(r"\bUTMASTG\b")), ("LDGSTS", re.compile(r"\bLDGSTS\b")),
           ("LDSM", re.compile(r"\bLDSM\b")), ("IDP", re.compile(r"\bIDP\.4A\b")),
           ("local", re.compile(r"\b(LDL|STL)\b"))]

# (kernel label, arch) -> instruction classes that must be present (count > 0).
EXPECT: Dict[Tuple[str, str], Tuple[str, ...]] = {
    ("sm80 int8 GEMM 128x128", "sm_80"): ("IMMA", "LDGSTS", "LDSM"),
    ("sm80 int8 GEMM 128x128", "sm_90a"): ("IMMA", "LDGSTS", "LDSM"),
    ("sm80 int8 GEMM 64x128", "sm_80"): ("IMMA", "LDGSTS", "LDSM"),
    ("sm80 int8 GEMM 64x128", "sm_90a"): ("IMMA", "LDGSTS", "LDSM"),
    ("weight-only MMA", "sm_80"): ("HMMA",),
    ("weight-only MMA", "sm_90a"): ("HMMA",),
    ("sm90 GEMM (CUTLASS)", "sm_90a"): ("IGMMA", "UTMALDG"),
    ("sm90 GEMM pingpong (CUTLASS)", "sm_90a"): ("IGMMA", "UTMALDG"),
    ("sm90 2:4 sparse GEMM (CUTLASS)", "sm_90a"): ("IGMMA.SP", "UTMALDG"),
    ("sm90 2:4 sparse GEMM pingpong (CUTLASS)", "sm_90a"): ("IGMMA.SP", "UTMALDG"),
    ("sm90 conv (CUTLASS)", "sm_90a"): ("IGMMA", "UTMALDG"),
    ("depthwise conv (strips)", "sm_80"): ("IDP",),
    ("depthwise conv (strips)", "sm_90a"): ("IDP",),
}
# Kernels the build must contain (per arch): each label at least once.
_ANY_ARCH = {"sm80 int8 GEMM 128x128", "sm80 int8 GEMM 64x128", "weight-only GEMM", "weight-only MMA", "quantize rows",
             "quantize rows (vector)", "quantize tensor (max)", "quantize tensor", "im2row", "depthwise conv",
             "depthwise conv (strips)",
             "conv fold", "grouped conv (direct)", "grouped conv weight words"}
REQUIRED_LABELS = {"sm_80": _ANY_ARCH,
                   "sm_90a": _ANY_ARCH | {"sm90 GEMM (CUTLASS)", "sm90 GEMM pingpong (CUTLASS)",
                                          "sm90 2:4 sparse GEMM (CUTLASS)", "sm90 2:4 sparse GEMM pingpong (CUTLASS)",
                                          "sm90 conv (CUTLASS)"}}


def label(demangled: str) -> str:
    """A short name for a kernel from its demangled (or mangled) signature."""
    if "int8_gemm_kernel" in demangled:
        return "sm80 int8 GEMM 128x128" if "Tile<128, 128" in demangled else "sm80 int8 GEMM 64x128"
    for key, name in (("weight_only_kernel", "weight-only GEMM"), ("weight_only_mma_kernel", "weight-only MMA"),
                      ("weight_only_reduce_kernel", "weight-only split-K sum"),
                      ("quantize_rows_kernel", "quantize rows"),
                      ("quantize_rows_vec_kernel", "quantize rows (vector)"),
                      ("im2row_kernel", "im2row"), ("dwconv_kernel", "depthwise conv"),
                      ("dwconv_strip_kernel", "depthwise conv (strips)"), ("conv_fold_kernel", "conv fold"),
                      ("gconv_kernel", "grouped conv (direct)"), ("gconv_words_kernel", "grouped conv weight words"),
                      ("tensor_absmax_kernel", "quantize tensor (max)"),
                      ("tensor_quantize_kernel", "quantize tensor"),
                      ("StructuredSparseCompressor", "2:4 compressor (CUTLASS)")):
        if key in demangled:
            return name
    # The CUTLASS kernels' names are long enough that c++filt may leave them mangled: match words of both.
    if "ConvUniversal" in demangled:
        return "sm90 conv (CUTLASS)"
    if "GemmUniversal" in demangled:  # the Pingpong composition (params.h, Sm90Variant) by its schedule's name
        pingpong = " pingpong" if "Pingpong" in demangled else ""
        family = "sm90 2:4 sparse GEMM" if "Sparse" in demangled else "sm90 GEMM"
        return f"{family}{pingpong} (CUTLASS)"
    return demangled[:60]


def parse(sass: str) -> List[Tuple[str, str, Counter]]:
    """[(arch, mangled function name, instruction class counts)] in the dump's order."""
    out: List[Tuple[str, str, Counter]] = []
    arch, counts = "", None
    for line in sass.splitlines():
        m = re.match(r"\s*code for (sm_\w+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            counts = Counter()
            out.append((arch, m.group(1), counts))
            continue
        if counts is None or not line.strip().startswith("/*"):
            continue
        counts["instructions"] += 1
        for name, pat in COUNTED:
            if pat.search(line):
                counts[name] += 1
                break
    return out


def demangle(names: List[str]) -> List[str]:
    r = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    lines = r.stdout.splitlines() if r.returncode == 0 else []
    return lines if len(lines) == len(names) else names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("so", help="the built extension (fastinfer/_C*.so)")
    p.add_argument("--cuobjdump", default="cuobjdump")
    args = p.parse_args(argv)
    r = subprocess.run([args.cuobjdump, "--dump-sass", args.so], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout[-2000:] + r.stderr[-2000:])
        print("FAILED: cuobjdump --dump-sass")
        return 1
    kernels = parse(r.stdout)
    names = demangle([k[1] for k in kernels])
    failures: List[str] = []
    seen: Dict[str, set] = {}
    cols = ["IMMA", "HMMA", "IGMMA", "IGMMA.SP", "UTMALDG", "UTMASTG", "LDGSTS", "LDSM", "IDP", "local",
            "instructions"]
    print(f"{'arch':<7} {'kernel':<32} " + " ".join(f"{c:>9}" for c in cols))
    for (arch, _, counts), dm in zip(kernels, names):
        lab = label(dm)
        if lab.startswith("sm90") and arch != "sm_90a":
            continue  # a Hopper-only kernel in another arch's cubin: a stub left by its arch guard
        seen.setdefault(arch, set()).add(lab)
        print(f"{arch:<7} {lab:<32} " + " ".join(f"{counts[c]:>9}" for c in cols))
        for need in EXPECT.get((lab, arch), ()):
            if counts[need] == 0:
                failures.append(f"{lab} ({arch}) has no {need} instruction")
    for arch, labels in REQUIRED_LABELS.items():
        for lab in sorted(labels - seen.get(arch, set())):
            failures.append(f"{lab} missing from the {arch} code")
    for f in failures:
        print("FAILED:", f)
    if not failures:
        print(f"SASS check passed: {len(kernels)} kernel bodies, tensor-core instructions where expected")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
