"""Timing helpers shared by the CPU benchmarks: warm-up, median and spread, machine description."""
from __future__ import annotations

import copy
import datetime
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch
from torch import nn

import fastinfer


def time_call(fn: Callable[[], object], min_time_s: float = 0.25, min_iters: int = 10, warmup: int = 3) -> Dict:
    """Times fn() one call at a time after warm-up; returns median/p10/p90 in ms."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 2000:
            break
    return _stats(times)


def _stats(times: List[float]) -> Dict:
    """median/p10/p90 in ms and the count of per-call times in seconds."""
    times = sorted(times)
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1e3  # noqa: E731
    return {"median_ms": statistics.median(times) * 1e3, "p10_ms": pick(0.10), "p90_ms": pick(0.90),
            "iters": len(times)}


def time_calls_interleaved(fns: Dict[str, Callable[[], object]], min_time_s: float = 0.25, rounds: int = 5,
                           warmup: int = 3) -> Dict[str, Dict]:
    """Times several callables in alternation: `rounds` rounds, each giving every callable a slice of at least
    min_time_s / rounds (and 3 calls). On a shared machine whose speed drifts over seconds, each round's
    callables meet the same conditions, so ratios of their per-round medians ("round_ms") are paired; a
    callable timed alone, after another, could meet a 2x slower phase. Returns time_call's fields (over all
    calls) plus round_ms for every key."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    calls: Dict[str, List[float]] = {k: [] for k in fns}
    per_round: Dict[str, List[float]] = {k: [] for k in fns}
    slice_s = min_time_s / max(1, rounds)
    for _ in range(max(1, rounds)):
        for k, fn in fns.items():
            times: List[float] = []
            start = time.perf_counter()
            while len(times) < 3 or (time.perf_counter() - start < slice_s and len(times) < 2000):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            calls[k] += times
            per_round[k].append(statistics.median(times) * 1e3)
    return {k: {**_stats(times), "round_ms": per_round[k]} for k, times in calls.items()}


def paired_ratio(base: Dict, new: Dict) -> float:
    """base time / new time: the median of per-round ratios when both rows carry round_ms from one
    time_calls_interleaved call, else the ratio of medians."""
    a, b = base.get("round_ms"), new.get("round_ms")
    if a and b and len(a) == len(b):
        return statistics.median(x / y for x, y in zip(a, b))
    return base["median_ms"] / new["median_ms"]


def machine_info(threads: int) -> Dict:
    caps = fastinfer.cpu_capabilities()
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "vendor": caps["vendor"], "isa_active": caps["active"], "isa_detected": caps["detected"],
            "threads": threads, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
            "nproc": os.cpu_count()}


def check_target(value: float, target: float, higher_is_better: bool = True):
    """(met, relation) for a target: met is None when target is 0.0 (a figure reported without a target)."""
    if target == 0.0:
        return None, "-"
    return (value >= target if higher_is_better else value <= target), (">=" if higher_is_better else "<=")


def write_json(path: str, payload: Dict) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    print(f"wrote {path}")


def torch_ao_static(fp32: nn.Module, calib) -> nn.Module:
    """torch.ao's FX graph-mode static int8 model of a copy of fp32 (qconfig mapping 'x86', engine 'x86'),
    calibrated on the batches in calib (the first one is the example input). The caller keeps torch.ao's
    deprecation notices out of its output."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"  # weights are prepacked for the engine current at convert time
    prepared = prepare_fx(copy.deepcopy(fp32), get_default_qconfig_mapping("x86"), (calib[0],))
    with torch.no_grad():
        for x in calib:
            prepared(x)
    return convert_fx(prepared)
