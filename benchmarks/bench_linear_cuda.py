"""The linear-layer benchmark on a GPU (`python benchmarks/bench_linear.py --device cuda`).

Rows per shape, timed with CUDA events (median of repeats, after warm-up), baselines in the same run:
torch bf16 F.linear; torch._int_mm (cuBLASLt int8 -> int32; it refuses M <= 16); torch._int_mm with the
per-token x per-channel scaling and bias written in torch, as users do; fastinfer int8_mm (raw, int32 out),
int8_scaled_mm (fused epilogue, bf16 out), Int8Linear w8a8_dynamic (bf16 in/out, activation quantization
included) and, for M <= 64, w8_only (bf16 in/out; its weight traffic as GB/s; from 9 rows also in the
tensor-core kernel's candidate 256-k rounds, FASTINFER_WEIGHT_ONLY_ROUND_K=256: "w8_only k256"; and the
candidate Tiles8x64 weight layout, ops.pack_weight_only_tiles, through the layer's op: "w8_only tiles" and, from
9 rows, "w8_only tiles k256").
TOPS = 2 M N K / time.
The unnamed rows run the library's defaults (for bf16 outputs on Hopper: the GEMM's pingpong composition).
At shapes of M * N >= 4096 * 8192 the fused GEMM is also timed in each composition of the Hopper kernel
(FASTINFER_SM90_VARIANT: cooperative, pingpong, wide; params.h), at the two target shapes with each tile
swizzle too (FASTINFER_SM90_SWIZZLE: 1, the default, 2, 4, 8), and for M >= 512 Int8Linear w8a8_dynamic in
each composition: rows named "... <variant> swizzle=<n>" and "... <variant>", carrying "variant" and
"swizzle".
Rows of M <= 512 are also timed as replays of 20 calls captured in a CUDA graph ("graph ms": the GPU's time
without the host's per-call launch work, which the event timing includes when the host is the slower side).
"""
from __future__ import annotations

import contextlib
import os
import statistics
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fastinfer import ops
from fastinfer.nn import Int8Linear

SHAPES_CUDA = [(m, k, n) for (k, n) in ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192))
               for m in (1, 16, 32, 128, 512, 2048, 4096, 8192)]


def time_cuda(fn: Callable[[], object], repeats: int = 5, min_ms: float = 10.0) -> Dict:
    """Median ms per call: calls grouped between CUDA events (enough for min_ms), repeated."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    calls = max(1, min(1000, int(min_ms / max(start.elapsed_time(end), 1e-3))))
    times: List[float] = []
    for _ in range(repeats):
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    times.sort()
    return {"median_ms": statistics.median(times), "p10_ms": times[0], "p90_ms": times[-1], "iters": calls * repeats}


def time_cuda_graph(fn: Callable[[], object], calls: int = 20, repeats: int = 5) -> Dict:
    """Median ms per call of `calls` calls captured in one CUDA graph, replayed between CUDA events: the GPU's
    time without the host's launch overhead (each call's Python, dispatch and launch work), which time_cuda
    includes whenever the host is slower than the kernels. Outputs come from the graph's own memory pool.
    A call that cannot be captured gives {"graph_error": why} (the row keeps its event timing)."""
    try:
        return _time_graph(fn, calls, repeats)
    except Exception as e:  # noqa: BLE001  (reported in the row, not dropped)
        torch.cuda.synchronize()
        return {"graph_error": f"{type(e).__name__}: {e}"[:200]}


def _time_graph(fn: Callable[[], object], calls: int, repeats: int) -> Dict:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture (workspaces, descriptors, lazy init)
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times: List[float] = []
    for _ in range(repeats):
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    times.sort()
    del graph
    return {"graph_ms": statistics.median(times)}


# The Hopper GEMM's settings swept beside the defaults: its compositions (FASTINFER_SM90_VARIANT, read by the
# entry layer at each call; the default one is timed again under its name) and tile swizzles
# (FASTINFER_SM90_SWIZZLE, read by the kernel's launch).
VARIANTS = ("cooperative", "pingpong", "wide")
SWIZZLES = (2, 4, 8)
TARGET_SHAPES = ((8192, 8192, 8192), (4096, 4096, 14336))  # issue #4's fused-GEMM targets (M, K, N)


@contextlib.contextmanager
def environ(settings: Dict[str, str]):
    """The environment variables in `settings` set while the block runs, restored after."""
    previous = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def hopper_settings(variant: str, swizzle: Optional[int] = None) -> Dict[str, str]:
    """The environment of one Hopper GEMM setting (swizzle None: left as it is)."""
    env = {"FASTINFER_SM90_VARIANT": variant}
    if swizzle is not None:
        env["FASTINFER_SM90_SWIZZLE"] = str(swizzle)
    return env


def bench_shape(M: int, K: int, N: int) -> List[Dict]:
    torch.manual_seed(0)
    dev = "cuda"
    x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
    lin = nn.Linear(K, N, device=dev).eval()  # initialized on the GPU (a CPU init of 59M weights takes seconds)
    lin_bf16 = nn.Linear(K, N, device=dev, dtype=torch.bfloat16).eval()
    a = torch.randint(-127, 128, (M, K), dtype=torch.int8, device=dev)
    w8 = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=dev)
    w8_t = w8.t()
    a_scale, b_scale = torch.rand(M, device=dev) + 0.5, torch.rand(N, device=dev) * 0.01
    bias = torch.randn(N, device=dev)
    packed = ops.pack_int8_weight(w8)
    dyn = Int8Linear.from_float(lin, "w8a8_dynamic")
    wonly = Int8Linear.from_float(lin, "w8_only")

    def int_mm_scaled():
        acc = torch._int_mm(a, w8_t)
        return (acc.float() * a_scale[:, None] * b_scale[None, :] + bias).to(torch.bfloat16)

    def fused():
        return ops.int8_scaled_mm(a, a_scale, packed, b_scale, bias, torch.bfloat16)

    # (lib, impl, fn, the environment to time it in: the Hopper GEMM's settings, {} for the defaults)
    cases = [("torch", "bf16 F.linear", lambda: F.linear(x, lin_bf16.weight, lin_bf16.bias), {})]
    if M > 16:
        cases += [("torch", "_int_mm", lambda: torch._int_mm(a, w8_t), {}),
                  ("torch", "_int_mm + scaling", int_mm_scaled, {})]
    cases += [
        ("fastinfer", "int8_mm raw", lambda: ops.int8_mm(a, packed, N), {}),
        ("fastinfer", "int8_scaled_mm fused", fused, {}),
        ("fastinfer", "Int8Linear w8a8_dynamic", lambda: dyn(x), {}),
    ]
    if M <= 64:
        cases.append(("fastinfer", "Int8Linear w8_only", lambda: wonly(x), {}))
    if 8 < M <= 64:  # the tensor-core kernel's candidate 256-k rounds (FASTINFER_WEIGHT_ONLY_ROUND_K)
        cases.append(("fastinfer", "Int8Linear w8_only k256", lambda: wonly(x),
                      {"FASTINFER_WEIGHT_ONLY_ROUND_K": "256"}))
    if M <= 64:  # the candidate Tiles8x64 weight layout: the layer's own op and buffers, the weight as tiles
        tiles = ops.pack_weight_only_tiles(wonly.int8_weight().contiguous())

        def wonly_tiles():
            return torch.ops.fastinfer.int8_linear_weight_only(x, tiles, wonly.weight_scale, wonly.bias)

        cases.append(("fastinfer", "w8_only tiles", wonly_tiles, {}))
        if M > 8:
            cases.append(("fastinfer", "w8_only tiles k256", wonly_tiles, {"FASTINFER_WEIGHT_ONLY_ROUND_K": "256"}))
    if M * N >= 4096 * 8192:  # every swizzle at the target shapes, the compositions alone at the others
        swizzles = (1,) + SWIZZLES if (M, K, N) in TARGET_SHAPES else (1,)
        cases += [("fastinfer", f"int8_scaled_mm fused {v} swizzle={n}", fused, hopper_settings(v, n))
                  for v in VARIANTS for n in swizzles]
    if M >= 512:
        cases += [("fastinfer", f"Int8Linear w8a8_dynamic {v}", lambda: dyn(x), hopper_settings(v)) for v in VARIANTS]
    rows = []
    with torch.inference_mode():
        for lib, impl, fn, env in cases:
            with environ(env):
                t = time_cuda(fn)
                kernel = ops.cuda_last_kernel() if lib == "fastinfer" else ""
                # up to 512 rows: tens of microseconds of GPU work or less, where the host's launch overhead can
                # dominate (on the H200 host a launch took about 10 us: at 512 x 4096 x 4096 the eager
                # Int8Linear, two launches, took 0.045 ms for about 0.015 of GPU work)
                if M <= 512:
                    t.update(time_cuda_graph(fn))
            row = {"op": "linear", "device": "cuda", "lib": lib, "impl": impl, "M": M, "K": K, "N": N, **t,
                   "tops": 2 * M * N * K / (t["median_ms"] * 1e-3) / 1e12, "kernel": kernel}
            if "FASTINFER_SM90_VARIANT" in env:
                row["variant"] = env["FASTINFER_SM90_VARIANT"]
            if "FASTINFER_SM90_SWIZZLE" in env:
                row["swizzle"] = int(env["FASTINFER_SM90_SWIZZLE"])
            if impl.startswith(("Int8Linear w8_only", "w8_only tiles")):
                row["gb_s"] = (N * K + 2 * M * K + 2 * M * N) / (t["median_ms"] * 1e-3) / 1e9
            rows.append(row)
    return rows


def copy_tb_s(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth of this GPU, measured now (bytes read plus written): the ceiling
    the weight-only kernel's GB/s is read against (about 3.0 TB/s on an H100, 4.3 on an H200)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    src.random_(0, 256)  # not zeros: METHOD.md's caution on timing untouched or zero memory
    dst = torch.empty_like(src)
    t = time_cuda(lambda: dst.copy_(src), repeats=5, min_ms=20.0)
    del src, dst
    return 2 * nbytes / (t["median_ms"] * 1e-3) / 1e12


def targets(rows: List[Dict], copy_tb: float):
    """(issue, name, value, target, higher_is_better) for issue #4's targets this run covers; copy_tb:
    copy_tb_s() of this run."""
    by = {(r["M"], r["K"], r["N"], r["impl"]): r for r in rows}
    out = []
    for shape in TARGET_SHAPES:
        fused, base = by.get(shape + ("int8_scaled_mm fused",)), by.get(shape + ("_int_mm",))
        if fused:
            M, K, N = shape
            out.append(("#4", f"fused W8A8 POPS at {M}x{K}x{N}", fused["tops"] / 1000, 1.35, True))
            swept = [r for r in by.values() if (r["M"], r["K"], r["N"]) == shape and "swizzle" in r
                     and r["impl"].startswith("int8_scaled_mm fused")]
            if swept:
                best = max(swept, key=lambda r: r["tops"])
                out.append(("#4", f"fused W8A8 POPS at {M}x{K}x{N}, {best['variant']} swizzle={best['swizzle']}",
                            best["tops"] / 1000, 1.35, True))
            if base:
                out.append(("#4", f"fused W8A8 vs torch._int_mm at {M}x{K}x{N}",
                            base["median_ms"] / fused["median_ms"], 1.5, True))
    for (M, K, N) in sorted({(r["M"], r["K"], r["N"]) for r in rows}):
        dyn = by.get((M, K, N, "Int8Linear w8a8_dynamic"))
        scaled, bf16 = by.get((M, K, N, "_int_mm + scaling")), by.get((M, K, N, "bf16 F.linear"))
        if M >= 512 and dyn and scaled:
            out.append(("#4", f"w8a8_dynamic vs _int_mm+scaling at {M}x{K}x{N}",
                        scaled["median_ms"] / dyn["median_ms"], 2.0, True))
        if M >= 512 and dyn and bf16:
            out.append(("#4", f"w8a8_dynamic vs bf16 F.linear at {M}x{K}x{N}", bf16["median_ms"] / dyn["median_ms"],
                        1.4, True))
            if "graph_ms" in dyn and "graph_ms" in bf16:
                out.append(("#4", f"w8a8_dynamic vs bf16 F.linear (graph) at {M}x{K}x{N}",
                            bf16["graph_ms"] / dyn["graph_ms"], 1.4, True))
            if scaled and "graph_ms" in dyn and "graph_ms" in scaled:
                out.append(("#4", f"w8a8_dynamic vs _int_mm+scaling (graph) at {M}x{K}x{N}",
                            scaled["graph_ms"] / dyn["graph_ms"], 2.0, True))
            variants = [by[(M, K, N, f"Int8Linear w8a8_dynamic {v}")] for v in VARIANTS
                        if (M, K, N, f"Int8Linear w8a8_dynamic {v}") in by]
            best = min(variants, key=lambda r: r["median_ms"], default=None)
            if best and best["median_ms"] < dyn["median_ms"]:
                out.append(("#4", f"w8a8_dynamic ({best['variant']}) vs bf16 F.linear at {M}x{K}x{N}",
                            bf16["median_ms"] / best["median_ms"], 1.4, True))
        wo = by.get((M, K, N, "Int8Linear w8_only"))
        if M <= 64 and wo and bf16:
            out.append(("#4", f"w8_only vs bf16 F.linear at {M}x{K}x{N}", bf16["median_ms"] / wo["median_ms"], 1.5,
                        True))
            if "graph_ms" in wo and "graph_ms" in bf16:
                out.append(("#4", f"w8_only vs bf16 F.linear (graph) at {M}x{K}x{N}",
                            bf16["graph_ms"] / wo["graph_ms"], 1.5, True))
            out.append(("#4", f"w8_only GB/s / {copy_tb:.1f} TB/s copy at {M}x{K}x{N}",
                        wo["gb_s"] / (copy_tb * 1000), 0.0, True))
            for impl, what in (("Int8Linear w8_only k256", "256-k rounds"), ("w8_only tiles", "tiles"),
                               ("w8_only tiles k256", "tiles, 256-k rounds")):
                cand = by.get((M, K, N, impl))  # the candidates (graph: the op alone, without the layer's Python)
                if cand and "graph_ms" in cand and "graph_ms" in bf16:
                    out.append(("#4", f"w8_only ({what}) vs bf16 F.linear (graph) at {M}x{K}x{N}",
                                bf16["graph_ms"] / cand["graph_ms"], 1.5, True))
    return out


def machine_info_cuda() -> Dict:
    p = torch.cuda.get_device_properties(0)
    return {"gpu": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
            "torch": torch.__version__, "cuda": torch.version.cuda, "fastinfer_build": ops.BUILD}
