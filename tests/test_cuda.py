"""The CUDA kernels against fastinfer.reference (computed on the CPU from the same quantized values: integer
results and the fp32 epilogue bit-exact, GELU and w8_only within a tolerance), which kernel served, opcheck,
torch.compile, CUDA graphs, Int8Linear moving between devices. Skipped without a CUDA build and a GPU
(benchmarks/gpu_check.sh runs this file, and a compute-sanitizer subset, on a GPU machine)."""
import copy

import pytest
import torch
from torch import nn

import fastinfer
from fastinfer import ops
from fastinfer import reference as ref
from fastinfer.nn import Int8Linear

from conftest import cuda_graph_replays

pytestmark = pytest.mark.skipif(not ops.cuda_available(), reason="needs fastinfer built with CUDA and a GPU")

DEV = "cuda"
M_SWEEP = list(range(1, 128))
KN = [(13, 7), (64, 48), (100, 130), (257, 33), (1000, 515)]  # K and N off the 16/32/128 tiles
FLOAT_OUT = [torch.float32, torch.bfloat16, torch.float16]


def rand_i8(*shape):
    return torch.randint(-128, 128, shape, dtype=torch.int8)


def capability():
    return torch.cuda.get_device_capability()


def expected_gemm(M, N, out_dtype):
    """The kernel run_gemm (csrc/cuda/cuda_ops.cpp) picks for fresh contiguous operands: the CUTLASS sm_90a
    one on a Hopper build with the CUTLASS headers, for float outputs of more than 64 rows whose rows are
    whole 16-byte pieces (in its pingpong composition for bf16 outputs, its fastest there); the sm_80 mma
    kernel otherwise (int32 outputs always)."""
    if out_dtype == torch.int32:
        return "sm80_mma"
    elem = 4 if out_dtype == torch.float32 else 2
    hopper = capability()[0] == 9 and ops.BUILD.get("cutlass_sm90")
    if not (hopper and M > 64 and (N * elem) % 16 == 0):
        return "sm80_mma"
    return "sm90_cutlass_pingpong" if out_dtype == torch.bfloat16 else "sm90_cutlass"


@pytest.mark.parametrize("K,N", KN)
def test_int8_mm_m_sweep(K, N):
    b = rand_i8(N, K)
    packed = ops.pack_int8_weight(b.to(DEV))
    assert packed.dtype == torch.int8 and tuple(packed.shape) == (N, -(-K // 16) * 16)
    for M in M_SWEEP:
        a = rand_i8(M, K)
        out = ops.int8_mm(a.to(DEV), packed, N)
        torch.testing.assert_close(out.cpu(), ref.int8_mm(a, b), rtol=0, atol=0, msg=f"M={M}")
        assert ops.cuda_last_kernel() == "sm80_mma"


@pytest.mark.parametrize("M", [1, 16, 64, 65, 300, 1024])
def test_int8_mm_extremes_and_large(M):
    K, N = 4096, 384
    for fa, fb in [(-128, -128), (127, -128), (-128, 127)]:
        a, b = torch.full((M, K), fa, dtype=torch.int8), torch.full((N, K), fb, dtype=torch.int8)
        out = ops.int8_mm(a.to(DEV), ops.pack_int8_weight(b.to(DEV)), N)
        torch.testing.assert_close(out.cpu(), ref.int8_mm(a, b), rtol=0, atol=0)


@pytest.mark.parametrize("out_dtype", FLOAT_OUT)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (5, 13, 3), (17, 255, 1000), (64, 512, 64), (200, 1024, 256),
                                   (513, 4096, 136)])
def test_int8_scaled_mm_epilogue_exact(M, K, N, out_dtype, with_bias):
    a, b = rand_i8(M, K), rand_i8(N, K)
    a_scale, b_scale = torch.rand(M) * 0.1 + 1e-3, torch.rand(N) * 0.1 + 1e-3
    bias = torch.randn(N) * 10 if with_bias else None
    out = ops.int8_scaled_mm(a.to(DEV), a_scale.to(DEV), ops.pack_int8_weight(b.to(DEV)), b_scale.to(DEV),
                             None if bias is None else bias.to(DEV), out_dtype)
    assert out.dtype == out_dtype and out.shape == (M, N)
    assert ops.cuda_last_kernel() == expected_gemm(M, N, out_dtype)
    expect = ref.int8_scaled_mm(a, a_scale, b, b_scale, bias, torch.float32).to(out_dtype)
    torch.testing.assert_close(out.cpu(), expect, rtol=0, atol=0)


def test_hopper_kernel_serves_large_float_gemms():
    hopper_cutlass()
    a, b = rand_i8(512, 1024), rand_i8(256, 1024)
    ops.int8_scaled_mm(a.to(DEV), torch.ones(512, device=DEV), ops.pack_int8_weight(b.to(DEV)),
                       torch.ones(256, device=DEV), None, torch.bfloat16)
    assert ops.cuda_last_kernel() == "sm90_cutlass_pingpong"  # bf16 out: its fastest composition
    ops.int8_mm(a.to(DEV), ops.pack_int8_weight(b.to(DEV)), 256)  # int32 out: the sm_80 kernel
    assert ops.cuda_last_kernel() == "sm80_mma"


def hopper_cutlass():
    if capability()[0] != 9 or not ops.BUILD["cutlass_sm90"]:
        pytest.skip("the CUTLASS sm_90a kernels serve Hopper builds with the CUTLASS headers only")


@pytest.mark.parametrize("variant", ["cooperative", "pingpong", "wide"])
@pytest.mark.parametrize("M,K,N", [(65, 272, 136), (300, 1024, 256), (1000, 4096, 520)])
def test_hopper_gemm_variants_exact(monkeypatch, variant, M, K, N):
    """Each composition of the Hopper GEMM (FASTINFER_SM90_VARIANT; bf16 outputs) gives the reference's bits:
    the same epilogue on the same exact int32 sums, tiles that miss M, N and K included."""
    hopper_cutlass()
    a, b = rand_i8(M, K), rand_i8(N, K)
    a_scale, b_scale, bias = torch.rand(M) * 0.1 + 1e-3, torch.rand(N) * 0.1 + 1e-3, torch.randn(N)
    args = (a.to(DEV), a_scale.to(DEV), ops.pack_int8_weight(b.to(DEV)), b_scale.to(DEV), bias.to(DEV))
    monkeypatch.setenv("FASTINFER_SM90_VARIANT", variant)
    out = ops.int8_scaled_mm(*args, torch.bfloat16)
    assert ops.cuda_last_kernel() == ("sm90_cutlass" if variant == "cooperative" else f"sm90_cutlass_{variant}")
    expect = ref.int8_scaled_mm(a, a_scale, b, b_scale, bias, torch.float32).to(torch.bfloat16)
    torch.testing.assert_close(out.cpu(), expect, rtol=0, atol=0)
    ops.int8_scaled_mm(*args, torch.float16)  # the others are built for bf16 only: fp16 runs the cooperative one
    assert ops.cuda_last_kernel() == "sm90_cutlass"


def test_hopper_gemm_variant_bad_value(monkeypatch):
    hopper_cutlass()
    a, b = rand_i8(128, 64), rand_i8(64, 64)
    monkeypatch.setenv("FASTINFER_SM90_VARIANT", "fastest")
    with pytest.raises(RuntimeError, match="FASTINFER_SM90_VARIANT must be 'cooperative', 'pingpong' or 'wide'"):
        ops.int8_scaled_mm(a.to(DEV), torch.ones(128, device=DEV), ops.pack_int8_weight(b.to(DEV)),
                           torch.ones(64, device=DEV), None, torch.bfloat16)


@pytest.mark.parametrize("dtype", FLOAT_OUT)
def test_quantize_per_token(dtype):
    x = (torch.randn(70, 1000) * 3).to(dtype)
    x[3] = 0
    x[5, 7] = float("nan")
    x[6, 1] = float("inf")
    q, s = ops.quantize_per_token(x.to(DEV))
    rq, rs = ref.quantize_per_token(x)
    torch.testing.assert_close(q.cpu(), rq, rtol=0, atol=0)
    torch.testing.assert_close(s.cpu(), rs, rtol=0, atol=0, equal_nan=True)


# The activation quantization's two kernels: the vectorized one (rows of aligned 16-byte pieces, up to 16 pieces
# a thread: K a multiple of 8 bf16/fp16 or 4 fp32 values, at most 32768 / 16384) and the scalar one (any other
# row: K = 10, 1001, 40000), per token and through the w8a8 ops with a per-column scale
# (SmoothQuant) and a static scale, bit for bit against the reference; zero, NaN and Inf rows included.
@pytest.mark.parametrize("dtype", FLOAT_OUT)
@pytest.mark.parametrize("K", [8, 10, 1000, 1001, 16384, 40000])
def test_quantize_kernels(K, dtype):
    x = (torch.randn(21, K) * 3).to(dtype)
    x[3] = 0
    x[5, 7] = float("nan")
    x[6, 1] = float("inf")
    per_piece, most = (4, 16384) if dtype == torch.float32 else (8, 32768)
    kernel = "quantize_vec" if K % per_piece == 0 and K <= most else "quantize_rows"
    q, s = ops.quantize_per_token(x.to(DEV))
    assert ops.cuda_last_kernel("quantize") == kernel
    rq, rs = ref.quantize_per_token(x)
    torch.testing.assert_close(q.cpu(), rq, rtol=0, atol=0)
    torch.testing.assert_close(s.cpu(), rs, rtol=0, atol=0, equal_nan=True)
    N = 24
    w = rand_i8(N, K)
    ws, bias, cs = torch.rand(N) * 0.01 + 1e-4, torch.randn(N), torch.rand(K) + 0.5
    packed = ops.pack_int8_weight(w.to(DEV))
    out = ops.int8_linear_dynamic(x.to(DEV), packed, ws.to(DEV), bias.to(DEV), x_channel_scale=cs.to(DEV))
    assert ops.cuda_last_kernel("quantize") == kernel
    want = ref.int8_linear_dynamic(x, w, ws, bias, x_channel_scale=cs)
    torch.testing.assert_close(out.cpu(), want.to(dtype), rtol=0, atol=0, equal_nan=True)
    out = ops.int8_linear_static(x.to(DEV), 0.02, packed, ws.to(DEV), bias.to(DEV), "relu", 0.05, cs.to(DEV))
    assert ops.cuda_last_kernel("quantize") == kernel
    want = ref.int8_linear_static(x, 0.02, w, ws, bias, "relu", 0.05, cs)
    torch.testing.assert_close(out.cpu(), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="family must be 'gemm' or 'quantize'"):
        ops.cuda_last_kernel("conv")


# A static scale on dense rows (K a multiple of 16: no padding) regroups them into longer rows (while M is
# even): the same values as row by row. M = 96 regroups 5 times at K = 16, M = 97 not at all.
@pytest.mark.parametrize("dtype", FLOAT_OUT)
@pytest.mark.parametrize("M,K", [(96, 16), (97, 16), (64, 2048), (6, 48)])
def test_static_quantization_regrouped(M, K, dtype):
    x = (torch.randn(M, K) * 3).to(dtype)
    x[1, 2] = float("nan")
    x[2, 3] = float("-inf")
    w = rand_i8(24, K)
    ws, bias = torch.rand(24) * 0.01 + 1e-4, torch.randn(24)
    out = ops.int8_linear_static(x.to(DEV), 0.02, ops.pack_int8_weight(w.to(DEV)), ws.to(DEV), bias.to(DEV),
                                 "none", 0.05)
    assert ops.cuda_last_kernel("quantize") == "quantize_vec"
    want = ref.int8_linear_static(x, 0.02, w, ws, bias, "none", 0.05)
    torch.testing.assert_close(out.cpu(), want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", FLOAT_OUT)
@pytest.mark.parametrize("M,K,N", [(1, 64, 32), (7, 13, 5), (128, 768, 3072), (333, 1000, 70)])
def test_linear_dynamic(M, K, N, dtype):
    x = torch.randn(M, K).to(dtype)
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    ws, bias = torch.rand(N) * 0.01 + 1e-4, torch.randn(N)
    out = ops.int8_linear_dynamic(x.to(DEV), ops.pack_int8_weight(w.to(DEV)), ws.to(DEV), bias.to(DEV))
    assert ops.cuda_last_kernel() == expected_gemm(M, N, dtype)
    expect = ref.int8_linear_dynamic(x.float(), w, ws, bias).to(dtype)
    torch.testing.assert_close(out.cpu(), expect, rtol=0, atol=0)


@pytest.mark.parametrize("activation", ["none", "relu", "relu6", "hardswish"])
def test_linear_static_int8_out(activation):
    M, K, N = 90, 300, 70
    x, w = torch.randn(M, K), torch.randint(-127, 128, (N, K), dtype=torch.int8)
    ws, bias = torch.rand(N) * 0.01, torch.randn(N)
    out = ops.int8_linear_static(x.to(DEV), 0.02, ops.pack_int8_weight(w.to(DEV)), ws.to(DEV), bias.to(DEV),
                                 activation, 0.05)
    torch.testing.assert_close(out.cpu(), ref.int8_linear_static(x, 0.02, w, ws, bias, activation, 0.05), rtol=0, atol=0)


@pytest.mark.parametrize("act", ["gelu", "silu"])
def test_gelu_silu_within_tolerance(act):
    # erff / expf are within 2 ulp, not the reference's bits
    M, K, N = 64, 256, 96
    x, w = torch.randn(M, K), torch.randint(-127, 128, (N, K), dtype=torch.int8)
    ws = torch.rand(N) * 0.01
    out = ops.int8_linear_dynamic(x.to(DEV), ops.pack_int8_weight(w.to(DEV)), ws.to(DEV), None, act)
    q, s = ref.quantize_per_token(x)
    y = ref.int8_scaled_mm(q, s, w, ws)
    torch.testing.assert_close(out.cpu(), ref.apply_activation(y, act), rtol=1e-5, atol=1e-5)


def expected_weight_only(M, dtype):
    """The CUDA-core kernel up to 8 rows (16 for fp32 x), the tensor-core one for 9-64 rows of bf16/fp16 x,
    cuBLAS on a widened weight above (int8_linear_weight_only in csrc/cuda/cuda_ops.cpp)."""
    if dtype == torch.float32:
        return "weight_only" if M <= 16 else "weight_only_cublas"
    return "weight_only" if M <= 8 else "weight_only_mma" if M <= 64 else "weight_only_cublas"


@pytest.mark.parametrize("dtype", FLOAT_OUT)
@pytest.mark.parametrize("M", [1, 2, 3, 8, 9, 16, 17, 33, 48, 64, 65])
@pytest.mark.parametrize("K,N", [(13, 7), (1000, 70), (4096, 300)])
def test_weight_only(M, K, N, dtype):
    # (13, 7): one k round, N under one n8 tile; (1000, 70): a partial last round (K_pad 1008) and a
    # partial column block; (4096, 300): the mma kernel's K split (few column blocks) and its reduction.
    x = torch.randn(M, K).to(dtype)
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    ws, bias = torch.rand(N) * 0.01, torch.randn(N)
    out = ops.int8_linear_weight_only(x.to(DEV), ops.pack_int8_weight(w.to(DEV)), ws.to(DEV), bias.to(DEV))
    assert ops.cuda_last_kernel() == expected_weight_only(M, dtype)
    expect = ref.int8_linear_weight_only(x.float(), w, ws, bias)
    # Summation order differs from the reference's: relative error of the whole output (fp32
    # accumulation either way; the 16-bit types round the output).
    err = (out.cpu().float() - expect).norm() / expect.norm()
    assert err < (1e-5 if dtype == torch.float32 else 1e-2), err


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [9, 16, 17, 33, 64])
@pytest.mark.parametrize("K,N", [(13, 7), (1000, 70), (4096, 300), (2064, 520)])
def test_weight_only_round_256(monkeypatch, M, K, N, dtype):
    """The tensor-core kernel's 256-k rounds (FASTINFER_WEIGHT_ONLY_ROUND_K=256, a candidate): a round past K
    (13; 1000: a partial last round of 4 chunks; 2064: one chunk of the last), columns past N, its K split."""
    monkeypatch.setenv("FASTINFER_WEIGHT_ONLY_ROUND_K", "256")
    x = torch.randn(M, K).to(dtype)
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    ws, bias = torch.rand(N) * 0.01, torch.randn(N)
    out = ops.int8_linear_weight_only(x.to(DEV), ops.pack_int8_weight(w.to(DEV)), ws.to(DEV), bias.to(DEV))
    assert ops.cuda_last_kernel() == "weight_only_mma_k256"
    expect = ref.int8_linear_weight_only(x.float(), w, ws, bias)
    assert (out.cpu().float() - expect).norm() / expect.norm() < 1e-2
    monkeypatch.setenv("FASTINFER_WEIGHT_ONLY_ROUND_K", "128")
    with pytest.raises(RuntimeError, match="FASTINFER_WEIGHT_ONLY_ROUND_K must be '64' or '256'"):
        ops.int8_linear_weight_only(x.to(DEV), ops.pack_int8_weight(w.to(DEV)), ws.to(DEV), bias.to(DEV))


# (M, dtype index in FLOAT_OUT, round k): every path in 64-k rounds; the 256-k rounds where they exist (the
# tensor-core kernel: bf16/fp16 x, 9-64 rows)
TILES_CASES = [(M, d, "64") for M in (1, 3, 8, 9, 16, 17, 33, 64, 65) for d in range(3)] + [
    (M, d, "256") for M in (9, 16, 17, 33, 64) for d in (1, 2)]


@pytest.mark.parametrize("M,dtype_index,round_k", TILES_CASES)
@pytest.mark.parametrize("K,N", [(13, 7), (1000, 70), (4096, 300), (2064, 520)])
def test_weight_only_tiles(monkeypatch, M, K, N, dtype_index, round_k):
    """The Tiles8x64 weight layout (ops.pack_weight_only_tiles, a candidate): the same kernel reads the same
    chunks in the same order from other addresses, so the output is bit-identical to the rows layout's, on every
    path (one-row kernel, tensor-core kernel in both round lengths, cuBLAS on the weight unpacked above 64 rows)."""
    dtype = FLOAT_OUT[dtype_index]
    monkeypatch.setenv("FASTINFER_WEIGHT_ONLY_ROUND_K", round_k)
    x = torch.randn(M, K).to(dtype).to(DEV)
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    ws, bias = (torch.rand(N) * 0.01).to(DEV), torch.randn(N).to(DEV)
    rows = ops.int8_linear_weight_only(x, ops.pack_int8_weight(w.to(DEV)), ws, bias)
    served_rows = ops.cuda_last_kernel()
    assert served_rows == ("weight_only_mma_k256" if round_k == "256" else expected_weight_only(M, dtype))
    tiles = ops.int8_linear_weight_only(x, ops.pack_weight_only_tiles(w.to(DEV)), ws, bias)
    assert ops.cuda_last_kernel() == served_rows + ("" if served_rows == "weight_only_cublas" else "_tiles")
    # above 64 rows both widen the same [N, K] weight for the same cuBLAS call
    assert torch.equal(tiles, rows)


def test_weight_only_tiles_refused():
    x = torch.randn(3, 100, device=DEV, dtype=torch.bfloat16)
    w = torch.randint(-128, 128, (40, 100), dtype=torch.int8, device=DEV)
    tiles = ops.pack_weight_only_tiles(w)
    with pytest.raises(RuntimeError, match=r"shape \[6, 2, 8, 64\], contiguous; got Char of shape \[5, 2, 8, 64\]"):
        ops.int8_linear_weight_only(x, tiles, torch.rand(48, device=DEV))  # w_scale's N = 48 needs 6 row groups
    with pytest.raises(RuntimeError, match="4-D packed_w"):  # x's K (200) needs 4 tiles of k
        ops.int8_linear_weight_only(torch.randn(3, 200, device=DEV, dtype=torch.bfloat16), tiles,
                                    torch.rand(40, device=DEV))
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.int8_linear_weight_only(x, tiles.transpose(0, 1).contiguous().transpose(0, 1), torch.rand(40, device=DEV))


def test_opcheck():
    a, b = rand_i8(33, 100).to(DEV), rand_i8(40, 100).to(DEV)
    packed = ops.pack_int8_weight(b)
    x = torch.randn(5, 100, device=DEV)
    for op, args in [
        (torch.ops.fastinfer.int8_mm.default, (a, packed, 40)),
        (torch.ops.fastinfer.int8_scaled_mm.default, (a, torch.rand(33, device=DEV), packed, torch.rand(40, device=DEV))),
        (torch.ops.fastinfer.int8_linear_dynamic.default, (x, packed, torch.rand(40, device=DEV))),
        (torch.ops.fastinfer.int8_linear_weight_only.default, (x, packed, torch.rand(40, device=DEV))),
        (torch.ops.fastinfer.int8_linear_weight_only.default,
         (x, ops.pack_weight_only_tiles(b), torch.rand(40, device=DEV))),
        (torch.ops.fastinfer.quantize_per_token.default, (x,)),
        (torch.ops.fastinfer.pack_int8_weight.default, (b,)),
    ]:
        torch.library.opcheck(op, args)


def make_layer(K=256, N=192):
    torch.manual_seed(0)
    return nn.Linear(K, N).eval()


def test_int8linear_cuda_before_and_after_quantizing():
    lin = make_layer()
    x = torch.randn(8, 20, 256)
    on_cpu = Int8Linear.from_float(lin, "w8a8_dynamic")
    want = on_cpu(x)
    moved = copy.deepcopy(on_cpu).cuda()  # repacked for the GPU
    assert ops.is_cuda_packed(moved.packed_weight) and moved.weight_scale.dtype == torch.float32
    torch.testing.assert_close(moved(x.cuda()).cpu(), want, rtol=1e-6, atol=1e-5)
    built_on_gpu = Int8Linear.from_float(copy.deepcopy(lin).cuda(), "w8a8_dynamic")
    torch.testing.assert_close(built_on_gpu.int8_weight().cpu(), on_cpu.int8_weight(), rtol=0, atol=0)
    back = copy.deepcopy(moved).cpu()
    torch.testing.assert_close(back(x), want, rtol=0, atol=0)


def test_state_dict_between_devices():
    lin = make_layer(100, 50)
    gpu = Int8Linear.from_float(copy.deepcopy(lin).cuda())
    cpu = Int8Linear(100, 50)
    cpu.load_state_dict(gpu.state_dict())
    torch.testing.assert_close(cpu.int8_weight(), gpu.int8_weight().cpu(), rtol=0, atol=0)
    gpu2 = Int8Linear(100, 50).cuda()
    gpu2.load_state_dict(cpu.state_dict())
    torch.testing.assert_close(gpu2.int8_weight(), gpu.int8_weight(), rtol=0, atol=0)
    # a CPU checkpoint loaded with map_location='cuda': the CPU-layout buffer arrives on the GPU
    gpu3 = Int8Linear(100, 50).cuda()
    gpu3.load_state_dict({k: v.cuda() if torch.is_tensor(v) else v for k, v in cpu.state_dict().items()})
    torch.testing.assert_close(gpu3.int8_weight(), gpu.int8_weight(), rtol=0, atol=0)


@pytest.mark.parametrize("M", [1, 16, 33, 64, 65])
def test_int8linear_w8_only_tiles_layout(monkeypatch, M):
    """FASTINFER_WEIGHT_ONLY_LAYOUT=tiles (a candidate): a w8_only layer on CUDA packs Tiles8x64 (from_float on
    the GPU, a move to it, a load into it), serves the `_tiles` kernels and gives the rows layer's bits; a
    checkpoint moves between the layouts and devices; a CUDA graph replays it."""
    lin = make_layer(200, 72)
    x = torch.randn(M, 200, device=DEV, dtype=torch.bfloat16)
    rows = Int8Linear.from_float(copy.deepcopy(lin).cuda(), "w8_only")
    want = rows(x)
    served_rows = ops.cuda_last_kernel()
    monkeypatch.setenv("FASTINFER_WEIGHT_ONLY_LAYOUT", "tiles")
    built = Int8Linear.from_float(copy.deepcopy(lin).cuda(), "w8_only")
    moved = Int8Linear.from_float(lin, "w8_only").cuda()
    loaded = Int8Linear(200, 72, scheme="w8_only").cuda()
    loaded.load_state_dict(rows.state_dict())  # a rows checkpoint into a tiles layer
    for layer in (built, moved, loaded):
        assert tuple(layer.packed_weight.shape) == (9, 4, 8, 64)
        assert torch.equal(layer.int8_weight(), rows.int8_weight())
        assert torch.equal(layer(x), want)
        assert ops.cuda_last_kernel() == served_rows + ("" if served_rows == "weight_only_cublas" else "_tiles")
    dynamic = Int8Linear.from_float(copy.deepcopy(lin).cuda(), "w8a8_dynamic")  # other schemes keep rows
    assert ops.is_cuda_packed(dynamic.packed_weight)
    cpu = Int8Linear(200, 72, scheme="w8_only")
    cpu.load_state_dict(built.state_dict())  # a tiles checkpoint on the CPU
    assert torch.equal(cpu.int8_weight(), rows.int8_weight().cpu())
    assert torch.equal(copy.deepcopy(built).cpu().int8_weight(), cpu.int8_weight())
    monkeypatch.setenv("FASTINFER_WEIGHT_ONLY_LAYOUT", "rows")
    rows2 = Int8Linear(200, 72, scheme="w8_only").cuda()
    rows2.load_state_dict(built.state_dict())  # a tiles checkpoint into a rows layer
    assert ops.is_cuda_packed(rows2.packed_weight) and torch.equal(rows2(x), want)
    cuda_graph_replays(built, x)


def test_quantize_model_on_gpu_and_compile():
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval().cuda()
    x = torch.randn(32, 64, device=DEV)
    ref_out = model(x)
    q = fastinfer.quantize(copy.deepcopy(model), "w8a8_dynamic")
    assert [n for n, _ in q.named_modules() if isinstance(_, Int8Linear)] == ["0", "2"]
    out = q(x)
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref_out.flatten(), dim=0) > 0.999
    compiled = torch.compile(q, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), out, rtol=0, atol=0)


@pytest.mark.parametrize("M", [16, 300])
def test_cuda_graph_capture(M):
    layer = Int8Linear.from_float(make_layer().cuda(), "w8a8_dynamic")
    x = torch.randn(M, 256, device=DEV)
    cuda_graph_replays(layer, x)
    assert ops.cuda_last_kernel() == expected_gemm(M, layer.out_features, torch.float32)


def test_bad_input():
    b = rand_i8(40, 100)
    cpu_packed = ops.pack_int8_weight(b)
    a = rand_i8(8, 100).to(DEV)
    with pytest.raises(RuntimeError, match="packed_w must be on|must be a CUDA packed weight"):
        ops.int8_mm(a, cpu_packed.to(DEV), 40)  # a CPU-format buffer moved to the GPU as bytes
    with pytest.raises(RuntimeError, match="packed_w must be on"):
        ops.int8_mm(a, cpu_packed, 40)          # another device
    packed = ops.pack_int8_weight(b.to(DEV))
    off = torch.zeros(packed.numel() + 1, dtype=torch.int8, device=DEV)[1:].view(packed.shape)
    with pytest.raises(RuntimeError, match="packed_w must start on a 16-byte boundary"):
        ops.int8_mm(a, off, 40)
    with pytest.raises(RuntimeError, match="rows of 112 bytes, expected"):
        ops.int8_mm(rand_i8(8, 60).to(DEV), packed, 40)
    with pytest.raises(RuntimeError, match="w_scale must be 1-D of length 40"):
        ops.int8_linear_dynamic(torch.randn(3, 100, device=DEV), packed, torch.ones(39, device=DEV))
    with pytest.raises(RuntimeError, match="x must be float32, bfloat16 or float16"):
        ops.int8_linear_dynamic(torch.randn(3, 100, device=DEV).double(), packed, torch.ones(40, device=DEV))
    with pytest.raises(RuntimeError, match="activation must be"):
        ops.int8_linear_dynamic(torch.randn(3, 100, device=DEV), packed, torch.ones(40, device=DEV), None, "tanh")
    with pytest.raises(RuntimeError, match=r"K \(in_features\) must be <= 131071"):
        ops.pack_int8_weight(torch.zeros(1, 131072, dtype=torch.int8, device=DEV))
    # 1 / float32(1e300) is 0: once this ran the quantizer's dynamic branch, which wrote through a null scale.
    with pytest.raises(RuntimeError, match="x_scale must be a positive finite number .* float32's normal range"):
        ops.int8_linear_static(torch.randn(3, 100, device=DEV), 1e300, packed, torch.ones(40, device=DEV))
    torch.cuda.synchronize()


def test_quantize_per_token_empty_rows():
    for shape in [(5, 0), (0, 7), (0, 0)]:
        q, s = ops.quantize_per_token(torch.randn(shape, device=DEV))
        assert q.shape == shape and q.dtype == torch.int8 and s.shape == (shape[0],)
        assert not s.any()


def test_int8_mm_past_65535_row_tiles():
    """The sm_80 kernel's tiles are one 1-D grid: M beyond 65535 tiles of 128 rows (the gridDim.y cap)."""
    M, K, N = 65536 * 128 + 300, 16, 8
    a, b = rand_i8(M, K), rand_i8(N, K)
    out = ops.int8_mm(a.to(DEV), ops.pack_int8_weight(b.to(DEV)), N)
    assert ops.cuda_last_kernel() == "sm80_mma"
    for rows in (slice(0, 1000), slice(M - 70_000, M)):  # the first tiles and those past the old cap
        torch.testing.assert_close(out[rows].cpu(), ref.int8_mm(a[rows], b), rtol=0, atol=0)


def test_demo_on_gpu(capsys):
    """`fastinfer demo --device cuda`: the MLP quantized on the GPU, the CNN quantized on the CPU and moved,
    2:4 sparse on Hopper; each row served by the CUDA kernels."""
    pytest.importorskip("sklearn")
    from fastinfer import demo
    results = demo.main(["--quick", "--device", "cuda", "--threads", "4"])
    assert results["machine"]["device"] == "cuda" and results["machine"]["gpu"]
    fp32 = results["fp32"]["accuracy"]
    assert fp32 > 90.0
    assert results["w8a8_dynamic"]["kernel_isa"] in ("sm90_cutlass", "sm80_mma")  # the demo's batch decides
    assert results["w8_only"]["kernel_isa"] in ("weight_only", "weight_only_cublas")
    for scheme in ("w8a8_dynamic", "w8_only"):
        assert results[scheme]["accuracy"] >= fp32 - 0.5, scheme
    assert "sparse 90%" in results["skipped"]
    if ops.sparse24_available():
        assert results["sparse 2:4"]["kernel_isa"] == "sm90_sparse24" and results["sparse 2:4"]["accuracy"] > 80.0
    else:
        assert "sparse 2:4" in results["skipped"]
    rows = results["cnn"]["rows"]
    assert rows["teacher int8"]["accuracy"] >= rows["teacher fp32"]["accuracy"] - 1.0
    assert rows["+ int8 static"]["accuracy"] >= rows["+ distilled"]["accuracy"] - 1.0
    out = capsys.readouterr().out
    assert "GPU: " in out and "latency on cuda" in out


@pytest.mark.parametrize("kind", ["percentile", "mse"])
def test_observers_bin_cuda_data_as_cpu_data(kind):
    # The histogram observers bin on the data's device (torch.bincount of the float32 bit patterns): CUDA
    # batches must give the CPU's counts and thresholds exactly (calibrating a model already on the GPU).
    from fastinfer.quantization.observers import make_observer
    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(4096, 64, generator=g) * s for s in (1e-3, 1.0, 40.0)] + [torch.zeros(7)]
    batches.append(torch.randn(999, generator=g).to(torch.bfloat16))
    cpu, gpu = make_observer(kind), make_observer(kind)
    for b in batches:
        cpu.observe(b)
        gpu.observe(b.to(DEV))
    assert torch.equal(cpu.hist, gpu.hist) and cpu.first_bin == gpu.first_bin and cpu.zeros == gpu.zeros
    assert cpu.amax() == gpu.amax() and cpu.max == gpu.max
