"""Squeeze-excitation on int8 activations: the ops int8_channel_mean / int8_channel_scale against the reference
(bit-exact, every tier), the Int8GlobalAvgPool / Int8ChannelScale layers, and quantize's rewrite of a gated
block (MobileNetV3's and EfficientNet's squeeze-excitation) with int8 hand-offs through it."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastinfer
from fastinfer import ops
from fastinfer import reference as ref
from fastinfer.nn import Int8ChannelScale, Int8Conv2d, Int8GlobalAvgPool

from conftest import assert_served
from test_int8_chain import _trained_like

# (N, C, H, W): channel counts below, at and past one vector (4 / 8 / 16 lanes) and one 64-channel sum block,
# odd ones, one pixel, more images than channels.
SHAPES = [(1, 3, 5, 7), (2, 16, 4, 4), (3, 37, 9, 11), (2, 64, 6, 5), (1, 130, 7, 3), (4, 96, 1, 1),
          (2, 200, 3, 2), (9, 8, 2, 3)]


def _x(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_channel_mean_matches_reference(isa, shape):
    x = _x(shape)
    x[:, 0] = -128  # a whole channel at the int8 minimum, another at the maximum
    x[:, -1] = 127
    y = ops.int8_channel_mean(x, 0.037)
    assert y.shape == (shape[0], shape[1], 1, 1) and y.dtype == torch.float32
    torch.testing.assert_close(y, ref.int8_channel_mean(x, 0.037), rtol=0, atol=0)
    assert_served("gate", isa)
    # an NCHW input is read as well (converted once)
    assert torch.equal(ops.int8_channel_mean(x.contiguous(), 0.037), y)


@pytest.mark.parametrize("out_scale", [None, 0.02], ids=["fp32_out", "int8_out"])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_channel_scale_matches_reference(isa, shape, out_scale):
    N, C = shape[:2]
    x = _x(shape, 1)
    gate = torch.rand(N, C) * 1.5
    gate[0, :3] = torch.tensor([0.0, -2.0, 1e30])[:C]  # zero, negative, saturating factors
    gate[-1, -1] = float("nan")  # NaN: fp32 NaN, int8 0
    y = ops.int8_channel_scale(x, 0.05, gate, out_scale)
    want = ref.int8_channel_scale(x, 0.05, gate, out_scale)
    assert y.dtype == want.dtype and y.shape == x.shape and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, want, rtol=0, atol=0, equal_nan=True)
    assert_served("gate", isa)
    torch.testing.assert_close(ops.int8_channel_scale(x, 0.05, gate.reshape(N, C, 1, 1), out_scale), y, rtol=0,
                               atol=0, equal_nan=True)


def test_channel_scale_rounds_half_to_even_and_threads(isa):
    # x * f lands on every half-way point: v * (1 / out_scale) = k + 0.5 exactly, and past +-127
    x = torch.arange(-128, 128, dtype=torch.int8).reshape(1, 1, 16, 16).repeat(2, 3, 1, 1)
    x = x.contiguous(memory_format=torch.channels_last)
    gate = torch.full((2, 3), 0.5)
    want = ref.int8_channel_scale(x, 1.0, gate, 1.0)
    assert (want.int().abs() <= 127).all() and bool((want == 64).any())  # 127 * 0.5 = 63.5 -> 64 (even)
    big = _x((3, 72, 23, 19), 2)
    g = torch.rand(3, 72)
    want_big, mean_big = ref.int8_channel_scale(big, 0.1, g, 0.03), ref.int8_channel_mean(big, 0.1)
    old = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            assert torch.equal(ops.int8_channel_scale(x, 1.0, gate, 1.0), want)
            assert torch.equal(ops.int8_channel_scale(big, 0.1, g, 0.03), want_big)
            assert torch.equal(ops.int8_channel_mean(big, 0.1), mean_big)
    finally:
        torch.set_num_threads(old)


def test_gate_ops_bad_input():
    x = _x((2, 4, 3, 3))
    g = torch.rand(2, 4)
    with pytest.raises(RuntimeError, match="x must be int8"):
        ops.int8_channel_mean(x.float(), 0.1)
    with pytest.raises(RuntimeError, match=r"x must be 4-D \[N, C, H, W\]"):
        ops.int8_channel_scale(x[0], 0.1, g)
    with pytest.raises(RuntimeError, match="x_scale must be a positive finite number"):
        ops.int8_channel_mean(x, 0.0)
    with pytest.raises(RuntimeError, match="x_scale must be a positive finite number"):
        ops.int8_channel_scale(x, float("nan"), g)
    with pytest.raises(RuntimeError, match=r"gate must be \[N=2, C=4\] or \[N, C, 1, 1\]"):
        ops.int8_channel_scale(x, 0.1, torch.rand(2, 5))
    with pytest.raises(RuntimeError, match=r"gate must be \[N=2, C=4\]"):
        ops.int8_channel_scale(x, 0.1, torch.rand(2, 4, 3, 3))
    with pytest.raises(RuntimeError, match="gate must be float32"):
        ops.int8_channel_scale(x, 0.1, g.double())
    with pytest.raises(RuntimeError, match="out_scale must be a positive finite number"):
        ops.int8_channel_scale(x, 0.1, g, -1.0)
    with pytest.raises(RuntimeError, match="x has no pixels"):
        ops.int8_channel_mean(_x((2, 4, 0, 3)), 0.1)
    assert ops.int8_channel_scale(_x((2, 4, 0, 3)), 0.1, g).shape == (2, 4, 0, 3)


def test_opcheck_gate_ops():
    x = _x((2, 6, 5, 4))
    torch.library.opcheck(torch.ops.fastinfer.int8_channel_mean.default, (x, 0.1))
    torch.library.opcheck(torch.ops.fastinfer.int8_channel_scale.default, (x, 0.1, torch.rand(2, 6), 0.05))
    torch.library.opcheck(torch.ops.fastinfer.int8_channel_scale.default, (x, 0.1, torch.rand(2, 6, 1, 1), None))


def test_gate_layers():
    x = torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last)
    g = torch.rand(2, 8, 1, 1)
    assert torch.equal(Int8GlobalAvgPool()(x), F.adaptive_avg_pool2d(x, 1))  # float: the block's own pooling
    assert torch.equal(Int8GlobalAvgPool(mean_dims=(-1, -2))(x.half()), x.half().mean((-1, -2), keepdim=True))
    assert torch.equal(Int8ChannelScale()(g, x), g * x)
    q = Int8ChannelScale(out_scale=0.02)(g, x)  # float x, int8 out: the requantization rule
    assert q.dtype == torch.int8 and torch.equal(q, ref.requantize(g * x, 0.02))
    xq = _x((2, 8, 5, 6))
    pool, scale = Int8GlobalAvgPool(x_scale=0.05), Int8ChannelScale(x_scale=0.05, out_scale=0.02)
    assert torch.equal(pool(xq), ref.int8_channel_mean(xq, 0.05))
    assert torch.equal(scale(g, xq), ref.int8_channel_scale(xq, 0.05, g, 0.02))
    assert torch.equal(Int8ChannelScale(x_scale=0.05)(g, xq), ref.int8_channel_scale(xq, 0.05, g))
    with pytest.raises(RuntimeError, match="got an int8 x but has no x_scale"):
        Int8GlobalAvgPool()(xq)
    with pytest.raises(TypeError, match="needs two tensors"):
        scale(None, xq)
    with pytest.raises(ValueError, match="x_scale must be a positive finite float"):
        Int8ChannelScale(x_scale=-1.0)
    fresh = Int8ChannelScale()
    fresh.load_state_dict(scale.state_dict())
    assert (fresh.x_scale, fresh.out_scale) == (0.05, 0.02) and "out_scale=0.02" in repr(fresh)


class TorchvisionSE(nn.Module):
    """torchvision.ops.SqueezeExcitation's forward: a helper method, the pool a module, scale * input."""

    def __init__(self, c, s, act=nn.ReLU, gate=nn.Hardsigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, s, 1), nn.Conv2d(s, c, 1)
        self.activation, self.scale_activation = act(), gate()

    def _scale(self, x):
        return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))

    def forward(self, x):
        scale = self._scale(x)
        return scale * x


class TimmSE(nn.Module):
    """timm's SqueezeExcite: x.mean((2, 3), keepdim=True), x * sigmoid(...)."""

    def __init__(self, c, s):
        super().__init__()
        self.conv_reduce, self.act1, self.conv_expand = nn.Conv2d(c, s, 1), nn.SiLU(), nn.Conv2d(s, c, 1)

    def forward(self, x):
        x_se = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(x_se)


class GatedBlock(nn.Module):
    """MobileNetV3 / EfficientNet: expansion, depthwise, squeeze-excitation, projection; result += x."""

    def __init__(self, c, se, act=nn.Hardswish):
        super().__init__()
        h = 4 * c
        self.block = nn.Sequential(
            nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), act()),
            nn.Sequential(nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), act()),
            se(h),
            nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c)))

    def forward(self, x):
        result = self.block(x)
        result += x
        return result


class GatedNet(nn.Module):
    def __init__(self, se=lambda h: TorchvisionSE(h, h // 4), act=nn.Hardswish):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), act())
        self.blocks = nn.Sequential(GatedBlock(8, se, act), GatedBlock(8, se, act))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


def _quantize(model, **kw):
    torch.manual_seed(1)
    calib = [torch.randn(4, 3, 20, 20) for _ in range(3)]
    return fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static", calib_data=calib, **kw)


@pytest.mark.parametrize("se, act", [(lambda h: TorchvisionSE(h, h // 4), nn.Hardswish),
                                     (lambda h: TorchvisionSE(h, h // 4, nn.SiLU, nn.Sigmoid), nn.SiLU),
                                     (lambda h: TimmSE(h, h // 4), nn.SiLU)],
                         ids=["torchvision-mobilenet_v3", "torchvision-efficientnet", "timm"])
def test_gated_blocks_hand_int8_through_the_gate(tmp_path, se, act):
    model = _trained_like(GatedNet(se, act))
    q = _quantize(model)
    r = q.fastinfer_report
    assert r.rewritten == ["blocks.1.block.2", "blocks.1", "blocks.0.block.2", "blocks.0"]
    se0 = q.blocks[0].block[2]
    assert isinstance(se0, torch.fx.GraphModule)
    assert se0.gate_pool.mean_dims == (None if isinstance(model.blocks[0].block[2], TorchvisionSE) else (2, 3))
    assert isinstance(se0.gate_pool, Int8GlobalAvgPool) and isinstance(se0.gate_scale, Int8ChannelScale)
    dw, proj = q.blocks[0].block[1][0], q.blocks[0].block[3][0]
    assert isinstance(dw, Int8Conv2d) and dw.activation == {nn.Hardswish: "hardswish", nn.SiLU: "silu"}[act]
    for line in ("blocks.0.block.1.0 -> blocks.0.block.2.gate_pool",
                 "blocks.0.block.1.0 -> blocks.0.block.2.gate_scale", "blocks.0.block.2.gate_scale -> blocks.0.block.3.0"):
        assert line in r.chained
    assert se0.gate_pool.x_scale == se0.gate_scale.x_scale == dw.out_scale and se0.gate_scale.out_scale == proj.x_scale
    x = torch.randn(3, 3, 20, 20)
    with torch.inference_mode():
        h = q.blocks[0].block[1](q.blocks[0].block[0](q.stem(x)))
        assert h.dtype == torch.int8 and se0(h).dtype == torch.int8  # int8 in, int8 out
        y = q(x)
        assert F.cosine_similarity(y.flatten(), model(x).flatten(), dim=0) > 0.99
        kept = _quantize(model, int8_residuals=False)  # every forward as written: the same layers, float gates
        assert kept.fastinfer_report.rewritten == []
        assert F.cosine_similarity(kept(x).flatten(), y.flatten(), dim=0) > 0.99
        torch.save(q.state_dict(), tmp_path / "q.pt")
        loaded = fastinfer.load_quantized(tmp_path / "q.pt", fastinfer.fuse(copy.deepcopy(model)))
        assert torch.equal(loaded(x), y)
        assert torch.equal(torch.compile(q, fullgraph=True)(x), y)
        # unbatched [C, H, W] through the blocks, as the quantized convs take it
        h1 = q.blocks(q.stem(x[:1]))
        assert torch.equal(q.blocks(q.stem(x[0])), h1[0])


class NotGates(nn.Module):
    """Products that are not a squeeze-excitation gate: x * pool(y) of another tensor, a gate whose pooled value
    is also used elsewhere, a mean without keepdim."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.a(x)
        other = y * torch.sigmoid(F.adaptive_avg_pool2d(x, 1))
        p = y.mean((2, 3), keepdim=True)
        shared = y * torch.sigmoid(p) + p
        flat = y * torch.sigmoid(y.mean((2, 3)))[:, :, None, None]
        return self.b(other + shared + flat)


def test_products_that_are_not_gates_are_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), NotGates()).eval()
    calib = [torch.randn(2, 3, 12, 12) for _ in range(2)]
    q = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static", calib_data=calib)
    assert q.fastinfer_report.rewritten == [] and not isinstance(q[1], torch.fx.GraphModule)
    x = torch.randn(2, 3, 12, 12)
    with torch.inference_mode():
        assert F.cosine_similarity(q(x).flatten(), model(x).flatten(), dim=0) > 0.99
