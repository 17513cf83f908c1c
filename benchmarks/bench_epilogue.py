"""The cost of each fused activation in the int8 epilogue, on the layers of the mobile CNNs that use them.

    python benchmarks/bench_epilogue.py [--threads 2] [--batch 8] [--layers exp_1x1,dw_3x3]
                                        [--acts none,relu,hardswish,silu] [--min-time 0.3] [--json out.json]

Every layer runs int8 in and int8 out with static scales (the hand-off between two quantized layers inside a
network, where the epilogue is all the elementwise work there is); an fp32-out row and a Linear row (fp32 in:
quantized in the op) are there too. For each layer and activation: the median ms of one call, its ratio to
the same layer with no activation, and the kernel that served it. The weights are random; the activation
only changes the epilogue, so the ratio is what the activation costs there. To compare two builds (one
change to the epilogue), run this script from each build in alternated processes and take the medians of the
per-round ratios (benchmarks/RESULTS.md, "SiLU epilogue").
"""
from __future__ import annotations

import argparse
from typing import Callable, Dict, List, NamedTuple

import torch

from common import machine_info, time_call, write_json
from fastinfer import ops


class Layer(NamedTuple):
    name: str
    kind: str  # "conv" (int8 in/out), "conv_f32" (int8 in, fp32 out), "linear" (fp32 in/out)
    cin: int
    cout: int
    size: int  # conv: height = width; linear: rows per batch item
    k: int
    depthwise: bool
    note: str


LAYERS = [
    Layer("exp_1x1", "conv", 16, 96, 112, 1, False, "EfficientNet-B0's first expansion (K = 16)"),
    Layer("exp_1x1_f32", "conv_f32", 16, 96, 112, 1, False, "the same with an fp32 output"),
    Layer("exp_1x1_wide", "conv", 112, 672, 14, 1, False, "a late expansion (K = 112)"),
    Layer("dw_3x3", "conv", 144, 144, 56, 3, True, "depthwise, 144 channels (three 64-channel blocks)"),
    Layer("dw32_3x3", "conv", 32, 32, 112, 3, True, "depthwise, 32 channels (the 256-bit row quads)"),
    Layer("conv_3x3", "conv", 64, 64, 56, 3, False, "a dense 3 x 3 (K = 576: the products dominate)"),
    Layer("ffn_linear", "linear", 384, 1536, 16, 0, False, "a transformer FFN's first Linear, fp32 in/out"),
]
ACTS = ["none", "relu", "relu6", "hardswish", "silu", "gelu"]


def layer_call(layer: Layer, batch: int, act: str, g: torch.Generator) -> Callable[[], torch.Tensor]:
    if layer.kind == "linear":
        w = torch.randint(-127, 128, (layer.cout, layer.cin), dtype=torch.int8, generator=g)
        packed, scale = ops.pack_int8_weight(w), torch.rand(layer.cout, generator=g) * 1e-3 + 1e-3
        x, bias = torch.randn(batch * layer.size, layer.cin, generator=g), torch.randn(layer.cout, generator=g)
        return lambda: ops.int8_linear_static(x, 0.04, packed, scale, bias, act)
    groups = layer.cin if layer.depthwise else 1
    w = torch.randint(-127, 128, (layer.cout, layer.cin // groups, layer.k, layer.k), dtype=torch.int8, generator=g)
    packed, scale = ops.pack_conv_weight(w, groups), torch.rand(layer.cout, generator=g) * 1e-3 + 1e-3
    bias = torch.randn(layer.cout, generator=g)
    x = torch.randint(-100, 101, (batch, layer.size, layer.size, layer.cin), dtype=torch.int8,
                      generator=g).permute(0, 3, 1, 2)  # channels_last int8, as a quantized layer hands it on
    pad = layer.k // 2
    out_scale = None if layer.kind == "conv_f32" else 0.05
    return lambda: ops.int8_conv2d(x, packed, scale, bias, (layer.k, layer.k), (1, 1), (pad, pad), (1, 1), groups,
                                   0.05, out_scale, act)


def served(layer: Layer) -> str:
    if layer.kind == "linear":
        return "int8_gemm " + ops.last_kernel("int8_gemm")
    if layer.depthwise:
        return f"dwconv {ops.last_kernel('dwconv')} {ops.last_kernel('dwconv_path')}"
    direct = ops.last_kernel("conv_direct")
    return f"conv_direct {direct}" if direct else "gathered " + ops.last_kernel("int8_gemm")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--layers", help="comma-separated layer names (default: all): " + ",".join(L.name for L in LAYERS))
    p.add_argument("--acts", default="none,relu,relu6,hardswish,silu,gelu",
                   help="comma-separated activations (none is always timed: the ratios divide by it)")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of timed calls per case (at least)")
    p.add_argument("--json", help="write the rows and machine info here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = args.layers.split(",") if args.layers else [L.name for L in LAYERS]
    unknown = sorted(set(names) - {L.name for L in LAYERS})
    if unknown:
        p.error(f"unknown layers {unknown}; choose from {[L.name for L in LAYERS]}")
    acts = ["none"] + [a for a in args.acts.split(",") if a != "none"]
    if sorted(set(acts) - set(ACTS)):
        p.error(f"unknown activations {sorted(set(acts) - set(ACTS))}; choose from {ACTS}")
    info = machine_info(args.threads)
    print(f"# int8 epilogue activations | {info['cpu']} | ISA {info['isa_active']} | threads {args.threads} | "
          f"batch {args.batch} | torch {info['torch']} | {info['date']}")
    print(f"{'layer':14s} {'act':10s} {'median ms':>10s} {'p10':>8s} {'p90':>8s} {'vs none':>8s}  served by")
    rows: List[Dict] = []
    with torch.inference_mode():
        for layer in (L for L in LAYERS if L.name in names):
            base = None
            for act in acts:
                g = torch.Generator().manual_seed(0)  # the same weights and inputs for every activation
                fn = layer_call(layer, args.batch, act, g)
                t = time_call(fn, args.min_time)
                base = t["median_ms"] if act == "none" else base
                row = {"layer": layer.name, "note": layer.note, "act": act, "batch": args.batch, **t,
                       "vs_none": t["median_ms"] / base, "served": served(layer)}
                rows.append(row)
                print(f"{layer.name:14s} {act:10s} {t['median_ms']:10.3f} {t['p10_ms']:8.3f} {t['p90_ms']:8.3f} "
                      f"{row['vs_none']:7.2f}x  {row['served']}")
    if args.json:
        write_json(args.json, {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
