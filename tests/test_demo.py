"""The demo (the project's main job) runs end to end: quantization costs <= 0.5 accuracy points, and the
CNN part prunes, distils and quantizes (its accuracy and latency targets are measured by the full demo)."""
import pytest

pytest.importorskip("sklearn")

from fastinfer import demo, ops  # noqa: E402


def test_demo_quick(capsys):
    results = demo.main(["--quick"])
    fp32 = results["fp32"]["accuracy"]
    assert fp32 > 90.0, "the fp32 model did not train"
    for scheme in ("w8a8_dynamic", "w8a8_dynamic w7", "w8_only"):
        assert results[scheme]["accuracy"] >= fp32 - 0.5, f"{scheme} lost more than 0.5 points"
        assert results[scheme]["kernel_isa"].split(" ")[0] in ("ref", "avx2", "avx_vnni", "avx512_vnni", "amx")
    if results["w8a8_dynamic"]["kernel_isa"].startswith("avx2"):  # the step each weight range chose
        assert results["w8a8_dynamic"]["kernel_isa"] == "avx2 (sign)"
        assert results["w8a8_dynamic w7"]["kernel_isa"] == "avx2 (shifted)"
    for name in ("sparse 2:4", "sparse 90%"):  # accuracy targets are for the full demo (more fine-tuning)
        assert results[name]["accuracy"] > 80.0 and results[name]["kernel_isa"] in ("ref", "avx2", "avx512_vnni")
        # The same pruned weights as int8 values (slot128): int8's rounding moves few predictions
        assert abs(results[f"{name} int8"]["accuracy"] - results[name]["accuracy"]) <= 1.0
        assert results[f"{name} int8"]["kernel_isa"] in ("ref", "avx2", "avx512_vnni")
    assert results["sparse 90%"]["size_ratio"] < 0.25 and results["sparse 90% int8"]["size_ratio"] < 0.15
    rows = results["cnn"]["rows"]
    assert list(rows) == ["teacher fp32", "teacher int8", "pruned 50%", "+ distilled", "+ int8 static"]
    assert rows["teacher int8"]["accuracy"] >= rows["teacher fp32"]["accuracy"] - 1.0
    assert rows["+ distilled"]["flop_ratio"] > 2.0 and rows["+ distilled"]["params"] < rows["teacher fp32"]["params"] / 2
    assert rows["+ distilled"]["accuracy"] >= rows["pruned 50%"]["accuracy"]  # distillation recovers accuracy
    assert results["cnn"]["swapped"] == ["conv1", "conv2", "conv3", "fc", "head"]
    out = capsys.readouterr().out
    assert "w8a8_dynamic" in out and "b1 p50" in out and "+ distilled" in out


def test_demo_device_refused_clearly(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--quick", "--device", "tpu"])
    assert "--device must be cpu or cuda" in capsys.readouterr().err
    if ops.cuda_available():
        return  # the CUDA run itself is tests/test_cuda.py's (GPU machines)
    with pytest.raises(SystemExit):
        demo.main(["--quick", "--device", "cuda"])
    err = capsys.readouterr().err
    assert "--device cuda needs fastinfer built with its CUDA kernels and a visible GPU" in err
    assert f"this build has CUDA kernels: {bool(ops.BUILD['cuda'])}" in err


def test_demo_checks_its_json_path_before_running():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "fastinfer", "demo", "--quick", "--json", "/nonexistent/dir/out.json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot write a file there" in r.stderr
