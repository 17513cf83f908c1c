"""The CPU benchmarks run end to end on tiny cases (their figures are not checked here: timed tests are not
the place, benchmarks/RESULTS.md is), so an API change that breaks a benchmark fails here, not in the next
measuring session. bench_transformer, bench_resnet's ResNet-50 and bench_minilm build whole models (40 s and
more each) and are left to their own runs (bench_resnet runs its MobileNetV2 and MobileNetV3 on 64 x 64
images); the GPU scripts are covered by tests/test_gpu_scripts.py."""
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
