"""The Hopper 2:4 sparse int8 kernels (pack_sparse24, sparse24_linear_int8, SparseLinear 'sparse24') against
fastinfer.reference on the same quantized values (bit-exact: exact int products, the dense W8A8 epilogue),
which kernel served, bad input, opcheck, torch.compile, CUDA graphs, moves between the CPU (slot128) and the
GPU. Skipped without a CUDA build with the sparse kernels and a Hopper GPU (benchmarks/gpu_check.sh runs it)."""
import pytest
import torch
from torch import nn

import fastinfer
from fastinfer import ops
from fastinfer import reference as ref
from fastinfer.nn import SparseLinear

pytestmark = pytest.mark.skipif(not ops.sparse24_available(),
                                reason="needs fastinfer built with the 2:4 sparse CUDA kernels and a Hopper GPU")
DEV = "cuda"
SHAPES = [(8, 128), (24, 200), (130, 1000), (256, 4096), (7, 2323)]  # (N, K): N and K off the 8/128 pads


def two_four(n, k, lo=-127, hi=128):
    """A random int8 [n, k] weight keeping 2 of every 4 consecutive columns (k % 4 tail: any 2 of them)."""
    w = torch.randint(lo, hi, (n, k), dtype=torch.int8)
    k4 = -(-k // 4) * 4
    wp = torch.zeros(n, k4, dtype=torch.int8)
    wp[:, :k] = w
    keep = torch.rand(n, k4 // 4, 4).argsort(dim=2)[:, :, :2]
    mask = torch.zeros(n, k4 // 4, 4, dtype=torch.bool).scatter_(2, keep, True).reshape(n, k4)
    return (wp * mask)[:, :k].contiguous()


@pytest.mark.parametrize("N,K", SHAPES)
@pytest.mark.parametrize("out", [torch.float32, torch.bfloat16, torch.float16])
def test_sparse24_linear_bit_exact(N, K, out):
    w_q = two_four(N, K)
    w_scale, bias = torch.rand(N) * 0.01 + 1e-3, torch.randn(N)
    values, meta = ops.pack_sparse24(w_q.to(DEV))
    for M in (1, 5, 64, 65, 129, 300):
        x = (torch.randn(M, K) * 3).to(out)
        for b in (bias, None):
            y = ops.sparse24_linear_int8(x.to(DEV), values, meta, w_scale.to(DEV), None if b is None else b.to(DEV), K)
            expect = ref.int8_linear_dynamic(x, w_q, w_scale, b)
            torch.testing.assert_close(y.cpu(), expect, rtol=0, atol=0, msg=f"M={M} bias={b is not None}")
            assert ops.cuda_last_kernel() == ("sm90_sparse24_wide" if out == torch.bfloat16 else "sm90_sparse24")


@pytest.mark.parametrize("variant", ["cooperative", "pingpong", "wide"])
@pytest.mark.parametrize("N,K", [(24, 200), (300, 1000), (7, 2323)])
def test_sparse24_variants_exact(monkeypatch, variant, N, K):
    """Each composition of the 2:4 GEMM (FASTINFER_SM90_VARIANT; bf16 outputs) on the weight packed once (one
    compressed layout serves all): the reference's bits, tiles that miss M, N and K included."""
    w_q = two_four(N, K)
    w_scale, bias = torch.rand(N) * 0.01 + 1e-3, torch.randn(N)
    values, meta = ops.pack_sparse24(w_q.to(DEV))
    monkeypatch.setenv("FASTINFER_SM90_VARIANT", variant)
    for M in (1, 65, 300):
        x = (torch.randn(M, K) * 3).to(torch.bfloat16)
        y = ops.sparse24_linear_int8(x.to(DEV), values, meta, w_scale.to(DEV), bias.to(DEV), K)
        assert ops.cuda_last_kernel() == ("sm90_sparse24" if variant == "cooperative" else f"sm90_sparse24_{variant}")
        torch.testing.assert_close(y.cpu(), ref.int8_linear_dynamic(x, w_q, w_scale, bias), rtol=0, atol=0,
                                   msg=f"M={M}")
    x = torch.randn(5, K)  # fp32 out: the others are built for bf16 only, the cooperative one serves
    ops.sparse24_linear_int8(x.to(DEV), values, meta, w_scale.to(DEV), bias.to(DEV), K)
    assert ops.cuda_last_kernel() == "sm90_sparse24"


def test_extremes_nan_and_zero_rows():
    N, K = 64, 512
    w_q = two_four(N, K, -127, 128)
    w_q[0] = torch.where(w_q[0] != 0, torch.tensor(127, dtype=torch.int8), w_q[0])
    values, meta = ops.pack_sparse24(w_q.to(DEV))
    x = torch.randn(4, K) * 100
    x[1, 3] = float("nan")
    x[2] = 0
    y = ops.sparse24_linear_int8(x.to(DEV), values, meta, torch.ones(N, device=DEV), None, K).cpu()
    torch.testing.assert_close(y, ref.int8_linear_dynamic(x, w_q, torch.ones(N)), rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(y[1]).all() and (y[2] == 0).all()


def test_refuses_a_weight_that_is_not_2_4():
    w = two_four(16, 128)
    w[3, 4:8] = torch.tensor([1, 2, 3, 0], dtype=torch.int8)
    with pytest.raises(RuntimeError, match="not 2:4 sparse: a group of 4 consecutive columns holds 3 nonzeros"):
        ops.pack_sparse24(w.to(DEV))
    values, meta = ops.pack_sparse24(two_four(16, 128).to(DEV))
    x = torch.randn(2, 128, device=DEV)
    with pytest.raises(RuntimeError, match="values must be the contiguous int8 tensor of"):
        ops.sparse24_linear_int8(x, values[:-1], meta, torch.ones(16, device=DEV), None, 128)
    with pytest.raises(RuntimeError, match=r"x.shape\[-1\] must equal in_features=128"):
        ops.sparse24_linear_int8(x[:, :100], values, meta, torch.ones(16, device=DEV), None, 128)
    with pytest.raises(RuntimeError, match="bias must be 1-D of length 16"):
        ops.sparse24_linear_int8(x, values, meta, torch.ones(16, device=DEV), torch.ones(15, device=DEV), 128)


def test_sparse_linear_on_gpu_and_moves():
    lin = nn.Linear(256, 96)
    model = nn.Sequential(lin)
    fastinfer.prune(model, pattern="2:4")
    fastinfer.pruning.remove_masks(model)
    gpu = SparseLinear.from_float(model[0].cuda(), torch.int8, pattern="2:4")
    assert gpu.format == "sparse24" and gpu.values.is_cuda
    cpu = SparseLinear.from_float(model[0].cpu(), torch.int8, pattern="2:4")
    assert torch.equal(gpu.int8_weight().cpu(), cpu.int8_weight())  # the compressed layout read back exactly
    x = torch.randn(7, 256)
    with torch.inference_mode():
        y_cpu = cpu(x)
        torch.testing.assert_close(gpu(x.to(DEV)).cpu(), y_cpu, rtol=0, atol=0)
        moved = cpu.cuda()
        assert moved.format == "sparse24"
        torch.testing.assert_close(moved(x.to(DEV)).cpu(), y_cpu, rtol=0, atol=0)
        back = moved.cpu()
        assert back.format == "slot128"
        torch.testing.assert_close(back(x), y_cpu, rtol=0, atol=0)
    with pytest.raises(ValueError, match="runs on the CPU only"):
        SparseLinear.from_float(model[0].cpu()).cuda()


def test_compile_graphs_and_opcheck():
    lin = nn.Linear(512, 128)
    with torch.no_grad():
        lin.weight.copy_(two_four(128, 512).float() * 0.01)
    s = SparseLinear.from_float(lin.cuda(), torch.int8)
    x = torch.randn(33, 512, device=DEV, dtype=torch.bfloat16)
    with torch.inference_mode():
        y = s(x)
        torch.testing.assert_close(torch.compile(s, fullgraph=True, backend="aot_eager")(x), y, rtol=0, atol=0)
        static_x = x.clone()
        g = torch.cuda.CUDAGraph()
        s(static_x)
        torch.cuda.synchronize()
        with torch.cuda.graph(g):
            static_y = s(static_x)
        static_x.copy_(x * 2)
        g.replay()
        torch.testing.assert_close(static_y, s(x * 2), rtol=0, atol=0)
    torch.library.opcheck(torch.ops.fastinfer.sparse24_linear_int8.default,
                          (x, s.values, s.meta, s.weight_scale, s.bias, 512))
