"""Shared fixtures: the ISA paths this CPU can run (each test asserts which one served it), seeds."""
import pytest
import torch

import fastinfer
from fastinfer import ops

ORDER = ("ref", "avx2", "avx512_vnni")  # paths with kernels in this build, lowest first
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
    with fastinfer.use_isa(name) as active:
        assert active == name
        yield name


def assert_served(family: str, isa: str):
    assert ops.last_kernel(family) == isa, f"{family} was served by {ops.last_kernel(family)!r}, expected {isa!r}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
