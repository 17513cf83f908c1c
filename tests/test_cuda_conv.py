"""The CUDA int8 convolution (Hopper implicit GEMM, the gathered path, grouped, depthwise) against
fastinfer.reference.int8_conv2d on the same quantized values: bit-exact (exact int32 sums, the folded fp32
epilogue of EPILOGUE.md). Which kernel served, bad input, opcheck, torch.compile, CUDA graphs, Int8Conv2d
moving between devices. Skipped without a CUDA build and a GPU (benchmarks/gpu_check.sh runs it)."""
import copy

import pytest
import torch
from torch import nn

import fastinfer
from fastinfer import ops
from fastinfer import reference as ref
from fastinfer.nn import Int8Conv2d

from conftest import cuda_graph_replays

pytestmark = pytest.mark.skipif(not ops.cuda_available(), reason="needs fastinfer built with CUDA and a GPU")
DEV = "cuda"

# (N, C, H, W, Cout, k, stride, pad, dilation, groups)
GEOMETRIES = [
    (2, 64, 14, 14, 64, 3, 1, 1, 1, 1),     # C, Cout % 16 == 0: the Hopper implicit GEMM
    (1, 128, 9, 11, 96, 3, 2, 1, 1, 1),     # stride 2, odd spatial sizes
    (3, 32, 12, 12, 48, 5, 1, 2, 2, 1),     # 5x5, dilation 2
    (2, 256, 7, 7, 512, 1, 1, 0, 1, 1),     # 1x1
    (1, 3, 17, 15, 13, 3, 1, 1, 1, 1),      # C = 3, Cout = 13: gathered rows (TMA needs 16-byte rows)
    (2, 13, 8, 8, 20, 7, 1, 3, 1, 1),       # 7x7, odd channels: gathered
    (2, 64, 10, 10, 64, 3, 1, 1, 1, 64),    # depthwise
    (1, 13, 9, 9, 13, 3, 2, 1, 2, 13),      # depthwise, odd C, stride + dilation
    (1, 16, 40, 40, 16, 3, 9, 1, 1, 1),     # stride 9: past the im2col TMA's 8, gathered
    (1, 16, 4, 4, 16, 3, 1, 130, 1, 1),     # padding 130: past the im2col TMA's corner limit, gathered
    (2, 128, 10, 10, 128, 3, 1, 1, 1, 32),  # 32 groups of 4 channels (ResNeXt): the direct grouped kernel, dp4a
    (1, 64, 9, 9, 96, 3, 2, 1, 1, 2),       # 2 groups of 32 -> 48: per-group gathered GEMMs, stride 2
    (1, 12, 7, 7, 9, 3, 1, 2, 2, 3),        # 3 groups of 4 -> 3, dilation 2: a quad of outputs spans groups
    (1, 24, 8, 8, 12, 3, 1, 1, 1, 6),       # 6 groups of 4 -> 2: groups across a quad, 4-byte stores
    (2, 6, 9, 7, 9, 3, 2, 1, 1, 3),         # 3 groups of 2 -> 3: single-byte steps, stride 2
    (1, 24, 11, 9, 24, 5, 1, 2, 1, 24),     # depthwise 5x5
]
IDS = ["c64-3x3", "stride2", "5x5-dil2", "1x1", "c3-cout13", "7x7-c13", "dw", "dw-odd", "stride9", "pad130",
       "g32", "g2-c32", "g3-odd", "g6-c4", "g3-c2", "dw-5x5"]
MODES = [(None, None, "none"), (0.03, None, "relu"), (None, 0.05, "relu6"), (0.02, 0.04, "relu"),
         (0.02, 0.04, "none")]


def make(g, seed=0):
    torch.manual_seed(seed)
    N, C, H, W, Co, k, s, p, d, groups = g
    w = torch.randint(-127, 128, (Co, C // groups, k, k), dtype=torch.int8)
    return torch.randn(N, C, H, W) * 2, w, torch.rand(Co) * 0.01 + 1e-3, torch.randn(Co)


def expected_kernel(g):
    N, C, H, W, Co, k, s, p, d, groups = g
    if groups > 1:  # depthwise; narrow groups (at most 32 channels in and out): direct; else per-group GEMMs
        if groups == C == Co:
            return "dwconv"
        return "conv_grouped_direct" if C // groups <= 32 and Co // groups <= 32 else "conv_grouped"
    hopper = torch.cuda.get_device_capability()[0] == 9 and ops.BUILD.get("cutlass_sm90")
    span = (k - 1) * d  # the im2col TMA's limits: strides 1..8, corners in [-128, 127], offsets below 255
    im2col = 1 <= s <= 8 and 0 <= p <= 128 and -128 <= p - span <= 127 and span < 255
    # The Hopper implicit GEMM runs its narrow composition (128 x 64 tiles) unless told otherwise.
    return "sm90_conv_narrow" if hopper and im2col and C % 16 == 0 and Co % 16 == 0 else "conv_gathered"


@pytest.mark.parametrize("mode", MODES, ids=["dynamic", "static-relu", "int8out-relu6", "int8out-relu", "int8out"])
@pytest.mark.parametrize("g", GEOMETRIES, ids=IDS)
def test_conv_matches_reference(g, mode):
    N, C, H, W, Co, k, s, p, d, groups = g
    x_scale, out_scale, act = mode
    x, w, ws, b = make(g)
    packed = ops.pack_conv_weight(w.to(DEV), groups)
    for bias in (b, None):
        y = ops.int8_conv2d(x.to(DEV), packed, ws.to(DEV), None if bias is None else bias.to(DEV), (k, k), (s, s),
                            (p, p), (d, d), groups, x_scale, out_scale, act)
        assert ops.cuda_last_kernel() == expected_kernel(g)
        r = ref.int8_conv2d(x, w, ws, bias, (s, s), (p, p), (d, d), groups, x_scale, out_scale, act)
        assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == r.dtype
        torch.testing.assert_close(y.cpu(), r, rtol=0, atol=0)


@pytest.mark.parametrize("act", ["hardswish", "silu"])
@pytest.mark.parametrize("out_scale", [None, 0.04])
@pytest.mark.parametrize("g", [GEOMETRIES[0], GEOMETRIES[3], GEOMETRIES[6], GEOMETRIES[10], GEOMETRIES[15]],
                         ids=["c64-3x3", "1x1", "dw", "g32", "dw-5x5"])
def test_conv_hardswish_silu(g, out_scale, act):
    """hardswish (MobileNetV3) and silu (EfficientNet) on every CUDA conv kernel, fp32 and int8 out: hardswish
    with the reference's bits, silu within expf's error (int8: one unit). The Hopper implicit GEMM's epilogue
    tree clamps only, so groups-1 layers take the gathered path."""
    N, C, H, W, Co, k, s, p, d, groups = g
    x, w, ws, b = make(g)
    x = x * 2  # values on both sides of -3 and 3
    y = ops.int8_conv2d(x.to(DEV), ops.pack_conv_weight(w.to(DEV), groups), ws.to(DEV), b.to(DEV), (k, k), (s, s),
                        (p, p), (d, d), groups, 0.05, out_scale, act)
    assert ops.cuda_last_kernel() == ("conv_gathered" if groups == 1 else expected_kernel(g))
    r = ref.int8_conv2d(x, w, ws, b, (s, s), (p, p), (d, d), groups, 0.05, out_scale, act)
    if act == "hardswish":
        torch.testing.assert_close(y.cpu(), r, rtol=0, atol=0)
    elif out_scale is None:
        torch.testing.assert_close(y.cpu(), r, rtol=1e-5, atol=1e-5)
    else:
        assert (y.cpu().int() - r.int()).abs().max().item() <= 1


WIDE_LAYER = (5, 16, 64, 64, 128, 3, 1, 1, 1, 1)  # 160 tiles of 128 x 128, 320 of 128 x 64


@pytest.mark.parametrize("variant", [None, "cooperative", "narrow", "small"])
@pytest.mark.parametrize("g", [GEOMETRIES[0], GEOMETRIES[1], GEOMETRIES[3], WIDE_LAYER],
                         ids=["c64-3x3", "stride2", "1x1", "wide-layer"])
def test_sm90_conv_compositions_exact(monkeypatch, g, variant):
    """Every composition of the Hopper convolution (FASTINFER_SM90_CONV_VARIANT; unset: narrow) gives the
    reference's bits, fp32 and int8 outputs, tiles that miss the output's pixels and channels."""
    if not expected_kernel(g).startswith("sm90_conv"):
        pytest.skip("the Hopper implicit GEMM serves Hopper builds with the CUTLASS headers only")
    N, C, H, W, Co, k, s, p, d, groups = g
    x, w, ws, b = make(g, 3)
    packed = ops.pack_conv_weight(w.to(DEV), groups)
    if variant:
        monkeypatch.setenv("FASTINFER_SM90_CONV_VARIANT", variant)
    want = {"cooperative": "sm90_conv", "small": "sm90_conv_small"}.get(variant, "sm90_conv_narrow")
    for x_scale, out_scale, act in [(0.03, None, "relu"), (None, 0.05, "none")]:
        y = ops.int8_conv2d(x.to(DEV), packed, ws.to(DEV), b.to(DEV), (k, k), (s, s), (p, p), (d, d), groups, x_scale,
                            out_scale, act)
        assert ops.cuda_last_kernel() == want
        r = ref.int8_conv2d(x, w, ws, b, (s, s), (p, p), (d, d), groups, x_scale, out_scale, act)
        torch.testing.assert_close(y.cpu(), r, rtol=0, atol=0)


def test_sm90_conv_variant_bad_value(monkeypatch):
    g = GEOMETRIES[0]
    if not expected_kernel(g).startswith("sm90_conv"):
        pytest.skip("the Hopper implicit GEMM serves Hopper builds with the CUTLASS headers only")
    N, C, H, W, Co, k, s, p, d, groups = g
    x, w, ws, b = make(g)
    monkeypatch.setenv("FASTINFER_SM90_CONV_VARIANT", "tiny")
    with pytest.raises(RuntimeError, match="FASTINFER_SM90_CONV_VARIANT must be 'cooperative', 'narrow' or 'small'"):
        ops.int8_conv2d(x.to(DEV), ops.pack_conv_weight(w.to(DEV), 1), ws.to(DEV), b.to(DEV), (k, k), (s, s), (p, p),
                        (d, d), groups, 0.03)


# Depthwise geometries for the strip kernel (N, C, H, W, k, (stride h, w), pad, (dilation h, w)): every
# instantiated filter width and column stride, widths that miss the strip (8 and 4 outputs), padding as wide as
# the filter, row strides and dilations of their own (the columns' dilation must be 1), and the shapes it refuses
# (odd C, column dilation 2, column stride 3, 4 taps), which the per-output kernel serves. The arithmetic itself
# is also checked on the CPU, for every thread of random geometries (test_cuda_host.py).
DW_STRIP = [(2, 64, 10, 10, 3, (1, 1), 1, (1, 1)), (1, 32, 13, 19, 3, (2, 2), 1, (1, 1)),
            (2, 24, 11, 9, 5, (1, 1), 2, (2, 1)), (1, 40, 12, 21, 5, (3, 2), 5, (1, 1)),
            (1, 16, 9, 23, 7, (1, 1), 3, (1, 1)), (2, 8, 15, 15, 7, (2, 2), 7, (1, 1)),
            (1, 256, 28, 28, 3, (1, 1), 1, (1, 1)), (1, 12, 7, 3, 3, (1, 1), 1, (1, 1))]
DW_REFUSED = [(1, 13, 9, 9, 3, (2, 2), 1, (2, 2)), (1, 16, 9, 9, 3, (1, 1), 2, (1, 2)),
              (1, 16, 12, 12, 3, (1, 3), 1, (1, 1)), (1, 16, 9, 9, 4, (1, 1), 1, (1, 1))]


@pytest.mark.parametrize("kernel", ["strip", "strip4", "loop"])
@pytest.mark.parametrize("g", DW_STRIP + DW_REFUSED, ids=[f"dw{i}" for i in range(len(DW_STRIP))] +
                         ["odd-c", "dil-w2", "stride-w3", "k4"])
def test_depthwise_kernels_exact(monkeypatch, g, kernel):
    """The depthwise kernels (FASTINFER_DWCONV_KERNEL: the strip kernel with 8 or 4 outputs a strip, or the
    per-output loop) give the reference's bits, fp32 and int8 outputs, with and without bias."""
    N, C, H, W, k, s, p, d = g
    monkeypatch.setenv("FASTINFER_DWCONV_KERNEL", kernel)
    x, w, ws, b = make((N, C, H, W, C, k, 1, p, 1, C), 5)
    w[0, 0, 0, 0], w[1 % C, 0, k - 1, k - 1] = -128, 127  # the extremes
    packed = ops.pack_conv_weight(w.to(DEV), C)
    strip = {"strip": "dwconv_strip", "strip4": "dwconv_strip4"}.get(kernel)
    served = "dwconv" if strip is None or g in DW_REFUSED else strip
    for x_scale, out_scale, act, bias in [(0.03, None, "relu", b), (None, 0.05, "none", None),
                                          (0.02, 0.04, "relu6", b)]:
        y = ops.int8_conv2d(x.to(DEV), packed, ws.to(DEV), None if bias is None else bias.to(DEV), (k, k), s, (p, p),
                            d, C, x_scale, out_scale, act)
        assert ops.cuda_last_kernel() == served
        r = ref.int8_conv2d(x, w, ws, bias, s, (p, p), d, C, x_scale, out_scale, act)
        torch.testing.assert_close(y.cpu(), r, rtol=0, atol=0)


def test_depthwise_kernel_bad_value(monkeypatch):
    x, w, ws, b = make(GEOMETRIES[6])
    monkeypatch.setenv("FASTINFER_DWCONV_KERNEL", "fast")
    with pytest.raises(RuntimeError, match="FASTINFER_DWCONV_KERNEL must be 'loop', 'strip' or 'strip4'"):
        ops.int8_conv2d(x.to(DEV), ops.pack_conv_weight(w.to(DEV), 64), ws.to(DEV), b.to(DEV), (3, 3), (1, 1), (1, 1),
                        (1, 1), 64, 0.03)


@pytest.mark.parametrize("g", [GEOMETRIES[0], GEOMETRIES[6]], ids=["sm90", "depthwise"])
def test_int8_input_view_off_alignment(g):
    """An int8 channels_last input that starts 1 byte into its storage: copied to an aligned base, not misread
    by the vector loads."""
    N, C, H, W, Co, k, s, p, d, groups = g
    _, w, ws, b = make(g, 2)
    flat = torch.randint(-127, 128, (N * H * W * C + 1,), dtype=torch.int8)
    view = lambda t: t[1:].view(N, H, W, C).permute(0, 3, 1, 2)  # noqa: E731  (channels_last, offset 1)
    xd = view(flat.to(DEV))
    assert xd.is_contiguous(memory_format=torch.channels_last) and xd.data_ptr() % 16 != 0
    packed = ops.pack_conv_weight(w.to(DEV), groups)
    y = ops.int8_conv2d(xd, packed, ws.to(DEV), b.to(DEV), (k, k), (s, s), (p, p), (d, d), groups, 0.05, 0.1)
    assert ops.cuda_last_kernel() == expected_kernel(g)
    r = ref.int8_conv2d(view(flat), w, ws, b, (s, s), (p, p), (d, d), groups, 0.05, 0.1)
    torch.testing.assert_close(y.cpu(), r, rtol=0, atol=0)


@pytest.mark.parametrize("g", [GEOMETRIES[0], GEOMETRIES[4], GEOMETRIES[6], GEOMETRIES[10]],
                         ids=["sm90", "gathered", "depthwise", "grouped"])
def test_int8_input_bf16_input_and_edges(g):
    N, C, H, W, Co, k, s, p, d, groups = g
    x, w, ws, b = make(g, 1)
    packed = ops.pack_conv_weight(w.to(DEV), groups)
    args = (packed, ws.to(DEV), b.to(DEV), (k, k), (s, s), (p, p), (d, d), groups)
    xq = torch.randint(-127, 128, x.shape, dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ops.int8_conv2d(xq.to(DEV), *args, 0.05, 0.1).cpu(),
                               ref.int8_conv2d(xq, w, ws, b, (s, s), (p, p), (d, d), groups, 0.05, 0.1), rtol=0, atol=0)
    xb = x.bfloat16()
    torch.testing.assert_close(ops.int8_conv2d(xb.to(DEV), *args).cpu(),
                               ref.int8_conv2d(xb, w, ws, b, (s, s), (p, p), (d, d), groups), rtol=0, atol=0)
    zeros = torch.zeros_like(x)  # dynamic scale 0: every input quantizes to 0, outputs are the bias alone
    torch.testing.assert_close(ops.int8_conv2d(zeros.to(DEV), *args).cpu(),
                               ref.int8_conv2d(zeros, w, ws, b, (s, s), (p, p), (d, d), groups), rtol=0, atol=0)
    x64 = x.double()  # float64 is read as fp32, as the reference reads it (dynamic and static scales)
    for x_scale in (None, 0.02):
        torch.testing.assert_close(ops.int8_conv2d(x64.to(DEV), *args, x_scale).cpu(),
                                   ref.int8_conv2d(x64, w, ws, b, (s, s), (p, p), (d, d), groups, x_scale), rtol=0,
                                   atol=0)
    x[0, 0, 1, 1] = float("nan")  # dynamic scale: NaN everywhere (int8 out: 0); static: NaN quantizes to 0
    assert torch.isnan(ops.int8_conv2d(x.to(DEV), *args)).all()
    assert (ops.int8_conv2d(x.to(DEV), *args, None, 0.1) == 0).all()
    torch.testing.assert_close(ops.int8_conv2d(x.to(DEV), *args, 0.02).cpu(),
                               ref.int8_conv2d(x, w, ws, b, (s, s), (p, p), (d, d), groups, 0.02), rtol=0, atol=0)
    big = ws.clone()
    big[::2] *= 1e9  # saturating int8 outputs
    y = ops.int8_conv2d(x.to(DEV), packed, big.to(DEV), b.to(DEV), (k, k), (s, s), (p, p), (d, d), groups, 0.02, 0.04)
    r = ref.int8_conv2d(x, w, big, b, (s, s), (p, p), (d, d), groups, 0.02, 0.04)
    torch.testing.assert_close(y.cpu(), r, rtol=0, atol=0)
    assert (r == 127).any() and (r == -127).any()


def test_module_between_devices_state_dict_compile_and_graphs():
    conv = nn.Conv2d(32, 64, 3, padding=1).eval()
    x = torch.randn(4, 32, 20, 20)
    on_cpu = Int8Conv2d.from_float(conv, activation="relu", x_scale=0.03)
    want = on_cpu(x)
    moved = copy.deepcopy(on_cpu).cuda()
    torch.testing.assert_close(moved.int8_weight().cpu(), on_cpu.int8_weight(), rtol=0, atol=0)
    torch.testing.assert_close(moved(x.cuda()).cpu(), want, rtol=0, atol=0)
    back = copy.deepcopy(moved).cpu()
    torch.testing.assert_close(back(x), want, rtol=0, atol=0)
    fresh_gpu = Int8Conv2d(32, 64, 3, padding=1, activation="relu", x_scale=0.03).cuda()
    fresh_gpu.load_state_dict(on_cpu.state_dict())  # a CPU state_dict into a GPU layer: repacked
    torch.testing.assert_close(fresh_gpu(x.cuda()).cpu(), want, rtol=0, atol=0)
    mapped = Int8Conv2d(32, 64, 3, padding=1, activation="relu", x_scale=0.03).cuda()  # map_location='cuda'
    mapped.load_state_dict({k: v.cuda() if torch.is_tensor(v) else v for k, v in on_cpu.state_dict().items()})
    torch.testing.assert_close(mapped(x.cuda()).cpu(), want, rtol=0, atol=0)
    compiled = torch.compile(moved, fullgraph=True, backend="aot_eager")
    xg = x.cuda()
    torch.testing.assert_close(compiled(xg), moved(xg), rtol=0, atol=0)
    cuda_graph_replays(moved, xg)
    # grouped: the CPU's per-group packed GEMM weights <-> the GPU's [Cout, K_pad] rows
    grouped_cpu = Int8Conv2d.from_float(nn.Conv2d(32, 64, 3, padding=1, groups=8).eval(), x_scale=0.03)
    grouped_gpu = copy.deepcopy(grouped_cpu).cuda()
    torch.testing.assert_close(grouped_gpu.int8_weight().cpu(), grouped_cpu.int8_weight(), rtol=0, atol=0)
    torch.testing.assert_close(grouped_gpu(xg).cpu(), grouped_cpu(x), rtol=0, atol=0)
    assert ops.cuda_last_kernel() == "conv_grouped_direct"
    torch.testing.assert_close(copy.deepcopy(grouped_gpu).cpu()(x), grouped_cpu(x), rtol=0, atol=0)


def test_quantize_cnn_on_gpu():
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=32),
                          nn.Conv2d(32, 32, 3, padding=1, groups=8), nn.Flatten(),
                          nn.Linear(32 * 8 * 8, 10)).eval().cuda()
    x = torch.randn(8, 16, 8, 8, device=DEV)
    q = fastinfer.quantize(copy.deepcopy(model), "w8a8_dynamic")
    assert sum(isinstance(m, Int8Conv2d) for m in q.modules()) == 3
    out, ref_out = q(x), model(x)
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref_out.flatten(), dim=0) > 0.99


def test_conv1d_on_gpu():
    # Int8Conv1d runs the 2-D CUDA kernels on [N, C, 1, L]: equal to its CPU self (exact sums, same epilogue).
    from fastinfer.nn import Int8Conv1d
    for conv in (nn.Conv1d(16, 32, 3, 2, 1), nn.Conv1d(1, 16, 10, 5), nn.Conv1d(32, 32, 5, padding=2, groups=32)):
        x = torch.randn(3, conv.in_channels, 61)
        on_cpu = Int8Conv1d.from_float(conv.eval(), x_scale=float(x.abs().max()) / 127)
        torch.testing.assert_close(copy.deepcopy(on_cpu).cuda()(x.cuda()).cpu(), on_cpu(x), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_cnn_on_gpu(dtype):
    # The op returns fp32 for a 16-bit input; the layer gives the input's dtype back, as on the CPU, so
    # the next float layer of a half-precision model takes it.
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Flatten(),
                          nn.Linear(32 * 8 * 8, 10)).eval().cuda()
    q = fastinfer.quantize(copy.deepcopy(model), "w8a8_dynamic", exclude="5").to(dtype)
    x = torch.randn(4, 16, 8, 8, device=DEV)
    with torch.inference_mode():
        y = q[3](q[2](q[1](q[0](x.to(dtype)))))
        assert y.dtype == dtype
        out = q(x.to(dtype))
    assert out.dtype == dtype
    assert torch.nn.functional.cosine_similarity(out.float().flatten(), model(x).flatten(), dim=0) > 0.98


def test_opcheck_and_bad_input():
    w = torch.randint(-127, 128, (32, 16, 3, 3), dtype=torch.int8, device=DEV)
    packed = ops.pack_conv_weight(w, 1)
    x = torch.randn(2, 16, 9, 9, device=DEV)
    ws = torch.rand(32, device=DEV)
    torch.library.opcheck(torch.ops.fastinfer.pack_conv_weight.default, (w, 1))
    torch.library.opcheck(torch.ops.fastinfer.int8_conv2d.default,
                          (x, packed, ws, None, [3, 3], [1, 1], [1, 1], [1, 1], 1, None, None, "relu"))
    with pytest.raises(RuntimeError, match="packed_w must be the CUDA conv weight"):
        ops.int8_conv2d(x, ops.pack_conv_weight(w.cpu(), 1).to(DEV), ws, None, (3, 3))
    with pytest.raises(RuntimeError, match="packed_w must be on"):
        ops.int8_conv2d(x, packed.cpu(), ws, None, (3, 3))
    with pytest.raises(RuntimeError, match="'gelu' is CPU only"):
        ops.int8_conv2d(x, packed, ws, None, (3, 3), activation="gelu")
    with pytest.raises(RuntimeError, match="an int8 x needs its x_scale"):
        ops.int8_conv2d(x.to(torch.int8), packed, ws, None, (3, 3))
    with pytest.raises(RuntimeError, match="smaller than the dilated kernel"):
        ops.int8_conv2d(x[:, :, :2, :2], packed, ws, None, (3, 3))
    dw = ops.pack_conv_weight(torch.randint(-127, 128, (16, 1, 3, 3), dtype=torch.int8, device=DEV), 16)
    dw_off = torch.zeros(dw.numel() + 1, dtype=torch.int8, device=DEV)[1:].view(dw.shape)
    with pytest.raises(RuntimeError, match="packed_w must start on a 16-byte boundary"):
        ops.int8_conv2d(x, dw_off, torch.rand(16, device=DEV), None, (3, 3), groups=16)
    torch.cuda.synchronize()


def test_int8_max_pool_and_static_chain_on_gpu():
    from fastinfer import reference as ref

    x = torch.randint(-128, 128, (2, 64, 56, 56), dtype=torch.int8, device=DEV)
    out = ops.int8_max_pool2d(x, 3, 2, 1, 1, True)
    assert out.is_cuda and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out.cpu(), ref.int8_max_pool2d(x.cpu(), 3, 2, 1, 1, True))
    torch.library.opcheck(torch.ops.fastinfer.int8_max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], [1, 1], False))
    # a static conv -> relu -> maxpool -> conv hand-off, quantized on the CPU, then moved to the GPU
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                          nn.Conv2d(16, 8, 3, padding=1)).eval()
    calib = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    q = fastinfer.quantize(fastinfer.fuse(model), "w8a8_static", calib_data=calib)
    assert q.fastinfer_report.chained == ["0 -> 3"]
    xin = torch.randn(2, 3, 32, 32)
    want = q(xin)
    torch.testing.assert_close(q.cuda()(xin.cuda()).cpu(), want, rtol=1e-4, atol=1e-4)


def test_int8_add_on_gpu():
    from fastinfer import reference as ref

    a = torch.randn(2, 32, 9, 9)
    a.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -1e30])
    b = torch.randint(-128, 128, (2, 32, 9, 9), dtype=torch.int8)
    for relu in (False, True):
        for out_scale in (None, 0.05):
            out = ops.int8_add(a.to(DEV), b.to(DEV), None, 0.1, relu, out_scale)
            assert out.is_cuda and out.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(out.cpu(), ref.int8_add(a, b, None, 0.1, relu, out_scale), rtol=0, atol=0,
                                       equal_nan=True)
    torch.library.opcheck(torch.ops.fastinfer.int8_add.default, (a.to(DEV), b.to(DEV), None, 0.1, True, 0.05))


@pytest.mark.parametrize("act", ["hardswish", "silu"])
def test_gated_model_on_gpu(act):
    # A MobileNetV3 / EfficientNet block quantized on the CPU (int8 through its squeeze-excitation gate), moved to
    # the GPU: the gate layers take their torch-op path there, the convs their CUDA kernels. The int8 layers give
    # the reference's bits on both devices (silu within expf's error); the float pooling before the classifier
    # sums in another order, hence the tolerance.
    from test_gate import GatedNet, TimmSE, TorchvisionSE, _quantize, _trained_like

    se = (lambda h: TorchvisionSE(h, h // 4)) if act == "hardswish" else (lambda h: TimmSE(h, h // 4))
    model = _trained_like(GatedNet(se, nn.Hardswish if act == "hardswish" else nn.SiLU))
    q = _quantize(model)
    assert "blocks.0.block.2.gate_scale -> blocks.0.block.3.0" in q.fastinfer_report.chained
    x = torch.randn(3, 3, 20, 20)
    with torch.inference_mode():
        want = q(x)
        got = copy.deepcopy(q).cuda()(x.cuda()).cpu()
    tol = 1e-4 if act == "hardswish" else 1e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_dense_block_ops_and_model_on_gpu():
    # The quantizer's per-channel affine + ReLU (fp32, fp16 and int8 x) and int8 average pooling on the GPU give
    # the reference's bits; a DenseNet quantized on the CPU (int8 features, BatchNormQuant2d, Int8AvgPool2d) runs
    # on the GPU close to its CPU outputs.
    from test_dense_blocks import AVG_POOLS, _affine_input, _dense_net

    for dtype in (torch.float32, torch.float16, torch.int8):
        x, scale, shift = _affine_input((2, 37, 9, 11), dtype)
        x.view(-1)[:2] = torch.tensor([float("nan"), float("inf")]).to(dtype) if dtype != torch.int8 else -127
        x_scale = 0.03 if dtype == torch.int8 else None
        for relu in (False, True):
            out = ops.quantize_channel_affine(x.to(DEV), scale.to(DEV), shift.to(DEV), 0.04, relu, x_scale)
            assert out.is_cuda and out.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(out.cpu(), ref.quantize_channel_affine(x, scale, shift, 0.04, relu, x_scale))
    torch.library.opcheck(torch.ops.fastinfer.quantize_channel_affine.default,
                          (x.to(DEV), scale.to(DEV), shift.to(DEV), 0.04, True, 0.03))
    for N, C, H, W, k, s, p, ceil, cip, div in AVG_POOLS:
        xq = torch.randint(-127, 128, (N, C, H, W), dtype=torch.int8)
        out = ops.int8_avg_pool2d(xq.to(DEV), k, s, p, ceil, cip, div)
        assert out.is_cuda and torch.equal(out.cpu(), ref.int8_avg_pool2d(xq, k, s, p, ceil, cip, div))
    torch.library.opcheck(torch.ops.fastinfer.int8_avg_pool2d.default,
                          (xq.to(DEV), [3, 3], [2, 2], [1, 1], True, False, None))
    model = _dense_net()
    calib = [torch.randn(4, 3, 20, 20) for _ in range(2)]
    q = fastinfer.quantize(fastinfer.fuse(model), "w8a8_static", calib_data=calib)
    assert type(q.transition1[3]) is fastinfer.nn.Int8AvgPool2d
    xin = torch.randn(2, 3, 20, 20)
    with torch.inference_mode():
        want = q(xin)
        torch.testing.assert_close(q.cuda()(xin.cuda()).cpu(), want, rtol=1e-3, atol=1e-3)
