"""The AMX-INT8 tile GEMM: it serves calls on AMX machines, its shape bucket, tile edges (M, N, K that miss
the 32 x 32 x 64 blocking), the streamed fp32 output, thread-count changes, and a forced VNNI fallback.
Oracle: fastinfer.reference (pure PyTorch, int64 products); integer results and the fp32 epilogue are
bit-exact. The whole reference suite also runs on the amx tier (conftest's isa fixture)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import fastinfer
from fastinfer import ops
from fastinfer import reference as ref

from conftest import (CAPS, CONV_EPILOGUE_EDGES, conv_epilogue_edge, padded_rows_mode, padded_taps_checked,
                      runnable_isas, valid_taps)

needs_amx = pytest.mark.skipif("amx" not in runnable_isas(),
                               reason=f"this CPU cannot run the AMX path ({CAPS.get('amx_note') or CAPS['detected']})")


def rand_i8(*shape):
    return torch.randint(-128, 128, shape, dtype=torch.int8)


@pytest.fixture
def amx_every_shape():
    """The amx path for every M (by default GEMMs of fewer than amx_min_rows rows take the VNNI kernel)."""
    previous = ops.set_amx_min_rows(1)
    try:
        with fastinfer.use_isa("amx") as active:
            assert active == "amx"
            yield
    finally:
        ops.set_amx_min_rows(previous)


def test_amx_is_implemented_and_reported():
    caps = fastinfer.cpu_capabilities()
    assert caps["implemented"] == "amx"
    if caps["detected"] == "amx":
        assert caps["active"] == "amx" and caps["os_amx"] and caps["amx_note"] == ""
    else:
        assert caps["amx_note"], "cpu_capabilities must say why AMX is not used"
    assert caps["amx_min_rows"] >= 1


@needs_amx
def test_amx_serves_by_default_and_small_m_takes_vnni():
    # The shape bucket: below amx_min_rows rows the VNNI kernel streams the weights; from there on, AMX.
    threshold = fastinfer.cpu_capabilities()["amx_min_rows"]
    b = rand_i8(64, 256)
    packed = ops.pack_int8_weight(b)
    for M, want in [(1, "avx512_vnni"), (threshold - 1, "avx512_vnni"), (threshold, "amx"), (200, "amx")]:
        if M < 1:
            continue
        a = rand_i8(M, 256)
        torch.testing.assert_close(ops.int8_mm(a, packed, 64), ref.int8_mm(a, b), rtol=0, atol=0)
        assert ops.last_kernel("int8_gemm") == want, (M, ops.last_kernel("int8_gemm"))


@needs_amx
@pytest.mark.parametrize("K", [1, 60, 64, 65, 252, 1000, 1024, 1088, 2052])
@pytest.mark.parametrize("N", [1, 16, 17, 33, 48, 96, 130])
def test_int8_mm_tile_edges(amx_every_shape, K, N):
    # K: below one tile step (64), exact steps, a tail of 1..15 quads; N: part of a 16-column block,
    # odd numbers of blocks (a single 16-column block in the last pair), several pairs.
    for M in (1, 15, 16, 17, 33, 47):
        a, b = rand_i8(M, K), rand_i8(N, K)
        torch.testing.assert_close(ops.int8_mm(a, ops.pack_int8_weight(b), N), ref.int8_mm(a, b), rtol=0, atol=0)
        assert ops.last_kernel("int8_gemm") == "amx"


@needs_amx
@pytest.mark.parametrize("M", list(range(1, 40)) + [63, 64, 65, 127, 128, 129, 255, 257, 300])
def test_int8_mm_m_sweep(amx_every_shape, M):
    # Fewer than 16 rows: the zero-padded copy; 17..31 and pass tails: shifted tile windows; > 128: passes.
    a, b = rand_i8(M, 200), rand_i8(70, 200)
    torch.testing.assert_close(ops.int8_mm(a, ops.pack_int8_weight(b), 70), ref.int8_mm(a, b), rtol=0, atol=0)


@needs_amx
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M,K,N", [(5, 64, 40), (40, 1000, 48), (130, 512, 1000), (1024, 256, 1024)])
def test_scaled_mm_fp_epilogue(amx_every_shape, M, K, N, out_dtype):
    # (1024, 256, 1024) fp32 is a 4 MiB output: the streamed (non-temporal) stores; N = 1000 leaves rows
    # that are not 64-byte aligned, so streamed and masked stores mix.
    a, b = rand_i8(M, K), rand_i8(N, K)
    a_scale, b_scale, bias = torch.rand(M) * 0.1 + 1e-3, torch.rand(N) * 0.1 + 1e-3, torch.randn(N)
    out = ops.int8_scaled_mm(a, a_scale, ops.pack_int8_weight(b), b_scale, bias, out_dtype)
    torch.testing.assert_close(out, ref.int8_scaled_mm(a, a_scale, b, b_scale, bias, out_dtype), rtol=0, atol=0)
    assert ops.last_kernel("int8_gemm") == "amx"


@needs_amx
@pytest.mark.parametrize("N", [1001, 1024])
def test_streamed_output_large_and_unaligned(amx_every_shape, N):
    # Outputs of 1 MiB and more take non-temporal stores where a row's 16 values fill an aligned line;
    # N = 1001 (a 4004-byte row stride) mixes them with ordinary masked stores.
    M, K = 1100, 128
    a, b = rand_i8(M, K), rand_i8(N, K)
    a_scale, b_scale = torch.rand(M), torch.rand(N)
    packed = ops.pack_int8_weight(b)
    out = ops.int8_scaled_mm(a, a_scale, packed, b_scale, None, torch.float32)
    torch.testing.assert_close(out, ref.int8_scaled_mm(a, a_scale, b, b_scale, None), rtol=0, atol=0)
    torch.testing.assert_close(ops.int8_mm(a, packed, N), ref.int8_mm(a, b), rtol=0, atol=0)


@needs_amx
@pytest.mark.parametrize("activation", ["none", "relu", "relu6"])
def test_linear_static_int8_out_and_activation(amx_every_shape, activation):
    M, K, N = 70, 300, 90
    x, w = torch.randn(M, K), torch.randint(-127, 128, (N, K), dtype=torch.int8)
    w_scale, bias = torch.rand(N) * 0.01, torch.randn(N)
    out = ops.int8_linear_static(x, 0.02, ops.pack_int8_weight(w), w_scale, bias, activation, 0.05)
    expect = ref.int8_linear_static(x, 0.02, w, w_scale, bias, activation, 0.05)
    torch.testing.assert_close(out, expect, rtol=0, atol=0)
    assert ops.last_kernel("int8_gemm") == "amx"


@needs_amx
def test_thread_count_changes_between_calls():
    # Tile state is configured per thread per call: a pool that grows or shrinks still runs correctly.
    a, b = rand_i8(300, 700), rand_i8(200, 700)
    packed, want = ops.pack_int8_weight(b), ref.int8_mm(a, b)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            torch.testing.assert_close(ops.int8_mm(a, packed, 200), want, rtol=0, atol=0)
            assert ops.last_kernel("int8_gemm") == "amx"
    finally:
        torch.set_num_threads(before)


@needs_amx
def test_interleaved_with_onednn_amx():
    # torch's oneDNN int8 kernels configure the same tile registers on the same threads; each library's
    # calls must still be right when the other ran in between (we load our config per call, and release).
    M, K, N = 64, 256, 96
    a, b = rand_i8(M, K), torch.randint(-127, 128, (N, K), dtype=torch.int8)
    packed, want = ops.pack_int8_weight(b), ref.int8_mm(a, b)
    xu = (a.to(torch.int16) + 128).to(torch.uint8)
    wp = torch.ops.onednn.qlinear_prepack(b, [M, K])
    ones = torch.ones(N)
    onednn = lambda: torch.ops.onednn.qlinear_pointwise(xu, 1.0, 128, wp, ones, torch.zeros(N, dtype=torch.long),  # noqa: E731
                                                        None, 1.0, 0, torch.float32, "none", [], "")
    od_want = onednn()
    torch.testing.assert_close(od_want, want.double().float(), rtol=0, atol=0)
    for _ in range(3):
        torch.testing.assert_close(ops.int8_mm(a, packed, N), want, rtol=0, atol=0)
        torch.testing.assert_close(onednn(), od_want, rtol=0, atol=0)


def test_set_amx_min_rows_checks_and_restores():
    with pytest.raises(ValueError, match="rows must be an int >= 1"):
        ops.set_amx_min_rows(0)
    with pytest.raises(ValueError, match="rows must be an int >= 1"):
        ops.set_amx_min_rows(2.5)
    previous = ops.set_amx_min_rows(40)
    try:
        assert fastinfer.cpu_capabilities()["amx_min_rows"] == 40
    finally:
        assert ops.set_amx_min_rows(previous) == 40


def _served_in_subprocess(env_extra, M):
    env = dict(os.environ, **env_extra)
    code = ("import json, torch, fastinfer; from fastinfer import ops, reference as ref;"
            f"a = torch.randint(-128, 128, ({M}, 300), dtype=torch.int8);"
            "b = torch.randint(-128, 128, (40, 300), dtype=torch.int8);"
            "ok = torch.equal(ops.int8_mm(a, ops.pack_int8_weight(b), 40), ref.int8_mm(a, b));"
            "c = fastinfer.cpu_capabilities();"
            "print(json.dumps({'served': ops.last_kernel('int8_gemm'), 'ok': ok, 'active': c['active'],"
            " 'amx_min_rows': c['amx_min_rows']}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_amx
def test_forced_vnni_fallback_env():
    res = _served_in_subprocess({"FASTINFER_ISA": "avx512_vnni"}, 200)
    assert res == {"served": "avx512_vnni", "ok": True, "active": "avx512_vnni", "amx_min_rows": res["amx_min_rows"]}


@needs_amx
def test_amx_min_rows_env():
    res = _served_in_subprocess({"FASTINFER_AMX_MIN_ROWS": "300"}, 200)
    assert res["amx_min_rows"] == 300 and res["served"] == "avx512_vnni" and res["ok"]
    res = _served_in_subprocess({"FASTINFER_AMX_MIN_ROWS": "1"}, 3)
    assert res["amx_min_rows"] == 1 and res["served"] == "amx" and res["ok"]
    res = _served_in_subprocess({"FASTINFER_AMX_MIN_ROWS": "zero"}, 200)  # not a number: the default
    assert res["amx_min_rows"] == 9 and res["served"] == "amx"


# ---- the direct tile convolution (padded NHWC input read in place): C % 64 == 0, groups 1; tiles run over
# the padded width (stride 1, OW >= 12), within output rows (other strides, OW >= 16) or over stride planes
# (N, C, H, W, Cout, k, stride, pad, dilation)
DIRECT = [
    (1, 64, 16, 16, 64, 3, 1, 1, 1),     # padded width 18: tiles cross output rows
    (2, 64, 9, 21, 40, 3, 1, 1, 1),      # batch 2: windows shifted back at each image's end; Cout off the pairs
    (1, 128, 7, 33, 96, 3, 1, 1, 1),
    (3, 64, 5, 40, 17, 5, 1, 2, 1),      # 5x5, batch 3, Cout = 17
    (2, 64, 12, 12, 64, 3, 1, 1, 1),     # OW = 12, the narrowest taken
    (2, 64, 1, 14, 32, 3, 1, 1, 1),      # one output row of 16 padded pixels: the last image reads its slack
    (1, 64, 10, 37, 64, 3, 2, 1, 1),     # stride 2, OW = 19: tiles within output rows (2 * C bytes apart)
    (1, 64, 12, 24, 32, 3, 1, 2, 2),     # dilation 2
    (1, 192, 6, 18, 80, 1, 1, 1, 1),     # 1x1 with padding
    (2, 64, 18, 20, 48, 7, 1, 3, 1),     # 7x7
    (1, 64, 4, 18, 64, 3, 1, 0, 1),      # no padding (the slack still needs a copy)
    # Channels not a multiple of 64: row segments (a kernel row's KW * C bytes, then bytes that meet zero weight
    # rows, up to whole tile steps); within output rows at stride 2 (fewer than 16 channels; tile rows SW * C
    # bytes apart), over the padded width at stride 1
    (2, 3, 40, 40, 64, 7, 2, 3, 1),      # an RGB stem: 7x7 stride 2, 21 bytes a kernel row, 6 between pixels
    (1, 13, 12, 30, 17, 5, 1, 2, 1),     # 65 bytes a kernel row: two tile steps; Cout 17
    (2, 1, 12, 18, 16, 3, 1, 0, 1),      # one channel, unpadded: 1 byte between tile rows
    (1, 6, 6, 40, 40, 5, 2, 2, 1),       # 5x5 stride 2, OW 20: the last tile shifted back
]
# Over the padded width with row segments (stride 1, OW >= 12, C % 64 != 0): Inception v3's and GoogLeNet's
# layers of 32-192 channels
SEGMENTS_PADDED_WIDTH = [
    (2, 32, 20, 21, 64, 3, 1, 1, 1),     # 3x3 of 32 channels: 96 bytes a kernel row in 2 tile steps
    (1, 48, 14, 13, 64, 5, 1, 2, 1),     # 5x5 of 48: 240 bytes in 4 steps; OW 13
    (2, 80, 15, 15, 40, 3, 1, 0, 1),     # unpadded, Cout 40
    (1, 160, 17, 17, 33, 3, 1, 1, 1),    # 160 channels: 480 bytes in 8 steps; Cout 33
    (1, 96, 12, 16, 96, 3, 1, 1, 1),
    (3, 16, 9, 28, 32, 5, 1, 2, 1),      # 16 channels, batch 3
]
# (N, C, H, W, Cout, (kh, kw), (ph, pw)): Inception's 1x7 and 7x1 of 160 channels at 17 x 17
SEGMENTS_ASYMMETRIC = [(2, 160, 17, 17, 48, (1, 7), (0, 3)), (2, 160, 17, 17, 48, (7, 1), (3, 0)),
                       (1, 32, 13, 19, 17, (3, 5), (1, 2))]
# Stride planes (stride s > 1, 12 <= OW < 16): s * s planes of the padded input, tiles over a plane's width
PLANES = [
    (2, 64, 28, 28, 64, 3, 2, 1, 1),     # ResNet's stride-2 3x3 at 28 -> 14: planes 15 wide, one column dropped
    (1, 128, 29, 29, 40, 3, 2, 1, 1),    # odd padded width 31: phase 1's last plane column is past it (zero)
    (1, 64, 27, 27, 17, 5, 2, 2, 1),     # 5x5: taps 2 plane rows / columns apart; Cout 17
    (1, 64, 28, 28, 32, 4, 2, 1, 1),     # an even kernel
    (1, 64, 29, 29, 64, 3, 2, 0, 1),     # no padding
    (1, 64, 40, 40, 32, 3, 3, 1, 1),     # stride 3: 9 planes
    (3, 64, 5, 24, 64, 3, 2, 1, 1),      # 3 output rows of 12, batch 3
    (1, 64, 2, 26, 16, 3, 2, 1, 1),      # one output row of 13: a window past the last plane row (slack)
]


@needs_amx
@pytest.mark.parametrize("mode", [(None, None, "none"), (0.03, None, "relu"), (0.02, 0.04, "relu6"),
                                  (0.02, 0.04, "relu")],
                         ids=["dynamic", "static-relu", "int8out-relu6", "int8out-relu-folded"])
@pytest.mark.parametrize("g", DIRECT + PLANES, ids=[str(g) for g in DIRECT + PLANES])
def test_direct_conv_matches_reference(amx_every_shape, g, mode):
    N, C, H, W, Co, k, s, p, d = g
    x_scale, out_scale, act = mode
    x = torch.randn(N, C, H, W) * 2
    w = torch.randint(-127, 128, (Co, C, k, k), dtype=torch.int8)
    ws, b = torch.rand(Co) * 0.01 + 1e-3, torch.randn(Co)
    y = ops.int8_conv2d(x, ops.pack_conv_weight(w, 1), ws, b, (k, k), (s, s), (p, p), (d, d), 1, x_scale,
                        out_scale, act)
    assert ops.last_kernel("conv_direct") == "amx" and ops.last_kernel("int8_gemm") == "amx"
    assert (ops.last_kernel("conv_direct_mode") == "stride_planes") == (g in PLANES)
    r = ref.int8_conv2d(x, w, ws, b, (s, s), (p, p), (d, d), 1, x_scale, out_scale, act)
    torch.testing.assert_close(y, r, rtol=0, atol=0)


@needs_amx
@pytest.mark.parametrize("g,mode", [(DIRECT[1], "padded_width"), (DIRECT[6], "rows"), (DIRECT[11], "row_segments"),
                                    (PLANES[0], "stride_planes"), ((8, 256, 7, 7, 64, 3, 1, 1, 1), ""),
                                    ((1, 64, 32, 32, 64, 3, 1, 12, 12), "rows"),
                                    ((1, 64, 32, 32, 64, 3, 1, 36, 36), "rows_in_place")])
def test_direct_conv_mode_is_reported(amx_every_shape, g, mode):
    N, C, H, W, Co, k, s, p, d = g
    w = torch.randint(-127, 128, (Co, C, k, k), dtype=torch.int8)
    ops.int8_conv2d(torch.randn(N, C, H, W), ops.pack_conv_weight(w, 1), torch.rand(Co) * 0.01, None, (k, k), (s, s),
                    (p, p), (d, d), 1, 0.03)
    assert ops.last_kernel("conv_direct_mode") == mode
    assert ops.last_kernel("conv_direct") == ("amx" if mode else "")


@needs_amx
@pytest.mark.parametrize("g", [DIRECT[1], DIRECT[6], DIRECT[10], (2, 128, 9, 40, 64, 1, 2, 0, 1),
                               (1, 64, 11, 37, 32, 3, 2, 0, 1), PLANES[0], PLANES[4]],
                         ids=["padded-width", "rows", "unpadded", "1x1-stride2-in-place", "3x3-stride2-in-place",
                              "stride-planes", "stride-planes-unpadded"])
def test_direct_conv_int8_input(amx_every_shape, g):
    # The input ends at a PROT_NONE page. Tiles within output rows over an unpadded int8 input read it where
    # it is (no slab), and a read past its last pixel would fault.
    N, C, H, W, Co, k, s, p, d = g
    rows, region = _int8_rows_before_a_guard_page(N * H * W, C)
    xq = rows.view(N, H, W, C).permute(0, 3, 1, 2)  # channels_last over the same bytes
    w = torch.randint(-127, 128, (Co, C, k, k), dtype=torch.int8)
    ws = torch.rand(Co) * 0.01 + 1e-3
    y = ops.int8_conv2d(xq, ops.pack_conv_weight(w, 1), ws, None, (k, k), (s, s), (p, p), (d, d), 1, 0.05, 0.1)
    assert ops.last_kernel("conv_direct") == "amx"
    torch.testing.assert_close(y, ref.int8_conv2d(xq, w, ws, None, (s, s), (p, p), (d, d), 1, 0.05, 0.1),
                               rtol=0, atol=0)


def _conv_case(N, C, H, W, Co, k, s, p, d=(1, 1)):
    w = torch.randint(-127, 128, (Co, C, *k), dtype=torch.int8)
    return w, ops.pack_conv_weight(w, 1), torch.rand(Co) * 0.01 + 1e-3, torch.randn(Co)


@needs_amx
@pytest.mark.parametrize("g", SEGMENTS_PADDED_WIDTH + SEGMENTS_ASYMMETRIC,
                         ids=[str(g) for g in SEGMENTS_PADDED_WIDTH + SEGMENTS_ASYMMETRIC])
def test_row_segments_over_the_padded_width(amx_every_shape, g):
    # Channels that are not a multiple of 64 at stride 1: each kernel row one K segment of whole tile steps, the
    # tiles over the padded width. The reference's bits for fp32 (dynamic, static) and int8 inputs.
    if len(g) == 9:
        N, C, H, W, Co, k, s, p, _ = g
        k, p = (k, k), (p, p)
    else:
        N, C, H, W, Co, k, p = g
    w, packed, ws, b = _conv_case(N, C, H, W, Co, k, 1, p)
    x = torch.randn(N, C, H, W) * 2
    xq = rand_i8(N, C, H, W).contiguous(memory_format=torch.channels_last)
    for inp, x_scale, out_scale, act in ((x, None, None, "none"), (x, 0.03, None, "relu"), (xq, 0.05, 0.1, "relu6"),
                                         (xq, 0.05, None, "none")):
        y = ops.int8_conv2d(inp, packed, ws, b, k, (1, 1), p, (1, 1), 1, x_scale, out_scale, act)
        assert ops.last_kernel("conv_direct") == "amx"
        assert ops.last_kernel("conv_direct_mode") == "padded_width_row_segments"
        torch.testing.assert_close(y, ref.int8_conv2d(inp, w, ws, b, (1, 1), p, (1, 1), 1, x_scale, out_scale, act),
                                   rtol=0, atol=0)


@needs_amx
def test_row_segment_weight_is_made_again_for_a_new_weight(amx_every_shape):
    # The row-segment copy of a packed weight is made once and kept while the weight lives: an in-place write
    # (load_state_dict's copy_), a weight freed and another made in its place, and one made in inference mode
    # (no version counter: repacked each call) all get their own weight's result.
    N, C, H, W, Co = 1, 32, 14, 14, 24
    geo = ((3, 3), (1, 1), (1, 1), (1, 1))
    x = rand_i8(N, C, H, W).contiguous(memory_format=torch.channels_last)

    def check(packed, w):
        y = ops.int8_conv2d(x, packed, ws, None, *geo, 1, 0.05, 0.1)
        assert ops.last_kernel("conv_direct_mode") == "padded_width_row_segments"
        torch.testing.assert_close(y, ref.int8_conv2d(x, w, ws, None, *geo[1:], 1, 0.05, 0.1), rtol=0, atol=0)

    w1, packed, ws, _ = _conv_case(N, C, H, W, Co, (3, 3), 1, (1, 1))
    check(packed, w1)
    check(packed, w1)  # the kept copy
    w2 = torch.randint(-127, 128, w1.shape, dtype=torch.int8)
    packed.copy_(ops.pack_conv_weight(w2, 1))
    check(packed, w2)
    del packed
    for _ in range(3):  # new weights, likely where the freed ones were
        w3 = torch.randint(-127, 128, w1.shape, dtype=torch.int8)
        check(ops.pack_conv_weight(w3, 1), w3)
    with torch.inference_mode():
        w4 = torch.randint(-127, 128, w1.shape, dtype=torch.int8)
        packed4 = ops.pack_conv_weight(w4, 1)
        check(packed4, w4)
        packed4.copy_(ops.pack_conv_weight(w1, 1))
        check(packed4, w1)


# ---- taps in the zero padding on AMX's tiles within output rows (conv_ops.cpp: tile_segments,
# row_boxes_beat_padded_width, PaddedTaps): each output row runs only the kernel rows that read the image, in
# column segments that run only their kernel columns; at stride 1 they replace the padded-width tiles where they
# make fewer tile products. (N, C, H, W, Cout, k, stride, pad, dilation)
AMX_TAPS = [
    (1, 64, 32, 32, 64, 3, 1, 12, 12),   # DeepLabV3's ASPP, dilation 12: whole rows of columns, kernel rows skipped
    (1, 64, 32, 32, 64, 3, 1, 24, 24),   # dilation 24: segments [0, 8) [8, 24) [24, 32), tiles reading beside them
    (2, 64, 32, 32, 40, 3, 1, 36, 36),   # dilation 36: the centre tap alone, read in place; Cout off the pairs
    (1, 128, 32, 32, 64, 3, 1, 4, 4),    # dilation 4: the border rows skip a kernel row
    (2, 64, 32, 32, 80, 3, 1, 2, 2),
    (1, 64, 16, 16, 64, 3, 1, 1, 1),     # OW 16, padding 1: one tile a row beats 18 padded pixels
    (1, 64, 20, 40, 33, 5, 1, 6, 3),     # 5x5 dilation 3
    (1, 64, 19, 17, 16, 3, 1, 8, 8),     # OW 17: a tile shifted back
    (2, 64, 20, 20, 48, 3, 1, 10, 10),   # edge segments of 10 pixels, batch 2
    (1, 64, 21, 18, 16, 3, 1, 9, 9),
    (1, 64, 9, 40, 16, 3, 1, 20, 10),    # padding 20: output rows and columns of padding alone
    (1, 64, 10, 37, 64, 3, 2, 1, 1),     # stride 2 (tiles within rows at any cost): the top row skips one
    (1, 64, 20, 60, 32, 3, 2, 8, 8),     # stride 2, dilation 8
    (3, 64, 8, 32, 24, 3, 1, 24, 24),    # batch 3, the middle kernel row alone: guards around the images
]


def amx_tap_plan(g):
    """What the direct convolution of g does on AMX under "auto" (conv_ops.cpp, written again from its
    comments): the mode ("rows" or "padded_width" at stride 1), what it reports for the padding ("computed",
    "skipped": kernel rows only, "skipped_taps"), and whether every tap it runs lies in the image (an input then
    read in place)."""
    N, C, H, W, Co, k, s, p, d = g
    T = 16
    oh_n, ow_n = (H + 2 * p - d * (k - 1) - 1) // s + 1, (W + 2 * p - d * (k - 1) - 1) // s + 1
    rows = [valid_taps(r * s - p, d, k, H) for r in range(oh_n)]
    cols = [valid_taps(c * s - p, d, k, W) for c in range(ow_n)]
    exact = None not in rows and None not in cols
    rows = [r or (0, k) for r in rows]
    segs = [(0, ow_n, 0, k)]
    if None not in cols:
        runs = []  # columns of equal valid kernel columns
        for c, v in enumerate(cols):
            if runs and runs[-1][2:] == list(v):
                runs[-1][1] = c + 1
            else:
                runs.append([c, c + 1, *v])
        best = {0: (0, [])}  # the fewest tile products over runs [0, j), and their segments
        for j in range(1, len(runs) + 1):
            options = []
            for i in range(j):
                k0, k1 = min(r[2] for r in runs[i:j]), max(r[3] for r in runs[i:j])
                cost = best[i][0] + -(-(runs[j - 1][1] - runs[i][0]) // T) * (k1 - k0)
                options.append((cost, i, (runs[i][0], runs[j - 1][1], k0, k1)))
            cost, i, seg = min(options)  # ties: the widest last segment
            best[j] = (cost, best[i][1] + [seg])
        segs = best[len(runs)][1]
        exact = exact and all(any(sg[0] <= r[0] and r[1] <= sg[1] and list(sg[2:]) == r[2:] for sg in segs)
                              for r in runs)
    products = sum(-(-(sg[1] - sg[0]) // T) * (sg[3] - sg[2]) * (r[1] - r[0]) for r in rows for sg in segs)
    if s == 1:
        padded = -(-oh_n * (W + 2 * p) // T) * k * k
        mode = "rows" if p > 0 and ow_n >= T and products < padded else "padded_width"
    else:
        mode = "rows"
    boxes = {(*r, *sg[2:]) for r in rows for sg in segs} - {(0, k, 0, k)}
    if mode != "rows" or p == 0 or not boxes or products >= -(-ow_n // T) * k * k * oh_n:
        return mode, "computed", False
    return mode, ("skipped_taps" if any(b[2] > 0 or b[3] < k for b in boxes) else "skipped"), exact


@needs_amx
@pytest.mark.parametrize("g", AMX_TAPS, ids=[str(g) for g in AMX_TAPS])
def test_direct_conv_skips_padded_taps(amx_every_shape, g):
    # The reference's bits, fp32 (NCHW and channels_last) and int8 inputs, 1 and 2 threads, and the same bits as
    # computing every tap ("never": the tiles over the padded width, or within rows with every tap). An input
    # whose taps then all lie in the image is read in place ("rows_in_place": an fp32 one quantized once), and
    # no other.
    N, C, H, W, Co, k, s, p, d = g
    w = torch.randint(-127, 128, (Co, C, k, k), dtype=torch.int8)
    packed, ws, b = ops.pack_conv_weight(w, 1), torch.rand(Co) * 0.01 + 1e-3, torch.randn(Co)
    geo = ((k, k), (s, s), (p, p), (d, d))
    x = torch.randn(N, C, H, W) * 2
    xq = rand_i8(N, C, H, W).contiguous(memory_format=torch.channels_last)
    mode, how, exact = amx_tap_plan(g)
    def served():
        assert ops.last_kernel("conv_direct") == "amx"
        assert ops.last_kernel("conv_padded_rows") == how
        assert ops.last_kernel("conv_direct_mode") == ("rows_in_place" if exact else mode)

    def computed():
        assert ops.last_kernel("conv_direct_mode") == ("padded_width" if s == 1 else "rows")

    with padded_rows_mode("auto"):
        padded_taps_checked(x, xq, "auto", packed, w, ws, b, geo, served, computed)


def test_amx_tap_plan_oracle_sees_every_case():
    # The test's model must itself find each outcome, or the test above would pass on a kernel that never
    # skipped a column or never read in place.
    seen = {amx_tap_plan(g) for g in AMX_TAPS}
    assert {("rows", "skipped_taps", True), ("rows", "skipped", False), ("rows", "skipped_taps", False)} <= seen
    assert amx_tap_plan(AMX_TAPS[1]) == ("rows", "skipped_taps", True)
    assert amx_tap_plan((1, 64, 56, 56, 64, 3, 1, 1, 1)) == ("padded_width", "computed", False)  # ResNet's l1
    assert amx_tap_plan((1, 64, 28, 28, 64, 3, 1, 1, 1))[0] == "padded_width"


@needs_amx
@pytest.mark.parametrize("after", [True, False], ids=["page-after", "page-before"])
@pytest.mark.parametrize("g", [AMX_TAPS[1], AMX_TAPS[2], AMX_TAPS[13]], ids=["d24-guarded", "d36", "batch3"])
def test_padded_taps_in_place_reads_inside_the_input(amx_every_shape, g, after):
    # An int8 input read in place ends at (starts after) a PROT_NONE page. Tiles of a segment narrower than 16
    # pixels read pixels beside it, off the row: before the first image's first row or past the last image's
    # last, the input is read from a copy with guard bytes, so nothing outside it is read.
    N, C, H, W, Co, k, s, p, d = g
    assert amx_tap_plan(g)[2]  # read in place
    rows, region = _int8_rows_before_a_guard_page(N * H * W, C, after)
    xq = rows.view(N, H, W, C).permute(0, 3, 1, 2)  # channels_last over the same bytes
    w = torch.randint(-127, 128, (Co, C, k, k), dtype=torch.int8)
    ws = torch.rand(Co) * 0.01 + 1e-3
    geo = ((k, k), (s, s), (p, p), (d, d))
    y = ops.int8_conv2d(xq, ops.pack_conv_weight(w, 1), ws, None, *geo, 1, 0.05, 0.1)
    assert ops.last_kernel("conv_direct_mode") == "rows_in_place"
    torch.testing.assert_close(y, ref.int8_conv2d(xq, w, ws, None, *geo[1:], 1, 0.05, 0.1), rtol=0, atol=0)
    del region


@needs_amx
@pytest.mark.parametrize("case", CONV_EPILOGUE_EDGES)
@pytest.mark.parametrize("g", [DIRECT[0], DIRECT[3], PLANES[2], (8, 256, 7, 7, 64, 3, 1, 1, 1)],
                         ids=["direct", "cout17", "stride-planes", "gathered"])
def test_conv_folded_epilogue_edges(amx_every_shape, g, case):
    N, C, H, W, Co, k, s, p, d = g
    torch.manual_seed(1)
    x = torch.randn(N, C, H, W) * 2
    w = torch.randint(-127, 128, (Co, C, k, k), dtype=torch.int8)
    ws, b = torch.rand(Co) * 0.01 + 1e-3, torch.randn(Co)
    x_scale, out_scale = conv_epilogue_edge(case, x, ws, b)
    packed = ops.pack_conv_weight(w, 1)
    for osc in (out_scale, None):
        y = ops.int8_conv2d(x, packed, ws, b, (k, k), (s, s), (p, p), (d, d), 1, x_scale, osc, "relu")
        assert ops.last_kernel("int8_gemm") == "amx"
        r = ref.int8_conv2d(x, w, ws, b, (s, s), (p, p), (d, d), 1, x_scale, osc, "relu")
        torch.testing.assert_close(y, r, rtol=0, atol=0, equal_nan=True)
    if case == "saturating":
        assert y.abs().max() > 2 ** 31 and (ops.int8_conv2d(x, packed, ws, b, (k, k), (s, s), (p, p), (d, d), 1, x_scale,
                                                             out_scale) == -127).any()


@needs_amx
@pytest.mark.parametrize("shape,stride", [((2, 64, 56, 56), 1), ((5, 128, 28, 28), 2)], ids=["padded-width", "planes"])
def test_direct_conv_large_fp32_output_and_threads(amx_every_shape, shape, stride):
    # 56 x 56 x 64 x 4 bytes: streamed stores; then 1 thread, then 2, then 3 (5 images: items that do not
    # split evenly): the same result.
    x = torch.randn(*shape)
    C = shape[1]
    w = torch.randint(-127, 128, (64, C, 3, 3), dtype=torch.int8)
    ws = torch.rand(64) * 0.01
    packed = ops.pack_conv_weight(w, 1)
    want = ref.int8_conv2d(x, w, ws, None, (stride, stride), (1, 1), (1, 1), 1, 0.03)
    before = torch.get_num_threads()
    try:
        for threads in (2, 1, 2, 3):
            torch.set_num_threads(threads)
            y = ops.int8_conv2d(x, packed, ws, None, (3, 3), (stride, stride), (1, 1), (1, 1), 1, 0.03)
            assert ops.last_kernel("conv_direct") == "amx"
            torch.testing.assert_close(y, want, rtol=0, atol=0)
    finally:
        torch.set_num_threads(before)


@needs_amx
@pytest.mark.parametrize("g,stride", [((1, 64, 8, 12, 32, 3, 1, 1, 1), (1, 2)),   # unequal strides, OW < 16
                                      ((8, 256, 7, 7, 64, 3, 1, 1, 1), (1, 1)),   # OW = 7: gathered rows are faster
                                      ((1, 48, 8, 40, 32, 3, 1, 1, 1), (2, 2)),   # C % 64 != 0 at stride 2
                                      ((1, 48, 8, 20, 32, 3, 1, 2, 2), (1, 1)),   # C % 64 != 0, dilated
                                      ((2, 64, 8, 8, 32, 1, 1, 0, 1), (1, 1)),    # plain 1x1: a GEMM on the rows
                                      ((1, 64, 28, 28, 32, 1, 2, 0, 1), (2, 2)),  # 1x1 s2, OW 14: 3 planes unread
                                      ((1, 64, 28, 28, 32, 3, 2, 2, 2), (2, 2)),  # stride 2 with dilation, OW 14
                                      ((1, 64, 13, 13, 32, 3, 2, 1, 1), (2, 2))],  # stride 2, OW 7
                         ids=["strides", "narrow", "channels-stride2", "channels-dilated", "1x1", "1x1-stride2",
                              "dilated-stride2",
                              "stride2-narrow"])
def test_direct_conv_not_taken_where_it_cannot_run(amx_every_shape, g, stride):
    N, C, H, W, Co, k, _, p, d = g
    x = torch.randn(N, C, H, W)
    w = torch.randint(-127, 128, (Co, C, k, k), dtype=torch.int8)
    ws = torch.rand(Co) * 0.01
    y = ops.int8_conv2d(x, ops.pack_conv_weight(w, 1), ws, None, (k, k), stride, (p, p), (d, d), 1, 0.03)
    assert ops.last_kernel("conv_direct") == "" and ops.last_kernel("int8_gemm") == "amx"
    torch.testing.assert_close(y, ref.int8_conv2d(x, w, ws, None, stride, (p, p), (d, d), 1, 0.03), rtol=0, atol=0)


def _int8_rows_before_a_guard_page(M: int, K: int, after: bool = True):
    """An (M, K) int8 tensor whose last byte is the last one before a PROT_NONE page (after=False: whose first
    byte is the first one after such a page): a kernel that reads past the operand's end (before its start)
    faults instead of passing silently."""
    import ctypes
    import mmap
    page = mmap.PAGESIZE
    size = (M * K + page - 1) // page * page + page
    region = mmap.mmap(-1, size, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    libc = ctypes.CDLL(None, use_errno=True)
    guard = size - page if after else 0
    assert libc.mprotect(ctypes.c_void_p(address + guard), ctypes.c_size_t(page), 0) == 0  # PROT_NONE
    t = torch.frombuffer(region, dtype=torch.int8, count=M * K, offset=size - page - M * K if after else page)
    t = t.view(M, K)
    t.copy_(rand_i8(M, K))
    return t, region


@needs_amx
@pytest.mark.parametrize("K", [4, 20, 60, 80, 100, 252, 1000])
@pytest.mark.parametrize("M", [16, 17, 31, 40, 129])
def test_tail_step_reads_nothing_past_the_operand(amx_every_shape, M, K):
    # A K tail (K % 64 != 0) is one more tile step that reads 64 bytes of each row, past K into the next
    # row (against zero B rows: exact) and, for the last rows, from a copy with slack: never past A's end.
    a, region = _int8_rows_before_a_guard_page(M, K)
    b = rand_i8(48, K)
    torch.testing.assert_close(ops.int8_mm(a, ops.pack_int8_weight(b), 48), ref.int8_mm(a, b), rtol=0, atol=0)
    assert ops.last_kernel("int8_gemm") == "amx"
    # A 1x1 convolution of an int8 NHWC input reads the input rows in place too.
    x = a.view(1, M, 1, K).permute(0, 3, 1, 2)  # channels_last (N, C, H, W) over the same bytes
    w = rand_i8(48, K, 1, 1).clamp_(-127, 127)
    ws = torch.rand(48) * 0.01
    y = ops.int8_conv2d(x, ops.pack_conv_weight(w, 1), ws, None, (1, 1), (1, 1), (0, 0), (1, 1), 1, 0.03)
    assert ops.last_kernel("int8_gemm") == "amx"
    torch.testing.assert_close(y, ref.int8_conv2d(x, w, ws, None, (1, 1), (0, 0), (1, 1), 1, 0.03), rtol=0, atol=0)
    del region  # unmapped when the tensors over it are gone
