"""int8_linear_dynamic / int8_linear_weight_only vs fastinfer.reference on every ISA path."""
import pytest
import torch

import fastinfer
from fastinfer import ops
from fastinfer import reference as ref

from conftest import assert_served

CAPS = fastinfer.cpu_capabilities()

SHAPES = [(0, 8, 4), (1, 1, 1), (2, 3, 5), (7, 13, 17), (16, 255, 33), (17, 513, 1000), (64, 1000, 13),
          (255, 64, 255)]


def make_weight(N, K, bits=8):
    w_q, w_scale = ref.quantize_weight_per_channel(torch.randn(N, K), bits)
    return w_q, w_scale, ops.pack_int8_weight(w_q)


@pytest.mark.parametrize("bits", [8, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_linear_dynamic(isa, M, K, N, dtype, with_bias, bits):
    # Quantization and GEMM are exact; the fp32 epilogue uses the reference's order: bit-exact. 7-bit weights
    # take AVX2's shifted step (int8_gemm_step), 8-bit ones its sign step.
    x = (torch.randn(M, K) * 2).to(dtype)
    if M > 1:
        x[1, 0] = 300.0  # outlier
    w_q, w_scale, packed = make_weight(N, K, bits)
    bias = torch.randn(N) if with_bias else None
    y = ops.int8_linear_dynamic(x, packed, w_scale, bias)
    assert y.dtype == dtype and y.shape == (M, N)
    torch.testing.assert_close(y, ref.int8_linear_dynamic(x, w_q, w_scale, bias), rtol=0, atol=0)
    if M > 0:
        assert_served("int8_gemm", isa)
        assert_served("quantize", isa)
        assert ops.last_kernel("int8_gemm_step") == ({7: "shifted", 8: "sign"}[bits] if isa == "avx2" else "")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_linear_weight_only(isa, M, K, N, dtype, with_bias):
    # fp32 accumulation in another order than torch's matmul: compare with a K-scaled tolerance.
    x = torch.randn(M, K).to(dtype)
    w_q, w_scale, packed = make_weight(N, K)
    bias = torch.randn(N) if with_bias else None
    y = ops.int8_linear_weight_only(x, packed, w_scale, bias)
    assert y.dtype == dtype and y.shape == (M, N)
    expect = ref.int8_linear_weight_only(x, w_q, w_scale, bias)
    if dtype == torch.float32:
        torch.testing.assert_close(y, expect, rtol=1e-5, atol=1e-5 * K ** 0.5)
    else:  # one bf16 rounding step apart at most
        torch.testing.assert_close(y.float(), expect.float(), rtol=8e-3, atol=1e-2)
    if M > 0:
        assert_served("w8_gemm", isa)
        # bf16 x of 2 rows or more on an AVX512_BF16 CPU: vdpbf16ps on x as it is (AVX-512 tiers); else fp32 FMAs
        bf16_dot = M >= 2 and dtype == torch.bfloat16 and isa in ("avx512_vnni", "amx") and CAPS["avx512_bf16"]
        assert ops.last_kernel("w8_gemm_step") == ("bf16_dot" if bf16_dot else "fp32")


@pytest.mark.parametrize("M", [2, 5, 13, 16, 25, 97])
def test_weight_only_bf16_k_tails_read_nothing_past_k(isa, M):
    # bf16 x (the bf16 dot-product kernel where the CPU has it): K off the 4-k blocks, and a row of +inf right
    # after row 0, so a read past K in row 0 would multiply inf by a padded weight (0) and give NaN there.
    for K in range(1, 10):
        w_q, w_scale, packed = make_weight(17, K)
        x = torch.randn(M, K).bfloat16()
        x[1] = float("inf")
        y = ops.int8_linear_weight_only(x, packed, w_scale, None)
        keep = [i for i in range(M) if i != 1]
        torch.testing.assert_close(y[keep].float(), ref.int8_linear_weight_only(x[keep], w_q, w_scale).float(),
                                   rtol=8e-3, atol=1e-2, msg=f"K={K}")
        assert not torch.isfinite(y[1]).all()


@pytest.mark.parametrize("op", [ops.int8_linear_dynamic, ops.int8_linear_weight_only])
def test_leading_dims_and_noncontiguous(isa, op):
    w_q, w_scale, packed = make_weight(24, 40)
    x = torch.randn(3, 40, 5).transpose(1, 2)  # [3, 5, 40], non-contiguous
    y = op(x, packed, w_scale, None)
    assert y.shape == (3, 5, 24)
    y_flat = op(x.reshape(15, 40).contiguous(), packed, w_scale, None)
    torch.testing.assert_close(y.reshape(15, 24), y_flat, rtol=0, atol=0)
    y1 = op(torch.randn(40), packed, w_scale, None)  # 1-D input
    assert y1.shape == (24,)


def test_nan_inf_rows_stay_in_their_row(isa):
    # Documented behaviour: a row with NaN/Inf gives an all-NaN output row; other rows are exact.
    w_q, w_scale, packed = make_weight(20, 33)
    x = torch.randn(4, 33)
    x[1, 3] = float("nan")
    x[2, 0] = float("-inf")
    y = ops.int8_linear_dynamic(x, packed, w_scale, None)
    assert bool(torch.isnan(y[1]).all()) and bool(torch.isnan(y[2]).all())
    torch.testing.assert_close(y[[0, 3]], ref.int8_linear_dynamic(x[[0, 3]], w_q, w_scale), rtol=0, atol=0)
    yw = ops.int8_linear_weight_only(x, packed, w_scale, None)  # plain float math: NaN propagates
    assert bool(torch.isnan(yw[1]).all()) and not torch.isnan(yw[0]).any()


@pytest.mark.parametrize("activation", ["none", "relu", "relu6", "hardswish"])
@pytest.mark.parametrize("out_scale", [None, 0.05])
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (7, 13, 17), (17, 513, 40), (64, 255, 1000)])
def test_linear_static(isa, M, K, N, activation, out_scale):
    x = torch.randn(M, K) * 2
    x[0, 0] = float("nan") if M > 1 else x[0, 0]  # static: NaN quantizes to 0, the row stays finite
    w_q, w_scale, packed = make_weight(N, K, 7 if N % 2 else 8)  # 7-bit weights: AVX2's shifted step
    bias = torch.randn(N)
    y = ops.int8_linear_static(x, 0.03, packed, w_scale, bias, activation, out_scale)
    assert y.dtype == (torch.int8 if out_scale else torch.float32)
    torch.testing.assert_close(y, ref.int8_linear_static(x, 0.03, w_q, w_scale, bias, activation, out_scale),
                               rtol=0, atol=0)
    assert_served("int8_gemm", isa)
    assert_served("quantize", isa)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_static_quantization_edges(isa, dtype):
    # The static rule on values the vector quantizers must round and clamp as the scalar rule does: ties
    # at every half step (to even), just inside and past +-127.5 steps, +-inf, NaN, huge and subnormal
    # values; 24 columns (three 8-wide steps), 19 (a tail) and 147 (AVX-512's two 64-value packed blocks and a
    # tail), with a per-column channel scale too.
    s = 0.25
    ties = (torch.arange(-40, 40, dtype=torch.float32) + 0.5) * s
    edges = torch.tensor([127.49, 127.5, 127.51, -127.5, -128.0, 1e30, -1e30, float("inf"), float("-inf"),
                          float("nan"), 1e-40, -0.0]) * s
    vals = torch.cat([ties, edges])
    for K in (24, 19, 147):
        x = vals[torch.randint(0, len(vals), (9, K))].to(dtype)
        cs = torch.rand(K) + 0.5
        w_q, w_scale, packed = make_weight(16, K)
        for channel_scale in (None, cs):
            y = ops.int8_linear_static(x, s, packed, w_scale, None, "none", 0.5, channel_scale)
            want = ref.int8_linear_static(x, s, w_q, w_scale, None, "none", 0.5, channel_scale)
            torch.testing.assert_close(y, want, rtol=0, atol=0)
            assert_served("quantize", isa)


def test_linear_dynamic_activation(isa):
    x = torch.randn(9, 30)
    w_q, w_scale, packed = make_weight(20, 30)
    y = ops.int8_linear_dynamic(x, packed, w_scale, None, "relu6")
    torch.testing.assert_close(y, ref.apply_activation(ref.int8_linear_dynamic(x, w_q, w_scale), "relu6"),
                               rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_channel_scale(isa, dtype):
    # SmoothQuant's per-input-channel multiplier, applied inside the quantization pass: exact.
    x = (torch.randn(11, 70) * 3).to(dtype)
    w_q, w_scale, packed = make_weight(33, 70)
    cs = torch.rand(70) + 0.1
    y = ops.int8_linear_dynamic(x, packed, w_scale, None, "none", cs)
    torch.testing.assert_close(y, ref.int8_linear_dynamic(x, w_q, w_scale, None, cs), rtol=0, atol=0)
    ys = ops.int8_linear_static(x.float(), 0.05, packed, w_scale, None, "relu", None, cs)
    torch.testing.assert_close(ys, ref.int8_linear_static(x.float(), 0.05, w_q, w_scale, None, "relu", None, cs),
                               rtol=0, atol=0)
    assert_served("quantize", isa)
    with pytest.raises(RuntimeError, match="x_channel_scale must be 1-D of length 70"):
        ops.int8_linear_dynamic(x, packed, w_scale, None, "none", cs[:5])


@pytest.mark.parametrize("act", ["gelu", "silu"])
@pytest.mark.parametrize("M,K,N", [(1, 13, 5), (17, 255, 70), (64, 384, 1536)])
def test_linear_gelu_silu_epilogue(isa, M, K, N, act):
    # erf-GELU and SiLU fused in the epilogue: the vector kernels approximate erf (|error| <= 3e-7) and exp
    # (relative error < 2e-7), so this compares with a tolerance, on the same quantized values; int8 outputs
    # within one unit (a value at a rounding boundary).
    x = torch.randn(M, K) * 2
    w_q, w_scale, packed = make_weight(N, K)
    bias = torch.randn(N)
    y = ops.int8_linear_dynamic(x, packed, w_scale, bias, act)
    pre = ref.int8_linear_dynamic(x, w_q, w_scale, bias)
    torch.testing.assert_close(y, ref.apply_activation(pre, act), rtol=1e-5, atol=1e-5)
    ys = ops.int8_linear_static(x, 0.04, packed, w_scale, bias, act)
    torch.testing.assert_close(ys, ref.int8_linear_static(x, 0.04, w_q, w_scale, bias, act), rtol=1e-5, atol=1e-5)
    y8 = ops.int8_linear_static(x, 0.04, packed, w_scale, bias, act, 0.05)
    r8 = ref.int8_linear_static(x, 0.04, w_q, w_scale, bias, act, 0.05)
    assert y8.dtype == torch.int8 and (y8.int() - r8.int()).abs().max().item() <= 1
    big = ops.int8_linear_static(torch.full((1, K), 1e3), 0.04, packed, w_scale, bias, act)
    assert torch.isfinite(big).all()
    assert_served("int8_gemm", isa)


@pytest.mark.parametrize("N,K", [(1, 1), (7, 13), (8, 64), (9, 65), (70, 1000)])
def test_weight_only_tiles_layout(N, K):
    # pack_weight_only_tiles (the CUDA weight-only kernels' candidate layout, params.h WeightLayout): tiles[a, b, r,
    # c] == W[8 a + r, 64 b + c], zeros past N and K, and unpack_weight_only_tiles inverts it
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    tiles = ops.pack_weight_only_tiles(w)
    assert tiles.shape == (-(-N // 8), -(-K // 64), 8, 64) and tiles.dtype == torch.int8 and tiles.is_contiguous()
    for _ in range(50):
        a, b, r, c = (int(torch.randint(0, s, ())) for s in tiles.shape)
        n, k = 8 * a + r, 64 * b + c
        assert int(tiles[a, b, r, c]) == (int(w[n, k]) if n < N and k < K else 0)
    assert torch.equal(ops.unpack_weight_only_tiles(tiles, N, K), w)
    flat = tiles.flatten()  # a group of 8 rows is one run: rows 0-7's first 64 columns are its first 512 bytes
    assert torch.equal(flat[:64 * min(N, 8)].view(-1, 64)[:, :min(K, 64)], w[:8, :64])


def test_weight_only_tiles_bad_input():
    with pytest.raises(ValueError, match="weight must be int8"):
        ops.pack_weight_only_tiles(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="weight must be int8"):
        ops.pack_weight_only_tiles(torch.zeros(0, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"tiles must be int8 \[1, 1, 8, 64\]"):
        ops.unpack_weight_only_tiles(torch.zeros(1, 2, 8, 64, dtype=torch.int8), 8, 64)
