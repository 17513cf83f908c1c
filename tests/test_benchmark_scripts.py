"""The CPU benchmarks run end to end on tiny cases (their figures are not checked here: timed tests are not
the place, benchmarks/RESULTS.md is), so an API change that breaks a benchmark fails here, not in the next
measuring session. bench_transformer, bench_resnet's ResNet-50 and bench_minilm build whole models (40 s and
more each) and are left to their own runs (bench_resnet runs its MobileNetV2, MobileNetV3 and U-Net on 64 x 64
images); bench_torchvision runs one small model where torchvision (optional) is installed; the GPU scripts are
covered by tests/test_gpu_scripts.py."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = {
    "bench_linear": ["--shapes", "4x64x32,17x100x40", "--min-time", "0.01"],
    "bench_sparse": ["--batches", "1", "--sparsities", "0.9", "--min-time", "0.01"],
    "bench_conv": ["--batches", "1", "--layers", "dw_3x3,s2_3x3", "--min-time", "0.01"],
    "bench_tiers": ["--cases", "gemm", "--min-time", "0.01"],
    "bench_observers": ["--n", "5000", "--batches", "2"],
    "bench_epilogue": ["--batch", "1", "--layers", "exp_1x1,dw_3x3,ffn_linear", "--acts", "silu", "--min-time",
                       "0.01"],
    "bench_resnet": ["--model", "mobilenet_v2", "--image-size", "64", "--batches", "1", "--repeats", "1",
                     "--min-time", "0.01", "--calib-batches", "1"],
    "bench_resnet:mobilenet_v3": ["--model", "mobilenet_v3_large", "--image-size", "64", "--batches", "1",
                                  "--repeats", "1", "--min-time", "0.01", "--calib-batches", "1"],
    "bench_resnet:unet": ["--model", "unet", "--image-size", "64", "--batches", "1", "--repeats", "1", "--min-time",
                          "0.01", "--calib-batches", "1", "--no-traced"],
    "bench_resnet:unet_interp": ["--model", "unet_interp", "--image-size", "64", "--batches", "1", "--repeats", "1",
                                 "--min-time", "0.01", "--calib-batches", "1", "--no-traced"],
    "bench_resnet:yolov8n": ["--model", "yolov8n", "--image-size", "64", "--batches", "1", "--repeats", "1",
                             "--min-time", "0.01", "--calib-batches", "1"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_benchmark_runs(tmp_path, case):
    script = case.split(":")[0]  # "script" or "script:variant"
    out = tmp_path / f"{script}.json"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", f"{script}.py"), *CASES[case],
                          "--threads", "1", "--json", str(out)], capture_output=True, text=True, timeout=600,
                         cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["rows"] and result["machine"], result.keys()
    assert f"wrote {out}" in run.stdout


def test_torchvision_benchmark_runs(tmp_path):
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed (an optional dependency of bench_torchvision)")
    out = tmp_path / "tv.json"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_torchvision.py"), "--models",
                          "squeezenet1_1", "--min-time", "0.01", "--rounds", "1", "--calib-batches", "1",
                          "--threads", "1", "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    row = json.loads(out.read_text())["rows"][0]
    assert all("median_ms" in row["impls"][impl] for impl in ("fp32", "fastinfer static", "fastinfer dynamic"))
    assert row["impls"]["fastinfer static"]["rel_err"] < 0.1


def test_interleaved_timing_alternates_and_pairs_ratios():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        from common import paired_ratio, time_calls_interleaved
    finally:
        sys.path.pop(0)
    order = []
    timed = time_calls_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                   min_time_s=0.0, rounds=4, warmup=0)
    # 4 rounds, each a slice of (at least) 3 calls of a, then of b
    assert order == (["a"] * 3 + ["b"] * 3) * 4
    assert len(timed["a"]["round_ms"]) == 4 and timed["b"]["iters"] == 12
    # with round_ms the ratio is the median of per-round ratios (rounds 2x and 4x slower for both cancel out),
    # not the ratio of the overall medians (3.0 here)
    base = {"median_ms": 3.0, "round_ms": [1.0, 2.0, 4.0]}
    new = {"median_ms": 1.0, "round_ms": [0.5, 1.0, 2.0]}
    assert paired_ratio(base, new) == 2.0
    assert paired_ratio({"median_ms": 3.0}, {"median_ms": 1.5}) == 2.0  # no rounds: the medians' ratio
