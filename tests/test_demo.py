"""The demo (the project's main job) runs end to end and quantization costs <= 0.5 accuracy points."""
import pytest

pytest.importorskip("sklearn")

from fastinfer import demo  # noqa: E402


def test_demo_quick(capsys):
    results = demo.main(["--quick"])
    fp32 = results["fp32"]["accuracy"]
    assert fp32 > 90.0, "the fp32 model did not train"
    for scheme in ("w8a8_dynamic", "w8_only"):
        assert results[scheme]["accuracy"] >= fp32 - 0.5, f"{scheme} lost more than 0.5 points"
        assert results[scheme]["kernel_isa"] in ("ref", "avx2", "avx512_vnni", "amx")
    out = capsys.readouterr().out
    assert "w8a8_dynamic" in out and "b1 p50" in out
