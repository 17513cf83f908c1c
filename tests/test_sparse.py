"""sparse_linear / SparseLinear vs the dense reference on the same pruned weights, every runnable path."""
import io

import pytest
import torch
from torch import nn

import fastinfer
from fastinfer import ops
from fastinfer.nn import SparseLinear
from fastinfer.nn.sparse import pack_csr16

from conftest import assert_served

CASES = [  # (M, K, N, sparsity)
    (1, 37, 5, 0.5), (1, 300, 70, 0.9), (8, 513, 33, 0.95), (17, 255, 19, 0.7), (70, 64, 40, 0.3),
    (3, 16, 4, 1.0), (5, 40, 6, 0.0), (129, 1000, 13, 0.9),
]


def pruned_linear(K, N, sparsity, empty_row=True):
    lin = nn.Linear(K, N)
    with torch.no_grad():
        lin.weight[torch.rand(N, K) < sparsity] = 0
        if empty_row and N > 2:
            lin.weight[1] = 0          # an empty row
            lin.weight[:, 0] = 0       # an empty column
    return lin


@pytest.mark.parametrize("value_dtype", [torch.float32, torch.int8])
@pytest.mark.parametrize("M,K,N,sparsity", CASES)
def test_sparse_linear_matches_dense(isa, M, K, N, sparsity, value_dtype):
    # Oracle: x @ W^T with the layer's own (dequantized) dense weight; fp32 sums in another order.
    lin = pruned_linear(K, N, sparsity)
    s = SparseLinear.from_float(lin, value_dtype)
    x = torch.randn(M, K)
    with torch.inference_mode():
        y = s(x)
    expect = x @ s.dense_weight().t() + lin.bias
    torch.testing.assert_close(y, expect, rtol=1e-4, atol=1e-4)
    if value_dtype == torch.float32:
        torch.testing.assert_close(s.dense_weight(), lin.weight.detach(), rtol=0, atol=0)
    # The tier below AVX-512 has no vector sparse kernel: it runs (and reports) the scalar path.
    assert_served("sparse", "avx512_vnni" if isa in ("avx512_vnni", "amx") else "ref")


def test_layout_and_bytes():
    w = torch.tensor([[0.0, 2.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    row_ptr, cols, vals = pack_csr16(w)
    assert row_ptr.tolist() == [0, 16, 16, 32]
    assert cols[:2].tolist() == [1, 3] and vals[:2].tolist() == [2.0, 3.0] and not vals[2:16].any()
    lin = pruned_linear(4096, 64, 0.9, empty_row=False)
    s = SparseLinear.from_float(lin)
    assert s.nbytes < 0.2 * lin.weight.numel() * 4 and "sparsity=9" in repr(s)


def test_leading_dims_bf16_and_state_dict():
    lin = pruned_linear(64, 24, 0.8)
    s = SparseLinear.from_float(lin, torch.int8)
    x = torch.randn(2, 3, 64)
    with torch.inference_mode():
        y = s(x)
        assert y.shape == (2, 3, 24)
        assert s(x.bfloat16()).dtype == torch.bfloat16
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    fresh = SparseLinear(64, 24, value_dtype=torch.int8)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    with torch.inference_mode():
        torch.testing.assert_close(fresh(x), y, rtol=0, atol=0)
    assert fresh.nnz == s.nnz


def test_compile_and_opcheck():
    lin = pruned_linear(48, 20, 0.7)
    s = SparseLinear.from_float(lin)
    x = torch.randn(5, 48)
    with torch.inference_mode():
        torch.testing.assert_close(torch.compile(s, fullgraph=True, backend="eager")(x), s(x), rtol=0, atol=0)
    torch.library.opcheck(torch.ops.fastinfer.sparse_linear.default,
                          (x, s.row_ptr, s.cols, s.values, None, s.bias, 48))


def test_bad_input():
    s = SparseLinear.from_float(pruned_linear(32, 8, 0.5))
    x = torch.randn(2, 32)
    with pytest.raises(RuntimeError, match=r"x.shape\[-1\] must equal in_features=32"):
        ops.sparse_linear(torch.randn(2, 31), s.row_ptr, s.cols, s.values, None, None, 32)
    bad = s.row_ptr.clone()
    bad[1] += 1
    with pytest.raises(RuntimeError, match="must be a non-negative multiple of 16"):
        ops.sparse_linear(x, bad, s.cols, s.values, None, None, 32)
    with pytest.raises(RuntimeError, match="row_ptr must start at 0 and end at the number of entries"):
        ops.sparse_linear(x, s.row_ptr, s.cols[:-16].clone(), s.values[:-16].clone(), None, None, 32)
    with pytest.raises(RuntimeError, match="int8 values need w_scale"):
        ops.sparse_linear(x, s.row_ptr, s.cols, s.values.to(torch.int8), None, None, 32)
    with pytest.raises(RuntimeError, match="cols must be a contiguous 1-D int16"):
        ops.sparse_linear(x, s.row_ptr, s.cols.int(), s.values, None, None, 32)
    with pytest.raises(RuntimeError, match=r"in_features must be in \[1, 65536\]"):
        ops.sparse_linear(x, s.row_ptr, s.cols, s.values, None, None, 70000)
    # Corrupted column indices are clamped into range: a wrong answer for a corrupt buffer, never a crash.
    wild = s.cols.clone()
    wild[0] = -1  # 65535
    ops.sparse_linear(x, s.row_ptr, wild, s.values, None, None, 32)
    with pytest.raises(ValueError, match="value_dtype must be"):
        SparseLinear(4, 4, value_dtype=torch.float16)
