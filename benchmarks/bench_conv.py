"""Int8 convolution benchmark: fastinfer's int8 conv vs torch fp32 conv and torch.ao's quantized conv
(engine 'x86'), all timed in the same run, on ResNet-50 layer shapes plus a MobileNet-style depthwise layer
(and ResNet-50's 3-channel 7x7 stem, grouped layers and unpadded twins of l3_3x3 / l4_3x3, which have no
target in the issue).

    python benchmarks/bench_conv.py [--threads 2] [--batches 1,8] [--layers l1_3x3,dw_3x3]
                                    [--min-time 0.3] [--rounds 10] [--json out.json]
    python benchmarks/bench_conv.py --device cuda [--batches 32]      (bench_conv_cuda.py: the GPU rows)

Rows per layer and batch N (x is torch.randn, weights and bias from a seeded nn.Conv2d):
  torch      fp32 NCHW / fp32 channels_last    F.conv2d; '*' marks the faster one, the fp32 baseline
  torch.ao   (a) int8 in/out                   quint8 channels_last x -> qconv -> quint8 (kernel only)
  torch.ao   (b) fp32 in/out q/dq              fp32 channels_last x -> quantize_per_tensor -> qconv -> dequantize
  torch.ao   (a0) int8 in/out, x >= 0          (a) on relu(x) quantized with zero point 0, as a ResNet's convs see
                                               their post-ReLU inputs in a torch.ao model: oneDNN then skips the
                                               taps that fall in the zero padding, which it computes at (a)'s
                                               zero point 64 (no target; checked against conv(relu(x)))
  fastinfer  (c) static fp32 in/out            Int8Conv2d(x_scale=amax/127 computed once), channels_last x;
                                               also on NCHW x (the op converts it to channels_last each call)
  fastinfer  (d) int8 in/out                   ops.int8_conv2d on an int8 channels_last x, int8 out (kernel only)
  fastinfer  (e) dynamic fp32 in/out           Int8Conv2d without x_scale (amax of each input), channels_last x
  fastinfer  (c7) static, 7-bit weights        (c) with weight_bits=7 (AVX2's GEMM and direct conv skip a step)
tops = 2 * MACs / median time. Before timing, every row's output is checked against the fp32 NCHW conv
(SQNR > 25 dB); the script exits 1 if a check fails. A layer's rows are timed in alternation (--rounds
rounds, each row a slice of min-time / rounds per round), and each target's ratio is the median of its
per-round ratios: on a shared machine whose speed drifts by 2x over seconds, rows timed one after the
other compared different phases (a row's JSON keeps its per-round medians as round_ms). After the table:
the issue's targets from this run.

JSON rows carry the conv geometry (N = batch) plus the implicit-GEMM dims as gemm_M (output pixels),
gemm_K (Cin/groups*k*k) and gemm_N (Cout); summarize.py (keyed on M, K, N) cannot merge them as is,
because its N (GEMM columns) would collide with the batch N.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Dict, List, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fastinfer import ops
from fastinfer.nn import Int8Conv2d

from common import machine_info, paired_ratio, time_calls_interleaved, write_json


class ConvLayer(NamedTuple):
    name: str
    C: int
    Cout: int
    k: int
    H: int  # square input, W = H
    stride: int
    padding: int
    groups: int
    extra: bool = False  # not one of the layers: timed and printed, no target
    cpu_only: bool = False  # a CPU diagnostic: bench_conv_cuda.py leaves it out unless named in --layers
    dilation: int = 1


LAYERS = [
    ConvLayer("l1_3x3", 64, 64, 3, 56, 1, 1, 1),        # ResNet-50 layer1 bottleneck 3x3
    ConvLayer("l1_1x1", 256, 64, 1, 56, 1, 0, 1),       # layer1 bottleneck reduce 1x1 (direct GEMM path)
    ConvLayer("l2_3x3", 128, 128, 3, 28, 1, 1, 1),
    ConvLayer("l3_3x3", 256, 256, 3, 14, 1, 1, 1),
    ConvLayer("l4_3x3", 512, 512, 3, 7, 1, 1, 1),
    ConvLayer("s2_3x3", 128, 256, 3, 28, 2, 1, 1),      # stride-2 downsampling 3x3
    ConvLayer("dw_3x3", 256, 256, 3, 28, 1, 1, 256),    # MobileNet-style depthwise
    ConvLayer("stem_7x7", 3, 64, 7, 224, 2, 3, 1, extra=True),  # ResNet-50's RGB stem (3 channels)
    ConvLayer("g32_3x3", 128, 128, 3, 56, 1, 1, 32, extra=True),  # ResNeXt-50 32x4d layer1: 4 channels a group
    ConvLayer("g16w_3x3", 256, 256, 3, 28, 1, 1, 16, extra=True),  # RegNet-style: 16 channels a group
    # l3_3x3 and l4_3x3 without padding: the same output size and products from an input 2 pixels wider and
    # taller. On inputs of zero point 0 (row (a0)) oneDNN skips the taps that fall in the zero padding (l4_3x3:
    # 18% of them); fastinfer skips the kernel rows in it (half of those taps; set_conv_padded_rows). These rows
    # show what the padding is worth to each, apart from the kernels' speed.
    ConvLayer("l3_3x3_nopad", 256, 256, 3, 16, 1, 0, 1, extra=True, cpu_only=True),
    ConvLayer("l4_3x3_nopad", 512, 512, 3, 9, 1, 0, 1, extra=True, cpu_only=True),
    # DeepLabV3-ResNet50 at 256 x 256 (output stride 8): an ASPP branch, a 3x3 of dilation 12 / 24 / 36 on the
    # backbone's 32 x 32 map, most of whose taps read the zero padding (oneDNN skips each such tap; fastinfer's
    # direct convolution skips the kernel rows and columns in it: README "Taps in the padding"); and layer4's
    # 3x3 of dilation 4.
    ConvLayer("aspp_d12", 2048, 256, 3, 32, 1, 12, 1, extra=True, cpu_only=True, dilation=12),
    ConvLayer("aspp_d24", 2048, 256, 3, 32, 1, 24, 1, extra=True, cpu_only=True, dilation=24),
    ConvLayer("aspp_d36", 2048, 256, 3, 32, 1, 36, 1, extra=True, cpu_only=True, dilation=36),
    ConvLayer("dl_l4_d4", 512, 512, 3, 32, 1, 4, 1, extra=True, cpu_only=True, dilation=4),
]

SQNR_MIN_DB = 25.0
IMPL = {  # short keys -> the impl names in the table and JSON (targets look rows up by these)
    "fp32": "fp32 NCHW", "fp32_cl": "fp32 channels_last",
    "a": "(a) int8 in/out", "b": "(b) fp32 in/out q/dq", "a0": "(a0) int8 in/out, x >= 0",
    "c": "(c) static fp32 in/out", "c_nchw": "(c) static fp32 in/out, NCHW x",
    "d": "(d) int8 in/out", "e": "(e) dynamic fp32 in/out",
    "c7": "(c7) static, 7-bit weights",
}


def is_depthwise(layer: ConvLayer) -> bool:
    return layer.groups > 1 and layer.groups == layer.C == layer.Cout


def out_size(layer: ConvLayer) -> int:
    return ops.conv_output_size(layer.H, layer.k, layer.stride, layer.padding, layer.dilation)


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.float(), out.float()
    return (10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum().clamp_min(1e-30))).item()


def torch_ao_conv(conv: nn.Conv2d, out_scale: float):
    """torch.ao.nn.quantized.Conv2d with conv's weights (per-channel symmetric qint8) and a quint8 output."""
    # The weight is prepacked inside set_weight_bias for the engine active at that moment, so set it first.
    # 'x86' serves each layer with oneDNN (VNNI CPU, symmetric weights, groups <= 100) or FBGEMM (the rest,
    # e.g. the depthwise layer here).
    torch.backends.quantized.engine = "x86"
    w = conv.weight.detach()
    w_scale = w.abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / 127
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates quantize_per_channel & co. (pytorch#184982)
        qw = torch.quantize_per_channel(w, w_scale, torch.zeros(conv.out_channels, dtype=torch.long), 0, torch.qint8)
    q = torch.ao.nn.quantized.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                     conv.padding, conv.dilation, groups=conv.groups, bias=conv.bias is not None)
    q.set_weight_bias(qw, None if conv.bias is None else conv.bias.detach())
    q.scale, q.zero_point = out_scale, 128
    return q


def bench_layer(layer: ConvLayer, batch: int, threads: int, min_time: float, rounds: int = 10):
    """Times every row for one layer and batch; returns (rows, checks) with checks = {impl key: SQNR dB}."""
    torch.manual_seed(0)
    L = layer
    conv = nn.Conv2d(L.C, L.Cout, L.k, L.stride, L.padding, L.dilation, groups=L.groups).eval().requires_grad_(False)
    x = torch.randn(batch, L.C, L.H, L.H)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    w, b = conv.weight, conv.bias
    w_cl = w.contiguous(memory_format=torch.channels_last)
    conv_args = (L.stride, L.padding, L.dilation, L.groups)
    with torch.inference_mode():
        y = F.conv2d(x, w, b, *conv_args)  # the fp32 reference for the checks
    y_amax = y.abs().max().item()

    # torch.ao: 7-bit activations (quint8 0..127, zero point 64), as torch.ao's own 'x86' qconfig does
    # (reduce_range=True). FBGEMM's u8 x s8 pair products saturate int16 with full-range 8-bit activations:
    # measured 17.6 dB SQNR on the depthwise layer at zero point 128, ~32 dB at 7 bits. Speed is unaffected.
    ao_x_scale, ao_x_zp = x.abs().max().item() / 63.5, 64
    ao = torch_ao_conv(conv, y_amax / 127)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the quantize_per_tensor deprecation warning, once per process
        ao_xq = torch.quantize_per_tensor(x_cl, ao_x_scale, ao_x_zp, torch.quint8)

    # (a0): post-ReLU values, zero point 0 (torch.ao's observers give a ReLU's output that zero point)
    x_pos = torch.relu(x_cl)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao_xq0 = torch.quantize_per_tensor(x_pos, max(x_pos.max().item(), 1e-6) / 255, 0, torch.quint8)
    with torch.inference_mode():
        y_pos = F.conv2d(x_pos, w, b, *conv_args)
    ao0 = torch_ao_conv(conv, y_pos.abs().max().item() / 127)

    def ao_qdq():
        return ao(torch.quantize_per_tensor(x_cl, ao_x_scale, ao_x_zp, torch.quint8)).dequantize()

    # fastinfer: a static scale as a calibration would give it, computed once outside the timing.
    x_scale, out_scale = x.abs().max().item() / 127, y_amax / 127
    static = Int8Conv2d.from_float(conv, x_scale=x_scale)
    dynamic = Int8Conv2d.from_float(conv)
    static7 = Int8Conv2d.from_float(conv, x_scale=x_scale, weight_bits=7)
    # (d) gets the same values as (a), quantized to int8 and laid out channels_last like (a)'s input.
    xq = torch.round(x / x_scale).clamp(-127, 127).to(torch.int8).contiguous(memory_format=torch.channels_last)

    def fi_int8():
        return ops.int8_conv2d(xq, static.packed_weight, static.weight_scale, static.bias, (L.k, L.k),
                               (L.stride, L.stride), (L.padding, L.padding), (L.dilation, L.dilation), L.groups,
                               x_scale, out_scale)

    cases = [
        ("torch", "fp32", lambda: F.conv2d(x, w, b, *conv_args)),
        ("torch", "fp32_cl", lambda: F.conv2d(x_cl, w_cl, b, *conv_args)),
        ("torch.ao", "a", lambda: ao(ao_xq)),
        ("torch.ao", "b", ao_qdq),
        ("torch.ao", "a0", lambda: ao0(ao_xq0)),
        ("fastinfer", "c", lambda: static(x_cl)),
        ("fastinfer", "c_nchw", lambda: static(x)),
        ("fastinfer", "d", fi_int8),
        ("fastinfer", "e", lambda: dynamic(x_cl)),
        ("fastinfer", "c7", lambda: static7(x_cl)),
    ]
    dequant = {"a": lambda t: t.dequantize(), "a0": lambda t: t.dequantize(), "d": lambda t: t.float() * out_scale}
    refs = {"a0": y_pos}
    family = "dwconv" if is_depthwise(L) else "int8_gemm"
    oh = out_size(L)
    gemm_M, gemm_K = batch * oh * oh, L.C // L.groups * L.k * L.k
    macs = gemm_M * gemm_K * L.Cout
    rows, checks = [], {}
    with torch.inference_mode():
        served = {}
        for lib, key, fn in cases:
            out = fn()
            if key != "fp32":  # one check per layer and batch, before timing, on the same objects we time
                checks[key] = sqnr_db(refs.get(key, y), dequant.get(key, lambda t: t)(out))
            if lib == "fastinfer":  # read right after this impl ran, so it is the one served
                served[key] = kernel_served(family)
        # Every case timed in alternation (rounds of slices): the targets' ratios are paired per round.
        timed = time_calls_interleaved({key: fn for _, key, fn in cases}, min_time_s=min_time, rounds=rounds)
        for lib, key, fn in cases:
            t = timed[key]
            row = {"op": "conv2d", "lib": lib, "impl": IMPL[key], "layer": L.name, "N": batch, "C": L.C, "H": L.H,
                   "W": L.H, "Cout": L.Cout, "k": L.k, "stride": L.stride, "padding": L.padding,
                   "dilation": L.dilation, "groups": L.groups,
                   "threads": threads, **t, "tops": 2 * macs / (t["median_ms"] * 1e-3) / 1e12,
                   "gemm_M": gemm_M, "gemm_K": gemm_K, "gemm_N": L.Cout}
            if key in checks:
                row["sqnr_db"] = checks[key]
            if lib == "fastinfer":
                row.update(served[key])
            rows.append(row)
    fp32_rows = rows[:2]
    best = min(fp32_rows, key=lambda r: r["median_ms"])
    for r in fp32_rows:
        r["best_fp32"] = r is best
    return rows, checks


def kernel_served(family: str) -> Dict:
    """The kernel (and conv path) that served the fastinfer call just made."""
    if family == "int8_gemm" and ops.last_kernel("gconv"):  # narrow groups: their own kernel
        return {"isa": ops.last_kernel("gconv"), "path": "gconv"}
    if family == "int8_gemm":  # the direct convolution (padded input read in place) or gathered rows
        return {"isa": ops.last_kernel(family), "path": "direct" if ops.last_kernel("conv_direct") else "gathered"}
    return {"isa": ops.last_kernel(family)}


def targets(rows: List[Dict]):
    """The issue's targets from this run: [(name, ratio, target)], ratio = baseline ms / fastinfer ms
    (the median of per-round ratios, common.paired_ratio)."""
    extra = {L.name for L in LAYERS if L.extra}
    rows = [r for r in rows if r["layer"] not in extra]
    by = {(r["layer"], r["N"], r["impl"]): r for r in rows}
    out = []
    for layer in dict.fromkeys(r["layer"] for r in rows):
        for n in sorted({r["N"] for r in rows if r["layer"] == layer}):
            get = lambda key: by.get((layer, n, IMPL[key]))  # noqa: E731
            for new, base in (("c", "b"), ("d", "a"), ("c7", "b")):
                if get(new) and get(base):
                    out.append((f"({new}) vs torch.ao ({base}), {layer} N={n}",
                                paired_ratio(get(base), get(new)), 1.2))
    for r in rows:  # (c) against the best fp32 conv on the 3x3 layers at batch 8 (the best by median time)
        if r["impl"] == IMPL["c"] and r["k"] == 3 and r["N"] == 8:
            best = min(by[(r["layer"], 8, IMPL["fp32"])], by[(r["layer"], 8, IMPL["fp32_cl"])],
                       key=lambda b: b["median_ms"])
            out.append((f"(c) vs best fp32 conv, {r['layer']} N=8", paired_ratio(best, r), 4.0))
    return out


def parse_layers(arg):
    if not arg:
        return LAYERS
    by_name = {L.name: L for L in LAYERS}
    names = [s.strip() for s in arg.split(",") if s.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown layer(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    return [by_name[n] for n in names]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--layers", help="comma-separated layer names (default: all): " + ",".join(L.name for L in LAYERS))
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of timed calls per case (at least)")
    p.add_argument("--rounds", type=int, default=10,
                   help="a layer's cases are timed in alternation, this many rounds (ratios paired per round)")
    p.add_argument("--json", help="write the rows, checks, targets and machine info here")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: bench_conv_cuda.py (batch 32 unless --batches, vs cuDNN fp16 channels_last)")
    args = p.parse_args(argv)
    if args.device == "cuda":
        import bench_conv_cuda
        result = bench_conv_cuda.run(args)
        if args.json:
            write_json(args.json, result)
        return 1 if result["check_failures"] else 0
    torch.set_num_threads(args.threads)
    batches = [int(v) for v in args.batches.split(",")]
    layers = parse_layers(args.layers)
    info = machine_info(args.threads)
    print(f"# {info['cpu']} | fastinfer ISA {info['isa_active']} | threads {args.threads} | torch {info['torch']} | "
          f"torch.ao engine x86 | {info['date']}")
    print("# x: fp32 randn; channels_last input unless the impl says NCHW; '*' = faster fp32 layout")
    hdr = (f"{'layer':<7} {'N':>2}  {'lib':<9} {'impl':<31} {'median ms':>10} {'p10':>8} {'p90':>8} {'TOPS':>7}"
           f"  {'SQNR dB':>7}  isa")
    rows, failed = [], []
    for L in layers:
        for n in batches:
            oh = out_size(L)
            print(f"\n{L.name}: {L.C}->{L.Cout} {L.k}x{L.k} s{L.stride} p{L.padding} d{L.dilation} groups {L.groups}, "
                  f"{L.H}x{L.H} -> {oh}x{oh}, N={n}")
            print(hdr)
            layer_rows, checks = bench_layer(L, n, args.threads, args.min_time, args.rounds)
            rows += layer_rows
            for r in layer_rows:
                mark = "*" if r.get("best_fp32") else " "
                sq = f"{r['sqnr_db']:7.1f}" if "sqnr_db" in r else " " * 7
                print(f"{L.name:<7} {n:>2}  {r['lib']:<9} {r['impl'] + mark:<31} {r['median_ms']:>10.4f} "
                      f"{r['p10_ms']:>8.4f} {r['p90_ms']:>8.4f} {r['tops']:>7.3f}  {sq}  {r.get('isa', '')} {r.get('path', '')}")
            failed += [f"{L.name} N={n} {IMPL[k]}: {v:.1f} dB" for k, v in checks.items() if not v > SQNR_MIN_DB]
    served = {fam: ops.last_kernel(fam) or "not run" for fam in ("int8_gemm", "dwconv", "gconv")}
    print(f"\n# fastinfer conv kernels served by: implicit GEMM {served['int8_gemm']}, depthwise {served['dwconv']}, "
          f"narrow groups {served['gconv']}")
    tgt = targets(rows)
    if tgt:
        print("targets (ratio = baseline ms / fastinfer ms, median of per-round ratios; (c) is the channels_last-input "
              "row):")
        for name, val, want in tgt:
            print(f"  {name:<44} {val:6.2f}x  (target >= {want:.1f}x)  {'met' if val >= want else 'MISSED'}")
    if failed:
        print(f"CHECK FAILED (SQNR vs fp32 conv <= {SQNR_MIN_DB} dB): " + "; ".join(failed))
    if args.json:
        write_json(args.json, {"machine": info, "kernels_served": served, "rows": rows, "check_failures": failed,
                               "targets": [{"name": n, "value": v, "target": t} for n, v, t in tgt]})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
