"""The int8 convolution benchmark on a GPU (`python benchmarks/bench_conv.py --device cuda`).

ResNet-50 layers (bench_conv.LAYERS: the 3x3 layers, the 1x1, the stride-2 and the depthwise one) at batch
32 (--batches), timed with CUDA events around repeated calls (median of repeats after warm-up: what a caller
sees, host launch overhead included) and as replays of 20 calls captured in a CUDA graph ("graph ms": the GPU's
time alone), baselines in the same run:
  torch     cuDNN fp16 channels_last (F.conv2d on fp16 NHWC tensors), cuDNN fp32 channels_last
  fastinfer (c) Int8Conv2d static, fp32 channels_last in/out (quantization of x included)
  fastinfer (d) int8 channels_last in, int8 out (the kernel and its epilogue only)
TOPS = 2 * MACs / time. Every fastinfer row is checked against the fp32 conv first (SQNR > 25 dB), and
names the kernel that served it (sm90_conv, sm90_conv_narrow, conv_gathered, conv_grouped, conv_grouped_direct,
dwconv). Where a kernel family has candidates, (d) is also timed with each (rows "(d) int8 in/out <variant>"):
the Hopper implicit GEMM's compositions (FASTINFER_SM90_CONV_VARIANT: cooperative, narrow, small; params.h)
and the depthwise kernels (FASTINFER_DWCONV_KERNEL: loop, the per-output kernel; strip and strip4, a strip of 8
or 4 outputs a thread).
Target (issue #6, H100, batch 32): fastinfer int8 >= 1.5x cuDNN fp16 channels_last (checked on both timings).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastinfer import ops
from fastinfer.nn import Int8Conv2d

from bench_conv import LAYERS, SQNR_MIN_DB, ConvLayer, out_size, parse_layers, sqnr_db
from bench_linear_cuda import environ, machine_info_cuda, time_cuda, time_cuda_graph

# the Hopper convolution's compositions (FASTINFER_SM90_CONV_VARIANT; small: a candidate)
CONV_VARIANTS = ("cooperative", "narrow", "small")
DW_KERNELS = ("loop", "strip", "strip4")  # the depthwise kernels (FASTINFER_DWCONV_KERNEL)
# The candidates of the kernel that served (d), by the start of its name: (environment variable, values).
CANDIDATES = {"sm90_conv": ("FASTINFER_SM90_CONV_VARIANT", CONV_VARIANTS),
              "dwconv": ("FASTINFER_DWCONV_KERNEL", DW_KERNELS)}


def layer_cases(L: ConvLayer, batch: int) -> Tuple[torch.Tensor, List[Tuple]]:
    """The fp32 reference output and the cases (lib, impl, fn, to_float) of one layer at one batch, on the GPU;
    to_float maps a fastinfer output to fp32 for the SQNR check (None for the baselines)."""
    torch.manual_seed(0)
    dev = "cuda"
    conv = nn.Conv2d(L.C, L.Cout, L.k, L.stride, L.padding, L.dilation, groups=L.groups).eval().requires_grad_(False)
    conv = conv.to(dev)
    x = torch.randn(batch, L.C, L.H, L.H, device=dev).contiguous(memory_format=torch.channels_last)
    args = (L.stride, L.padding, L.dilation, L.groups)
    with torch.inference_mode():
        y = F.conv2d(x, conv.weight, conv.bias, *args)
    x_scale, out_scale = x.abs().max().item() / 127, y.abs().max().item() / 127
    static = Int8Conv2d.from_float(conv, x_scale=x_scale)
    xq = torch.round(x / x_scale).clamp(-127, 127).to(torch.int8).contiguous(memory_format=torch.channels_last)
    w16 = conv.weight.half().contiguous(memory_format=torch.channels_last)
    b16 = conv.bias.half()
    x16 = x.half()
    w32 = conv.weight.contiguous(memory_format=torch.channels_last)

    def int8_io():
        return ops.int8_conv2d(xq, static.packed_weight, static.weight_scale, static.bias, (L.k, L.k),
                               (L.stride, L.stride), (L.padding, L.padding), (L.dilation, L.dilation), L.groups,
                               x_scale, out_scale)

    cases = [("torch", "cuDNN fp16 channels_last", lambda: F.conv2d(x16, w16, b16, *args), None),
             ("torch", "cuDNN fp32 channels_last", lambda: F.conv2d(x, w32, conv.bias, *args), None),
             ("fastinfer", "(c) static fp32 in/out", lambda: static(x), lambda t: t),
             ("fastinfer", "(d) int8 in/out", int8_io, lambda t: t.float() * out_scale)]
    return y, cases


def bench_layer_cuda(L: ConvLayer, batch: int) -> List[Dict]:
    y, cases = layer_cases(L, batch)
    oh = out_size(L)
    macs = batch * oh * oh * L.Cout * (L.C // L.groups) * L.k * L.k

    def measure(lib, impl, fn, to_float, env):
        row = {"op": "conv2d", "device": "cuda", "lib": lib, "impl": impl, "layer": L.name, "N": batch}
        try:
            with environ(env):
                out = fn()
                if to_float is not None:
                    row["sqnr_db"] = sqnr_db(y, to_float(out))
                    row["kernel"] = ops.cuda_last_kernel()
                t = time_cuda(fn)
                t.update(time_cuda_graph(fn))
        except Exception as e:  # noqa: BLE001  (reported in the table, not dropped)
            row["error"] = f"{type(e).__name__}: {e}"[:300]
            return row
        row.update(t)
        row["tops"] = 2 * macs / (t["median_ms"] * 1e-3) / 1e12
        return row

    rows = []
    with torch.inference_mode():
        for lib, impl, fn, to_float in cases:
            rows.append(measure(lib, impl, fn, to_float, {}))
        int8 = next(r for r in rows if r["impl"] == "(d) int8 in/out")
        for family, (var, values) in CANDIDATES.items():  # each candidate of the kernel that served
            if int8.get("kernel", "").startswith(family):
                _, impl, fn, to_float = next(c for c in cases if c[1] == "(d) int8 in/out")
                for v in values:
                    row = measure("fastinfer", f"{impl} {v}", fn, to_float, {var: v})
                    rows.append({**row, "variant": v})
    return rows


def targets(rows: List[Dict]):
    out = []
    extra = {L.name for L in LAYERS if L.extra}
    for key, label in (("median_ms", ""), ("graph_ms", " (graph)")):
        ms = {(r["layer"], r["N"], r["impl"]): r[key] for r in rows if key in r}
        for (layer, n) in dict.fromkeys((r["layer"], r["N"]) for r in rows if r["layer"] not in extra):
            base = ms.get((layer, n, "cuDNN fp16 channels_last"))
            for impl in ("(c) static fp32 in/out", "(d) int8 in/out"):
                if base and (layer, n, impl) in ms:
                    out.append((f"{impl} vs cuDNN fp16 channels_last{label}, {layer} N={n}",
                                base / ms[(layer, n, impl)], 1.5))
            # the fastest candidate of the kernel that served, where it beats the default
            timed = [(ms[(layer, n, r["impl"])], r["variant"]) for r in rows
                     if r["layer"] == layer and r["N"] == n and "variant" in r and (layer, n, r["impl"]) in ms]
            default = ms.get((layer, n, "(d) int8 in/out"))
            if base and timed and default and min(timed)[0] < default:
                best, v = min(timed)
                out.append((f"(d) int8 in/out ({v}) vs cuDNN fp16 channels_last{label}, {layer} N={n}", base / best,
                            1.5))
    return out


def run(args) -> Dict:
    if not ops.cuda_available():
        raise SystemExit("bench_conv --device cuda needs fastinfer built with CUDA and a GPU")
    info = machine_info_cuda()
    print(f"# {info['gpu']} (sm_{info['capability']}) | torch {info['torch']} | CUDA {info['cuda']}")
    print(f"{'layer':<8} {'N':>3}  {'impl':<28} {'median ms':>10} {'graph ms':>9} {'TOPS':>8} {'SQNR dB':>8}  kernel")
    layers = parse_layers(args.layers) if args.layers else [L for L in LAYERS if not L.cpu_only]
    batches = [int(b) for b in (args.batches if args.batches != "1,8" else "32").split(",")]
    rows, failures = [], []
    for L in layers:
        for n in batches:
            for r in bench_layer_cuda(L, n):
                rows.append(r)
                if "error" in r:
                    print(f"{L.name:<8} {n:>3}  {r['impl']:<28} {'-':>10} {'-':>9} {'-':>8} {'-':>8}  "
                          f"{r['error'][:60]}")
                    continue
                sq = f"{r['sqnr_db']:8.1f}" if "sqnr_db" in r else " " * 8
                graph = f"{r['graph_ms']:>9.4f}" if "graph_ms" in r else f"{'-':>9}"
                print(f"{L.name:<8} {n:>3}  {r['impl']:<28} {r['median_ms']:>10.4f} {graph} {r['tops']:>8.1f} {sq}  "
                      f"{r.get('kernel', '')}{'  graph: ' + r['graph_error'][:50] if 'graph_error' in r else ''}")
                if "sqnr_db" in r and r["sqnr_db"] < SQNR_MIN_DB:
                    failures.append(f"{L.name} N={n} {r['impl']}: SQNR {r['sqnr_db']:.1f} dB")
    tg = targets(rows)
    print("targets (issue #6, H100 batch 32; from this run):")
    for name, v, t in tg:
        print(f"  {name:<66} {v:6.2f}x  (target >= {t:.1f}x)  {'met' if v >= t else 'MISSED'}")
    for f in failures:
        print("CHECK FAILED:", f)
    return {"machine": info, "rows": rows, "check_failures": failures,
            "targets": [{"name": n, "value": v, "target": t} for n, v, t in tg]}
