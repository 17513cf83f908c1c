"""Whole networks with and without the eager layers' direct calls (fastinfer/nn/_common.py fast_or_dispatch), in
one process: rounds alternate the direct calls with the torch.ops calls a compiler's trace makes (forced by
patching the compiling test); medians of the per-round ratios.

    python benchmarks/bench_direct_calls.py --models mobilenet_v2,resnet50 --rounds 5 --json out.json
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_resnet as br  # noqa: E402

import fastinfer  # noqa: E402
from fastinfer.nn import _common  # noqa: E402


def tm(f, t):
    ts = []
    end = time.perf_counter() + t
    while time.perf_counter() < end:
        s = time.perf_counter()
        f()
        ts.append(time.perf_counter() - s)
    return statistics.median(ts)


def run(name: str, rounds: int) -> list:
    m = br.build_model(name).eval()
    calib = [torch.randn(8, 3, 224, 224) for _ in range(2)]
    fi = fastinfer.quantize(fastinfer.fuse(m, example_inputs=calib[0]), scheme="w8a8_static", calib_data=calib)
    direct = _common._is_compiling
    rows = []
    try:
        for batch in (1, 8):
            x = torch.randn(batch, 3, 224, 224)
            t = 0.6 if batch == 1 else 1.2
            on, off = [], []
            with torch.inference_mode():
                for _ in range(rounds):
                    _common._is_compiling = direct
                    fi(x)
                    on.append(tm(lambda: fi(x), t))
                    _common._is_compiling = lambda: True  # the torch.ops calls, as under a compiler
                    fi(x)
                    off.append(tm(lambda: fi(x), t))
            rows.append({"model": name, "batch": batch, "direct_ms": statistics.median(on) * 1e3,
                         "torch_ops_ms": statistics.median(off) * 1e3,
                         "speedup": statistics.median([b / a for a, b in zip(on, off)])})
            r = rows[-1]
            print(f"{name:20s} {batch:3d} {r['direct_ms']:10.3f} {r['torch_ops_ms']:12.3f} {r['speedup']:8.3f}x",
                  flush=True)
    finally:
        _common._is_compiling = direct
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2,mobilenet_v3_large,efficientnet_b0,resnet50")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'model':20s} {'N':>3s} {'direct ms':>10s} {'torch.ops ms':>12s} {'speedup':>9s}")
    rows = [r for name in args.models.split(",") for r in run(name, args.rounds)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "rounds": args.rounds, "cpu": fastinfer.ops.cpu_capabilities(),
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
