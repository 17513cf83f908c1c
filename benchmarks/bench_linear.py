"""Linear-layer benchmark: fastinfer int8 kernels vs torch's CPU paths, timed in the same run.

    python benchmarks/bench_linear.py [--threads 2] [--json out.json] [--shapes 1x4096x4096,...]
    python benchmarks/bench_linear.py --device cuda [...]      (benchmarks/bench_linear_cuda.py: GPU rows)

Rows: torch fp32 F.linear, torch bf16 F.linear, torch._int_mm (int8 -> int32), torch.ao
quantize_dynamic with engine 'x86' (FBGEMM) and 'onednn', oneDNN's prepacked int8 kernel alone
(torch.ops.onednn.qlinear_pointwise: u8 activations already quantized, fp32 out; AMX where the CPU has
it), fastinfer raw int8 GEMM (int8_mm on a prepacked weight, int32 out) and fused GEMM (int8_scaled_mm:
dequantize epilogue, fp32 out), both from int8 activations (they include turning them into the kernels'
u8 operand), fastinfer Int8Linear w8a8_dynamic (fp32 in/out, activation quantization included; on AMX
machines also capped at the VNNI path), the same with 7-bit weights (weight_bits=7: AVX2's GEMM without its
sign step) and w8_only (fp32 x, and bf16 x beside bf16 F.linear: the bf16 dot-product kernel where the CPU
has AVX512_BF16).
tops = 2*M*N*K / median time. rel_err (the rows that compute the same fp32 layer: torch.ao, bf16, Int8Linear):
||y - y_fp32|| / ||y_fp32|| on the benchmark's random input. Also the int8 instruction's peak rate (fastinfer.ops.int8_peak_probe: AMX
tdpbusd or VNNI vpdpbusd) and the targets of issues #2 and #3, computed from this run.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import fastinfer
from fastinfer import ops
from fastinfer.nn import Int8Linear

from common import check_target, machine_info, time_call, write_json

SHAPES = [(1, 4096, 4096), (8, 4096, 4096), (128, 4096, 4096), (2048, 2048, 2048), (512, 384, 1536),
          (512, 1536, 384), (1, 768, 3072), (128, 768, 3072)]


def torch_ao_dynamic(linear: nn.Linear, engine: str) -> nn.Module:
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)


def bench_shape(M: int, K: int, N: int, threads: int, min_time: float):
    torch.manual_seed(0)
    lin = nn.Linear(K, N).eval()
    x = torch.randn(M, K)
    xb, lin_bf16 = x.bfloat16(), copy.deepcopy(lin).bfloat16()
    a = torch.randint(-127, 128, (M, K), dtype=torch.int8)
    w8 = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    w8_t = w8.t()  # torch._int_mm wants B as [K, N]
    packed = ops.pack_int8_weight(w8)
    dyn, wonly = Int8Linear.from_float(lin, "w8a8_dynamic"), Int8Linear.from_float(lin, "w8_only")
    dyn7 = Int8Linear.from_float(lin, "w8a8_dynamic", weight_bits=7)
    ao = {e: torch_ao_dynamic(copy.deepcopy(lin), e) for e in ("x86", "onednn")}
    # oneDNN's kernel alone: weights prepacked for this shape, activations already u8 (zero point 128).
    a_u8 = (a.to(torch.int16) + 128).to(torch.uint8)
    w_onednn = torch.ops.onednn.qlinear_prepack(w8, [M, K])
    ones_m, ones_n, zeros_n = torch.ones(M), torch.ones(N), torch.zeros(N, dtype=torch.long)

    cases = [
        ("torch", "fp32 F.linear", lambda: F.linear(x, lin.weight, lin.bias)),
        ("torch", "bf16 F.linear", lambda: F.linear(xb, lin_bf16.weight, lin_bf16.bias)),
        ("torch", "_int_mm", lambda: torch._int_mm(a, w8_t)),
    ]
    for engine, model in ao.items():
        def run(model=model, engine=engine):
            torch.backends.quantized.engine = engine
            return model(x)
        cases.append(("torch.ao", f"dynamic int8 ({engine})", run))
    cases.append(("torch", "onednn kernel (prepacked)", lambda: torch.ops.onednn.qlinear_pointwise(
        a_u8, 1.0, 128, w_onednn, ones_n, zeros_n, None, 1.0, 0, torch.float32, "none", [], "")))
    cases += [
        ("fastinfer", "int8_mm raw", lambda: ops.int8_mm(a, packed, N)),
        ("fastinfer", "int8_scaled_mm fused", lambda: ops.int8_scaled_mm(a, ones_m, packed, ones_n, None)),
        ("fastinfer", "Int8Linear w8a8_dynamic", lambda: dyn(x)),
        ("fastinfer", "Int8Linear w8a8_dynamic w7", lambda: dyn7(x)),
    ]
    if fastinfer.cpu_capabilities()["active"] == "amx":
        def vnni(dyn=dyn, x=x):
            with fastinfer.use_isa("avx512_vnni"):
                return dyn(x)
        cases.append(("fastinfer", "Int8Linear w8a8_dynamic [vnni]", vnni))
    cases.append(("fastinfer", "Int8Linear w8_only", lambda: wonly(x)))
    cases.append(("fastinfer", "Int8Linear w8_only bf16", lambda: wonly(xb)))  # beside bf16 F.linear (same x)
    same_layer = {"bf16 F.linear", "dynamic int8 (x86)", "dynamic int8 (onednn)"}
    rows = []
    with torch.inference_mode():
        ref = F.linear(x, lin.weight, lin.bias)
        for lib, impl, fn in cases:
            t = time_call(fn, min_time_s=min_time)
            row = {"op": "linear", "lib": lib, "impl": impl, "M": M, "K": K, "N": N, "threads": threads,
                   **t, "tops": 2 * M * N * K / (t["median_ms"] * 1e-3) / 1e12}
            if impl in same_layer or impl.startswith("Int8Linear"):
                row["rel_err"] = float((fn().float() - ref).norm() / ref.norm())
            if impl.startswith("Int8Linear w8_only"):
                row["w8_step"] = ops.last_kernel("w8_gemm_step")  # "bf16_dot" or "fp32"
            rows.append(row)
    return rows


def peak_tops(iters: int = 5_000_000) -> float:
    ops.int8_peak_probe(10_000)
    t = time_call(lambda: ops.int8_peak_probe(iters), min_time_s=0.5, min_iters=5)
    return ops.int8_peak_probe(1) * iters / (t["median_ms"] * 1e-3) / 1e12


def targets(rows, peak, isa):
    """(issue, name, value, target, higher_is_better) for every target this run can check."""
    by = {(r["M"], r["K"], r["N"], r["impl"]): r["median_ms"] for r in rows}
    shapes = sorted({(r["M"], r["K"], r["N"]) for r in rows})
    out = []
    # Issue #2 (foundation, set on the VNNI path): vs torch.ao x86, fraction of the instruction peak, batch 1.
    for (M, K, N) in shapes:
        dyn, ao = by.get((M, K, N, "Int8Linear w8a8_dynamic")), by.get((M, K, N, "dynamic int8 (x86)"))
        if M >= 8 and dyn and ao:
            out.append(("#2", f"w8a8_dynamic vs torch.ao x86 at {M}x{K}x{N}", ao / dyn, 1.2, True))
        dyn7 = by.get((M, K, N, "Int8Linear w8a8_dynamic w7"))
        if M >= 8 and dyn7 and ao and isa == "avx2":  # 7-bit weights change the speed on AVX2 only
            out.append(("#2", f"w8a8_dynamic w7 vs torch.ao x86 at {M}x{K}x{N}", ao / dyn7, 1.2, True))
    raw = by.get((2048, 2048, 2048, "int8_mm raw"))
    if raw and peak:
        frac = 2 * 2048 ** 3 / (raw * 1e-3) / 1e12 / peak
        out.append(("#2" if isa != "amx" else "#3", f"raw int8 GEMM 2048^3 / {isa} peak", frac,
                    0.75 if isa != "amx" else 0.0, True))
    b1 = [by.get((1, 4096, 4096, k)) for k in ("dynamic int8 (x86)", "dynamic int8 (onednn)", "_int_mm")]
    ours = by.get((1, 4096, 4096, "Int8Linear w8a8_dynamic"))
    if all(b1) and ours:
        out.append(("#2", "batch 1 4096x4096: best torch int8 / w8a8_dynamic", min(b1) / ours, 1.2, True))
    # Issue #3 (AMX): vs oneDNN's prepacked kernel, >= 5 TOPS, vs torch.ao onednn at M >= 8, batch 1 in ms.
    for shape in ((128, 4096, 4096), (2048, 2048, 2048)):
        od = by.get(shape + ("onednn kernel (prepacked)",))
        for impl in ("int8_mm raw", "int8_scaled_mm fused"):
            t = by.get(shape + (impl,))
            if od and t:
                M, K, N = shape
                out.append(("#3", f"{impl} vs oneDNN kernel at {M}x{K}x{N}", od / t, 1.25, True))
                out.append(("#3", f"{impl} TOPS at {M}x{K}x{N}", 2 * M * N * K / (t * 1e-3) / 1e12, 5.0, True))
    for (M, K, N) in shapes:
        dyn, ao = by.get((M, K, N, "Int8Linear w8a8_dynamic")), by.get((M, K, N, "dynamic int8 (onednn)"))
        if M >= 8 and dyn and ao:
            out.append(("#3", f"w8a8_dynamic vs torch.ao onednn at {M}x{K}x{N}", ao / dyn, 1.3, True))
    if ours:
        out.append(("#3", "batch 1 4096x4096 w8a8_dynamic, ms", ours, 0.33, False))
    return out


def print_targets(tgt) -> None:
    if tgt:
        print("targets (from this run):")
        for issue, name, val, want, higher in tgt:
            met, rel = check_target(val, want, higher)
            verdict = "" if met is None else f"  (target {rel} {want:.2f})  {'met' if met else 'MISSED'}"
            print(f"  {issue} {name:<58} {val:7.3f}{verdict}")


def target_json(tgt):
    return [{"issue": i, "name": n, "value": v, "target": t, "higher_is_better": h} for i, n, v, t, h in tgt]


def main_cuda(args, shapes):
    """--device cuda: benchmarks/bench_linear_cuda.py's rows and issue #4's targets."""
    import bench_linear_cuda as bc

    if not ops.cuda_available():
        raise SystemExit("--device cuda needs fastinfer built with CUDA (a CUDA torch and nvcc) and a GPU")
    info = bc.machine_info_cuda()
    info["copy_tb_s"] = bc.copy_tb_s()
    print(f"# {info['gpu']} (sm {info['capability']}, {info['sms']} SMs) | torch {info['torch']} | "
          f"fastinfer build {info['fastinfer_build']} | device copy {info['copy_tb_s']:.2f} TB/s")
    print(f"{'M':>5} {'K':>6} {'N':>6}  {'impl':<40} {'median ms':>10} {'graph ms':>9} {'TOPS':>8}  kernel")
    rows = []
    for (M, K, N) in shapes:
        shape_rows = bc.bench_shape(M, K, N)
        rows += shape_rows
        for r in shape_rows:
            extra = f"  {r['gb_s']:.0f} GB/s" if "gb_s" in r else ""
            graph = f"{r['graph_ms']:>9.4f}" if "graph_ms" in r else " " * 9
            print(f"{M:>5} {K:>6} {N:>6}  {r['impl']:<40} {r['median_ms']:>10.4f} {graph} {r['tops']:>8.1f}  "
                  f"{r['kernel']}{extra}")
        print()
    tgt = bc.targets(rows, info["copy_tb_s"])
    print_targets(tgt)
    if args.json:
        write_json(args.json, {"machine": info, "rows": rows, "targets": target_json(tgt)})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the rows and machine info here")
    p.add_argument("--shapes", help="comma-separated MxKxN list (default: the issues' shapes for the device)")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of timed calls per case (at least)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else None
    if args.device == "cuda":
        import bench_linear_cuda as bc
        return main_cuda(args, shapes or bc.SHAPES_CUDA)
    shapes = shapes or SHAPES
    info = machine_info(args.threads)
    peak = peak_tops() if fastinfer.cpu_capabilities()["active"] != "ref" else None
    print(f"# {info['cpu']} | fastinfer ISA {info['isa_active']} | threads {args.threads} | torch {info['torch']} | "
          f"{info['date']}")
    if peak:
        print(f"# int8 peak of the active ISA's instruction (registers only, all threads): {peak:.3f} TOPS")
    rows = []
    hdr = (f"{'M':>5} {'K':>5} {'N':>5}  {'impl':<30} {'median ms':>10} {'p10':>8} {'p90':>8} {'TOPS':>7} "
           f"{'rel_err':>8}")
    print(hdr)
    for (M, K, N) in shapes:
        shape_rows = bench_shape(M, K, N, args.threads, args.min_time)
        rows += shape_rows
        for r in shape_rows:
            err = f"{r['rel_err']:>8.4f}" if "rel_err" in r else f"{'':>8}"
            print(f"{M:>5} {K:>5} {N:>5}  {r['impl']:<30} {r['median_ms']:>10.4f} {r['p10_ms']:>8.4f} "
                  f"{r['p90_ms']:>8.4f} {r['tops']:>7.3f} {err}")
        print()
    tgt = targets(rows, peak, info["isa_active"])
    print_targets(tgt)
    if args.json:
        write_json(args.json, {"machine": info, "int8_peak_tops": peak, "rows": rows, "targets": target_json(tgt)})
    return rows


if __name__ == "__main__":
    main()
