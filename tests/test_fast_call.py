"""The eager forwards' direct calls into the CPU ops (csrc/cpu/python_fast.cpp, fastinfer/nn/_common.py
fast_or_dispatch): the same results as the torch.ops calls, served where they should be (fastinfer._C.fast_calls
counts them), and NotImplemented wherever the dispatcher must decide."""
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import fastinfer
from fastinfer import _C, ops
from fastinfer.nn import _common

torch.manual_seed(0)


def conv_args(n=2, c=13, h=9, w=7, cout=19, k=3, stride=1, pad=1, groups=1, int8_x=True, out_scale=0.05,
              bias=True, act="relu"):
    g = torch.Generator().manual_seed(n * 1000 + c * 31 + k)
    if int8_x:
        x = torch.randint(-127, 128, (n, c, h, w), dtype=torch.int8, generator=g)
    else:
        x = torch.randn(n, c, h, w, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    wq = torch.randint(-127, 128, (cout, c // groups, k, k), dtype=torch.int8, generator=g)
    b = torch.randn(cout, generator=g) if bias else None
    return (x, ops.pack_conv_weight(wq, groups), torch.rand(cout, generator=g) * 0.02 + 0.001, b, (k, k),
            (stride, stride), (pad, pad), (1, 1), groups, 0.02 if int8_x else None, out_scale, act)


@pytest.mark.parametrize("case", [
    dict(),
    dict(int8_x=False, out_scale=None, act="none"),
    dict(c=32, cout=16, k=1, pad=0, act="relu6"),
    dict(c=16, cout=16, groups=16, stride=2, bias=False),
    dict(n=1, c=3, h=17, w=17, cout=8, k=7, stride=2, pad=3, int8_x=False),
    dict(c=64, cout=96, h=5, w=5, k=1, pad=0, act="hardswish", out_scale=None),
])
def test_direct_conv_equals_the_torch_ops_call(case):
    args = conv_args(**case)
    before = _C.fast_calls()
    y = _C.int8_conv2d(*args)
    assert isinstance(y, torch.Tensor) and _C.fast_calls() == before + 1
    assert torch.equal(y, torch.ops.fastinfer.int8_conv2d(*args))


def test_direct_add_gate_and_linears_equal_the_torch_ops_calls():
    a = torch.randint(-127, 128, (2, 24, 5, 5), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    b = torch.randint(-127, 128, (2, 24, 5, 5), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    for add_args in [(a, b, 0.03, 0.02, True, 0.04), (a, b.float(), 0.03, None, False, None)]:
        before = _C.fast_calls()
        y = _C.int8_add(*add_args)
        assert _C.fast_calls() == before + 1
        assert torch.equal(y, torch.ops.fastinfer.int8_add(*add_args))
    gate = torch.rand(2, 24)
    for fast, op, args in [(_C.int8_channel_mean, torch.ops.fastinfer.int8_channel_mean, (a, 0.03)),
                           (_C.int8_channel_scale, torch.ops.fastinfer.int8_channel_scale, (a, 0.03, gate, 0.02)),
                           (_C.int8_channel_scale, torch.ops.fastinfer.int8_channel_scale, (a, 0.03, gate, None))]:
        before = _C.fast_calls()
        y = fast(*args)
        assert _C.fast_calls() == before + 1
        assert torch.equal(y, op(*args))
    w = ops.pack_int8_weight(torch.randint(-127, 128, (37, 45), dtype=torch.int8))
    ws, bias, x = torch.rand(37) * 0.01, torch.randn(37), torch.randn(3, 5, 45)
    for fast, op, args in [
        (_C.int8_linear_static, torch.ops.fastinfer.int8_linear_static, (x, 0.03, w, ws, bias, "gelu", None, None)),
        (_C.int8_linear_static, torch.ops.fastinfer.int8_linear_static, (x, 0.03, w, ws, None, "relu", 0.1, None)),
        (_C.int8_linear_dynamic, torch.ops.fastinfer.int8_linear_dynamic, (x, w, ws, bias, "none", None)),
        (_C.int8_linear_dynamic, torch.ops.fastinfer.int8_linear_dynamic,
         (x, w, ws, None, "silu", torch.rand(45) + 0.5)),
    ]:
        before = _C.fast_calls()
        y = fast(*args)
        assert _C.fast_calls() == before + 1
        assert torch.equal(y, op(*args))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.relu = nn.ReLU()
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        y = self.stem(x)
        y = self.relu(self.conv(y) + y)
        return self.head(y.mean((2, 3)))


def quantized_block():
    model = Block().eval()
    calib = [torch.randn(4, 3, 12, 12) for _ in range(2)]
    return fastinfer.quantize(fastinfer.fuse(model, example_inputs=calib[0]), scheme="w8a8_static", calib_data=calib)


def test_module_forwards_take_the_direct_calls(monkeypatch):
    q = quantized_block()
    fast_layers = [m for m in q.modules() if isinstance(m, (fastinfer.nn.Int8Conv2d, fastinfer.nn.Int8Linear))]
    assert len(fast_layers) == 3, q
    x = torch.randn(2, 3, 12, 12)
    with torch.inference_mode():
        before = _C.fast_calls()
        y = q(x)
        assert _C.fast_calls() - before == 3  # 2 convs, the linear
        # the same forward through torch.ops (as a compiler's trace would call it): the same bits
        monkeypatch.setattr(_common, "_is_compiling", lambda: True)
        before = _C.fast_calls()
        y_ops = q(x)
        assert _C.fast_calls() == before
    assert torch.equal(y, y_ops)


def test_conv_forward_tries_the_direct_call_first_and_falls_back():
    # Int8Conv2d.forward makes the direct call before any check of its own; what it answers NotImplemented
    # for takes the checked path, with the same results and errors as before.
    conv = nn.Conv2d(6, 8, 3, padding=1).eval()
    q = fastinfer.nn.Int8Conv2d.from_float(conv, "relu", x_scale=0.03)
    x = torch.randn(2, 6, 7, 7)
    before = _C.fast_calls()
    y = q(x)
    assert _C.fast_calls() - before == 1
    assert not y.is_inference() and not y._is_view()  # a fresh tensor, made outside autograd's view tracking
    assert torch.equal(q(x[1]), y[1])  # unbatched [C, H, W]: the op refuses 3-D, the long way takes it
    assert torch.equal(q(x.double()), y.double())  # float64: via a float32 copy
    with pytest.raises(ValueError, match="expected an input with 6 channels"):
        q(torch.randn(2, 5, 7, 7))
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        q([1.0])
    q.float_dtype = torch.bfloat16  # a model cast to bf16: an int8 input's fp32 output goes back to bf16
    q8 = fastinfer.nn.Int8Conv2d.from_float(nn.Conv2d(6, 6, 1).eval(), "relu", x_scale=0.03, out_scale=0.03)
    assert q(q8(x)).dtype == torch.bfloat16


@pytest.mark.parametrize("scheme", ["w8a8_dynamic", "w8a8_static"])
def test_linear_forward_tries_the_direct_call_first_and_falls_back(scheme):
    lin = nn.Linear(24, 10).eval()
    q = fastinfer.nn.Int8Linear.from_float(lin, scheme=scheme, **({"x_scale": 0.02} if scheme == "w8a8_static" else {}))
    x = torch.randn(3, 5, 24)
    before = _C.fast_calls()
    y = q(x)
    assert _C.fast_calls() - before == 1 and y.shape == (3, 5, 10)
    assert torch.equal(q(x.double()), y.double())  # float64 and float16: the op refuses them, the long way converts
    assert torch.equal(q(x.half()), q(x.half().float()).half())
    with pytest.raises(RuntimeError, match="in_features K=24"):  # the op's message, from the torch.ops call
        q(torch.randn(3, 23))


def test_what_the_direct_calls_leave_to_the_dispatcher():
    args = conv_args(int8_x=False, out_scale=None)
    x = args[0]
    # a tensor that needs grad while grad mode is on: the dispatcher refuses it (autograd not implemented)
    xg = x.clone().requires_grad_()
    assert _C.int8_conv2d(xg, *args[1:]) is NotImplemented
    with pytest.raises(RuntimeError):
        torch.ops.fastinfer.int8_conv2d(xg, *args[1:]).sum().backward()
    with torch.no_grad():
        assert isinstance(_C.int8_conv2d(xg, *args[1:]), torch.Tensor)

    class Sub(torch.Tensor):
        pass

    assert _C.int8_conv2d(x.as_subclass(Sub), *args[1:]) is NotImplemented
    assert _C.int8_conv2d(x.to("meta"), *args[1:]) is NotImplemented

    class Mode(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, a=(), kw=None):
            self.seen.append(str(func))
            return func(*a, **(kw or {}))

    with Mode() as mode:
        assert _C.int8_conv2d(*args) is NotImplemented
        torch.ops.fastinfer.int8_conv2d(*args)
    assert mode.seen == ["fastinfer.int8_conv2d.default"]
    with torch.profiler.profile() as prof:
        assert _C.int8_conv2d(*args) is NotImplemented
        torch.ops.fastinfer.int8_conv2d(*args)
    assert any("fastinfer::int8_conv2d" in e.name for e in prof.events())
    # arguments the op refuses or the parse does not take: the torch.ops call raises the usual error
    bad_x = (x.int(),) + args[1:]
    assert _C.int8_conv2d(*bad_x) is NotImplemented
    with pytest.raises(RuntimeError, match="x must be float32"):
        torch.ops.fastinfer.int8_conv2d(*bad_x)
    assert _C.int8_conv2d(*args[:4], (3, 3, 3), *args[5:]) is NotImplemented
    assert _C.int8_conv2d(*args[:11], 5) is NotImplemented
    assert _C.int8_conv2d(*args[:11]) is NotImplemented
    assert _C.int8_add(x, x, None, None, 1, None) is NotImplemented  # relu must be a bool


def test_a_module_under_the_profiler_shows_its_ops():
    q = quantized_block()
    with torch.inference_mode(), torch.profiler.profile() as prof:
        q(torch.randn(1, 3, 12, 12))
    names = [e.name for e in prof.events()]
    assert sum("fastinfer::int8_conv2d" in n for n in names) == 2
    assert sum("fastinfer::int8_linear_static" in n for n in names) == 1


def test_torch_jit_trace_records_the_ops():
    # the direct calls would bypass the tracer, which would then record their outputs as constants
    q = quantized_block()
    x1, x2 = torch.randn(2, 3, 12, 12), torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        traced = torch.jit.trace(q, x1, check_trace=False)
        assert "fastinfer::int8_conv2d" in str(traced.inlined_graph)
        assert torch.equal(traced(x2), q(x2))
        # frozen (weights as graph constants), as bench_resnet deploys a model without its Python
        frozen = torch.jit.freeze(traced.eval())
        assert "fastinfer::int8_conv2d" in str(frozen.graph)
        assert torch.equal(frozen(x2), q(x2))
