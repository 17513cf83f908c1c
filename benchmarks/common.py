"""Timing helpers shared by the CPU benchmarks: warm-up, median and spread, machine description."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch

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
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1e3  # noqa: E731
    return {"median_ms": statistics.median(times) * 1e3, "p10_ms": pick(0.10), "p90_ms": pick(0.90),
            "iters": len(times)}


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
