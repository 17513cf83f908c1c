"""int8_conv2d and Int8Conv2d vs fastinfer.reference (same quantized values: bit-exact), every ISA path."""
import copy
import io

import pytest
import torch
from torch import nn

import fastinfer
from fastinfer import ops
from fastinfer import reference as ref
from fastinfer.nn import ConvAct2d, Int8Conv2d

from conftest import (CAPS, CONV_EPILOGUE_EDGES, assert_served, conv_epilogue_edge, padded_rows_mode, padded_taps_checked,
                      runnable_isas, served_by, valid_taps)

# (N, C, H, W, Cout, k, stride, pad, dilation, groups)
GEOMETRIES = [
    (1, 3, 9, 7, 13, 3, 1, 1, 1, 1),      # odd channels, spatial sizes that miss tiles
    (8, 13, 6, 5, 3, 3, 2, 1, 1, 1),      # batch 8, stride 2
    (1, 16, 8, 8, 32, 1, 1, 0, 1, 1),     # 1x1: the direct GEMM path
    (2, 13, 7, 7, 20, 1, 1, 0, 1, 1),     # 1x1 with C % 4 != 0: gathered
    (2, 8, 11, 10, 8, 5, 2, 2, 1, 1),
    (1, 4, 12, 12, 70, 7, 1, 3, 1, 1),
    (1, 6, 10, 10, 6, 3, 1, 2, 2, 1),     # dilation
    (2, 8, 6, 6, 12, 3, 1, 1, 1, 2),      # grouped
    (1, 16, 7, 7, 16, 3, 1, 1, 1, 16),    # depthwise
    (2, 13, 9, 9, 13, 3, 2, 1, 2, 13),    # depthwise, odd C, stride + dilation
    (1, 24, 5, 5, 24, 5, 1, 2, 1, 24),    # depthwise 5x5
    (2, 80, 9, 8, 80, 7, 1, 3, 1, 80),    # depthwise 7x7 (13 groups of 4 taps), two channel blocks, the second of 16
    (1, 130, 6, 7, 130, 3, 2, 1, 1, 130), # depthwise, three channel blocks, the last of 2
]
MODES = [  # (x_scale, out_scale, activation)
    (None, None, "none"), (0.03, None, "relu"), (None, 0.05, "relu6"), (0.02, 0.04, "relu"),
    (0.03, None, "hardswish"), (0.02, 0.04, "hardswish"),
]
MODE_IDS = ["dynamic", "static-relu", "int8out-relu6", "static-int8out", "static-hardswish", "static-int8out-hardswish"]


# Grouped convolutions for the narrow-group kernel (16-lane blocks on AVX-512, 8-lane on AVX2 and AVX-VNNI;
# the reference tier, and geometries it does not serve, gather rows per group and must give the same bits).
# (N, C, H, W, Cout, k, stride, pad, dilation, groups)
GROUPED = [
    (1, 128, 9, 11, 128, 3, 1, 1, 1, 32),   # ResNeXt 32 x 4: permutes shared by a 3-wide row, tiles of 8 + 3
    (2, 64, 7, 7, 64, 3, 2, 1, 1, 8),       # stride 2: one permute per product
    (1, 64, 5, 6, 32, 3, 1, 1, 1, 2),       # 16 channels a group: each block in one group (broadcasts)
    (1, 48, 8, 8, 96, 3, 1, 2, 2, 4),       # dilation 2; blocks straddling two groups of 12 inputs
    (1, 32, 6, 6, 40, 1, 1, 0, 1, 4),       # 1x1 grouped (ShuffleNet), 10 outputs a group, Cout tail of 8
    (1, 96, 6, 6, 48, 5, 1, 2, 1, 3),       # 5x5, 32 inputs a group
    (3, 24, 10, 13, 36, 3, 1, 1, 1, 6),     # 3 images, 6 outputs a group, Cout tail of 4
    (1, 20, 4, 17, 10, 3, 1, 1, 1, 5),      # one block of 10 lanes, 17 pixels: tiles of 8 + 8 + 1
    (1, 24, 8, 16, 24, 3, 1, 1, 1, 4),      # 6 inputs a group: gathered rows
    (1, 128, 5, 5, 16, 3, 1, 1, 1, 2),      # 64 inputs a group, 8 outputs: a block's window would be 68 bytes
    (1, 128, 6, 6, 128, 3, 1, 1, 1, 2),     # 64 outputs a group: the GEMM fills its tiles (gathered rows)
    (1, 64, 6, 7, 64, 3, 1, 1, 1, 2),       # 32 outputs a group: broadcasts shared by a block pair (4 pairs on ymm)
    (2, 96, 5, 9, 96, 3, 2, 1, 1, 2),       # 48 outputs a group, stride 2: a pair and a single block per group
]


def make(g):
    N, C, H, W, Co, k, s, p, d, groups = g
    w = torch.randint(-127, 128, (Co, C // groups, k, k), dtype=torch.int8)
    return torch.randn(N, C, H, W) * 2, w, torch.rand(Co) * 0.01 + 1e-3, torch.randn(Co)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("g", GEOMETRIES + GROUPED, ids=[str(g) for g in GEOMETRIES + GROUPED])
def test_int8_conv2d_matches_reference(isa, g, mode):
    N, C, H, W, Co, k, s, p, d, groups = g
    x_scale, out_scale, act = mode
    x, w, ws, b = make(g)
    y = ops.int8_conv2d(x, ops.pack_conv_weight(w, groups), ws, b, (k, k), (s, s), (p, p), (d, d), groups,
                        x_scale, out_scale, act)
    r = ref.int8_conv2d(x, w, ws, b, (s, s), (p, p), (d, d), groups, x_scale, out_scale, act)
    assert y.shape == r.shape and y.dtype == r.dtype
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, r, rtol=0, atol=0)
    depthwise = groups > 1 and groups == C == Co
    if depthwise:
        assert_served("dwconv", isa)
    else:
        assert_conv_path(isa, g)
    assert_served("quantize", isa)


# One geometry per path: direct tiles, gathered rows (OW 7), 1x1, narrow groups, depthwise (quads and, 5x5 at
# stride 1, wide quads on AVX-512).
GELU_GEOMETRIES = [GEOMETRIES[0], (1, 16, 7, 7, 32, 3, 1, 1, 1, 1), GEOMETRIES[2], GROUPED[0], GEOMETRIES[8],
                   GEOMETRIES[10], (2, 16, 12, 13, 80, 3, 1, 1, 1, 1)]  # the last: direct (OW >= 12), 80 = 64 + 16


@pytest.mark.parametrize("g", GEOMETRIES[:6] + GROUPED, ids=[str(g) for g in GEOMETRIES[:6] + GROUPED])
def test_int8_conv2d_7bit_weights(isa, g):
    # Weights in [-64, 63] (their pack flags send AVX2's GEMM, direct and narrow-group kernels to the shifted
    # step); every path still gives the reference's bits, the largest weights against the largest activations.
    N, C, H, W, Co, k, s, p, d, groups = g
    x, _, ws, b = make(g)
    w = torch.randint(-64, 64, (Co, C // groups, k, k), dtype=torch.int8)
    w[0], x[:, :, 0] = 63, 1e3  # an all-63 filter; a column of the largest activations
    y = ops.int8_conv2d(x, ops.pack_conv_weight(w, groups), ws, b, (k, k), (s, s), (p, p), (d, d), groups,
                        None, None, "relu")
    r = ref.int8_conv2d(x, w, ws, b, (s, s), (p, p), (d, d), groups, None, None, "relu")
    torch.testing.assert_close(y, r, rtol=0, atol=0)
    # The GEMM kernels (one group) and the narrow-group kernel take the step; grouped gathered rows record none.
    stepped = groups == 1 or ops.last_kernel("gconv") != ""
    assert ops.last_kernel("int8_gemm_step") == ("shifted" if isa == "avx2" and stepped else "")


@pytest.mark.parametrize("act", ["gelu", "silu"])
@pytest.mark.parametrize("g", GELU_GEOMETRIES, ids=[str(g) for g in GELU_GEOMETRIES])
def test_int8_conv2d_gelu_silu(isa, g, act):
    """gelu and silu on every path and tier, fp32 and int8 out. The kernels' erf and exp are polynomials
    (erf: |error| <= 3e-7; exp: relative error < 2e-7), so fp32 outputs are compared within 1e-5 and int8
    outputs within one unit (a value at a rounding boundary). The AVX2 tile's folded int8 epilogue once
    skipped gelu: -127 where the reference had ~0."""
    N, C, H, W, Co, k, s, p, d, groups = g
    x, w, ws, b = make(g)
    pw = ops.pack_conv_weight(w, groups)
    args = ((k, k), (s, s), (p, p), (d, d), groups)
    y = ops.int8_conv2d(x, pw, ws, b, *args, 0.03, None, act)
    torch.testing.assert_close(y, ref.int8_conv2d(x, w, ws, b, *args[1:], 0.03, None, act), rtol=1e-5, atol=1e-5)
    y8 = ops.int8_conv2d(x, pw, ws, b, *args, 0.03, 0.05, act)
    r8 = ref.int8_conv2d(x, w, ws, b, *args[1:], 0.03, 0.05, act)
    assert y8.dtype == torch.int8 and (y8.int() - r8.int()).abs().max().item() <= 1
    assert (y8 != r8).float().mean().item() < 0.01  # boundary cases only


SILU_EDGES = [float("-inf"), -3e38, -1e30, -100.0, -88.5, -87.9, -20.0, -1e-30, 0.0, 3.0, 87.5, 1e30, float("inf"),
              float("nan")]


@pytest.mark.parametrize("k, groups, family", [(1, 1, "int8_gemm"), (3, 1, "conv_direct"), (3, 16, "dwconv")],
                         ids=["gemm", "direct", "depthwise"])
def test_silu_extreme_values(isa, k, groups, family):
    """silu of pre-activations from -inf to inf (the bias carries them; one tap of 1): torch's F.silu within
    1e-5, NaN where torch gives NaN (silu(-inf)), on the GEMM, direct and depthwise kernels. The vector
    kernels clamp y inside the exp; below -88 they once gave y / e^88 (-0.6 for -1e38)."""
    C, W = (64 if family == "conv_direct" else 16), 24  # OW >= 12, AMX 64 channels a step: direct kernels serve 3 x 3
    x = torch.zeros(1, C, 1, W, dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    x[0, :, 0, 1] = 1
    w = torch.zeros(C, C // groups, k, k, dtype=torch.int8)
    w[:, 0, k // 2, k // 2] = 1
    pw = ops.pack_conv_weight(w, groups)
    args = ((k // 2, k // 2), (1, 1), groups, 1.0, None)
    for v in SILU_EDGES:
        b = torch.full((C,), v)
        y = ops.int8_conv2d(x, pw, torch.ones(C), b, (k, k), (1, 1), *args, "silu")
        want = torch.nn.functional.silu(ref.int8_conv2d(x, w, torch.ones(C), b, (1, 1), *args))
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5, equal_nan=True, msg=f"silu at {v} (+ 1 in column 1)")
        assert_served("int8_gemm" if isa == "ref" and family == "conv_direct" else family, isa)  # ref: gathered rows
        if abs(v) < 1e37:  # int8 out (finite bias: the folded rule): within one unit of the rounded F.silu
            y8 = ops.int8_conv2d(x, pw, torch.ones(C), b, (k, k), (1, 1), *args[:-1], 0.5, "silu")
            r8 = torch.round(want / 0.5).clamp(-127, 127)
            assert y8.dtype == torch.int8 and (y8.float() - r8).abs().max().item() <= 1, f"silu at {v}, int8 out"


@pytest.mark.parametrize("act", ["relu", "relu6"])
@pytest.mark.parametrize("out_scale", [0.1, 0.0473, 6 / 60.5, 0.01])
@pytest.mark.parametrize("k", [1, 3])
def test_relu_on_the_packed_bytes(isa, act, out_scale, k):
    """The AMX and AVX-512 VNNI folded int8 epilogues take ReLU / ReLU6's max against 0 on the packed bytes
    (ReLU6's cap stays in the float clamp); the bias spreads pre-activations over about
    [-8.5, 8.5], across 0 and 6 (6 / out_scale: 60, 127, a half)."""
    C, Co = 64, 96
    x = torch.randint(-128, 128, (2, C, 20, 20), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    w = torch.randint(-127, 128, (Co, C, k, k), dtype=torch.int8)
    ws = torch.full((Co,), 1.0 / (C * k * k * 127 * 2))
    bias = torch.linspace(-8, 8, Co)
    y = ops.int8_conv2d(x, ops.pack_conv_weight(w, 1), ws, bias, (k, k), (1, 1), (k // 2, k // 2), (1, 1), 1, 1.0,
                        out_scale, act)
    assert_served("int8_gemm", isa)
    r = ref.int8_conv2d(x, w, ws, bias, (1, 1), (k // 2, k // 2), (1, 1), 1, 1.0, out_scale, act)
    torch.testing.assert_close(y, r, rtol=0, atol=0)
    assert (y == 0).any()
    if act == "relu6" and out_scale > 0.06:
        assert (y == round(6 / out_scale)).any()  # the cap is reached


GCONV_LANES = {"avx2": 8, "avx_vnni": 8, "avx512_vnni": 16, "amx": 16}  # output channels a block


def gconv_serves(isa, g, min128=False):
    """Whether the narrow-group kernel serves geometry g capped at isa: every tier but ref (AMX: AVX-512
    VNNI's kernel; AVX2: only for weights without -128), groups > 1 and not depthwise, Cin/groups % 4 == 0,
    Cout/groups < 64, and each block's groups (16 output channels on AVX-512, 8 on the 256-bit tiers) within
    a window of 4 bytes a lane of input channels."""
    N, C, H, W, Co, k, s, p, d, groups = g
    cin_g, cout_g = C // groups, Co // groups
    lanes = GCONV_LANES.get(isa)
    if lanes is None or (min128 and isa == "avx2") or groups == 1 or cin_g % 4 or cout_g >= 64:
        return False
    return all(((min(o + lanes, Co) - 1) // cout_g - o // cout_g) * cin_g + 4 <= 4 * lanes
               for o in range(0, Co, lanes))


def assert_conv_path(isa, g, min128=False):
    """A non-depthwise convolution ran the narrow-group kernel, or else the int8 GEMM (direct or gathered)."""
    if gconv_serves(isa, g, min128):
        assert ops.last_kernel("gconv") == {"amx": "avx512_vnni"}.get(isa, isa)
        assert ops.last_kernel("conv_direct") == ""
    else:
        assert ops.last_kernel("gconv") == ""
        assert_served("int8_gemm", isa)


@pytest.mark.parametrize("g", [GEOMETRIES[0], GEOMETRIES[8]], ids=["gemm", "depthwise"])
def test_int8_input_and_no_bias(isa, g):
    N, C, H, W, Co, k, s, p, d, groups = g
    _, w, ws, _ = make(g)
    xq = torch.randint(-127, 128, (N, C, H, W), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    y = ops.int8_conv2d(xq, ops.pack_conv_weight(w, groups), ws, None, (k, k), (s, s), (p, p), (d, d), groups, 0.05)
    torch.testing.assert_close(y, ref.int8_conv2d(xq, w, ws, None, (s, s), (p, p), (d, d), groups, 0.05), rtol=0, atol=0)


@pytest.mark.parametrize("C", [32, 24])  # K = 32: a K tail step of 8 quads on AMX; 24: 6 quads
def test_plain_1x1_items_of_several_passes(isa, C):
    # A plain 1x1 convolution's items span several of the kernel's passes once the batch is large (2520 rows:
    # items of ~315 rows on one thread, ~158 on two, the last pass of an item partial), int8 read in place or
    # fp32 quantized into a chunk buffer; Cout 40 ends in a single 16-column tile. Images of 9 pixels keep the
    # VNNI tiers' direct convolution (rows of >= 10 pixels, an image's pixels as one row) out, so every tier runs
    # its GEMM on the rows.
    w = torch.randint(-127, 128, (40, C, 1, 1), dtype=torch.int8)
    ws, b = torch.rand(40) * 0.01 + 1e-3, torch.randn(40)
    packed = ops.pack_conv_weight(w, 1)
    x = torch.randn(280, C, 9, 1) * 2
    xq = torch.randint(-128, 128, (280, C, 9, 1), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for inp, out_scale, act in ((xq, 0.05, "relu"), (x, None, "none"), (x, 0.04, "relu6")):
                y = ops.int8_conv2d(inp, packed, ws, b, (1, 1), (1, 1), (0, 0), (1, 1), 1, 0.03, out_scale, act)
                assert_served("int8_gemm", isa)
                assert ops.last_kernel("conv_direct") == ""
                torch.testing.assert_close(y, ref.int8_conv2d(inp, w, ws, b, (1, 1), (0, 0), (1, 1), 1, 0.03, out_scale, act),
                                           rtol=0, atol=0)
    finally:
        torch.set_num_threads(before)


def planes_tier(isa: str) -> str:
    """The tier that quantizes an NCHW fp32 input straight into NHWC int8 (quantize_planes): AVX-512's kernel on
    the AMX and AVX-512 tiers, AVX2's on AVX-VNNI and AVX2; the reference tier copies the input to channels-last
    first ("")."""
    return "" if isa == "ref" else served_by("quantize", isa)


# (N, C, H, W, Cout, k, stride, pad, dilation, groups): channel counts around the 16-channel blocks, pixel counts
# around the 16-pixel blocks and the 1024-pixel items.
PLANES = [
    (1, 3, 9, 7, 13, 3, 1, 1, 1, 1),       # 3 channels (an RGB stem), 63 pixels
    (2, 16, 4, 4, 8, 1, 1, 0, 1, 1),       # one whole block
    (1, 17, 5, 3, 16, 3, 1, 1, 1, 1),      # a block and one channel, 15 pixels
    (2, 64, 33, 33, 64, 3, 1, 1, 1, 1),    # 1089 pixels: two items, the second of 65
    (1, 130, 6, 7, 130, 3, 2, 1, 1, 130),  # depthwise, 9 blocks of channels, the last of 2
    (2, 40, 7, 7, 24, 1, 1, 0, 1, 1),      # 1x1
    (2, 3, 37, 37, 8, 3, 2, 1, 1, 1),      # 3 channels, 1369 pixels an image: items of 1024 + 345 side by side
    (1, 20, 33, 33, 16, 3, 1, 1, 1, 1),    # a block and 4 channels, two items
    (2, 2, 5, 7, 8, 1, 1, 0, 1, 1),        # 2 channels (byte shuffles: 2 vectors a 16-pixel block), 35 pixels
    (1, 4, 33, 33, 16, 3, 2, 1, 1, 1),     # 4 channels (RGBA), two items, the second of 65 pixels
    (3, 3, 4, 5, 8, 3, 1, 1, 1, 1),        # 3 channels, 20 pixels: a 16-pixel block and 4 (12 bytes)
]


@pytest.mark.parametrize("g", PLANES, ids=[f"C{g[1]}-{g[2]}x{g[3]}" for g in PLANES])
@pytest.mark.parametrize("mode", MODES[:4], ids=MODE_IDS[:4])
def test_nchw_input_quantized_into_nhwc(isa, g, mode):
    """An NCHW fp32 input (quantized straight into NHWC int8 on the vector tiers) and its channels-last copy give the
    reference's bits, with NaN, +-inf, ties and 0 among the values (static scales: NaN quantizes to 0, inf and
    past-the-range values clamp; the dynamic scale of a NaN input is NaN); all-zero inputs give the bias."""
    N, C, H, W, Co, k, s, p, d, groups = g
    x_scale, out_scale, act = mode
    x, w, ws, b = make(g)
    if x_scale is not None:
        flat = x.view(-1)
        flat[:: 7] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, 2.5 * x_scale, -0.5 * x_scale,
                                   0.0])[torch.arange(len(flat[:: 7])) % 7]
    pw = ops.pack_conv_weight(w, groups)
    geo = ((k, k), (s, s), (p, p), (d, d), groups, x_scale, out_scale, act)
    want = ref.int8_conv2d(x, w, ws, b, (s, s), (p, p), (d, d), groups, x_scale, out_scale, act)
    y = ops.int8_conv2d(x, pw, ws, b, *geo)
    assert ops.last_kernel("quantize_planes") == planes_tier(isa)
    torch.testing.assert_close(y, want, rtol=0, atol=0, equal_nan=True)
    y_cl = ops.int8_conv2d(x.contiguous(memory_format=torch.channels_last), pw, ws, b, *geo)
    assert ops.last_kernel("quantize_planes") == ""
    torch.testing.assert_close(y_cl, want, rtol=0, atol=0, equal_nan=True)
    zero = ops.int8_conv2d(torch.zeros(N, C, H, W), pw, ws, b, *geo)
    torch.testing.assert_close(zero, ref.int8_conv2d(torch.zeros(N, C, H, W), w, ws, b, (s, s), (p, p), (d, d), groups,
                                                     x_scale, out_scale, act), rtol=0, atol=0)


@pytest.mark.parametrize("g", [GEOMETRIES[0], GEOMETRIES[2]], ids=["3x3-gathered", "1x1-chunk-quantized"])
def test_special_inputs(isa, g):
    N, C, H, W, Co, k, s, p, d, groups = g
    _, w, ws, b = make(g)
    pw = ops.pack_conv_weight(w, 1)
    args = (pw, ws, b, (k, k), (s, s), (p, p), (d, d))
    zero = ops.int8_conv2d(torch.zeros(N, C, H, W), *args, 1)  # scale 0: output is the bias
    torch.testing.assert_close(zero, b[None, :, None, None].expand_as(zero).contiguous(), rtol=0, atol=0)
    x = torch.randn(N, C, H, W)
    x[0, 1, 2, 3] = float("nan")
    assert torch.isnan(ops.int8_conv2d(x, *args, 1)).all()     # dynamic per-tensor scale: NaN everywhere (documented)
    static = ops.int8_conv2d(x, *args, 1, 0.02)                # static: NaN quantizes to 0
    torch.testing.assert_close(static, ref.int8_conv2d(x, w, ws, b, (s, s), (p, p), (d, d), 1, 0.02), rtol=0, atol=0)
    empty = ops.int8_conv2d(torch.zeros(0, C, H, W), *args, 1)
    assert empty.shape == (0, Co, H, W)


@pytest.mark.parametrize("C", [80, 96])  # 96: whole 32-channel blocks (the AVX-VNNI row-quad kernel)
@pytest.mark.parametrize("case", CONV_EPILOGUE_EDGES)
def test_depthwise_epilogue_edges(isa, case, C):
    x, w, ws, b = make((2, C, 9, 8, C, 3, 1, 1, 1, C))
    x_scale, out_scale = conv_epilogue_edge(case, x, ws, b)
    pw = ops.pack_conv_weight(w, C)
    for osc, act in ((out_scale, "relu"), (out_scale, "none"), (None, "relu6")):
        y = ops.int8_conv2d(x, pw, ws, b, (3, 3), (1, 1), (1, 1), (1, 1), C, x_scale, osc, act)
        r = ref.int8_conv2d(x, w, ws, b, (1, 1), (1, 1), (1, 1), C, x_scale, osc, act)
        torch.testing.assert_close(y, r, rtol=0, atol=0, equal_nan=True)
        assert_served("dwconv", isa)
        assert ops.last_kernel("dwconv_path") == expected_dw_path(isa, C, (3, 3), (1, 1), (1, 1), 8,
                                                                  bool((w == -128).any()))
        if case == "saturating" and osc is not None and act == "none":
            assert (y == 127).any() and (y == -127).any()


# The AVX-512 VNNI direct convolution (register tiles of <= 6 pixels within an output row, read from a
# padded u8 slab, or from an unpadded int8 input in place): (N, C, H, W, Cout, k, stride, pad, dilation).
VNNI_DIRECT = [
    (1, 64, 16, 16, 64, 3, 1, 1, 1),     # OW 16: tiles of 6 + 5 + 5 pixels
    (2, 8, 9, 21, 40, 3, 1, 1, 1),       # 8 channels (2 k steps a tap), Cout 40: a 48-column block
    (3, 12, 5, 40, 17, 5, 1, 2, 1),      # 5x5, batch 3, Cout 17
    (1, 20, 10, 37, 100, 3, 2, 1, 1),    # stride 2, OW 19; Cout 100: blocks of 64 + 48 columns
    (1, 16, 12, 24, 32, 3, 1, 2, 2),     # dilation 2
    (1, 192, 6, 18, 80, 1, 1, 1, 1),     # 1x1 with padding
    (2, 4, 18, 20, 48, 7, 1, 3, 1),      # 7x7, 4 channels
    (1, 64, 4, 18, 64, 3, 1, 0, 1),      # unpadded 3x3 (an int8 input is read in place)
    (2, 32, 8, 12, 24, 1, 1, 0, 1),      # plain 1x1
    (1, 16, 9, 23, 16, 1, 2, 0, 1),      # 1x1 stride 2, unpadded
    # Fewer than 16 channels, C % 4 != 0: row segments (each kernel row's KW * C bytes, weight repacked)
    (1, 3, 40, 40, 64, 7, 2, 3, 1),      # an RGB stem: 7x7 stride 2, segments of 21 -> 24 bytes
    (2, 13, 12, 30, 17, 3, 1, 1, 1),     # 39 -> 40 bytes
    (2, 1, 12, 16, 16, 3, 1, 0, 1),      # one channel, unpadded (an int8 input still goes through a slab)
    (1, 6, 10, 21, 8, 5, 2, 2, 1),       # 5x5 stride 2
]


@pytest.fixture(params=["avx512_vnni", "avx_vnni", "avx2"])
def vnni(request):
    """Kernels capped at a tier whose direct convolution has register tiles of <= 6 pixels within an output
    row: AVX-512 VNNI (on an AMX CPU too: its direct convolution is the VNNI set's), AVX-VNNI or AVX2 (4
    pixels; weights without -128); yields the tier."""
    name = request.param
    if name not in runnable_isas():
        pytest.skip(f"this CPU cannot run the {name} path (runnable: {runnable_isas()})")
    with fastinfer.use_isa(name):
        yield name


def direct_case(g, low=-127, high=127):
    N, C, H, W, Co, k, s, p, d = g
    w = torch.randint(low, high + 1, (Co, C, k, k), dtype=torch.int8)
    return ops.pack_conv_weight(w, 1), w, torch.rand(Co) * 0.01 + 1e-3, torch.randn(Co), ((k, k), (s, s), (p, p), (d, d))


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("g", VNNI_DIRECT, ids=[str(g) for g in VNNI_DIRECT])
def test_vnni_direct_conv_matches_reference(vnni, g, mode):
    x_scale, out_scale, act = mode
    packed, w, ws, b, geo = direct_case(g)
    x = torch.randn(*g[:4]) * 2
    y = ops.int8_conv2d(x, packed, ws, b, *geo, 1, x_scale, out_scale, act)
    assert ops.last_kernel("conv_direct") == vnni and ops.last_kernel("int8_gemm") == vnni
    torch.testing.assert_close(y, ref.int8_conv2d(x, w, ws, b, *geo[1:], 1, x_scale, out_scale, act), rtol=0, atol=0)


@pytest.mark.parametrize("int8_in", [False, True])
@pytest.mark.parametrize("g", VNNI_DIRECT, ids=[str(g) for g in VNNI_DIRECT])
def test_vnni_direct_conv_7bit_weights(vnni, g, int8_in):
    # Weights in [-64, 63]: AVX2's direct convolution takes its shifted step, on the u8 slab and on an int8
    # input read in place (the tile's S8 rows flip to u8); the other tiers compute the same bits.
    packed, w, ws, b, geo = direct_case(g, -64, 63)
    if int8_in:  # every s8 value, -128 and 127 included
        x = torch.randint(-128, 128, g[:4], dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    else:
        x = torch.randn(*g[:4]) * 2
    x_scale = 0.05 if int8_in else None
    y = ops.int8_conv2d(x, packed, ws, b, *geo, 1, x_scale, None, "none")
    assert ops.last_kernel("conv_direct") == vnni
    assert ops.last_kernel("int8_gemm_step") == ("shifted" if vnni == "avx2" else "")
    torch.testing.assert_close(y, ref.int8_conv2d(x, w, ws, b, *geo[1:], 1, x_scale, None, "none"), rtol=0, atol=0)


@pytest.mark.parametrize("g", [VNNI_DIRECT[0], VNNI_DIRECT[3], VNNI_DIRECT[7], VNNI_DIRECT[8], VNNI_DIRECT[9],
                               VNNI_DIRECT[10], VNNI_DIRECT[12]],
                         ids=["padded", "stride2", "unpadded-3x3", "1x1", "1x1-stride2", "stem-segments",
                              "unpadded-segments"])
def test_vnni_direct_conv_int8_input(vnni, g):
    # Every s8 value, -128 included: the slab holds s8 + 128, an unpadded input is flipped in the kernel.
    packed, w, ws, b, geo = direct_case(g)
    xq = torch.randint(-128, 128, g[:4], dtype=torch.int8)
    xq.view(-1)[:256] = torch.arange(-128, 128, dtype=torch.int8)[: min(256, xq.numel())]
    xq = xq.contiguous(memory_format=torch.channels_last)
    for out_scale in (0.1, None):
        y = ops.int8_conv2d(xq, packed, ws, b, *geo, 1, 0.05, out_scale, "relu")
        assert ops.last_kernel("conv_direct") == vnni
        torch.testing.assert_close(y, ref.int8_conv2d(xq, w, ws, b, *geo[1:], 1, 0.05, out_scale, "relu"),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("case", CONV_EPILOGUE_EDGES)
@pytest.mark.parametrize("g", [VNNI_DIRECT[0], VNNI_DIRECT[2], VNNI_DIRECT[11]], ids=["direct", "cout17", "segments"])
def test_vnni_direct_conv_epilogue_edges(vnni, g, case):
    packed, w, ws, b, geo = direct_case(g)
    x = torch.randn(*g[:4]) * 2
    x_scale, out_scale = conv_epilogue_edge(case, x, ws, b)
    for osc in (out_scale, None):
        y = ops.int8_conv2d(x, packed, ws, b, *geo, 1, x_scale, osc, "relu")
        assert ops.last_kernel("conv_direct") == vnni
        r = ref.int8_conv2d(x, w, ws, b, *geo[1:], 1, x_scale, osc, "relu")
        torch.testing.assert_close(y, r, rtol=0, atol=0, equal_nan=True)


def test_vnni_direct_conv_threads(vnni):
    # Items split over 1 and 2 threads (slabs per thread): the same result.
    packed, w, ws, b, geo = direct_case((3, 64, 20, 28, 96, 3, 1, 1, 1))
    x = torch.randn(3, 64, 20, 28)
    want = ref.int8_conv2d(x, w, ws, b, *geo[1:], 1, 0.03, 0.05)
    before = torch.get_num_threads()
    try:
        for threads in (2, 1, 2):
            torch.set_num_threads(threads)
            y = ops.int8_conv2d(x, packed, ws, b, *geo, 1, 0.03, 0.05)
            assert ops.last_kernel("conv_direct") == vnni
            torch.testing.assert_close(y, want, rtol=0, atol=0)
    finally:
        torch.set_num_threads(before)


# Geometries whose top or bottom output rows read the zero padding with some of their kernel rows (padding 1-3,
# 5x5 and 7x7, stride 2, dilation 2, row segments), a 1x1 with padding (its border rows read only padding: left as
# they are) and padding beyond the kernel's reach; then dilated kernels on small maps, whose left and right
# columns skip kernel columns too (DeepLabV3's ASPP).
PADDED_TAPS = [VNNI_DIRECT[i] for i in (0, 1, 2, 3, 4, 5, 6, 10, 11, 13)] + [
    (1, 16, 12, 12, 16, 3, 1, 3, 1),     # padding 3 > reach 1: whole output rows in the padding
    (2, 32, 23, 22, 48, 5, 2, 2, 1),     # 5x5 stride 2, OW 11: the bottom row skips 2 kernel rows, the top one 2
    (1, 32, 12, 12, 24, 3, 1, 6, 6),     # dilation 6 at 12 x 12: every pixel runs 2 x 2 taps, in 4 boxes
    (2, 16, 10, 11, 20, 3, 1, 12, 12),   # dilation 12 beyond the map: the centre tap alone (a 1x1)
    (1, 8, 20, 23, 40, 3, 1, 5, 5),      # dilation 5: edge segments of 5 pixels beside a full middle
    (1, 12, 16, 17, 33, 3, 2, 4, 4),     # stride 2, dilation 4: OW 9 (gathered rows), rows only
    (1, 12, 16, 29, 33, 3, 2, 4, 4),     # stride 2, dilation 4, OW 15: 2-pixel edges joined to the middle
    (1, 16, 14, 30, 24, 5, 1, 6, 3),     # 5x5 dilation 3: segments of 3 pixels, some of 1 and 2 joined
    (1, 20, 9, 40, 16, 3, 1, 20, 10),    # padding 20, dilation 10: output rows and columns of padding alone
]


def padded_taps(g, tier):
    """What the direct convolution of g does with its taps in the zero padding under "always", and whether an
    int8 input is then read in place (conv_ops.cpp's PaddedTaps, written again from its comment): "skipped"
    (kernel rows only), "skipped_taps" (kernel columns too), "computed"."""
    N, C, H, W, Co, k, s, p, d = g
    oh_n, ow_n = (H + 2 * p - d * (k - 1) - 1) // s + 1, (W + 2 * p - d * (k - 1) - 1) // s + 1
    tap = 0 if C % 4 else C  # row segments run whole kernel rows
    if p == 0:
        return "computed", False
    exact = tap > 0
    rows = []
    for r in range(oh_n):
        v = valid_taps(r * s - p, d, k, H)
        exact = exact and v is not None
        rows.append(v or (0, k))
    segs = [[0, ow_n, 0, k]]
    cols = [valid_taps(c * s - p, d, k, W) for c in range(ow_n)]
    if tap and None not in cols:
        segs = []
        for c, v in enumerate(cols):
            if segs and tuple(segs[-1][2:]) == v:
                segs[-1][1] = c + 1
            else:
                segs.append([c, c + 1, *v])
        min_cols = max(3, {"avx2": 4}.get(tier, 6) // 2)
        while len(segs) > 1:
            widths = [b - a for a, b, _, _ in segs]
            i = widths.index(min(widths))
            if widths[i] >= min_cols:
                break
            j = 1 if i == 0 else i - 1 if i + 1 == len(segs) or widths[i - 1] >= widths[i + 1] else i + 1
            u = [min(segs[i][0], segs[j][0]), max(segs[i][1], segs[j][1]),
                 min(segs[i][2], segs[j][2]), max(segs[i][3], segs[j][3])]
            exact = exact and u[2:] == segs[i][2:] == segs[j][2:]
            segs[min(i, j)] = u
            del segs[max(i, j)]
            merged = [segs[0]]
            for sg in segs[1:]:
                if sg[2:] == merged[-1][2:]:
                    merged[-1][1] = sg[1]
                else:
                    merged.append(sg)
            segs = merged
    boxes = {(*r, *sg[2:]) for r in rows for sg in segs} - {(0, k, 0, k)}
    if not boxes:
        return "computed", False
    return ("skipped_taps" if any(b[2] > 0 or b[3] < k for b in boxes) else "skipped"), exact


@pytest.mark.parametrize("g", PADDED_TAPS, ids=[str(g) for g in PADDED_TAPS])
def test_vnni_direct_conv_skips_padded_taps(vnni, g):
    # Output pixels whose first or last kernel rows or columns read the zero padding run the other taps only,
    # against their own column sums (conv_ops.cpp, PaddedTaps): the reference's bits, fp32 and int8 inputs, 1 and
    # 2 threads, and the same bits as computing every tap. An input whose taps then all lie in the image is read
    # in place ("rows_in_place": an fp32 one quantized once, unpadded), and no other.
    packed, w, ws, b, geo = direct_case(g)
    x = torch.randn(*g[:4]) * 2
    xq = torch.randint(-128, 128, g[:4], dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    how, exact = padded_taps(g, vnni)
    direct = (g[3] + 2 * g[7] - g[8] * (g[5] - 1) - 1) // g[6] + 1 >= 10  # OW >= 10; else the gathered rows
    def served():
        if direct:
            assert ops.last_kernel("conv_direct") == vnni
            assert ops.last_kernel("conv_padded_rows") == how
            # (an fp32 input is quantized to NHWC int8 once first where it is then read in place)
            assert (ops.last_kernel("conv_direct_mode") == "rows_in_place") == exact

    def computed():
        assert ops.last_kernel("conv_direct_mode") != "rows_in_place"

    with padded_rows_mode("always"):
        padded_taps_checked(x, xq, "always", packed, w, ws, b, geo, served, computed)


def test_padded_taps_oracle_sees_columns_and_in_place():
    # The test's model of PaddedTaps must itself find column boxes and exact geometries, or the test above
    # would pass on a kernel that never skipped a column.
    seen = {padded_taps(g, "avx512_vnni") for g in PADDED_TAPS}
    assert ("skipped_taps", True) in seen and ("skipped_taps", False) in seen and ("skipped", False) in seen
    assert padded_taps((1, 64, 56, 56, 64, 3, 1, 1, 1), "avx512_vnni") == ("skipped", False)  # ResNet: rows only


def partial_rows(g):
    """Whether an output row of geometry g reads the image with some but not all of its kernel rows."""
    N, C, H, W, Co, k, s, p, d = g
    oh = (H + 2 * p - d * (k - 1) - 1) // s + 1
    return any(0 < sum(0 <= r * s - p + kh * d < H for kh in range(k)) < k for r in range(oh))


# Outputs narrower than the VNNI tiles' rows (OW < 10): gathered rows for the GEMM.
GATHERED_PADDED = [(2, 64, 7, 7, 64, 3, 1, 1, 1),    # ResNet-50's last 3x3 layers, Cout 64
                   (1, 32, 9, 9, 24, 5, 1, 2, 1),    # 5x5: two kernel rows off at the border rows
                   (3, 16, 8, 6, 40, 3, 2, 1, 1),    # stride 2: only the top row reads padding; chunks cross images
                   (1, 24, 7, 9, 17, 3, 1, 1, 2),    # dilation 2, Cout 17
                   (1, 18, 8, 8, 20, 3, 1, 1, 1)]    # a kernel row of 54 bytes (not whole k steps): computed


@pytest.mark.parametrize("g", GATHERED_PADDED, ids=[str(g) for g in GATHERED_PADDED])
def test_gathered_conv_skips_padded_kernel_rows(vnni, g):
    # On AVX-512 VNNI the gathered-rows GEMM runs the border rows' K range (Int8GemmParams::k_quads) against their
    # column sums; the 256-bit tiers compute every kernel row. The reference's bits either way.
    packed, w, ws, b, geo = direct_case(g)
    x = torch.randn(*g[:4]) * 2
    skips = vnni == "avx512_vnni" and partial_rows(g) and g[6] * g[1] % 4 == 0
    previous = ops.set_conv_padded_rows("always")
    try:
        for x_scale, out_scale, act in ((0.03, 0.05, "relu"), (None, None, "none")):
            ops.set_conv_padded_rows("always")
            y = ops.int8_conv2d(x, packed, ws, b, *geo, 1, x_scale, out_scale, act)
            assert ops.last_kernel("conv_direct") == "" and ops.last_kernel("int8_gemm") == vnni
            assert ops.last_kernel("conv_padded_rows") == ("skipped" if skips else "computed")
            torch.testing.assert_close(y, ref.int8_conv2d(x, w, ws, b, *geo[1:], 1, x_scale, out_scale, act),
                                       rtol=0, atol=0)
            ops.set_conv_padded_rows("never")
            assert torch.equal(y, ops.int8_conv2d(x, packed, ws, b, *geo, 1, x_scale, out_scale, act))
            assert ops.last_kernel("conv_padded_rows") == "computed"
    finally:
        ops.set_conv_padded_rows(previous)


def test_padded_rows_auto_by_batch():
    # "auto" skips where the saved products outweigh the column sums' GEMM: ResNet-50's last 3x3 layer at batch 8,
    # not at batch 1 (the sums read the whole 2.4 MB weight for 1/10 of a 0.3 ms layer's products).
    if "avx512_vnni" not in runnable_isas():
        pytest.skip("the gathered rows skip kernel rows on AVX-512 VNNI only")
    w = torch.randint(-127, 128, (512, 512, 3, 3), dtype=torch.int8)
    packed, ws = ops.pack_conv_weight(w, 1), torch.rand(512) * 0.01
    with fastinfer.use_isa("avx512_vnni"):
        for n, want in ((1, "computed"), (8, "skipped")):
            xq = torch.randint(-127, 128, (n, 512, 7, 7), dtype=torch.int8)
            xq = xq.contiguous(memory_format=torch.channels_last)
            ops.int8_conv2d(xq, packed, ws, None, (3, 3), (1, 1), (1, 1), (1, 1), 1, 0.05, 0.1, "relu")
            assert ops.last_kernel("conv_padded_rows") == want


def test_set_conv_padded_rows_checks_and_restores():
    with pytest.raises(ValueError, match="mode must be one of auto, always, never"):
        ops.set_conv_padded_rows("sometimes")
    previous = ops.set_conv_padded_rows("never")
    try:
        assert ops.set_conv_padded_rows("always") == "never"
    finally:
        ops.set_conv_padded_rows(previous)
    assert previous == "auto"


# (N, C, H, W, Cout): plain 1x1 convolutions of images narrower than a VNNI row (OW < 10) with >= 10 pixels.
ONE_ROW = [(3, 64, 7, 7, 40),     # 49 pixels an image (9 tiles of 5-6), Cout 40 ends in half a column block
           (1, 96, 7, 7, 160),    # batch 1: one item an image, the columns split into panels
           (2, 32, 5, 2, 13),     # 10 pixels, Cout 13
           (2, 6, 4, 4, 24)]      # 6 channels: row segments of the one-row image


@pytest.mark.parametrize("g", ONE_ROW, ids=[f"{g[2]}x{g[3]}-C{g[1]}-Co{g[4]}" for g in ONE_ROW])
def test_vnni_plain_1x1_small_images_as_one_row(vnni, g):
    # On AVX-512 VNNI a plain 1x1 convolution of small images runs the direct tiles over each image's pixels as
    # one row ("one_row_images"): the reference's bits for an int8 input read in place and an fp32 input
    # quantized per item, int8 and fp32 out, 1 and 2 threads; 9-pixel images (too few for a row of tiles) keep
    # the GEMM, and so do the 256-bit tiers.
    N, C, H, W, Co = g
    w = torch.randint(-127, 128, (Co, C, 1, 1), dtype=torch.int8)
    ws, b = torch.rand(Co) * 0.01 + 1e-3, torch.randn(Co)
    packed = ops.pack_conv_weight(w, 1)
    xq = torch.randint(-128, 128, (N, C, H, W), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    x = torch.randn(N, C, H, W) * 2
    geo = ((1, 1), (1, 1), (0, 0), (1, 1), 1)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            x_cl = x.contiguous(memory_format=torch.channels_last)  # fp32 rows quantized per item, not up front
            for inp, x_scale, out_scale, act in ((xq, 0.05, 0.1, "relu"), (xq, 0.05, None, "none"),
                                                 (x, 0.03, 0.05, "relu6"), (x, None, None, "relu"),
                                                 (x_cl, 0.03, 0.05, "none")):
                y = ops.int8_conv2d(inp, packed, ws, b, *geo, x_scale, out_scale, act)
                one_row = vnni == "avx512_vnni"
                assert ops.last_kernel("conv_direct") == (vnni if one_row else "")
                assert ops.last_kernel("conv_direct_mode") == ("one_row_images" if one_row else "")
                assert_served("int8_gemm", vnni)
                torch.testing.assert_close(y, ref.int8_conv2d(inp, w, ws, b, *geo[1:], x_scale, out_scale, act),
                                           rtol=0, atol=0)
    finally:
        torch.set_num_threads(before)
    small = torch.randn(4, C, 3, 3)
    y = ops.int8_conv2d(small, packed, ws, b, *geo, 0.03, None, "none")
    assert ops.last_kernel("conv_direct") == "" and ops.last_kernel("int8_gemm") == vnni
    torch.testing.assert_close(y, ref.int8_conv2d(small, w, ws, b, *geo[1:], 0.03, None, "none"), rtol=0, atol=0)


@pytest.mark.parametrize("g,groups", [((2, 64, 7, 7, 64, 3, 1, 1, 1), 1),    # OW 7: gathered rows are faster
                                      ((1, 18, 8, 16, 20, 3, 1, 1, 1), 1),   # C % 4 != 0 and C >= 16
                                      ((1, 3, 9, 33, 16, 3, 1, 1, 2), 1),    # few channels, width dilation 2
                                      ((1, 24, 8, 16, 24, 3, 1, 1, 1), 4)],  # grouped, 6 channels a group
                         ids=["narrow", "channels", "segments-dilated", "grouped"])
def test_vnni_direct_conv_not_taken_where_it_cannot_run(vnni, g, groups):
    N, C, H, W, Co, k, s, p, d = g
    w = torch.randint(-127, 128, (Co, C // groups, k, k), dtype=torch.int8)
    ws = torch.rand(Co) * 0.01
    x = torch.randn(N, C, H, W)
    y = ops.int8_conv2d(x, ops.pack_conv_weight(w, groups), ws, None, (k, k), (s, s), (p, p), (d, d), groups, 0.03)
    assert ops.last_kernel("conv_direct") == "" and ops.last_kernel("int8_gemm") == vnni
    assert ops.last_kernel("gconv") == ""
    torch.testing.assert_close(y, ref.int8_conv2d(x, w, ws, None, (s, s), (p, p), (d, d), groups, 0.03), rtol=0, atol=0)




@pytest.mark.parametrize("act", ["none", "relu", "relu6"])
@pytest.mark.parametrize("g", [GROUPED[0], GROUPED[2], GROUPED[4]], ids=["shared", "broadcast", "permute"])
def test_grouped_conv_int8_input_no_bias(isa, g, act):
    N, C, H, W, Co, k, s, p, d, groups = g
    _, w, ws, _ = make(g)
    xq = torch.randint(-127, 128, (N, C, H, W), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    for out_scale in (None, 0.3):
        y = ops.int8_conv2d(xq, ops.pack_conv_weight(w, groups), ws, None, (k, k), (s, s), (p, p), (d, d), groups,
                            0.05, out_scale, act)
        assert_conv_path(isa, g)
        want = ref.int8_conv2d(xq, w, ws, None, (s, s), (p, p), (d, d), groups, 0.05, out_scale, act)
        torch.testing.assert_close(y, want, rtol=0, atol=0)


@pytest.mark.parametrize("case", CONV_EPILOGUE_EDGES)
def test_grouped_conv_epilogue_edges(isa, case):
    # Saturating int8 outputs, NaN inputs, an infinite output scale and a huge weight scale: the general
    # epilogue (not folded) and the folded int8 one, against the reference.
    g = GROUPED[0]
    N, C, H, W, Co, k, s, p, d, groups = g
    x, w, ws, b = make(g)
    x_scale, out_scale = conv_epilogue_edge(case, x, ws, b)
    for osc, act in ((out_scale, "relu"), (out_scale, "relu6"), (None, "none")):
        y = ops.int8_conv2d(x, ops.pack_conv_weight(w, groups), ws, b, (k, k), (s, s), (p, p), (d, d), groups,
                            x_scale, osc, act)
        assert_conv_path(isa, g)
        want = ref.int8_conv2d(x, w, ws, b, (s, s), (p, p), (d, d), groups, x_scale, osc, act)
        torch.testing.assert_close(y, want, rtol=0, atol=0, equal_nan=True)


def test_grouped_conv_threads(isa):
    # Row-group items split over 1, 2 and 3 threads (one slab per thread): the same bits.
    g = (3, 64, 20, 21, 64, 3, 1, 1, 1, 16)
    N, C, H, W, Co, k, s, p, d, groups = g
    x, w, ws, b = make(g)
    packed = ops.pack_conv_weight(w, groups)
    want = ref.int8_conv2d(x, w, ws, b, (s, s), (p, p), (d, d), groups, 0.03, 0.05, "relu")
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            y = ops.int8_conv2d(x, packed, ws, b, (k, k), (s, s), (p, p), (d, d), groups, 0.03, 0.05, "relu")
            assert_conv_path(isa, g)
            torch.testing.assert_close(y, want, rtol=0, atol=0)
    finally:
        torch.set_num_threads(before)


# fp32 outputs of 2 MiB or more: non-temporal stores on the AVX-512 VNNI direct, narrow-group and depthwise
# kernels. (N, C, H, W, Cout, k, stride, pad, dilation, groups); outputs 2.1, 2.4, 3.1 and 2.1 MB, the third
# with Cout % 16 != 0 (rows not 64-byte aligned: those pieces take ordinary stores).
STREAMED = [(2, 64, 64, 64, 64, 3, 1, 1, 1, 1), (2, 128, 48, 48, 128, 3, 1, 1, 1, 32),
            (1, 20, 56, 56, 250, 1, 1, 0, 1, 1), (2, 256, 32, 32, 256, 3, 1, 1, 1, 256)]


@pytest.mark.parametrize("g", STREAMED, ids=[str(g) for g in STREAMED])
@pytest.mark.parametrize("act", ["none", "relu6"])
def test_large_fp32_output_streamed(isa, g, act):
    N, C, H, W, Co, k, s, p, d, groups = g
    x, w, ws, b = make(g)
    args = ((s, s), (p, p), (d, d), groups)
    for bias in (b, None):
        y = ops.int8_conv2d(x, ops.pack_conv_weight(w, groups), ws, bias, (k, k), *args, 0.03, None, act)
        assert ops.last_kernel("conv_store") == "stream"
        torch.testing.assert_close(y, ref.int8_conv2d(x, w, ws, bias, *args, 0.03, None, act), rtol=0, atol=0)
    if isa == "avx512_vnni":
        family = "conv_direct" if groups == 1 else "dwconv" if groups == C else "gconv"
        assert ops.last_kernel(family) == "avx512_vnni"
    ops.int8_conv2d(x[:, :, :8], ops.pack_conv_weight(w, groups), ws, b, (k, k), *args, 0.03, None, act)
    assert ops.last_kernel("conv_store") == "cached"  # a small output


def test_grouped_conv_min128_weights(vnni):
    # The narrow-group kernel on AVX2 steps with vpmaddubsw too: a weight with -128 in any group sends the
    # layer to the gathered rows per group there; the VNNI tiers keep the kernel. Both bit-exact.
    g = GROUPED[0]
    N, C, H, W, Co, k, s, p, d, groups = g
    x, w, ws, b = make(g)
    w[100, 2, 1, 1] = -128  # group 25
    y = ops.int8_conv2d(x, ops.pack_conv_weight(w, groups), ws, b, (k, k), (s, s), (p, p), (d, d), groups, 0.03, 0.05)
    assert_conv_path(vnni, g, min128=True)
    want = ref.int8_conv2d(x, w, ws, b, (s, s), (p, p), (d, d), groups, 0.03, 0.05)
    torch.testing.assert_close(y, want, rtol=0, atol=0)


def test_direct_conv_and_min128_weights(vnni):
    # AVX2's direct convolution multiplies with vpmaddubsw, exact only when no weight is -128: a weight
    # with -128 takes the gathered rows and the widening GEMM there. vpdpbusd (the VNNI tiers) is exact for
    # every weight. Both bit-exact.
    g = VNNI_DIRECT[0]
    N, C, H, W, Co, k, s, p, d = g
    x = torch.randn(N, C, H, W)
    w = torch.randint(-127, 128, (Co, C, k, k), dtype=torch.int8)
    ws, b, geo = torch.rand(Co) * 0.01 + 1e-3, torch.randn(Co), ((k, k), (s, s), (p, p), (d, d))
    for min128 in (False, True):
        if min128:
            w[3, 5, 1, 2] = -128
        y = ops.int8_conv2d(x, ops.pack_conv_weight(w, 1), ws, b, *geo, 1, 0.03, 0.05, "relu")
        assert ops.last_kernel("conv_direct") == ("" if min128 and vnni == "avx2" else vnni)
        assert ops.last_kernel("int8_gemm") == vnni
        torch.testing.assert_close(y, ref.int8_conv2d(x, w, ws, b, *geo[1:], 1, 0.03, 0.05, "relu"), rtol=0, atol=0)


# Depthwise shapes for the VNNI kernel's two tap groupings: row quads (kernel width <= 4, width dilation 1:
# taps (kh, 0..3) read 4 neighbouring pixels of one input row) and 4 consecutive taps per group (the rest).
# (N, C, H, W, kernel, stride, padding, dilation)
DEPTHWISE = [
    (2, 64, 9, 11, (3, 1), (1, 1), (1, 0), (1, 1)),     # quads: one real tap of 4
    (1, 32, 7, 9, (1, 4), (1, 1), (0, 2), (1, 1)),      # quads: 4 real taps, padding 2 on the width
    (2, 130, 12, 12, (3, 3), (2, 2), (1, 1), (2, 1)),   # quads: stride 2, height dilation 2, 3 channel blocks
    (1, 16, 5, 5, (5, 3), (1, 1), (2, 1), (1, 1)),      # quads: 5 input rows a pixel
    (1, 64, 3, 3, (3, 3), (1, 1), (1, 1), (1, 1)),      # quads: every row touches padding
    (1, 70, 6, 9, (2, 2), (1, 1), (0, 1), (1, 1)),      # paired quads (stride 1, KW <= 3): KW 2, odd output width
    (2, 96, 11, 10, (3, 3), (2, 2), (1, 1), (1, 1)),    # quads, stride 2: 3 blocks of 32 (AVX-VNNI), 64 + 32 (AVX-512)
    (1, 32, 9, 7, (5, 3), (1, 1), (2, 1), (2, 1)),      # paired quads, 5 rows, height dilation 2, one block of 32
    (1, 48, 8, 8, (3, 3), (1, 1), (1, 1), (1, 2)),      # groups: width dilation 2
    (1, 40, 9, 9, (3, 5), (1, 1), (1, 2), (1, 1)),      # groups: kernel width 5 (AVX-512: wide row quads)
    (2, 96, 13, 11, (7, 7), (1, 1), (3, 3), (1, 1)),    # ConvNeXt's 7 x 7: 2 quads a kernel row (AVX-512), 64 + 32
    (1, 70, 8, 17, (3, 8), (1, 1), (1, 0), (1, 1)),     # kernel width 8: both quads full, no width padding
    (1, 130, 10, 10, (7, 9), (1, 1), (3, 4), (2, 1)),   # width 9: 3 quads a row, height dilation 2
    (1, 32, 6, 5, (1, 16), (1, 1), (0, 8), (1, 1)),     # width 16, wider than the image: 4 quads, padding reads
    (1, 16, 9, 9, (7, 7), (2, 2), (3, 3), (1, 1)),      # 7 x 7 at stride 2: tap groups on every tier
]


def expected_dw_path(isa, C, k, s, d, OW, w_min128=False):
    """The way the depthwise kernel of tier `isa` takes (dwconv_path_avx512 in avx512_vnni.cc, dwconv_path_vnni
    in avx_vnni.cc, dwconv_path_avx2 in avx2.cc): row quads for width dilation 1 and kernel width <= 4 (paired at
    stride 1 and width <= 3), on the 256-bit tiers only for whole 32-channel blocks, and on AVX2 only with no
    weight of -128; else the per-pixel tap groups (AVX-512) or tap pairs (256-bit). AVX-512 runs 32 channels on
    the 256-bit row quads (dw_ymm_avx512.cc, "ymm_" paths); every tier runs kernel widths 5-16 at stride 1 on
    its row quads too (several a kernel row). The scalar kernel: ""."""
    tier = served_by("dwconv", isa)
    quads = d[1] == 1 and k[1] <= 4 and k[0] <= 16
    paired = s[1] == 1 and k[1] <= 3
    if tier == "avx512_vnni":
        if C == 32 and quads and k[0] * OW * 128 <= 4 << 20:  # one 32-channel block on 256-bit vectors
            return "ymm_row_quads_paired" if paired else "ymm_row_quads"
        # wide row quads: stride 1, kernel width 5-16, ceil(width / 4) quads a kernel row
        wide = d[1] == 1 and s[1] == 1 and 4 < k[1] <= 16 and k[0] <= 16
        nq = OW + 4 * ((k[1] + 3) // 4 - 1) if wide else OW
        quads = (quads or wide) and k[0] * ((C + 63) // 64) * nq * 256 <= 4 << 20
        return ("row_quads_paired" if paired else "row_quads") if quads else "tap_groups"
    if tier in ("avx_vnni", "avx2"):
        wide = d[1] == 1 and s[1] == 1 and 4 < k[1] <= 16 and k[0] <= 16  # the wide row quads, as on AVX-512
        nq = OW + 4 * ((k[1] + 3) // 4 - 1) if wide else OW
        quads = (quads or wide) and C % 32 == 0 and k[0] * (C // 32) * nq * 128 <= 4 << 20
        quads = quads and not (tier == "avx2" and w_min128)
        return ("row_quads_paired" if paired else "row_quads") if quads else "tap_pairs"
    return ""


@pytest.mark.parametrize("g", DEPTHWISE, ids=[str(g) for g in DEPTHWISE])
def test_depthwise_tap_groupings(isa, g):
    N, C, H, W, k, s, p, d = g
    OW = (W + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    w = torch.randint(-127, 128, (C, 1, *k), dtype=torch.int8)
    ws, b = torch.rand(C) * 0.01 + 1e-3, torch.randn(C)
    packed = ops.pack_conv_weight(w, C)
    x = torch.randn(N, C, H, W) * 2
    xq = torch.randint(-128, 128, (N, C, H, W), dtype=torch.int8)
    for inp, x_scale, out_scale, act in ((x, None, None, "none"), (x, 0.03, 0.05, "relu"), (xq, 0.05, 0.1, "relu6"),
                                         (xq, 0.05, 0.1, "hardswish"), (x, 0.03, None, "hardswish")):
        y = ops.int8_conv2d(inp, packed, ws, b, k, s, p, d, C, x_scale, out_scale, act)
        assert_served("dwconv", isa)
        assert ops.last_kernel("dwconv_path") == expected_dw_path(isa, C, k, s, d, OW)
        torch.testing.assert_close(y, ref.int8_conv2d(inp, w, ws, b, s, p, d, C, x_scale, out_scale, act),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("C", [64, 13])
def test_depthwise_weight_min128(isa, C):
    # A weight of -128 sends AVX2 from its row quads (vpsignb would overflow) to the tap pairs, bit-exact.
    w = torch.randint(-127, 128, (C, 1, 3, 3), dtype=torch.int8)
    w[0, 0, 1, 1] = -128
    ws, b = torch.rand(C) * 0.01 + 1e-3, torch.randn(C)
    xq = torch.randint(-128, 128, (2, C, 7, 6), dtype=torch.int8)
    packed = ops.pack_conv_weight(w, C)
    y = ops.int8_conv2d(xq, packed, ws, b, (3, 3), (1, 1), (1, 1), (1, 1), C, 0.05, 0.1, "none")
    assert_served("dwconv", isa)
    assert ops.last_kernel("dwconv_path") == expected_dw_path(isa, C, (3, 3), (1, 1), (1, 1), 6, w_min128=True)
    torch.testing.assert_close(y, ref.int8_conv2d(xq, w, ws, b, (1, 1), (1, 1), (1, 1), C, 0.05, 0.1, "none"),
                               rtol=0, atol=0)


def test_depthwise_thread_ranges_split_rows(isa):
    # Each thread's pixel range starts and ends inside output rows (row quads are built per range).
    w = torch.randint(-127, 128, (64, 1, 3, 3), dtype=torch.int8)
    ws = torch.rand(64) * 0.01
    x = torch.randn(3, 64, 29, 31)
    packed = ops.pack_conv_weight(w, 64)
    want = ref.int8_conv2d(x, w, ws, None, (1, 1), (1, 1), (1, 1), 64, 0.03, 0.05)
    before = torch.get_num_threads()
    try:
        for threads in (2, 1, 2):
            torch.set_num_threads(threads)
            y = ops.int8_conv2d(x, packed, ws, None, (3, 3), (1, 1), (1, 1), (1, 1), 64, 0.03, 0.05)
            torch.testing.assert_close(y, want, rtol=0, atol=0)
    finally:
        torch.set_num_threads(before)


def sqnr_db(a, b):
    return float(10 * torch.log10(a.pow(2).mean() / (a - b).pow(2).mean()))


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_module_close_to_float(groups):
    conv = nn.Conv2d(16, 32 if groups != 16 else 16, 3, padding=1, groups=groups)
    q = Int8Conv2d.from_float(conv)
    x = torch.randn(2, 16, 10, 10)
    with torch.inference_mode():
        assert sqnr_db(conv(x), q(x)) > 28


def test_module_activation_from_convact_and_state_dict():
    conv = ConvAct2d.from_conv(nn.Conv2d(8, 12, 3, padding="same"), "relu6")
    q = Int8Conv2d.from_float(conv, x_scale=0.03)
    assert q.activation == "relu6" and q.padding == (1, 1) and "relu6" in repr(q) and "static" in repr(q)
    x = torch.randn(1, 8, 6, 6)
    with torch.inference_mode():
        y = q(x)
    assert float(y.min()) >= 0 and float(y.max()) <= 6
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    fresh = Int8Conv2d(8, 12, 3, padding=1)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    assert fresh.activation == "relu6" and fresh.x_scale == 0.03
    with torch.inference_mode():
        torch.testing.assert_close(fresh(x), y, rtol=0, atol=0)


@pytest.mark.parametrize("groups,cin,other", [(1, 4, dict(in_channels=36, kernel_size=1)),
                                               (1, 4, dict(in_channels=12, kernel_size=(3, 1))),
                                               (8, 8, dict(in_channels=8, kernel_size=(1, 9), groups=8))],
                         ids=["1x1-same-K", "3x1-same-K", "depthwise-1x9"])
def test_state_dict_of_another_kernel_shape_refused(groups, cin, other):
    """A packed weight records [Cout, KH * KW * Cin / groups] only (depthwise: [KH * KW, C]), so a layer of
    another kernel shape with the same K used to load it and compute nonsense; the extra state's weight
    shape makes load_state_dict refuse it."""
    q = Int8Conv2d.from_float(nn.Conv2d(cin, 8, 3, groups=groups))
    fresh = Int8Conv2d(other.pop("in_channels"), 8, **other)
    with pytest.raises(ValueError, match=r"the checkpoint's conv weight is \[Cout, Cin/groups, KH, KW\] = "
                                         rf"\[8, {cin // groups}, 3, 3\], this layer's is"):
        fresh.load_state_dict(q.state_dict())


@pytest.mark.parametrize("groups,cin,cout", [(1, 13, 20), (4, 16, 12), (24, 24, 24)], ids=["dense", "grouped", "depthwise"])
def test_int8_weight_unpacks_every_layout(groups, cin, cout):
    conv = nn.Conv2d(cin, cout, 3, padding=1, groups=groups)
    layer = Int8Conv2d.from_float(conv)
    w_q, _ = ref.quantize_weight_per_channel(conv.weight)
    torch.testing.assert_close(layer.int8_weight(), w_q, rtol=0, atol=0)
    fresh = Int8Conv2d(cin, cout, 3, padding=1, groups=groups)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.packed_weight, layer.packed_weight)


@pytest.mark.parametrize("groups", [1, 4])
def test_load_recomputes_column_sums_and_pack_flags(groups):
    # As Int8Linear: a file's forged 7-bit flag (on weights holding +-127) and column sums are replaced by the
    # values packing the loaded weights gives.
    layer = Int8Conv2d.from_float(nn.Conv2d(16, 32, 3, padding=1, groups=groups), x_scale=0.05)
    packed = layer.state_dict()["packed_weight"].clone()
    packed[:, 14] |= 0x02  # format bit 17 of each group's header
    packed[:, 64:72] = 0   # its first two column sums
    fresh = Int8Conv2d(16, 32, 3, padding=1, groups=groups)
    fresh.load_state_dict({**layer.state_dict(), "packed_weight": packed})
    assert torch.equal(fresh.packed_weight, layer.packed_weight)
    x = torch.randn(2, 16, 9, 9)
    with torch.inference_mode():
        torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)


def test_state_dict_with_the_gpu_layout_loads_on_the_cpu():
    # A state_dict saved on a GPU and mapped to the CPU holds the CUDA layout (int8 [Cout, round_up(K, 16)],
    # rows ordered (kh, kw, c)): Int8Conv2d repacks it by layout.
    conv = nn.Conv2d(13, 20, 3, padding=1)
    layer = Int8Conv2d.from_float(conv)
    w_q = layer.int8_weight()
    k = 9 * 13
    gpu_layout = torch.zeros(20, -(-k // ops.CUDA_K_ALIGN) * ops.CUDA_K_ALIGN, dtype=torch.int8)
    gpu_layout[:, :k] = w_q.permute(0, 2, 3, 1).reshape(20, k)
    fresh = Int8Conv2d(13, 20, 3, padding=1)
    fresh.load_state_dict({**layer.state_dict(), "packed_weight": gpu_layout})
    torch.testing.assert_close(fresh.int8_weight(), w_q, rtol=0, atol=0)
    x = torch.randn(2, 13, 6, 6)
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)


def test_compile_and_export():
    model = nn.Sequential(Int8Conv2d.from_float(nn.Conv2d(3, 8, 3, padding=1), activation="relu"),
                          Int8Conv2d.from_float(nn.Conv2d(8, 8, 3, padding=1, groups=8)), nn.Flatten(),
                          nn.Linear(8 * 36, 4)).eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.inference_mode():
        eager = model(x)
        torch.testing.assert_close(torch.compile(model, fullgraph=True, backend="eager")(x), eager, rtol=0, atol=0)
    ep = torch.export.export(model, (x,))
    assert "fastinfer.int8_conv2d.default" in {str(n.target) for n in ep.graph.nodes}
    with torch.inference_mode():
        torch.testing.assert_close(ep.module()(x), eager, rtol=0, atol=0)


def test_opcheck_conv_ops():
    w = torch.randint(-127, 128, (12, 4, 3, 3), dtype=torch.int8)
    x = torch.randn(2, 8, 6, 6)
    packed = ops.pack_conv_weight(w, 2)
    torch.library.opcheck(torch.ops.fastinfer.pack_conv_weight.default, (w, 2))
    torch.library.opcheck(torch.ops.fastinfer.int8_conv2d.default,
                          (x, packed, torch.rand(12), torch.randn(12), [3, 3], [2, 2], [1, 1], [1, 1], 2, None, 0.1, "relu"))
    wl = torch.randint(-127, 128, (6, 10), dtype=torch.int8)
    torch.library.opcheck(torch.ops.fastinfer.int8_linear_static.default,
                          (torch.randn(3, 10), 0.05, ops.pack_int8_weight(wl), torch.rand(6), None, "relu", None))


def test_conv_bad_input():
    w = torch.randint(-127, 128, (8, 4, 3, 3), dtype=torch.int8)
    pw, ws = ops.pack_conv_weight(w, 1), torch.rand(8)
    x = torch.randn(1, 4, 6, 6)
    call = lambda x=x, pw=pw, **kw: ops.int8_conv2d(  # noqa: E731
        x, pw, ws, None, kw.get("k", (3, 3)), kw.get("s", (1, 1)), kw.get("p", (1, 1)), kw.get("d", (1, 1)),
        kw.get("g", 1), kw.get("xs"), kw.get("os"), kw.get("act", "none"))
    with pytest.raises(RuntimeError, match="x must be float32 .* or int8"):
        call(x=x.double())
    with pytest.raises(RuntimeError, match=r"x must be 4-D \[N, C, H, W\]"):
        call(x=torch.randn(4, 6, 6))
    with pytest.raises(RuntimeError, match="an int8 x needs its x_scale"):
        call(x=torch.zeros(1, 4, 6, 6, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="x_scale must be a positive finite"):
        call(xs=-1.0)
    with pytest.raises(RuntimeError, match="activation must be 'none', 'relu', 'relu6', 'gelu', 'hardswish' or "
                                           "'silu'"):
        call(act="swish")
    with pytest.raises(RuntimeError, match="is smaller than the dilated kernel"):
        call(x=torch.randn(1, 4, 2, 2), p=(0, 0))
    with pytest.raises(RuntimeError, match="stride must be >= 1"):
        call(s=(0, 1))
    with pytest.raises(RuntimeError, match="groups=3 must divide"):
        call(g=3)
    with pytest.raises(RuntimeError, match=r"packed_w holds a \[8, 36\] weight per group, expected \[8, 18\]"):
        ops.int8_conv2d(torch.randn(1, 2, 6, 6), pw, ws, None, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    with pytest.raises(RuntimeError, match="weight must have dtype Char"):
        ops.pack_conv_weight(w.float(), 1)
    with pytest.raises(ValueError, match="padding_mode='circular'"):
        Int8Conv2d.from_float(nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"))
    with pytest.raises(ValueError, match="padding='same' with an even effective kernel"):
        Int8Conv2d.from_float(nn.Conv2d(4, 4, 2, padding="same"))


def test_static_convs_chain_int8_exactly():
    # quantize(w8a8_static) lets an int8 conv feed the next one int8 through ReLU/MaxPool in a
    # Sequential; the result must equal the unchained pair bit for bit.
    import copy

    import fastinfer

    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 8, 1), nn.Flatten(),
                          nn.Linear(8 * 16, 5)).eval()
    calib = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    fused = fastinfer.fuse(model)
    chained = fastinfer.quantize(copy.deepcopy(fused), scheme="w8a8_static", calib_data=calib)
    assert chained.fastinfer_report.chained == ["0 -> 4", "4 -> 6"]
    assert chained[0].out_scale == chained[4].x_scale and chained[6].out_scale is None
    plain = copy.deepcopy(chained)
    for i in (0, 4):
        plain[i].out_scale = None
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(chained(x), plain(x), rtol=0, atol=0)
        assert chained[:4](x).dtype == torch.int8


# Int8Conv1d: (N, C, L, Cout, k, stride, padding, dilation, groups)
CONV1D_GEOMETRIES = [
    (2, 1, 400, 16, 10, 5, 0, 1, 1),     # an audio front end's first layer: one channel, wide stride
    (1, 3, 17, 13, 3, 1, 1, 1, 1),       # odd channels and length
    (4, 16, 39, 32, 3, 2, 1, 2, 1),      # stride + dilation
    (2, 12, 21, 24, 5, 1, 2, 1, 4),      # grouped
    (2, 32, 19, 32, 5, 1, 2, 1, 32),     # depthwise
    (1, 7, 9, 5, 9, 1, 0, 1, 1),         # kernel as long as the input: one output
    (3, 20, 11, 8, 1, 1, 0, 1, 1),       # pointwise
]


@pytest.mark.parametrize("g", CONV1D_GEOMETRIES)
@pytest.mark.parametrize("static", [False, True])
def test_conv1d_module_matches_reference(g, static):
    from fastinfer.nn import Int8Conv1d
    N, C, L, Cout, k, s, p, d, groups = g
    conv = nn.Conv1d(C, Cout, k, s, p, d, groups)
    x = torch.randn(N, C, L)
    x_scale = float(x.abs().max()) / 127 if static else None
    for isa in runnable_isas():
        with fastinfer.use_isa(isa), torch.inference_mode():
            q = Int8Conv1d.from_float(conv, x_scale=x_scale)
            y = q(x)
            w = q.int8_weight()
            assert w.shape == conv.weight.shape
            r = ref.int8_conv2d(x.unsqueeze(2), w.unsqueeze(2), q.weight_scale, q.bias, (1, s), (0, p), (1, d),
                                groups, x_scale, None, "none").squeeze(2)
            assert y.shape == conv(x).shape == r.shape
            assert torch.equal(y, r), isa
            assert sqnr_db(conv(x), y) > 28
            if static:  # a per-tensor static scale: an unbatched input gives the same rows
                assert torch.equal(q(x[0]), y[0])


def test_conv1d_quantize_state_dict_and_errors():
    from fastinfer.nn import Int8Conv1d
    model = nn.Sequential(nn.Conv1d(1, 16, 10, 5), nn.GELU(), nn.Conv1d(16, 32, 3, 2, padding=1),
                          nn.ReLU(), nn.Conv1d(32, 32, 3, padding="same"), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                          nn.Linear(32, 4)).eval()
    x = torch.randn(4, 1, 400)
    with torch.inference_mode():
        want = model(x)
    for scheme, kw in (("w8a8_dynamic", {}), ("w8a8_static", {"calib_data": [x]})):
        q = fastinfer.quantize(copy.deepcopy(model), scheme, **kw)
        assert q.fastinfer_report.swapped == ["0", "2", "4", "7"] and isinstance(q[4], Int8Conv1d)
        for attr in ("kernel_size", "stride", "padding", "dilation"):  # models compute lengths from them
            assert all(getattr(q[i], attr) == getattr(model[i], attr) for i in (0, 2)), attr
        assert q[4].padding == (1,) and model[4].padding == "same" and "kernel_size=(3,)" in repr(q[4])
        assert not q.fastinfer_report.chained  # 1-D outputs stay float
        with torch.inference_mode():
            y = q(x)
            assert sqnr_db(want, y) > 25
            assert torch.equal(fastinfer.load_quantized(q.state_dict(), copy.deepcopy(model))(x), y)
    q = Int8Conv1d.from_float(nn.Conv1d(4, 6, 3))
    with pytest.raises(ValueError, match=r"3-D \[N, C, L\] or unbatched 2-D"):
        q(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="expected an input with 4 channels"):
        q(torch.randn(1, 5, 9))
    valid = nn.Conv1d(4, 6, 3, padding="valid")
    assert Int8Conv1d.from_float(valid).padding == (0,)
    with pytest.raises(TypeError, match="must be a torch.nn.Conv1d"):
        Int8Conv1d.from_float(nn.Conv2d(4, 6, 3))
    with pytest.raises(ValueError, match="padding_mode"):
        Int8Conv1d.from_float(nn.Conv1d(4, 6, 3, padding=1, padding_mode="circular"))
    # 12 taps of 1 channel and 3 taps of 4 channels pack to the same shape: the weight's shape tells them apart
    with pytest.raises(ValueError, match=r"conv weight is \[Cout, Cin/groups, KH, KW\] = \[6, 4, 1, 3\]"):
        Int8Conv1d(1, 6, 12).load_state_dict(Int8Conv1d(4, 6, 3).state_dict())


def test_module_weight_bits_7():
    # Int8Conv2d with 7-bit weights: [-63, 63] levels, the reference's bits, saved in the state_dict, kept by
    # quantize and load_quantized; a one-group conv reports AVX2's shifted step.
    conv = nn.Conv2d(16, 24, 3, padding=1)
    q = Int8Conv2d.from_float(conv, weight_bits=7)
    w_ref, s_ref = ref.quantize_weight_per_channel(conv.weight, 7)
    assert torch.equal(q.int8_weight(), w_ref) and torch.equal(q.weight_scale, s_ref) and "7-bit" in repr(q)
    x = torch.randn(2, 16, 9, 9)
    with torch.inference_mode():
        y = q(x)
        assert ops.last_kernel("int8_gemm_step") == ("shifted" if CAPS["active"] == "avx2" else "")
    torch.testing.assert_close(y, ref.int8_conv2d(x, w_ref, s_ref, conv.bias.detach(), (1, 1), (1, 1), (1, 1), 1),
                               rtol=0, atol=0)
    fresh = Int8Conv2d(16, 24, 3, padding=1)
    fresh.load_state_dict(q.state_dict())
    assert fresh.weight_bits == 7
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(),
                          nn.Linear(8 * 49, 4))
    fastinfer.quantize(model, weight_bits=7)
    assert [m.weight_bits for m in model.modules() if isinstance(m, (Int8Conv2d, fastinfer.nn.Int8Linear))] == [7] * 3
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(),
                          nn.Linear(8 * 49, 4))
    loaded = fastinfer.load_quantized(buf, plain)
    x = torch.randn(2, 3, 9, 9)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded[0].weight_bits == 7 and loaded[2].weight_bits == 7
    with pytest.raises(ValueError, match="weight_bits must be 8 or 7"):
        Int8Conv2d.from_float(conv, weight_bits=4)


def test_load_refuses_a_header_of_another_shape():
    # A 1x1 conv, Cout 12 and K 10, its header rewritten to N 10, K 12 (same padded sizes, same bytes): the
    # load's repack would read the weights by that header and scramble them; it is refused instead.
    layer = Int8Conv2d.from_float(nn.Conv2d(10, 12, 1))
    packed = layer.state_dict()["packed_weight"].clone()
    packed[0, 16:32] = torch.tensor([10, 12], dtype=torch.int64).view(torch.uint8)
    with pytest.raises(ValueError, match=r"group 0's packed weight is \(10, 12\), expected \(12, 10\)"):
        Int8Conv2d(10, 12, 1).load_state_dict({**layer.state_dict(), "packed_weight": packed})


def test_gemm_step_cleared_by_an_empty_depthwise_conv():
    lin = fastinfer.nn.Int8Linear.from_float(nn.Linear(16, 16), weight_bits=7)
    dw = Int8Conv2d.from_float(nn.Conv2d(16, 16, 3, padding=1, groups=16))
    with torch.inference_mode():
        lin(torch.randn(2, 16))
        dw(torch.randn(0, 16, 8, 8))
    assert ops.last_kernel("int8_gemm_step") == ""


ASYMMETRIC_TAPS = [  # (N, C, H, W, Cout, kernel, padding, dilation, stride, what the direct kernel skips)
    (2, 16, 17, 17, 24, (1, 7), (0, 3), (1, 1), (1, 1), "computed"),  # Inception's 1x7: edges join the middle
    (1, 8, 10, 12, 16, (3, 3), (0, 8), (1, 8), (1, 1), "skipped_taps"),  # side padding only: columns alone
    (1, 12, 14, 11, 20, (3, 3), (6, 0), (6, 1), (1, 1), None),  # top and bottom only (OW 9: gathered rows)
    (2, 20, 16, 24, 12, (3, 5), (4, 10), (4, 5), (1, 2), "skipped_taps"),  # 3x5, stride 2 across: segments join
]


@pytest.mark.parametrize("g", ASYMMETRIC_TAPS, ids=[str(g) for g in ASYMMETRIC_TAPS])
def test_direct_conv_padded_taps_asymmetric_geometry(vnni, g):
    # Kernel, padding, dilation and stride that differ by axis: the boxes' rows and columns are found per axis.
    N, C, H, W, Co, k, p, d, s, how = g
    w = torch.randint(-127, 128, (Co, C, *k), dtype=torch.int8)
    packed, ws, b = ops.pack_conv_weight(w, 1), torch.rand(Co) * 0.01 + 1e-3, torch.randn(Co)
    x = torch.randn(N, C, H, W) * 2
    xq = torch.randint(-128, 128, (N, C, H, W), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    previous = ops.set_conv_padded_rows("always")
    try:
        for inp, x_scale, out_scale in ((x, 0.03, 0.05), (xq, 0.05, None)):
            ops.set_conv_padded_rows("always")
            y = ops.int8_conv2d(inp, packed, ws, b, k, s, p, d, 1, x_scale, out_scale, "relu")
            torch.testing.assert_close(y, ref.int8_conv2d(inp, w, ws, b, s, p, d, 1, x_scale, out_scale, "relu"),
                                       rtol=0, atol=0)
            if how is not None:
                assert ops.last_kernel("conv_direct") == vnni and ops.last_kernel("conv_padded_rows") == how
            ops.set_conv_padded_rows("never")
            assert torch.equal(y, ops.int8_conv2d(inp, packed, ws, b, k, s, p, d, 1, x_scale, out_scale, "relu"))
    finally:
        ops.set_conv_padded_rows(previous)
