"""Shared fixtures: the ISA paths this CPU can run (each test asserts which one served it), seeds."""
import contextlib

import pytest
import torch

import fastinfer
from fastinfer import ops

ORDER = ("ref", "avx2", "avx_vnni", "avx512_vnni", "amx")  # paths with kernels in this build, lowest first
CAPS = fastinfer.cpu_capabilities()


def runnable_isas():
    """The tiers this CPU and build run, lowest first (not always contiguous: AVX-512 VNNI without AVX-VNNI)."""
    return [i for i in ORDER if i in CAPS["runnable"]]


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
    """The tier that serves `family` with kernels capped at `isa`: AMX adds only the int8 GEMM and the direct
    convolution (its other families run the AVX-512 VNNI kernels), AVX-VNNI those and the depthwise
    convolution (the rest run AVX2's)."""
    if family in ("int8_gemm", "conv_direct") or (family == "dwconv" and isa == "avx_vnni"):
        return isa
    return {"amx": "avx512_vnni", "avx_vnni": "avx2"}.get(isa, isa)


def assert_served(family: str, isa: str):
    want = served_by(family, isa)
    assert ops.last_kernel(family) == want, f"{family} was served by {ops.last_kernel(family)!r}, expected {want!r}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# The edge cases of the convolution's folded epilogue (finite scales: the AMX/VNNI fast path) and of the
# general one: int8 outputs far outside [-127, 127] (past int32 too), a NaN input with the dynamic scale,
# the smallest output scale accepted (FLT_MIN: y / out_scale overflows to inf in fp32), a per-channel scale
# whose product with x_scale overflows.
CONV_EPILOGUE_EDGES = ["saturating", "nan-input", "tiny-out-scale", "huge-scale"]


def conv_epilogue_edge(case, x, w_scale, bias, x_scale=0.02, out_scale=0.04):
    """Modifies x, w_scale and bias in place for `case`; returns (x_scale, out_scale) to call with."""
    if case == "saturating":
        w_scale[::2] *= 1e9
        bias[1::3] = -1e12
    elif case == "nan-input":
        x[0, 1, 2, 3] = float("nan")
        x_scale = None
    elif case == "tiny-out-scale":
        out_scale = 1.1754943508222875e-38
    else:
        w_scale[0] = 3e38
    return x_scale, out_scale


def cuda_graph_replays(fn, x):
    """Captures fn on a copy of x in a CUDA graph, refills the copy, replays: the graph's output must equal a
    fresh call's. The caller's x is left as it was."""
    x = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn(x)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = fn(x)
    x.copy_(torch.randn_like(x))
    want = fn(x)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, want, rtol=0, atol=0)


def valid_taps(i0, d, k, size):
    """The kernel taps [t0, t1) of a window starting at i0 (dilation d) that fall inside [0, size), or None."""
    taps = [t for t in range(k) if 0 <= i0 + t * d < size]
    return (taps[0], taps[-1] + 1) if taps else None


@contextlib.contextmanager
def padded_rows_mode(mode):
    """ops.set_conv_padded_rows(mode) and the thread count, both restored afterwards."""
    previous, before = ops.set_conv_padded_rows(mode), torch.get_num_threads()
    try:
        yield
    finally:
        ops.set_conv_padded_rows(previous)
        torch.set_num_threads(before)


def padded_taps_runs(x, xq):
    """(input, x_scale, out_scale, act) at 1 and 2 threads (set as each comes): an fp32 input NCHW and channels_last,
    static and dynamic, int8 and fp32 out, and an int8 one; for the padded-taps tests."""
    for threads in (1, 2):
        torch.set_num_threads(threads)
        yield from ((x, 0.03, 0.05, "relu6"), (x, None, None, "none"),
                    (x.contiguous(memory_format=torch.channels_last), 0.03, None, "relu"),
                    (xq, 0.05, 0.1, "relu"), (xq, 0.05, None, "none"))


def padded_taps_checked(x, xq, mode, packed, w, ws, b, geo, served, computed):
    """For each of padded_taps_runs' inputs: the conv of ``geo`` (kernel_size, stride, padding, dilation) under
    ops.set_conv_padded_rows(mode), the reference's bits (oracle: reference.int8_conv2d on w), then served() to
    check what ran; the same conv with every tap computed ("never"), then computed(); the same bits both ways."""
    from fastinfer import reference as ref
    for inp, x_scale, out_scale, act in padded_taps_runs(x, xq):
        call = (packed, ws, b, *geo, 1, x_scale, out_scale, act)
        ops.set_conv_padded_rows(mode)
        y = ops.int8_conv2d(inp, *call)
        torch.testing.assert_close(y, ref.int8_conv2d(inp, w, ws, b, *geo[1:], 1, x_scale, out_scale, act),
                                   rtol=0, atol=0)
        served()
        ops.set_conv_padded_rows("never")
        y_all = ops.int8_conv2d(inp, *call)
        assert ops.last_kernel("conv_padded_rows") == "computed"
        computed()
        assert torch.equal(y, y_all)


def with_batch_statistics(model, images):
    """model in eval mode, its BatchNorms' running statistics those of ``images`` (batches; a cumulative average),
    as a trained network has statistics of its own."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        model.train()
        for x in images:
            model(x)
    return model.eval()
