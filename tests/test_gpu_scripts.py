"""The GPU check's pieces that can be checked without a GPU, so a GPU lease is not spent finding them broken:
every test id in benchmarks/gpu_check.sh's compute-sanitizer subset exists (a missing one makes pytest stop
with an error, and the subset checks nothing), and gpu_ncu.py reads an Nsight Compute raw CSV page."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_ncu  # noqa: E402


def test_sanitizer_subset_ids_exist():
    script = open(os.path.join(ROOT, "benchmarks", "gpu_check.sh")).read()
    ids = sorted(set(re.findall(r"tests/test_cuda\w*\.py::[\w\[\]\-.]+", script)))
    assert len(ids) >= 20, ids
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *ids],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    collected = {line.strip() for line in r.stdout.splitlines()}
    missing = [i for i in ids if "[" in i and i not in collected]
    assert not missing, missing


def test_ncu_csv_rows_split_by_marker():
    head = ['"ID"', '"Kernel Name"', '"Grid Size"', '"Block Size"', '"gpu__time_duration.sum"',
            '"dram__bytes_read.sum.per_second"', '"launch__registers_per_thread"',
            '"smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio"',
            '"smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio"',
            '"smsp__average_warp_latency_issue_stalled_barrier_per_issue_active.ratio"']
    units = ['""', '""', '""', '""', '"usecond"', '"Tbyte/second"', '"register/thread"', '"ratio"', '"ratio"',
             '"ratio"']

    def row(i, name, us, tbps, b, ls):
        return [f'"{i}"', f'"{name}"', '"(64,8,1)"', '"(128,1,1)"', f'"{us}"', f'"{tbps}"', '"128"', f'"{b}"',
                f'"{ls}"', '"99"']

    marker = "void at::native::(anonymous namespace)::spin_kernel(long)"
    lines = ["==PROF== Connected to process", head, units, row(0, marker, 1, 0, 0, 0),
             row(1, "void fastinfer::cuda_kernels::(anonymous namespace)::weight_only_mma_kernel<true, 1, 1>("
                    "fastinfer::cuda_kernels::WeightOnlyParams, float *)", "1,031.5", 2.1, 1.5, 7.25),
             row(2, marker, 1, 0, 0, 0), row(3, "cutlass::device_kernel<X>", 12, 0.5, 0.4, 0.1)]
    report = "\n".join(ln if isinstance(ln, str) else ",".join(ln) for ln in lines)
    rows = gpu_ncu.parse(report, ["w8_only", "2:4"])
    assert [r["case"] for r in rows] == ["w8_only", "2:4"]
    first = rows[0]
    assert first["kernel"].startswith("weight_only_mma_kernel<true, 1, 1>(WeightOnlyParams")
    assert first["us"] == 1031.5 and first["dram_GBps"] == 2100.0 and first["regs"] == 128
    assert first["stalls"] == [("long_scoreboard", 7.25), ("barrier", 1.5)]  # the latency metric is not a stall
    assert rows[1]["stalls"][0] == ("barrier", 0.4)
    # without the units row (values then read as they are: us here)
    bare = gpu_ncu.parse("\n".join(ln if isinstance(ln, str) else ",".join(ln) for ln in lines if ln is not units),
                         ["w8_only", "2:4"])
    assert [r["case"] for r in bare] == ["w8_only", "2:4"] and bare[0]["us"] == 1031.5
