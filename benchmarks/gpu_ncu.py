"""Hardware counters of the CUDA kernels that missed their targets (benchmarks/gpu_check.sh runs it after
gpu_profile.py, where the machine has Nsight Compute).

Where the benchmark says how long a kernel took, this says why: DRAM bytes and throughput against peak, the
SMs' busiest pipe, achieved occupancy, and the warp stall reasons that dominate. One child process runs every
case below once after warm-up, each call between cudaProfilerStart/Stop (so ncu, started with
--profile-from-start off, sees only those kernels) and after a marker kernel (torch.cuda._sleep) that splits
the report into cases. Clocks are left alone (--clock-control none: the device notes ask for it).

    python benchmarks/gpu_ncu.py [--json out.json]        # needs ncu on PATH, a GPU, fastinfer built with CUDA
    python benchmarks/gpu_ncu.py --child                  # what ncu runs
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Tuple

SECTIONS = ("SpeedOfLight", "Occupancy", "LaunchStats", "WarpStateStats", "MemoryWorkloadAnalysis")
# Named beside the sections: the tensor pipe's share, and the stall reasons (cycles a warp waits per issued
# instruction) whether or not the installed WarpStateStats section collects each.
METRICS = ["sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"] + [
    f"smsp__average_warps_issue_stalled_{r}_per_issue_active.ratio"
    for r in ("long_scoreboard", "short_scoreboard", "barrier", "mio_throttle", "math_pipe_throttle", "wait",
              "lg_throttle", "no_instruction", "not_selected", "selected", "dispatch_stall", "branch_resolving",
              "sleeping")]
MARKER = "spin_kernel"  # torch.cuda._sleep's kernel: the first of each case's rows


def cases() -> List[Tuple[str, Callable[[], object], Dict[str, str]]]:
    """(name, call, environment) of each case, built on the GPU."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from fastinfer import ops
    from fastinfer.nn import Int8Linear, SparseLinear

    from bench_conv import LAYERS
    from bench_conv_cuda import layer_cases
    from bench_sparse_cuda import two_four_weight

    torch.manual_seed(0)
    dev = "cuda"
    out = []
    big = nn.Linear(8192, 8192, device=dev).eval()
    small = nn.Linear(4096, 4096, device=dev).eval()
    w8_big, w8_small = Int8Linear.from_float(big, "w8_only"), Int8Linear.from_float(small, "w8_only")
    w_bf16 = big.weight.detach().to(torch.bfloat16)
    for rows in (1, 16):
        x = torch.randn(rows, 8192, device=dev, dtype=torch.bfloat16)
        out.append((f"w8_only {rows}x8192x8192", lambda x=x: w8_big(x), {}))
    x16 = torch.randn(16, 8192, device=dev, dtype=torch.bfloat16)
    out.append(("w8_only 16x8192x8192 k256", lambda: w8_big(x16), {"FASTINFER_WEIGHT_ONLY_ROUND_K": "256"}))
    tiles = ops.pack_weight_only_tiles(w8_big.int8_weight().contiguous())  # the candidate Tiles8x64 layout
    out.append(("w8_only 16x8192x8192 tiles", lambda: torch.ops.fastinfer.int8_linear_weight_only(
        x16, tiles, w8_big.weight_scale, w8_big.bias), {}))
    out.append(("bf16 F.linear 16x8192x8192 (cuBLAS)", lambda: F.linear(x16, w_bf16), {}))
    x32 = torch.randn(32, 4096, device=dev, dtype=torch.bfloat16)
    out.append(("w8_only 32x4096x4096", lambda: w8_small(x32), {}))
    out.append(("w8_only 32x4096x4096 k256", lambda: w8_small(x32), {"FASTINFER_WEIGHT_ONLY_ROUND_K": "256"}))
    sp = nn.Linear(8192, 8192, device=dev).eval()
    with torch.no_grad():
        sp.weight.copy_(two_four_weight(8192, 8192, dev))
    sparse = SparseLinear.from_float(sp, torch.int8, pattern="2:4")
    dense = Int8Linear.from_float(sp, "w8a8_dynamic")
    xb = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    out.append(("2:4 SparseLinear 8192x8192x8192", lambda: sparse(xb), {}))
    out.append(("dense Int8Linear w8a8_dynamic 8192x8192x8192", lambda: dense(xb), {}))
    for name in ("l1_3x3", "dw_3x3"):
        layer = next(L for L in LAYERS if L.name == name)
        fns = {impl: fn for _, impl, fn, _ in layer_cases(layer, 32)[1]}
        out.append((f"conv {name} N=32 int8 in/out", fns["(d) int8 in/out"], {}))
        if name.startswith("dw"):  # the depthwise strip kernel, a candidate
            out.append((f"conv {name} N=32 int8 in/out strip", fns["(d) int8 in/out"],
                        {"FASTINFER_DWCONV_KERNEL": "strip"}))
        out.append((f"conv {name} N=32 cuDNN fp16", fns["cuDNN fp16 channels_last"], {}))
    return out


def child() -> None:
    import torch

    from bench_linear_cuda import environ

    cudart = torch.cuda.cudart()
    built = cases()  # the modules are made outside inference mode, as a user makes them
    with torch.inference_mode():
        for name, fn, env in built:
            with environ(env):
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
                cudart.cudaProfilerStart()
                torch.cuda._sleep(1000)
                fn()
                torch.cuda.synchronize()
                cudart.cudaProfilerStop()
            print(name, flush=True)


def short_name(name: str) -> str:
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"\b(fastinfer|cuda_kernels|cutlass|cute|at|native)::|\(anonymous namespace\)::", "", name)
    return name[:80]


def parse(report: str, names: List[str]) -> List[Dict]:
    """The raw CSV page (one row per kernel) -> rows with the case each belongs to and the chosen metrics."""
    lines = [ln for ln in report.splitlines() if ln.startswith('"')]
    if len(lines) < 2:
        return []
    table = list(csv.reader(io.StringIO("\n".join(lines))))
    head = table[0]
    col = {h: i for i, h in enumerate(head)}
    # A units row follows the names (its ID cell is empty); without one every row after the names is a kernel.
    has_units = "ID" in col and not table[1][col["ID"]].strip().isdigit()
    units, data = (table[1], table[2:]) if has_units else ([""] * len(head), table[1:])
    rows, case = [], -1
    for r in data:
        kernel = r[col["Kernel Name"]] if "Kernel Name" in col else "?"
        if MARKER in kernel:
            case += 1
            continue

        def metric(key: str, scale: Dict[str, float] = None):
            if key not in col:
                return None
            try:
                v = float(r[col[key]].replace(",", ""))
            except ValueError:
                return None
            return v * (scale or {}).get(units[col[key]], 1.0)

        stalls = []
        for h, i in col.items():
            m = re.search(r"issue_stalled_(\w+?)_per_issue_active\.ratio$", h)
            if m and "warp_latency" not in h:
                try:
                    stalls.append((float(r[i].replace(",", "")), m.group(1)))
                except ValueError:
                    pass
        stalls.sort(reverse=True)
        rows.append({
            "case": names[case] if 0 <= case < len(names) else "?",
            "kernel": short_name(kernel),
            "grid": r[col["Grid Size"]] if "Grid Size" in col else "",
            "block": r[col["Block Size"]] if "Block Size" in col else "",
            "us": metric("gpu__time_duration.sum", {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}),
            "dram_GBps": metric("dram__bytes_read.sum.per_second",
                                {"byte/second": 1e-9, "Kbyte/second": 1e-6, "Mbyte/second": 1e-3,
                                 "Gbyte/second": 1.0, "Tbyte/second": 1e3}),
            "dram_pct": metric("dram__throughput.avg.pct_of_peak_sustained_elapsed"),
            "sm_pct": metric("sm__throughput.avg.pct_of_peak_sustained_elapsed"),
            "occupancy_pct": metric("sm__warps_active.avg.pct_of_peak_sustained_active"),
            "tensor_pct": metric("sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"),
            "regs": metric("launch__registers_per_thread"),
            "stalls": [(name, round(v, 2)) for v, name in stalls[:4]],
        })
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help="run the cases (what ncu starts)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    if args.child:
        child()
        return
    ncu = shutil.which("ncu") or next(iter(sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"), reverse=True)), None)
    if ncu is None:
        raise SystemExit("gpu_ncu.py: no ncu (Nsight Compute) on PATH or under /opt/nvidia/nsight-compute")
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "ncu.csv")
        cmd = [ncu, "--profile-from-start", "off", "--clock-control", "none", "--csv", "--page", "raw",
               "--log-file", log]
        for s in SECTIONS:
            cmd += ["--section", s]
        cmd += ["--metrics", ",".join(METRICS)]
        cmd += [sys.executable, os.path.abspath(__file__), "--child"]
        run = subprocess.run(cmd, capture_output=True, text=True)
        names = [ln for ln in run.stdout.splitlines() if ln.strip()]
        report = open(log).read() if os.path.exists(log) else ""
    rows = parse(report, names)
    if run.returncode != 0 or not rows:
        print(run.stdout[-2000:], run.stderr[-3000:], report[-2000:], sep="\n")
        raise SystemExit(f"gpu_ncu.py: ncu exited {run.returncode} with {len(rows)} kernel rows")
    print(f"{'us':>8} {'DRAM GB/s':>9} {'DRAM%':>6} {'SM%':>5} {'occ%':>5} {'TC%':>5} {'regs':>4}  "
          "kernel (grid x block); top stalls (cycles per issued instruction)")
    last = None
    for r in rows:
        if r["case"] != last:
            print(f"== {r['case']}")
            last = r["case"]
        f = lambda v, w, d=1: f"{v:>{w}.{d}f}" if v is not None else " " * (w - 1) + "-"  # noqa: E731
        print(f"{f(r['us'], 8)} {f(r['dram_GBps'], 9, 0)} {f(r['dram_pct'], 6)} {f(r['sm_pct'], 5)} "
              f"{f(r['occupancy_pct'], 5)} {f(r['tensor_pct'], 5)} {f(r['regs'], 4, 0)}  "
              f"{r['kernel']} ({r['grid']} x {r['block']})")
        if r["stalls"]:
            print(" " * 51 + "stalls: " + ", ".join(f"{n} {v}" for n, v in r["stalls"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
