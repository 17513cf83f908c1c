"""DenseNet-style blocks in int8: the quantizer's per-channel affine + ReLU (ops.quantize_channel_affine, an eval
BatchNorm written as a static conv's int8 input), int8 average pooling (ops.int8_avg_pool2d), their modules
(BatchNormQuant2d, Int8AvgPool2d), and quantize(w8a8_static) keeping a dense block's concatenated features int8."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastinfer
from fastinfer import ops
from fastinfer import reference as ref
from fastinfer.nn import BatchNormQuant2d, Int8AvgPool2d, Int8Conv2d
from fastinfer.nn.fused import Folded

from conftest import assert_served, with_batch_statistics

# (N, C, H, W): channel counts off the 16 / 64 value steps, a single pixel, an empty batch
AFFINE_SHAPES = [(1, 3, 5, 7), (2, 64, 9, 9), (1, 17, 1, 33), (3, 130, 4, 4), (1, 256, 7, 7), (0, 8, 4, 4)]


def _affine_input(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.int8:
        x = torch.randint(-127, 128, shape, generator=g, dtype=torch.int8)
    else:
        x = (torch.randn(shape, generator=g) * 3).to(dtype)
    c = shape[1]
    scale = torch.rand(c, generator=g) * 2 - 0.5  # some negative: a BatchNorm weight can be
    shift = torch.randn(c, generator=g)
    return x, scale, shift


@pytest.mark.parametrize("shape", AFFINE_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8], ids=str)
@pytest.mark.parametrize("relu", [False, True])
def test_quantize_channel_affine_matches_reference(isa, shape, dtype, relu):
    x, scale, shift = _affine_input(shape, dtype)
    x_scale = 0.031 if dtype == torch.int8 else None
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        out = ops.quantize_channel_affine(xl, scale, shift, 0.037, relu, x_scale)
        want = ref.quantize_channel_affine(xl, scale, shift, 0.037, relu, x_scale)
        assert out.dtype == torch.int8 and out.shape == x.shape
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(out, want)
        if relu and out.numel():
            assert int(out.min()) >= 0
    if x.numel():
        assert_served("quantize", isa)


def test_quantize_channel_affine_edges(isa):
    # NaN -> 0 (with or without the ReLU), +-Inf and huge values clamp, ties round half to even
    x = torch.zeros(1, 20, 1, 3)
    x[0, :5, 0, 0] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30])
    x[0, 5:13, 0, 1] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5])
    scale, shift = torch.ones(20), torch.zeros(20)
    for relu in (False, True):
        out = ops.quantize_channel_affine(x, scale, shift, 1.0, relu)
        assert torch.equal(out, ref.quantize_channel_affine(x, scale, shift, 1.0, relu))
        got = out[0, :13, 0, :2].t().tolist()
        big = [0, 127, 0 if relu else -127, 127, 0 if relu else -127]
        assert got[0][:5] == big
        ties = [0, 2, 2, 0, -2, -2, 126, -126]
        assert got[1][5:13] == ([max(t, 0) for t in ties] if relu else ties)
    assert_served("quantize", isa)


def test_quantize_channel_affine_threads():
    x, scale, shift = _affine_input((3, 96, 23, 19), torch.float32)
    want = ref.quantize_channel_affine(x, scale, shift, 0.05, True)
    old = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            assert torch.equal(ops.quantize_channel_affine(x, scale, shift, 0.05, True), want)
    finally:
        torch.set_num_threads(old)


def test_quantize_channel_affine_bad_input():
    x, scale, shift = _affine_input((1, 4, 3, 3), torch.float32)
    q = torch.zeros(1, 4, 3, 3, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="x must be float32, bfloat16 or int8"):
        ops.quantize_channel_affine(x.double(), scale, shift, 0.1)
    with pytest.raises(RuntimeError, match="x must be 4-D"):
        ops.quantize_channel_affine(x[0], scale, shift, 0.1)
    with pytest.raises(RuntimeError, match="scale must be 1-D of length 4"):
        ops.quantize_channel_affine(x, scale[:3], shift, 0.1)
    with pytest.raises(RuntimeError, match="shift must be 1-D of length 4"):
        ops.quantize_channel_affine(x, scale, shift.reshape(2, 2), 0.1)
    with pytest.raises(RuntimeError, match="shift must have dtype Float"):
        ops.quantize_channel_affine(x, scale, shift.double(), 0.1)
    with pytest.raises(RuntimeError, match="out_scale must be a positive finite number"):
        ops.quantize_channel_affine(x, scale, shift, 0.0)
    with pytest.raises(RuntimeError, match="x_scale must be given exactly when x is int8"):
        ops.quantize_channel_affine(q, scale, shift, 0.1)
    with pytest.raises(RuntimeError, match="x_scale must be given exactly when x is int8"):
        ops.quantize_channel_affine(x, scale, shift, 0.1, x_scale=0.1)
    with pytest.raises(RuntimeError, match="x_scale must be a positive finite number"):
        ops.quantize_channel_affine(q, scale, shift, 0.1, x_scale=float("inf"))


def test_opcheck_quantize_channel_affine():
    x, scale, shift = _affine_input((2, 6, 5, 4), torch.float32)
    torch.library.opcheck(torch.ops.fastinfer.quantize_channel_affine.default, (x, scale, shift, 0.05, True))
    q = torch.randint(-127, 128, (2, 6, 5, 4), dtype=torch.int8)
    torch.library.opcheck(torch.ops.fastinfer.quantize_channel_affine.default, (q, scale, shift, 0.05, False, 0.02))


# (N, C, H, W, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
AVG_POOLS = [
    (1, 3, 8, 8, 2, 2, 0, False, True, None),       # a DenseNet transition's
    (2, 13, 9, 11, 3, 1, 1, False, True, None),     # an Inception branch's (count_include_pad)
    (2, 13, 9, 11, 3, 1, 1, False, False, None),
    (1, 64, 7, 9, 2, 2, 0, True, False, None),      # ResNet-D's shortcut: ceil_mode, a last window past the input
    (3, 5, 5, 6, (3, 2), (2, 1), (1, 0), True, True, None),
    (1, 17, 6, 6, 3, 2, 1, False, True, 4),         # divisor_override (sums past 127 clamp)
    (1, 4, 1, 1, 1, 1, 0, False, True, None),
    (0, 4, 6, 6, 2, 2, 0, False, True, None),       # empty batch
    (1, 70, 20, 20, 17, 3, 8, False, True, None),   # 289 taps: past the int16 sums of the vector kernel
]


def _assert_avg_pool_served(isa):
    # AVX-512 and AVX2 kernels (AMX's set and AVX-VNNI's copy them), the portable one on the scalar tier
    assert_served("avg_pool", isa)


@pytest.mark.parametrize("g", AVG_POOLS, ids=[str(g) for g in AVG_POOLS])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_int8_avg_pool2d_matches_reference(isa, g, layout):
    N, C, H, W, k, s, p, ceil, cip, div = g
    x = torch.randint(-127, 128, (N, C, H, W), generator=torch.Generator().manual_seed(1), dtype=torch.int8)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    out = ops.int8_avg_pool2d(x, k, s, p, ceil, cip, div)
    want = ref.int8_avg_pool2d(x, k, s, p, ceil, cip, div)
    assert out.dtype == torch.int8 and out.shape == want.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, want)
    # within half a step of torch's fp32 pooling (clamped to the int8 range)
    f = F.avg_pool2d(x.float(), k, s, p, ceil, cip, div).clamp(-127, 127)
    assert out.numel() == 0 or float((out.float() - f).abs().max()) <= 0.5
    if out.numel():
        _assert_avg_pool_served(isa)


def test_int8_avg_pool2d_rounds_half_to_even_and_threads(isa):
    x = torch.tensor([[1, 0], [0, 0], [3, 0], [0, 0], [-1, 0], [0, 0], [5, 0], [0, 0]], dtype=torch.int8)
    x = x.reshape(1, 1, 8, 2)  # 2 x 2 windows holding sums 1, 3, -1, 5: averages 0.25, 0.75, -0.25, 1.25
    assert ops.int8_avg_pool2d(x, 2).flatten().tolist() == [0, 1, 0, 1]
    x = torch.tensor([1, 0, 3, 0, 5, 0, -1, 0, -3, 0, 7, 0], dtype=torch.int8).reshape(1, 1, 1, 12)
    # pairs averaging 0.5, 1.5, 2.5, -0.5, -1.5, 3.5
    assert ops.int8_avg_pool2d(x, (1, 2)).flatten().tolist() == [0, 2, 2, 0, -2, 4]
    x = torch.randint(-127, 128, (3, 40, 23, 19), dtype=torch.int8)
    want = ref.int8_avg_pool2d(x, 3, 2, 1, True, False)
    old = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            assert torch.equal(ops.int8_avg_pool2d(x, 3, 2, 1, True, False), want)
    finally:
        torch.set_num_threads(old)
    _assert_avg_pool_served(isa)


def test_int8_avg_pool2d_bad_input():
    x = torch.zeros(1, 4, 8, 8, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="x must have dtype Char"):
        ops.int8_avg_pool2d(x.float(), 2)
    with pytest.raises(RuntimeError, match="int8_avg_pool2d: x must be 4-D"):
        ops.int8_avg_pool2d(x[0], 2)
    with pytest.raises(RuntimeError, match="int8_avg_pool2d: padding must be at most half the kernel size"):
        ops.int8_avg_pool2d(x, 3, 1, 2)
    with pytest.raises(RuntimeError, match="kernel_size must be >= 1"):
        ops.int8_avg_pool2d(x, 0)
    with pytest.raises(RuntimeError, match="is smaller than the dilated kernel"):
        ops.int8_avg_pool2d(x, 9, 9)
    with pytest.raises(RuntimeError, match="divisor_override must be a positive integer"):
        ops.int8_avg_pool2d(x, 2, divisor_override=0)


def test_opcheck_int8_avg_pool2d():
    x = torch.randint(-127, 128, (2, 6, 9, 8), dtype=torch.int8)
    torch.library.opcheck(torch.ops.fastinfer.int8_avg_pool2d.default, (x, [3, 3], [2, 2], [1, 1], True, False, None))
    torch.library.opcheck(torch.ops.fastinfer.int8_avg_pool2d.default, (x, [2, 2]))


def _bn(c, seed=0):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.1)
    return bn


def test_batch_norm_quant_module(tmp_path):
    bn = _bn(12)
    mod = BatchNormQuant2d.from_float(bn, "relu")
    x = torch.randn(2, 12, 5, 6)
    with torch.inference_mode():
        assert torch.equal(mod(x), F.relu(bn(x)))  # out_scale None: the float BatchNorm + ReLU
        mod.out_scale = 0.02
        scale, shift = mod.scale_shift()
        torch.testing.assert_close(x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1), bn(x))
        want = ref.quantize_channel_affine(x, scale, shift, 0.02, True)
        assert torch.equal(mod(x), want)
        # within a step of quantizing the float BatchNorm's output (its own float rounding)
        assert int((mod(x).int() - ref.quantize_static(F.relu(bn(x)), 0.02).int()).abs().max()) <= 1
        assert torch.equal(mod(x[0]), want[0])  # unbatched
        mod.train()  # a quantized model's norm keeps the running statistics
        assert torch.equal(mod(x), want)
        mod.eval()
        xq = torch.randint(-127, 128, (2, 12, 5, 6), dtype=torch.int8)
        with pytest.raises(ValueError, match="needs x_scale"):
            mod(xq)
        mod.x_scale = 0.05
        assert torch.equal(mod(xq), ref.quantize_channel_affine(xq, scale, shift, 0.02, True, 0.05))
        mod.out_scale = None  # int8 in, float out
        s = scale * torch.tensor(0.05)
        want_f = F.relu(xq.float() * s.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1))
        assert torch.equal(mod(xq), want_f)
        torch.testing.assert_close(mod(xq), F.relu(bn(xq.float() * 0.05)))
        mod.out_scale = 0.02
    # the BatchNorm's keys, and its scales (the file's, on load)
    assert set(mod.state_dict()) == set(bn.state_dict()) | {"_extra_state"}
    plain = BatchNormQuant2d.from_float(bn)
    plain.load_state_dict(mod.state_dict())
    assert (plain.activation, plain.x_scale, plain.out_scale) == ("relu", 0.05, 0.02)
    assert "int8 in (scale 0.05)" in repr(mod) and "activation=relu" in repr(mod)
    # a state_dict load and a dtype cast recompute the fp32 affine map
    other = _bn(12, seed=1)
    mod.load_state_dict(other.state_dict(), strict=False)  # a BatchNorm's file: no scales in it
    torch.testing.assert_close(mod.scale_shift()[1], other.bias - other.running_mean * mod.scale_shift()[0])
    mod.half()
    assert mod.scale_shift()[0].dtype == torch.float32
    with torch.inference_mode():
        assert mod(x.half()).dtype == torch.int8
        mod.out_scale = None  # int8 in, float out in the model's 16-bit dtype
        assert mod(xq).dtype == torch.float16
    with pytest.raises(ValueError, match="running statistics"):
        BatchNormQuant2d.from_float(nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="activation must be one of"):
        BatchNormQuant2d(4, activation="gelu")
    with pytest.raises(ValueError, match="expected an input with 12 channels"):
        BatchNormQuant2d.from_float(bn)(torch.randn(1, 5, 2, 2))


def test_int8_avg_pool_module():
    pool = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
    mod = Int8AvgPool2d.from_float(pool)
    x = torch.randn(2, 5, 9, 9)
    assert torch.equal(mod(x), pool(x))  # float inputs: torch's pooling
    xq = torch.randint(-127, 128, (2, 5, 9, 9), dtype=torch.int8)
    assert torch.equal(mod(xq), ref.int8_avg_pool2d(xq, 3, 2, 1, True, False))
    assert torch.equal(mod(xq[0]), ref.int8_avg_pool2d(xq, 3, 2, 1, True, False)[0])


class DenseLayer(nn.Module):
    """torchvision's _DenseLayer, written here: BN-ReLU-conv1x1-BN-ReLU-conv3x3 on the concatenated features."""

    def __init__(self, c_in, growth, width):
        super().__init__()
        self.norm1, self.relu1, self.conv1 = nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.Conv2d(c_in, width, 1)
        self.norm2, self.relu2 = nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, growth, 3, padding=1, bias=False)

    def forward(self, features):
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, layers, c_in, growth):
        super().__init__({f"layer{i}": DenseLayer(c_in + i * growth, growth, 2 * growth) for i in range(layers)})

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


def _transition(c_in, c_out):
    return nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.Conv2d(c_in, c_out, 1, bias=False),
                         nn.AvgPool2d(2, 2))


class TinyDenseNet(nn.Module):
    """torchvision's DenseNet in small: stem, dense blocks joined by transitions, a last BatchNorm and ReLU."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        self.block1, self.transition1 = DenseBlock(3, 16, 8), _transition(40, 20)
        self.block2, self.transition2 = DenseBlock(2, 20, 8), _transition(36, 16)
        self.block3 = DenseBlock(2, 16, 8)
        self.norm = nn.BatchNorm2d(32)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = self.transition2(self.block2(self.transition1(self.block1(self.stem(x)))))
        out = F.relu(self.norm(self.block3(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def _dense_net():
    torch.manual_seed(0)
    model = TinyDenseNet()
    return with_batch_statistics(model, [torch.randn(8, 3, 20, 20)])


def test_dense_blocks_keep_their_features_int8(tmp_path):
    model = _dense_net()
    torch.manual_seed(0)
    calib = [torch.randn(4, 3, 20, 20) for _ in range(3)]
    q = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static", calib_data=calib)
    chained = set(q.fastinfer_report.chained)
    # Every pre-activation BatchNorm in front of a conv writes its int8 input, with the ReLU folded in.
    norms = [q.block1.layer0.norm1, q.block1.layer2.norm1, q.transition1[0], q.block2.layer1.norm1, q.transition2[0],
             q.block3.layer1.norm1]
    for norm in norms:
        assert type(norm) is BatchNormQuant2d and norm.activation == "relu" and norm.out_scale is not None
    assert type(q.block1.layer1.relu1) is Folded and type(q.transition1[1]) is Folded
    assert {"block1.layer0.norm1 -> block1.layer0.conv1", "transition1.0 -> transition1.2"} <= chained
    # A block's features (its input through the stem's max pooling or a transition's average pooling, and each
    # layer's conv2) share one scale, which every norm reading their concatenation takes as its x_scale.
    for producer, block, end in ((q.stem[0], q.block1, q.transition1[0]),
                                 (q.transition1[2], q.block2, q.transition2[0])):
        scale = producer.out_scale
        assert scale is not None and end.x_scale == scale
        assert all(layer.conv2.out_scale == scale and layer.norm1.x_scale == scale for layer in block.values())
    assert "block1.layer0.conv2 -> block1.layer2.norm1" in chained and "stem.0 -> transition1.0" in chained
    assert "transition1.2 -> block2.layer1.norm1" in chained
    assert type(q.transition1[3]) is Int8AvgPool2d and type(q.stem[3]) is fastinfer.nn.Int8MaxPool2d
    # The last block feeds a norm no static conv follows (a functional relu and pooling do): it reads the int8
    # features and writes float, so the last block's features are int8 too.
    assert type(q.norm) is BatchNormQuant2d and q.norm.out_scale is None and q.norm.activation == "none"
    assert q.norm.x_scale == q.transition2[2].out_scale == q.block3.layer0.conv2.out_scale is not None
    assert q.block3.layer1.norm1.x_scale == q.norm.x_scale and type(q.transition2[3]) is Int8AvgPool2d
    x = torch.randn(2, 3, 20, 20)
    seen = {}
    hooks = [q.block1.layer2.norm1.register_forward_hook(lambda m, a, y: seen.update(n_in=a[0].dtype, n_out=y.dtype)),
             q.transition1[3].register_forward_hook(lambda m, a, y: seen.update(pool=y.dtype)),
             q.norm.register_forward_hook(lambda m, a, y: seen.update(last_in=a[0].dtype, last_out=y.dtype))]
    with torch.inference_mode():
        y = q(x)
        want = model(x)
    for h in hooks:
        h.remove()
    assert seen == {"n_in": torch.int8, "n_out": torch.int8, "pool": torch.int8, "last_in": torch.int8,
                    "last_out": torch.float32}
    assert F.cosine_similarity(y.flatten(), want.flatten(), dim=0) > 0.99
    # the int8 norm computes what the float one computes on the dequantized features, to the int8 step
    with torch.inference_mode():
        feats = q.block1(q.stem(x))
        assert feats.dtype == torch.int8
        norm = q.transition1[0]
        plain = BatchNormQuant2d.from_float(norm, "relu", norm.out_scale)
        diff = norm(feats).int() - plain(feats.float() * norm.x_scale).int()
        assert int(diff.abs().max()) <= 1 and float((diff != 0).float().mean()) < 0.01
    torch.save(q.state_dict(), tmp_path / "q.pt")
    loaded = fastinfer.load_quantized(tmp_path / "q.pt", fastinfer.fuse(copy.deepcopy(model)))
    with torch.inference_mode():
        assert torch.equal(loaded(x), y)
    assert type(loaded.block1.layer1.norm1) is BatchNormQuant2d and type(loaded.transition1[3]) is Int8AvgPool2d
    assert loaded.block2.layer1.norm1.x_scale == q.block2.layer1.norm1.x_scale


def test_norm_without_a_static_conv_behind_it_stays_float():
    class PreAct(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.norm_a, self.conv_a = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1)
            self.norm_b = nn.BatchNorm2d(8)  # feeds the output (and the add)

        def forward(self, x):
            h = self.conv(x)
            return self.conv_a(F.relu(self.norm_a(h + 1))) + self.norm_b(h)

    torch.manual_seed(0)
    model = PreAct().eval()
    q = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static",
                           calib_data=[torch.randn(2, 3, 8, 8)])
    assert type(q.norm_a) is BatchNormQuant2d and q.norm_a.activation == "none"  # a functional relu stays
    assert q.norm_a.x_scale is None  # its input (h + 1) is float
    assert type(q.norm_b) is nn.BatchNorm2d
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        assert F.cosine_similarity(q(x).flatten(), model(x).flatten(), dim=0) > 0.99


def test_int8_conv_reads_a_quantizing_norm_like_its_own_quantization():
    # The conv behind a BatchNormQuant2d gets the bytes it would have quantized from the float norm's output,
    # up to that norm's own float rounding.
    bn, conv = _bn(16), nn.Conv2d(16, 8, 3, padding=1)
    x = torch.randn(2, 16, 9, 9)
    q = Int8Conv2d.from_float(conv, x_scale=0.03)
    norm = BatchNormQuant2d.from_float(bn, "relu", out_scale=0.03)
    with torch.inference_mode():
        a = q(norm(x))
        b = q(F.relu(bn(x)))
        torch.testing.assert_close(a, b, rtol=0, atol=float(q.weight_scale.max()) * 0.03 * 16 * 9)


def test_conv_behind_an_average_pooling_reads_at_the_producers_scale():
    # MaxViT's first block: the stem's output feeds a pre-activation norm and, through a strided average pooling,
    # the shortcut's conv. The pooled values span a narrower range than the stem's, so the hand-off takes the stem's
    # own calibrated output scale (the pooled conv's would clip what the norm reads), and the pooled conv reads at it.
    class Shortcut(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.norm, self.conv_a = nn.BatchNorm2d(16), nn.Conv2d(16, 16, 3, stride=2, padding=1)
            self.proj = nn.Sequential(nn.AvgPool2d(3, 2, 1), nn.Conv2d(16, 16, 1))

        def forward(self, x):
            h = self.stem(x)
            return self.conv_a(self.norm(h)) + self.proj(h)

    torch.manual_seed(0)
    model = Shortcut().eval()
    data = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    q = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static", calib_data=data,
                           observer="minmax")
    calib = fastinfer.calibrate(fastinfer.fuse(copy.deepcopy(model)), data, "minmax", progress=False)
    assert calib.input_scale["proj.1"] < calib.output_scale["stem"]
    assert q.stem.out_scale == calib.output_scale["stem"] == q.norm.x_scale == q.proj[1].x_scale
    assert type(q.proj[0]) is Int8AvgPool2d and type(q.norm) is BatchNormQuant2d
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        assert F.cosine_similarity(q(x).flatten(), model(x).flatten(), dim=0) > 0.99


def test_sequential_fallback_does_not_pass_an_average_pooling():
    # Without a graph (an nn.Sequential fx cannot trace) there is no producer output scale to read a pooled conv
    # at: the conv in front of an average pooling keeps its fp32 output there.
    class Untraceable(nn.Module):
        def forward(self, x):
            if x.sum() > float("inf"):  # data-dependent branch: torch.fx cannot trace it
                return x * 0
            return x

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 4, 1), Untraceable()).eval()
    q = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static",
                           calib_data=[torch.randn(2, 3, 16, 16)])
    assert q[0].out_scale is None and type(q[2]) is nn.AvgPool2d
    assert q[3].out_scale == q[6].x_scale is not None  # the max pooling still passes
    with torch.inference_mode():
        x = torch.randn(2, 3, 16, 16)
        assert F.cosine_similarity(q(x).flatten(), model(x).flatten(), dim=0) > 0.99
