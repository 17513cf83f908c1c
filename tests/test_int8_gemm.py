"""int8 GEMM ops vs fastinfer.reference (oracle: pure PyTorch, int64 products) on every ISA path."""
import pytest
import torch

from fastinfer import ops
from fastinfer import reference as ref

from conftest import assert_served

M_SWEEP = list(range(0, 18)) + [64, 255]
KN = [1, 3, 13, 255, 513, 1000]


def rand_i8(*shape):
    return torch.randint(-128, 128, shape, dtype=torch.int8)


@pytest.mark.parametrize("M", M_SWEEP)
@pytest.mark.parametrize("K,N", [(513, 255), (13, 1000)])
def test_int8_mm_m_sweep(isa, M, K, N):
    a, b = rand_i8(M, K), rand_i8(N, K)
    out = ops.int8_mm(a, ops.pack_int8_weight(b), N)
    assert out.dtype == torch.int32 and out.shape == (M, N)
    torch.testing.assert_close(out, ref.int8_mm(a, b), rtol=0, atol=0)
    if M > 0:
        assert_served("int8_gemm", isa)


@pytest.mark.parametrize("K", KN)
@pytest.mark.parametrize("N", KN)
def test_int8_mm_kn_sweep(isa, K, N):
    a, b = rand_i8(7, K), rand_i8(N, K)
    torch.testing.assert_close(ops.int8_mm(a, ops.pack_int8_weight(b), N), ref.int8_mm(a, b), rtol=0, atol=0)
    assert_served("int8_gemm", isa)


@pytest.mark.parametrize("M,K,N", [(4, 13, 64), (5, 255, 100), (129, 513, 80), (300, 36, 1000), (257, 1000, 65)])
def test_int8_mm_weights_without_min128(isa, M, K, N):
    # Weights in [-127, 127] (as fastinfer's quantizers make them) take AVX2's exact vpmaddubsw step, on rows
    # prepared once per range from 4 rows and 64 columns (chunks of 128 rows: M = 129, 257, 300 cross them).
    a, b = rand_i8(M, K), torch.randint(-127, 128, (N, K), dtype=torch.int8)
    a[:, :3] = -128
    b[:, -2:] = -127
    torch.testing.assert_close(ops.int8_mm(a, ops.pack_int8_weight(b), N), ref.int8_mm(a, b), rtol=0, atol=0)
    assert_served("int8_gemm", isa)


def gemm_step(isa, b):
    """The step of the AVX2 GEMM for weight b, chosen from its pack flags; the other tiers have one step ("")."""
    if isa != "avx2":
        return ""
    if int(b.min()) >= -64 and int(b.max()) <= 63:
        return "shifted"
    return "sign" if int(b.min()) > -128 else "widen"


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (2, 13, 64), (3, 5, 17), (4, 13, 64), (5, 255, 100), (17, 1000, 33),
                                   (129, 513, 80), (300, 36, 1000)])
def test_int8_mm_7bit_weights(isa, M, K, N):
    # Weights in [-64, 63] (weight_bits=7) take AVX2's shifted step: the u8 activation as stored times b, no
    # sign step. Its largest pair sums: a = 127 (u8 255) against b = -64 or 63 in both products of a pair.
    a, b = rand_i8(M, K), torch.randint(-64, 64, (N, K), dtype=torch.int8)
    a[:, :4] = 127
    a[0, -4:] = -128
    b[:, :2] = -64
    b[-1, 2:4] = 63
    torch.testing.assert_close(ops.int8_mm(a, ops.pack_int8_weight(b), N), ref.int8_mm(a, b), rtol=0, atol=0)
    assert_served("int8_gemm", isa)
    assert ops.last_kernel("int8_gemm_step") == gemm_step(isa, b)


@pytest.mark.parametrize("low,high,step", [(-64, 63, "shifted"), (-64, 64, "sign"), (-65, 63, "sign"),
                                           (-127, 127, "sign"), (-128, 127, "widen"), (-128, 0, "widen")])
def test_int8_gemm_step_follows_the_weights_range(isa, low, high, step):
    # Each weight range's step is exact, and the tier runs it (AVX2; one step elsewhere). One weight at each
    # end of the range sets the pack flags.
    M, K, N = 37, 300, 48
    a, b = rand_i8(M, K), torch.randint(max(low, -64), min(high, 63) + 1, (N, K), dtype=torch.int8)
    b[3, 7], b[40, 299] = low, high
    fill = torch.full((M, K), 127, dtype=torch.int8)
    for act in (a, fill, -fill - 1):
        torch.testing.assert_close(ops.int8_mm(act, ops.pack_int8_weight(b), N), ref.int8_mm(act, b), rtol=0, atol=0)
    assert ops.last_kernel("int8_gemm_step") == (step if isa == "avx2" else "")


@pytest.mark.parametrize("fill_a,fill_b", [(-128, -128), (127, -128), (-128, 127), (127, 127), (0, -128)])
def test_int8_mm_extremes(isa, fill_a, fill_b):
    # The largest |accumulators|: every product at its extreme (K = 1000 keeps it inside int32).
    M, K, N = 9, 1000, 35
    a, b = torch.full((M, K), fill_a, dtype=torch.int8), torch.full((N, K), fill_b, dtype=torch.int8)
    a[3] = 0  # an all-zero row
    b[5] = rand_i8(K)
    torch.testing.assert_close(ops.int8_mm(a, ops.pack_int8_weight(b), N), ref.int8_mm(a, b), rtol=0, atol=0)
    assert_served("int8_gemm", isa)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (5, 13, 3), (17, 255, 1000), (64, 513, 33), (255, 1000, 13)])
def test_int8_scaled_mm(isa, M, K, N, out_dtype, with_bias):
    # Same quantized inputs into both sides: the fp32 epilogue matches the reference bit for bit.
    a, b = rand_i8(M, K), rand_i8(N, K)
    a_scale, b_scale = torch.rand(M) * 0.1 + 1e-3, torch.rand(N) * 0.1 + 1e-3
    bias = torch.randn(N) * 10 if with_bias else None
    out = ops.int8_scaled_mm(a, a_scale, ops.pack_int8_weight(b), b_scale, bias, out_dtype)
    assert out.dtype == out_dtype and out.shape == (M, N)
    torch.testing.assert_close(out, ref.int8_scaled_mm(a, a_scale, b, b_scale, bias, out_dtype), rtol=0, atol=0)
    assert_served("int8_gemm", isa)


def test_int8_scaled_mm_default_out_dtype_and_bf16_bias(isa):
    a, b = rand_i8(4, 20), rand_i8(6, 20)
    s_a, s_b, bias = torch.rand(4), torch.rand(6), torch.randn(6).bfloat16()
    out = ops.int8_scaled_mm(a, s_a, ops.pack_int8_weight(b), s_b, bias)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.int8_scaled_mm(a, s_a, b, s_b, bias.float()), rtol=0, atol=0)


def test_noncontiguous_operand(isa):
    a_big, b = rand_i8(20, 300), rand_i8(40, 150)
    a = a_big[::2, ::2]  # strided view
    assert not a.is_contiguous()
    torch.testing.assert_close(ops.int8_mm(a, ops.pack_int8_weight(b), 40), ref.int8_mm(a, b), rtol=0, atol=0)
    # A transposed weight view packs the same as its contiguous copy.
    bt = rand_i8(150, 40).t()
    torch.testing.assert_close(ops.int8_mm(a, ops.pack_int8_weight(bt), 40), ref.int8_mm(a, bt), rtol=0, atol=0)


@pytest.mark.parametrize("N,K", [(1, 1), (3, 5), (17, 13), (40, 1000)])
def test_pack_roundtrip_and_size(N, K):
    w = rand_i8(N, K)
    packed = ops.pack_int8_weight(w)
    assert packed.dtype == torch.uint8 and packed.numel() == ops.packed_nbytes(N, K)
    torch.testing.assert_close(ops.unpack_int8_weight(packed), w, rtol=0, atol=0)


@pytest.mark.parametrize("with_min", [False, True], ids=["no-128", "has-128"])
@pytest.mark.parametrize("M,K,N", [(1, 13, 5), (9, 255, 33), (70, 513, 40)])
def test_weight_range_paths(isa, M, K, N, with_min):
    # Packing flags weights without -128 (header format bit 16); AVX2 then takes its maddubs path.
    a, b = rand_i8(M, K), torch.randint(-127, 128, (N, K), dtype=torch.int8)
    a[0, :3] = -128  # extreme activations are exact on both paths
    if with_min:
        b[N // 2, K // 2] = -128
    packed = ops.pack_int8_weight(b)
    assert bool(packed[14] & 1) == (not with_min)
    torch.testing.assert_close(ops.int8_mm(a, packed, N), ref.int8_mm(a, b), rtol=0, atol=0)
    assert_served("int8_gemm", isa)
