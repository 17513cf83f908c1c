"""fastinfer's CPU tiers side by side, each against oneDNN held to the same instructions.

    python benchmarks/bench_tiers.py [--threads 2] [--min-time 0.3] [--json out.json]
                                     [--onednn-isas AVX2,AVX2_VNNI] [--cases gemm,conv]

One run times, for each case:
  fastinfer, every tier this CPU runs (avx2, avx_vnni, avx512_vnni, amx), kernels capped with use_isa:
    gemm  ops.int8_mm (int8 in, int32 out: the GEMM kernel alone) on a packed [N, K] weight
    conv  ops.int8_conv2d, int8 channels_last in and out (kernel only), static scales, ReLU (the
          depthwise and the grouped layer run the AVX-512 VNNI kernels on the amx tier)
  oneDNN through torch.ao (quantized engine 'onednn', prepacked weights), in one child process per
  ONEDNN_MAX_CPU_ISA value (oneDNN reads it once, when first used), the children started by this run:
    gemm  torch.ao.nn.quantized.Linear, quint8 in and out (its output requantized: one pass more than ours)
    conv  torch.ao.nn.quantized.Conv2d, quint8 channels_last in and out
  and the fp32 op (F.linear / F.conv2d channels_last) in the parent, for scale.
Every fastinfer output is checked against fastinfer.reference (bit-exact) before it is timed, and the
tier that served is read back (ops.last_kernel) and must be the one asked for; the script exits 1 otherwise.
The table gives ms (median) and TOPS = 2 * MACs / time. After the table: each tier against the oneDNN ISA
that uses the same instructions (avx2 ~ AVX2, avx_vnni ~ AVX2_VNNI, avx512_vnni ~ AVX512_CORE_VNNI, amx
~ AVX512_CORE_AMX) and against our own avx2 tier.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from typing import Dict, List, NamedTuple, Tuple

GEMMS = [(1, 4096, 4096), (8, 4096, 4096), (128, 4096, 4096), (512, 1024, 1024)]


class Conv(NamedTuple):
    name: str
    N: int
    C: int
    Cout: int
    k: int
    H: int
    stride: int
    pad: int
    groups: int = 1


CONVS = [Conv("l1_3x3", 8, 64, 64, 3, 56, 1, 1), Conv("l1_1x1", 8, 256, 64, 1, 56, 1, 0),
         Conv("l3_3x3", 8, 256, 256, 3, 14, 1, 1), Conv("s2_3x3", 8, 128, 256, 3, 28, 2, 1),
         Conv("l1_3x3", 1, 64, 64, 3, 56, 1, 1), Conv("dw_3x3", 8, 256, 256, 3, 28, 1, 1, groups=256),
         Conv("g32_3x3", 8, 128, 128, 3, 56, 1, 1, groups=32)]  # ResNeXt-50 32x4d layer1: 4 channels a group
# fastinfer tier -> the oneDNN ISA with the same int8 instruction
MATCH = {"avx2": "AVX2", "avx_vnni": "AVX2_VNNI", "avx512_vnni": "AVX512_CORE_VNNI", "amx": "AVX512_CORE_AMX"}


def conv_out(c: Conv) -> int:
    return (c.H + 2 * c.pad - c.k) // c.stride + 1


def case_macs(kind: str, spec) -> int:
    if kind == "gemm":
        M, K, N = spec
        return M * K * N
    return spec.N * conv_out(spec) ** 2 * spec.C // spec.groups * spec.k * spec.k * spec.Cout


def case_name(kind: str, spec) -> str:
    if kind == "gemm":
        return "gemm M=%d K=%d N=%d" % spec
    return f"conv {spec.name} N={spec.N}"


def onednn_rows(kinds: List[str], min_time: float) -> List[Dict]:
    """torch.ao on engine 'onednn' (this process's ONEDNN_MAX_CPU_ISA), int8 in and out."""
    import torch
    from torch import nn

    from common import time_call
    torch.backends.quantized.engine = "onednn"
    rows = []
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates the torch.ao quantized ops
        for kind in kinds:
            for spec in (GEMMS if kind == "gemm" else CONVS):
                torch.manual_seed(0)
                if kind == "gemm":
                    M, K, N = spec
                    q = torch.ao.nn.quantized.Linear(K, N)
                    w = torch.randn(N, K)
                    qw = torch.quantize_per_channel(w, w.abs().amax(1) / 127, torch.zeros(N, dtype=torch.long), 0,
                                                    torch.qint8)
                    q.set_weight_bias(qw, torch.zeros(N))
                    x = torch.quantize_per_tensor(torch.randn(M, K), 0.03, 64, torch.quint8)
                else:
                    c = spec
                    q = torch.ao.nn.quantized.Conv2d(c.C, c.Cout, c.k, c.stride, c.pad, groups=c.groups)
                    w = torch.randn(c.Cout, c.C // c.groups, c.k, c.k)
                    qw = torch.quantize_per_channel(w, w.abs().amax((1, 2, 3)) / 127,
                                                    torch.zeros(c.Cout, dtype=torch.long), 0, torch.qint8)
                    q.set_weight_bias(qw, torch.zeros(c.Cout))
                    xf = torch.randn(c.N, c.C, c.H, c.H).contiguous(memory_format=torch.channels_last)
                    x = torch.quantize_per_tensor(xf, 0.03, 64, torch.quint8)
                q.scale, q.zero_point = 0.05, 128
                t = time_call(lambda: q(x), min_time_s=min_time)
                rows.append({"case": case_name(kind, spec), "kind": kind, "macs": case_macs(kind, spec), **t})
    return rows


def fastinfer_rows(kinds: List[str], min_time: float) -> Tuple[List[Dict], List[str]]:
    import torch
    import torch.nn.functional as F

    import fastinfer
    from fastinfer import ops
    from fastinfer import reference as ref

    from common import time_call
    caps = fastinfer.cpu_capabilities()
    tiers, amx_min_rows = [t for t in caps["runnable"] if t != "ref"], caps["amx_min_rows"]
    rows, bad = [], []
    with torch.inference_mode():
        for kind in kinds:
            for spec in (GEMMS if kind == "gemm" else CONVS):
                torch.manual_seed(0)
                name, macs = case_name(kind, spec), case_macs(kind, spec)
                if kind == "gemm":
                    M, K, N = spec
                    a = torch.randint(-128, 128, (M, K), dtype=torch.int8)
                    w = torch.randint(-128, 128, (N, K), dtype=torch.int8)
                    packed = ops.pack_int8_weight(w)
                    want = ref.int8_mm(a, w)
                    run, family = (lambda: ops.int8_mm(a, packed, N)), "int8_gemm"
                    xf, wf = torch.randn(M, K), torch.randn(N, K)
                    fp32 = lambda: F.linear(xf, wf)  # noqa: E731
                else:
                    c = spec
                    w = torch.randint(-127, 128, (c.Cout, c.C // c.groups, c.k, c.k), dtype=torch.int8)
                    packed = ops.pack_conv_weight(w, c.groups)
                    ws, b = torch.rand(c.Cout) * 0.01 + 1e-3, torch.randn(c.Cout)
                    xq = torch.randint(-128, 128, (c.N, c.C, c.H, c.H), dtype=torch.int8)
                    xq = xq.contiguous(memory_format=torch.channels_last)
                    geo = ((c.stride, c.stride), (c.pad, c.pad), (1, 1), c.groups)
                    want = ref.int8_conv2d(xq, w, ws, b, *geo, 0.03, 0.05, "relu")
                    run = lambda: ops.int8_conv2d(xq, packed, ws, b, (c.k, c.k), *geo, 0.03, 0.05, "relu")  # noqa: E731
                    family = "dwconv" if c.groups == c.C == c.Cout else "gconv" if c.groups > 1 else "int8_gemm"
                    xf = torch.randn(c.N, c.C, c.H, c.H).contiguous(memory_format=torch.channels_last)
                    wf = torch.randn(c.Cout, c.C // c.groups, c.k, c.k).contiguous(memory_format=torch.channels_last)
                    fp32 = lambda: F.conv2d(xf, wf, None, c.stride, c.pad, 1, c.groups)  # noqa: E731
                t = time_call(fp32, min_time_s=min_time)
                rows.append({"case": name, "kind": kind, "macs": macs, "impl": "fp32", **t})
                for tier in tiers:
                    with fastinfer.use_isa(tier):
                        out = run()
                        served = ops.last_kernel(family)
                        path = "" if kind == "gemm" else "depthwise" if family == "dwconv" else \
                            "narrow groups" if family == "gconv" else \
                            "direct" if ops.last_kernel("conv_direct") else "gathered"
                        exact = torch.equal(out, want)
                        # AMX's depthwise and narrow-group convolutions are the AVX-512 VNNI kernels, and so are
                        # its GEMMs of fewer than amx_min_rows rows (dispatch.cc)
                        to_vnni = family != "int8_gemm" or (kind == "gemm" and spec[0] < amx_min_rows)
                        expect = "avx512_vnni" if tier == "amx" and to_vnni else tier
                        if served != expect or not exact:
                            bad.append(f"{name} [{tier}]: served by {served!r}, bit-exact {exact}")
                        t = time_call(run, min_time_s=min_time)
                    rows.append({"case": name, "kind": kind, "macs": macs, "impl": f"fastinfer {tier}", "served": served,
                                 "path": path, **t})
    return rows, bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=0.3)
    p.add_argument("--cases", default="gemm,conv")
    p.add_argument("--onednn-isas", default=None,
                   help="ONEDNN_MAX_CPU_ISA values, one child process each (default: the ISA matching each tier "
                        "this CPU runs; 'default': unset)")
    p.add_argument("--json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a child: oneDNN rows as JSON
    args = p.parse_args(argv)
    kinds = [k for k in args.cases.split(",") if k]
    import torch
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(onednn_rows(kinds, args.min_time)))
        return 0

    from common import machine_info, write_json
    import fastinfer
    rows, bad = fastinfer_rows(kinds, args.min_time)
    isas = args.onednn_isas.split(",") if args.onednn_isas else \
        [MATCH[t] for t in fastinfer.cpu_capabilities()["runnable"] if t in MATCH]
    for isa in [s for s in isas if s]:
        env = dict(os.environ)
        env.pop("ONEDNN_MAX_CPU_ISA", None)
        if isa != "default":
            env["ONEDNN_MAX_CPU_ISA"] = isa
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(args.threads),
               "--min-time", str(args.min_time), "--cases", args.cases]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        for r in json.loads(out.stdout.strip().splitlines()[-1]):
            rows.append({**r, "impl": f"oneDNN {isa}"})
    for r in rows:
        r["tops"] = 2 * r["macs"] / (r["median_ms"] * 1e-3) / 1e12

    print(f"{'case':<28} {'impl':<24} {'ms':>9} {'TOPS':>7}  path")
    for r in rows:
        print(f"{r['case']:<28} {r['impl']:<24} {r['median_ms']:9.3f} {r['tops']:7.3f}  {r.get('path', '')}")
    ms = {(r["case"], r["impl"]): r["median_ms"] for r in rows}
    ratios = []
    print("\nfastinfer tier vs oneDNN on the same instructions, and vs fastinfer avx2 (time ratios, > 1: ours faster)")
    for case in dict.fromkeys(r["case"] for r in rows):
        for tier, isa in MATCH.items():
            ours = ms.get((case, f"fastinfer {tier}"))
            if ours is None:
                continue
            base = ms.get((case, f"oneDNN {isa}"))
            avx2 = ms.get((case, "fastinfer avx2"))
            ratio = {"case": case, "tier": tier, "vs_onednn": base / ours if base else None,
                     "vs_avx2": avx2 / ours if avx2 else None}
            ratios.append(ratio)
            fmt = lambda v: f"{v:5.2f}x" if v else "   -  "  # noqa: E731
            print(f"  {case:<28} {tier:<12} vs oneDNN {isa:<17} {fmt(ratio['vs_onednn'])}   vs avx2 {fmt(ratio['vs_avx2'])}")
    for line in bad:
        print("CHECK FAILED:", line)
    if args.json:
        write_json(args.json, {"machine": machine_info(args.threads), "rows": rows, "ratios": ratios, "failed": bad})
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
