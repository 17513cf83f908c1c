"""Shared fixtures: the ISA paths this CPU can run (each test asserts which one served it), seeds."""
import pytest
import torch

import fastinfer
from fastinfer import ops

ORDER = ("ref", "avx2", "avx512_vnni", "amx")  # paths with kernels in this build, lowest first
CAPS = fastinfer.cpu_capabilities()


def runnable_isas():
    top = min(fastinfer.ISAS.index(CAPS["detected"]), fastinfer.ISAS.index(CAPS["implemented"]))
    return [i for i in ORDER if fastinfer.ISAS.index(i) <= top]


@pytest.fixture(params=ORDER)
def isa(request):
    """Runs the test with kernels capped at one ISA; skips paths this CPU cannot run."""
    name = request.param
    if name not in runnable_isas():
        pytest.skip(f"this CPU cannot run the {name} path (detected: {CAPS['detected']})")
    # On the amx tier every GEMM shape goes through the tile kernel (by default fewer than 9 rows
    # take the VNNI kernel: tests/test_amx.py checks that bucket).
    previous = ops.set_amx_min_rows(1)
    try:
        with fastinfer.use_isa(name) as active:
            assert active == name
            yield name
    finally:
        ops.set_amx_min_rows(previous)


def served_by(family: str, isa: str) -> str:
    """The tier that serves `family` with kernels capped at `isa`: AMX adds only the int8 GEMM."""
    return "avx512_vnni" if isa == "amx" and family != "int8_gemm" else isa


def assert_served(family: str, isa: str):
    want = served_by(family, isa)
    assert ops.last_kernel(family) == want, f"{family} was served by {ops.last_kernel(family)!r}, expected {want!r}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
