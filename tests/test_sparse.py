"""Sparse layouts and kernels (csr16, csr8, slot128) vs fastinfer.reference on the same pruned weights, on
every runnable path; packing, SparseLinear (formats, state_dict, compile, opcheck) and bad input.

Oracles: reference.sparse_linear (float64 sum of the layer's own dense weight: fp32 kernels sum in another
order, so a tolerance) and reference.sparse_linear_int8 (per-token quantization + exact int product +
the int8 epilogue: bit-exact)."""
import copy
import io

import pytest
import torch
from torch import nn

import fastinfer
from fastinfer import ops, reference
from fastinfer.nn import SparseLinear
from fastinfer.nn.sparse import CSR8_BELOW

from conftest import CAPS, assert_served

CASES = [  # (M, K, N, sparsity): K/N off every tile, 0% and 100%, batches on each kernel path
    (1, 37, 5, 0.5), (1, 300, 70, 0.9), (2, 130, 17, 0.7), (3, 513, 33, 0.95), (8, 255, 19, 0.7),
    (9, 64, 40, 0.3), (17, 1000, 13, 0.9), (70, 129, 31, 0.5), (3, 16, 4, 1.0), (5, 40, 6, 0.0),
    (129, 2323, 24, 0.97), (40, 700, 20, 0.5),  # the last two: several x^T passes per block (csr_passes.h)
    # AVX2's lane chunks (sparse_avx2.cc): 16 lanes; 32 + 2 rows as batch 1; 32 + 16 (40 above: 32 + 8)
    (12, 300, 20, 0.6), (34, 200, 70, 0.8), (45, 130, 33, 0.5),
]


def pruned_linear(K, N, sparsity, empty_row=True):
    lin = nn.Linear(K, N)
    with torch.no_grad():
        lin.weight[torch.rand(N, K) < sparsity] = 0
        if empty_row and N > 2:
            lin.weight[1] = 0          # an empty row
            lin.weight[:, 0] = 0       # an empty column
    return lin


def vector_tier(isa, int8=False):
    """The tier a sparse call is served by when kernels are capped at `isa`: AVX-512 (F/BW/VL/DQ) from the
    avx512_vnni tier up, where the int8 layout also needs VBMI byte permutes; the AVX2 kernels from the avx2
    tier up otherwise (the int8 one also on AVX-512 CPUs without VBMI). Below that, the scalar path."""
    if isa in ("avx512_vnni", "amx") and (not int8 or CAPS["avx512_vbmi"]):
        return "avx512_vnni"
    return "ref" if isa == "ref" else "avx2"


@pytest.mark.parametrize("fmt", ["csr16", "csr8"])
@pytest.mark.parametrize("M,K,N,sparsity", CASES)
def test_fp32_layouts_match_reference(isa, M, K, N, sparsity, fmt):
    lin = pruned_linear(K, N, sparsity)
    s = SparseLinear.from_float(lin, format=fmt)
    torch.testing.assert_close(s.dense_weight(), lin.weight.detach(), rtol=0, atol=0)  # packing is lossless
    x = torch.randn(M, K)
    with torch.inference_mode():
        y = s(x)
    expect = reference.sparse_linear(x, s.row_ptr, s.cols, s.values, s.bias, K, s._buffers.get("group_base"))
    torch.testing.assert_close(y, expect, rtol=1e-4, atol=1e-4)
    assert_served("sparse", vector_tier(isa))


@pytest.mark.parametrize("fmt", ["csr16", "csr8"])
@pytest.mark.parametrize("pattern", ["2:4", "dense"])
@pytest.mark.parametrize("M", [40, 70])
def test_rows_of_one_length_match_reference(M, pattern, fmt):
    # Every row holding the same number of entries (2:4: K / 2; a dense weight: K) takes L1-sized x^T passes
    # (sparse_avx512.cc, pass_columns): several passes per block at K = 1000, and a second lane chunk at M = 70.
    K, N = 1000, 33
    lin = nn.Linear(K, N)
    with torch.no_grad():
        if pattern == "2:4":
            groups = lin.weight.abs().reshape(N, K // 4, 4)
            keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, groups.argsort(dim=2)[:, :, 2:], True)
            lin.weight.mul_(keep.reshape(N, K))
    s = SparseLinear.from_float(lin, format=fmt)
    counts = s.row_ptr.diff()
    assert bool((counts == counts[0]).all())
    x = torch.randn(M, K)
    with torch.inference_mode():
        y = s(x)
    expect = reference.sparse_linear(x, s.row_ptr, s.cols, s.values, s.bias, K, s._buffers.get("group_base"))
    torch.testing.assert_close(y, expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("M,K,N,sparsity", CASES)
def test_int8_layout_is_bit_exact(isa, M, K, N, sparsity):
    lin = pruned_linear(K, N, sparsity)
    s = SparseLinear.from_float(lin, torch.int8)
    w_q, w_scale = reference.quantize_weight_per_channel(lin.weight)
    assert torch.equal(reference.slot128_dense(s.row_ptr, s.cols, s.values, N, K), w_q)
    assert torch.equal(s.weight_sum, w_q.sum(dim=1, dtype=torch.int32))
    x = torch.randn(M, K) * 3
    x[0, :3] = torch.tensor([50.0, -50.0, 0.0])[: min(3, K)]  # an outlier row
    with torch.inference_mode():
        y = s(x)
    expect = reference.sparse_linear_int8(x, s.row_ptr, s.cols, s.values, s.weight_sum, s.weight_scale, s.bias, K)
    assert torch.equal(y, expect)
    assert torch.equal(expect, reference.int8_linear_dynamic(x, w_q, w_scale, lin.bias.detach()))
    assert_served("sparse", vector_tier(isa, int8=True))


def test_int8_extremes_and_nan_rows(isa):
    # +-127 weights in every slot of a block, -128..127 activations after quantization, a NaN row.
    lin = nn.Linear(300, 40)
    with torch.no_grad():
        lin.weight.copy_(torch.where(torch.rand(40, 300) < 0.5, 0.0, 1.0) * torch.sign(torch.randn(40, 300)))
    s = SparseLinear.from_float(lin, torch.int8)
    x = torch.randn(4, 300) * 100
    x[2, 7] = float("nan")
    x[3] = 0
    with torch.inference_mode():
        y = s(x)
    expect = reference.sparse_linear_int8(x, s.row_ptr, s.cols, s.values, s.weight_sum, s.weight_scale, s.bias, 300)
    torch.testing.assert_close(y, expect, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(y[2]).all() and not torch.isnan(y[[0, 1, 3]]).any()


def test_int8_raw_op_over_the_whole_weight_range(isa):
    # Raw int8 weights over the whole range, -128 included (the AVX2 kernel multiplies |w| = 128 as u8),
    # against activations at +-127: row 3 holds -128 in four slots of one dword, where a pair of products
    # reaches 2 * 128 * 127. Batches of 1, 2, 3 and 7 rows take each row grouping of the kernels.
    K, N = 300, 37
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    w[torch.rand(N, K) < 0.6] = 0
    w[3, :8] = -128
    grp_ptr, idx, vals, w_sum = ops.pack_slot128(w)
    scale, bias = torch.rand(N) + 0.5, torch.randn(N)
    for M in (1, 2, 3, 7):
        x = torch.randn(M, K)
        x[:, :8] = torch.tensor([-90.0, -90, 90, -90, 90, 90, -90, -90])  # the row's amax: q = +-127
        y = ops.sparse_linear_int8(x, grp_ptr, idx, vals, w_sum, scale, bias, K)
        assert_served("sparse", vector_tier(isa, int8=True))
        expect = reference.sparse_linear_int8(x, grp_ptr, idx, vals, w_sum, scale, bias, K)
        assert torch.equal(y, expect)
        assert torch.equal(expect, reference.int8_linear_dynamic(x, w, scale, bias))


def test_int8_load_recomputes_row_sums():
    # weight_sum (the +128 correction of the AVX-512 and scalar kernels) is computed from the loaded values,
    # not taken from the file: a forged sum changes nothing, the caller's dict stays as it was (assign=True
    # too), and a file without weight_sum (strict=False) gets the sums all the same.
    s = SparseLinear.from_float(pruned_linear(200, 20, 0.8), torch.int8)
    assert torch.equal(reference.slot128_row_sums(s.row_ptr, s.values, 20, 200), s.weight_sum)
    x = torch.randn(3, 200)
    with torch.inference_mode():
        want = s(x)
    for assign in (False, True):
        state = {k: v.clone() if torch.is_tensor(v) else v for k, v in s.state_dict().items()}
        state["weight_sum"] += 7
        forged = state["weight_sum"].clone()
        t = SparseLinear(200, 20, value_dtype=torch.int8)
        t.load_state_dict(state, assign=assign)
        assert torch.equal(t.weight_sum, s.weight_sum) and torch.equal(state["weight_sum"], forged)
        with torch.inference_mode():
            assert torch.equal(t(x), want)
    state = {k: v for k, v in s.state_dict().items() if k != "weight_sum"}
    t = SparseLinear(200, 20, value_dtype=torch.int8)
    t.load_state_dict(state, strict=False)
    assert torch.equal(t.weight_sum, s.weight_sum)


def test_int8_tiers_agree_on_a_layout_with_columns_past_k(isa):
    # A slot pointing past in_features (the zero padding of the last segment, q = 0) or two slots on one
    # column: every tier sums q * w over the stored slots once the row sums are the stored values' (as a load
    # makes them), so they agree with the AVX2 kernel, which never reads them.
    s = SparseLinear.from_float(pruned_linear(100, 4, 0.5), torch.int8)
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in s.state_dict().items()}
    state["cols"][0], state["values"][0] = 110, 50              # row 0, column 110 >= K
    state["cols"][1], state["values"][1] = 5, 100               # row 0, two slots on column 5
    state["cols"][2], state["values"][2] = 5, 100
    t = SparseLinear(100, 4, value_dtype=torch.int8)
    t.load_state_dict(state)
    x = torch.randn(2, 100)
    with torch.inference_mode():
        y = t(x)
        assert_served("sparse", vector_tier(isa, int8=True))
        with fastinfer.use_isa("avx2" if "avx2" in CAPS["runnable"] else "ref"):
            assert torch.equal(y, t(x))


@pytest.mark.parametrize("value_dtype", [torch.float32, torch.int8])
def test_float16_model_runs_on_a_float32_copy(value_dtype):
    # After model.half() a float16 input on the CPU (which the kernels do not take) runs on one float32 copy
    # and comes back in float16, as Int8Linear does; bfloat16 goes to the kernels as it is.
    s = SparseLinear.from_float(pruned_linear(64, 8, 0.8), value_dtype)
    x = torch.randn(3, 64)
    with torch.inference_mode():
        want = s(x.half().float())
        y = copy.deepcopy(s).half()(x.half())
    assert y.dtype == torch.float16 and torch.equal(y, want.half())


def test_default_formats_and_bytes():
    lin90, lin50 = pruned_linear(4096, 64, 0.9, empty_row=False), pruned_linear(4096, 64, 0.5, empty_row=False)
    s90, s50 = SparseLinear.from_float(lin90), SparseLinear.from_float(lin50)
    assert (s90.format, s50.format) == ("csr16", "csr8") and CSR8_BELOW == 0.75
    dense = 4096 * 64 * 4
    assert s90.nbytes < 0.2 * dense and "sparsity=9" in repr(s90) and "csr16" in repr(s90)
    assert s50.nbytes < 0.7 * dense                   # 5.1 bytes per nonzero (csr16 would be 6)
    s8 = SparseLinear.from_float(lin90, torch.int8)
    assert s8.format == "slot128" and s8.nbytes < 0.1 * dense


def test_csr16_layout():
    w = torch.tensor([[0.0, 2.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    row_ptr, cols, vals = ops.pack_csr16(w)
    assert row_ptr.tolist() == [0, 16, 16, 32]
    assert cols[:2].tolist() == [1, 3] and vals[:2].tolist() == [2.0, 3.0] and not vals[2:16].any()
    wide = torch.zeros(1, 65536)
    wide[0, 65535] = 5.0  # the largest column: stored as uint16 65535 in an int16 tensor
    row_ptr, cols, vals = ops.pack_csr16(wide)
    assert cols[0].item() == -1 and torch.equal(reference.csr_dense(row_ptr, cols, vals, 65536), wide)


def test_csr8_groups():
    # Row 0: nonzeros at 0..19 (group 1: 16 of them, group 2: the next 4), then 100 (more than 63 past
    # 16: a new group), then 163 (63 past 100: same group).
    w = torch.zeros(2, 200)
    w[0, list(range(20)) + [100, 163]] = torch.arange(1.0, 23.0)
    row_ptr, offsets, base, vals = ops.pack_csr8(w)
    assert row_ptr.tolist() == [0, 48, 48]
    assert base.tolist() == [0, 16, 100]
    assert offsets[16:20].tolist() == [0, 1, 2, 3] and offsets[32:34].tolist() == [0, 63]
    assert torch.equal(reference.csr_dense(row_ptr, offsets, vals, 200, base), w)


def test_slot128_layout():
    w = torch.zeros(17, 130, dtype=torch.int8)
    w[0, [1, 2, 3, 4, 5]] = torch.tensor([1, 2, 3, 4, 5], dtype=torch.int8)  # 5 slots: 2 groups in segment 0
    w[16, 129] = -7                                                             # block 1, segment 1
    grp_ptr, idx, vals, w_sum = ops.pack_slot128(w)
    assert grp_ptr.tolist() == [0, 2, 2, 2, 3]  # (block, segment) cells: (0,0) (0,1) (1,0) (1,1)
    assert vals[:4].tolist() == [1, 2, 3, 4] and vals[64] == 5 and idx[64] == 5
    assert vals[128] == -7 and idx[128] == 1
    assert w_sum[0] == 15 and w_sum[16] == -7 and torch.equal(reference.slot128_dense(grp_ptr, idx, vals, 17, 130), w)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "block"])
def test_pruned_patterns_through_sparsify(pattern):
    model = nn.Sequential(nn.Linear(256, 96), nn.ReLU(), nn.Linear(96, 32))
    fastinfer.prune(model, pattern=pattern, sparsity=None if pattern == "2:4" else 0.8)
    fastinfer.pruning.remove_masks(model)
    x = torch.randn(5, 256)
    with torch.inference_mode():
        want = model(x)
        for dtype in (torch.float32, torch.int8):
            import copy
            sparse = fastinfer.sparsify(copy.deepcopy(model), value_dtype=dtype)
            assert sum(isinstance(m, SparseLinear) for m in sparse.modules()) == 2
            got = sparse(x)
            if dtype == torch.float32:
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            else:  # W8A8: a quality bound, not equality
                assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.99
    report = fastinfer.sparsity_report(sparse)
    assert all(layer.format.startswith("slot128") for layer in report.layers.values())


@pytest.mark.parametrize("fmt,dtype", [("csr16", torch.float32), ("csr8", torch.float32), ("slot128", torch.int8)])
def test_leading_dims_bf16_and_state_dict(fmt, dtype):
    lin = pruned_linear(64, 24, 0.8)
    s = SparseLinear.from_float(lin, dtype, format=fmt)
    x = torch.randn(2, 3, 64)
    with torch.inference_mode():
        y = s(x)
        assert y.shape == (2, 3, 24)
        assert s(x.bfloat16()).dtype == torch.bfloat16
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    fresh = SparseLinear(64, 24)  # default csr16 fp32: the file's layout wins
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    assert fresh.format == fmt and fresh.value_dtype == dtype and fresh.nnz == s.nnz
    with torch.inference_mode():
        torch.testing.assert_close(fresh(x), y, rtol=0, atol=0)
    # A layer of another shape refuses the file (csr row pointers depend on out_features only, so the
    # buffers alone would have loaded and given wrong answers).
    for other in (SparseLinear(32, 24), SparseLinear(64, 23)):
        buf.seek(0)
        with pytest.raises(RuntimeError, match=r"the checkpoint holds a sparse \[out_features, in_features\] = "
                                               r"\[24, 64\] layer"):
            other.load_state_dict(torch.load(buf))


@pytest.mark.parametrize("fmt,dtype", [("csr16", torch.float32), ("csr8", torch.float32), ("slot128", torch.int8)])
def test_compile_and_opcheck(fmt, dtype):
    lin = pruned_linear(48, 20, 0.7)
    s = SparseLinear.from_float(lin, dtype, format=fmt)
    x = torch.randn(5, 48)
    with torch.inference_mode():
        torch.testing.assert_close(torch.compile(s, fullgraph=True, backend="eager")(x), s(x), rtol=0, atol=0)
    if fmt == "slot128":
        torch.library.opcheck(torch.ops.fastinfer.sparse_linear_int8.default,
                              (x, s.row_ptr, s.cols, s.values, s.weight_sum, s.weight_scale, s.bias, 48))
        torch.library.opcheck(torch.ops.fastinfer.pack_slot128.default, (torch.randint(-2, 3, (20, 48),
                                                                                       dtype=torch.int8),))
    else:
        torch.library.opcheck(torch.ops.fastinfer.sparse_linear.default,
                              (x, s.row_ptr, s.cols, s.values, s.bias, 48, s._buffers.get("group_base")))
        pack = torch.ops.fastinfer.pack_csr16 if fmt == "csr16" else torch.ops.fastinfer.pack_csr8
        torch.library.opcheck(pack.default, (lin.weight.detach(),))


def test_dtype_casts_keep_the_layout_and_gpu_moves_are_refused_clearly():
    lin = pruned_linear(64, 24, 0.8)
    for s in (SparseLinear.from_float(lin), SparseLinear.from_float(lin, torch.int8)):
        x = torch.randn(3, 64)
        with torch.inference_mode():
            y = s(x)
            s.half()  # storage dtypes are fixed: fp32 values and scales stay fp32
            assert s.values.dtype == (torch.int8 if s.format == "slot128" else torch.float32)
            assert s.bias.dtype == torch.float32
            torch.testing.assert_close(s(x), y, rtol=0, atol=0)
    for value_dtype in (torch.float32, torch.int8):
        with pytest.raises(ValueError, match="cannot move to 'meta': its kernels run on the CPU and on Hopper GPUs"):
            SparseLinear.from_float(lin, value_dtype).to("meta")


def test_bad_input():
    s = SparseLinear.from_float(pruned_linear(32, 8, 0.5), format="csr16")
    x = torch.randn(2, 32)
    with pytest.raises(RuntimeError, match=r"x.shape\[-1\] must equal the weight's in_features K=32"):
        ops.sparse_linear(torch.randn(2, 31), s.row_ptr, s.cols, s.values, None, 32)
    bad = s.row_ptr.clone()
    bad[1] += 1
    with pytest.raises(RuntimeError, match="must be a non-negative multiple of 16"):
        ops.sparse_linear(x, bad, s.cols, s.values, None, 32)
    with pytest.raises(RuntimeError, match="row_ptr must start at 0 and end at"):
        ops.sparse_linear(x, s.row_ptr, s.cols[:-16].clone(), s.values[:-16].clone(), None, 32)
    with pytest.raises(RuntimeError, match="cols must be a contiguous 1-D Short tensor"):
        ops.sparse_linear(x, s.row_ptr, s.cols.int(), s.values, None, 32)
    with pytest.raises(RuntimeError, match="values must be a contiguous 1-D float32"):
        ops.sparse_linear(x, s.row_ptr, s.cols, s.values.to(torch.int8), None, 32)
    with pytest.raises(RuntimeError, match=r"in_features must be in \[1, 65536\]"):
        ops.sparse_linear(x, s.row_ptr, s.cols, s.values, None, 70000)
    with pytest.raises(RuntimeError, match="x must be float32 or bfloat16"):
        ops.sparse_linear(x.double(), s.row_ptr, s.cols, s.values, None, 32)
    with pytest.raises(RuntimeError, match="bias must be 1-D of length 8"):
        ops.sparse_linear(x, s.row_ptr, s.cols, s.values, torch.zeros(9), 32)
    c8 = SparseLinear.from_float(pruned_linear(32, 8, 0.5), format="csr8")
    with pytest.raises(RuntimeError, match="group_base must be a contiguous 1-D Short tensor"):
        ops.sparse_linear(x, c8.row_ptr, c8.cols, c8.values, None, 32, c8.group_base[:-1].clone())
    with pytest.raises(RuntimeError, match="cols must be a contiguous 1-D Byte tensor"):
        ops.sparse_linear(x, c8.row_ptr, c8.cols.short(), c8.values, None, 32, c8.group_base)
    i8 = SparseLinear.from_float(pruned_linear(32, 8, 0.5), torch.int8)
    args = [x, i8.row_ptr, i8.cols, i8.values, i8.weight_sum, i8.weight_scale, None, 32]
    with pytest.raises(RuntimeError, match="grp_ptr must be a contiguous 1-D int32 tensor of 2 offsets"):
        ops.sparse_linear_int8(*args[:1], torch.zeros(3, dtype=torch.int32), *args[2:])
    with pytest.raises(RuntimeError, match="values must be a contiguous 1-D int8 tensor of 64-byte groups"):
        ops.sparse_linear_int8(*args[:3], i8.values[:-1].clone(), *args[4:])
    with pytest.raises(RuntimeError, match="w_scale must be 1-D of length 8"):
        ops.sparse_linear_int8(*args[:5], torch.ones(7), *args[6:])
    with pytest.raises(RuntimeError, match="weight must be 2-D"):
        ops.pack_csr16(torch.zeros(4))
    with pytest.raises(RuntimeError, match="weight must have dtype Char"):
        ops.pack_slot128(torch.zeros(4, 4))
    with pytest.raises(RuntimeError, match=r"in_features must be in \[1, 65536\]"):
        ops.pack_csr8(torch.zeros(2, 65537))
    if not ops.BUILD.get("sparse24"):  # the Hopper 2:4 ops say why they cannot run in this build
        with pytest.raises(ValueError, match="this build has no 2:4 sparse CUDA kernels"):
            ops.pack_sparse24(torch.zeros(4, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match="value_dtype must be"):
        SparseLinear(4, 4, value_dtype=torch.float16)
    with pytest.raises(ValueError, match="does not hold torch.int8 values"):
        SparseLinear(4, 4, value_dtype=torch.int8, format="csr8")
    with pytest.raises(ValueError, match="format must be one of"):
        SparseLinear(4, 4, format="bsr")


def test_corrupt_layouts_stay_in_bounds(isa):
    # Wrong answers for corrupt buffers, never a crash or a read out of bounds: columns and group bases
    # past K, offsets past the 64-column window, slot indices past the segment.
    x = torch.randn(5, 40)
    s = SparseLinear.from_float(pruned_linear(40, 8, 0.5), format="csr16")
    wild = s.cols.clone()
    wild[0] = -1  # 65535
    for m in (1, 5):
        ops.sparse_linear(x[:m], s.row_ptr, wild, s.values, None, 40)
    c8 = SparseLinear.from_float(pruned_linear(40, 8, 0.5), format="csr8")
    base, off = c8.group_base.clone(), c8.cols.clone()
    base[0], off[:16] = -1, 255
    for m in (1, 5):
        ops.sparse_linear(x[:m], c8.row_ptr, off, c8.values, None, 40, base)
    i8 = SparseLinear.from_float(pruned_linear(40, 8, 0.5), torch.int8)
    ops.sparse_linear_int8(x, i8.row_ptr, torch.full_like(i8.cols, 255), i8.values, i8.weight_sum,
                           i8.weight_scale, None, 40)


@pytest.mark.parametrize("cap", [None, "ref"])
def test_sparsify_int8_warns_where_its_kernel_is_scalar(cap):
    # slot128 has AVX-512 (VBMI) and AVX2 kernels; with kernels capped at the scalar tier the reference path
    # runs, slower than dense layers, and sparsify says so (float32: never a warning).
    import warnings

    def messages(dtype):
        model = nn.Sequential(nn.Linear(128, 64))
        fastinfer.prune(model, pattern="unstructured", sparsity=0.9)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            fastinfer.sparsify(model, value_dtype=dtype)
        return [str(w.message) for w in rec if "scalar reference path" in str(w.message)]

    with fastinfer.use_isa(cap or "amx"):
        assert bool(messages(torch.int8)) == (fastinfer.cpu_capabilities()["active"] == "ref")
        assert messages(torch.float32) == []


def test_sparsify_reports_layers_already_converted():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    fastinfer.prune(model, pattern="unstructured", sparsity=0.9)
    fastinfer.sparsify(model, include="0")
    fastinfer.remove_masks(model)
    fastinfer.quantize(model)
    reasons = dict(fastinfer.sparsify(model).fastinfer_sparsify_report.skipped)
    assert reasons["0"] == "already a SparseLinear" and reasons["2"].startswith("already an Int8Linear")


def test_sparsify_and_from_float_check_their_arguments():
    # checked up front: a wrong value_dtype was accepted when no layer qualified, a str min_sparsity raised
    # Python's comparison TypeError, and any pattern string was stored
    import fastinfer

    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValueError, match="value_dtype must be torch.float32 or torch.int8"):
        fastinfer.sparsify(model, value_dtype="garbage")
    with pytest.raises(TypeError, match="min_sparsity must be a number"):
        fastinfer.sparsify(model, min_sparsity="0.5")
    with pytest.raises(TypeError, match="min_sparsity must be a number"):
        fastinfer.sparsify(model, min_sparsity=None)
    with pytest.raises(ValueError, match=r"min_sparsity must be in \[0, 1\]"):
        fastinfer.sparsify(model, min_sparsity=float("nan"))
    for bad in ("weird", "block0x4", "2:4+", 3):
        with pytest.raises(ValueError, match="pattern must be one of"):
            SparseLinear.from_float(nn.Linear(8, 8), pattern=bad)


@pytest.mark.parametrize("steps", [[("block", 0.9)], [("2:4", None), ("unstructured", 0.7)]])
def test_sparsify_keeps_the_mask_label_of_block_and_re_pruned_layers(steps):
    # fastinfer.prune labels a block mask 'block1x16' and a layer pruned twice '2:4+unstructured': sparsify takes
    # such layers as they are (the README's route) and the SparseLinear reports that label
    import fastinfer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    for pattern, sparsity in steps:
        fastinfer.prune(model, pattern=pattern, sparsity=sparsity)
    x = torch.randn(3, 64)
    with torch.no_grad():
        want = model(x)
    fastinfer.sparsify(model.eval(), min_sparsity=0.0)
    labels = [m.pattern for m in model.modules() if isinstance(m, SparseLinear)]
    assert labels == (["block1x16"] * 2 if steps[0][0] == "block" else ["2:4+unstructured"] * 2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
