"""Bad input raises a clear exception naming the argument; never a crash or a wrong answer."""
import pytest
import torch

from fastinfer import ops
from fastinfer.nn import Int8Linear


@pytest.fixture
def layer():
    w = torch.randint(-127, 128, (8, 16), dtype=torch.int8)
    return ops.pack_int8_weight(w), torch.rand(8)


def test_linear_wrong_dtype(layer):
    packed, scale = layer
    with pytest.raises(RuntimeError, match="x must be float32 or bfloat16, got Half"):
        ops.int8_linear_dynamic(torch.randn(2, 16).half(), packed, scale)
    with pytest.raises(RuntimeError, match="x must be float32 or bfloat16"):
        ops.int8_linear_weight_only(torch.randint(0, 3, (2, 16)), packed, scale)


def test_linear_mismatched_k(layer):
    packed, scale = layer
    with pytest.raises(RuntimeError, match=r"x.shape\[-1\] must equal the weight's in_features K=16"):
        ops.int8_linear_dynamic(torch.randn(2, 15), packed, scale)


def test_linear_scalar_input(layer):
    packed, scale = layer
    with pytest.raises(RuntimeError, match="at least 1 dimension"):
        ops.int8_linear_dynamic(torch.tensor(1.0), packed, scale)


def test_scale_and_bias_lengths(layer):
    packed, scale = layer
    with pytest.raises(RuntimeError, match="w_scale must be 1-D of length 8"):
        ops.int8_linear_dynamic(torch.randn(2, 16), packed, torch.rand(7))
    with pytest.raises(RuntimeError, match="w_scale must have dtype Float"):
        ops.int8_linear_dynamic(torch.randn(2, 16), packed, scale.double())
    with pytest.raises(RuntimeError, match="bias must be 1-D of length 8"):
        ops.int8_linear_dynamic(torch.randn(2, 16), packed, scale, torch.zeros(9))
    with pytest.raises(RuntimeError, match="bias must be a floating-point tensor"):
        ops.int8_linear_weight_only(torch.randn(2, 16), packed, scale, torch.zeros(8, dtype=torch.long))


def test_packed_weight_checks(layer):
    packed, scale = layer
    x = torch.randn(2, 16)
    with pytest.raises(RuntimeError, match="packed_w must be a 1-D uint8 packed weight"):
        ops.int8_linear_dynamic(x, packed.view(torch.int8), scale)
    with pytest.raises(RuntimeError, match="buffer size does not match its header"):
        ops.int8_linear_dynamic(x, packed[:-1].clone(), scale)
    bad = packed.clone()
    bad[0] = 0
    with pytest.raises(RuntimeError, match="bad magic"):
        ops.int8_linear_dynamic(x, bad, scale)
    bad = packed.clone()
    bad[8] = 99  # version field
    with pytest.raises(RuntimeError, match="unsupported packed-weight version"):
        ops.int8_linear_dynamic(x, bad, scale)
    bad = packed.clone()
    bad[16:24] = torch.tensor([100, 0, 0, 0, 0, 0, 0, 0], dtype=torch.uint8)  # N field
    with pytest.raises(RuntimeError, match="corrupt header|does not match"):
        ops.int8_linear_dynamic(x, bad, scale)
    with pytest.raises(RuntimeError, match="shorter than the 64-byte packed header"):
        ops.int8_linear_dynamic(x, packed[:10].clone(), scale)


def test_int8_mm_checks(layer):
    packed, _ = layer
    with pytest.raises(RuntimeError, match="a must have dtype Char"):
        ops.int8_mm(torch.zeros(2, 16, dtype=torch.uint8), packed, 8)
    with pytest.raises(RuntimeError, match="a must be 2-D"):
        ops.int8_mm(torch.zeros(2, 2, 16, dtype=torch.int8), packed, 8)
    with pytest.raises(RuntimeError, match=r"a.shape\[1\] must equal the weight's K=16"):
        ops.int8_mm(torch.zeros(2, 17, dtype=torch.int8), packed, 8)
    with pytest.raises(RuntimeError, match="n=9 does not match the packed weight's N=8"):
        ops.int8_mm(torch.zeros(2, 16, dtype=torch.int8), packed, 9)
    assert ops.int8_mm(torch.zeros(0, 16, dtype=torch.int8), packed, 8).shape == (0, 8)


def test_int8_scaled_mm_checks(layer):
    packed, scale = layer
    a = torch.zeros(3, 16, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="a_scale must be 1-D of length 3"):
        ops.int8_scaled_mm(a, torch.ones(2), packed, scale)
    with pytest.raises(RuntimeError, match="b_scale must be 1-D of length 8"):
        ops.int8_scaled_mm(a, torch.ones(3), packed, torch.ones(3))
    with pytest.raises(RuntimeError, match="out_dtype must be torch.float32 or torch.bfloat16"):
        ops.int8_scaled_mm(a, torch.ones(3), packed, scale, None, torch.int32)


def test_pack_checks():
    with pytest.raises(RuntimeError, match="weight must have dtype Char"):
        ops.pack_int8_weight(torch.randn(4, 4))
    with pytest.raises(RuntimeError, match="weight must be 2-D"):
        ops.pack_int8_weight(torch.zeros(4, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="N >= 1 and K >= 1"):
        ops.pack_int8_weight(torch.zeros(0, 4, dtype=torch.int8))
    with pytest.raises(RuntimeError, match=r"K \(in_features\) must be <= 131071"):
        ops.pack_int8_weight(torch.zeros(1, 131072, dtype=torch.int8))


def test_quantize_checks():
    with pytest.raises(RuntimeError, match="x must be 2-D"):
        ops.quantize_per_token(torch.randn(2, 3, 4))
    with pytest.raises(RuntimeError, match="x must be float32 or bfloat16, got Double"):
        ops.quantize_per_token(torch.randn(2, 3).double())


# Scales whose float32 value or reciprocal overflows or flushes to zero (1e300 once crashed the static
# quantizer: 1 / float32(1e300) = 0 selected its dynamic branch) are refused on every static op.
@pytest.mark.parametrize("bad", [1e300, 1e38, 1e-300, 1e-39, 0.0, -1.0, float("nan"), float("inf")])
def test_scale_outside_float32_normal_range(layer, bad):
    packed, scale = layer
    x = torch.randn(2, 16)
    msg = "must be a positive finite number .* within float32's normal range"
    with pytest.raises(RuntimeError, match="x_scale " + msg):
        ops.int8_linear_static(x, bad, packed, scale)
    with pytest.raises(RuntimeError, match="out_scale " + msg):
        ops.int8_linear_static(x, 0.1, packed, scale, out_scale=bad)
    cw = torch.randint(-127, 128, (4, 4, 3, 3), dtype=torch.int8)
    with pytest.raises(RuntimeError, match="x_scale " + msg):
        ops.int8_conv2d(torch.randn(1, 4, 5, 5), ops.pack_conv_weight(cw), torch.ones(4), None, (3, 3), x_scale=bad)
    q = torch.zeros(1, 4, 5, 5, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="a_scale " + msg):
        ops.int8_add(q, q, bad, 0.1)
    with pytest.raises(ValueError, match="x_scale must be a positive finite float within float32's normal range"):
        Int8Linear(16, 8, scheme="w8a8_static", x_scale=bad)


def test_scale_at_float32_normal_range_ends(layer):
    packed, scale = layer
    x = torch.randn(2, 16)
    for s in (1.1754943508222875e-38, 8.5e37):  # FLT_MIN and just under 1 / FLT_MIN: accepted, finite output
        y = ops.int8_linear_static(x, s, packed, scale)
        assert torch.isfinite(y).all()


def test_unsupported_device(layer):
    packed, scale = layer
    with pytest.raises(ValueError, match="x is on device 'meta', but this build of fastinfer has kernels for cpu"):
        ops.int8_linear_dynamic(torch.empty(2, 16, device="meta"), packed, scale)
    lin = torch.nn.Linear(4, 4, device="meta")
    with pytest.raises(ValueError, match="linear is on device 'meta'"):
        Int8Linear.from_float(lin)


def test_bad_isa_name():
    import fastinfer
    with pytest.raises(ValueError, match="isa must be one of"):
        with fastinfer.use_isa("sse9"):
            pass
    with pytest.raises(ValueError, match="isa must be one of ref, avx2, avx_vnni, avx512_vnni, amx"):
        ops.set_isa_cap("sse9")
    with pytest.raises(ValueError, match="family must be int8_gemm, w8_gemm, quantize, dwconv, sparse, conv_direct, "
                                         "add, gconv, gate, quantize_planes, avg_pool, max_pool, dwconv_path, conv_store, "
                                         "int8_gemm_step, w8_gemm_step, add_path, conv_direct_mode or "
                                         "conv_padded_rows"):
        ops.last_kernel("nope")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_refused(bad):
    """A NaN or infinite weight has no int8 value: from_float refuses it (it used to zero the channel, or
    make it NaN, silently), and fastinfer.quantize leaves such a layer float and says why."""
    from torch import nn

    import fastinfer
    from fastinfer.nn import Int8Conv2d

    lin, conv = nn.Linear(8, 4), nn.Conv2d(3, 5, 3)
    with torch.no_grad():
        lin.weight[1, 2] = bad
        conv.weight[3, 0, 1, 1] = bad
    with pytest.raises(ValueError, match=r"NaN or infinite values \(output channel\(s\) \[1\]\)"):
        Int8Linear.from_float(lin)
    with pytest.raises(ValueError, match=r"NaN or infinite values \(output channel\(s\) \[3\]\)"):
        Int8Conv2d.from_float(conv)
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(4, 2))
    fastinfer.quantize(model)
    assert isinstance(model[0], nn.Linear) and isinstance(model[2], Int8Linear)
    assert [name for name, _ in model.fastinfer_report.skipped] == ["0"]


@pytest.mark.parametrize("kw", [{"include": 5}, {"exclude": 3.5}, {"include": [1, 2]}])
def test_quantize_include_exclude_types(kw):
    from torch import nn

    import fastinfer

    with pytest.raises(TypeError, match=f"{next(iter(kw))} must be a glob pattern, a list of them, or a callable"):
        fastinfer.quantize(nn.Sequential(nn.Linear(4, 4)), **kw)


def test_backward_through_int8_layers_raises():
    """The layers are inference-only: a forward with inputs that require grad runs, and a backward through
    its output raises (torch's default was a deprecation warning and x.grad left None)."""
    from torch import nn

    from fastinfer.nn import Int8Conv2d, SparseLinear

    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[:, ::2] = 0
    cases = [(Int8Linear.from_float(lin), torch.randn(2, 8)), (Int8Linear.from_float(lin, "w8_only"), torch.randn(2, 8)),
             (Int8Conv2d.from_float(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 6, 6)),
             (SparseLinear.from_float(lin), torch.randn(2, 8)),
             (SparseLinear.from_float(lin, torch.int8), torch.randn(2, 8)),
             (lambda x: ops.int8_add(x, x, relu=True), torch.randn(2, 4, 3, 3))]
    for layer, x in cases:
        x.requires_grad_(True)
        y = layer(x)
        assert y.requires_grad
        with pytest.raises(RuntimeError, match="derivative for fastinfer::[a-z0-9_]+ is not implemented"):
            y.sum().backward()
        with torch.no_grad():
            assert not layer(x).requires_grad


def test_layers_past_the_kernels_k_limit_stay_float():
    # The int8 kernels sum K products exactly in int32 up to ops.MAX_K (the entry layer's limit: checked here
    # at both ends); quantize leaves wider layers float and says why, and sparsify keeps layers past
    # SparseLinear's 65536 inputs dense, instead of raising halfway through the model.
    import fastinfer
    from torch import nn
    from fastinfer.nn.sparse import MAX_K as SPARSE_MAX_K

    ops.pack_int8_weight(torch.zeros(1, ops.MAX_K, dtype=torch.int8))
    with pytest.raises(RuntimeError, match=f"must be <= {ops.MAX_K}"):
        ops.pack_int8_weight(torch.zeros(1, ops.MAX_K + 1, dtype=torch.int8))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(ops.MAX_K // 9 + 1, 2, 3), nn.Flatten(),
                          nn.Linear(ops.MAX_K + 1, 2), nn.Linear(2, 2))
    fastinfer.quantize(model)
    assert [type(m).__name__ for m in model] == ["Int8Conv2d", "Conv2d", "Flatten", "Linear", "Int8Linear"]
    reasons = dict(model.fastinfer_report.skipped)
    assert "past the int8 kernels' limit of 131071" in reasons["1"] and "kernel taps" in reasons["1"]
    assert f"is {ops.MAX_K + 1}" in reasons["3"] and "in_features" in reasons["3"]

    wide = nn.Sequential(nn.Linear(SPARSE_MAX_K + 1, 2), nn.Linear(64, 2))
    with torch.no_grad():
        for layer in wide:
            layer.weight[:, 1::2] = 0
    fastinfer.sparsify(wide)
    assert [type(m).__name__ for m in wide] == ["Linear", "SparseLinear"]
    assert "past SparseLinear's limit of 65536" in dict(wide.fastinfer_sparsify_report.skipped)["0"]


def test_layers_refuse_non_tensor_inputs():
    import fastinfer
    from torch import nn

    lin = fastinfer.quantize(nn.Sequential(nn.Linear(4, 4)).eval())[0]
    conv = fastinfer.quantize(nn.Sequential(nn.Conv2d(3, 4, 1)).eval())[0]
    for layer, bad in ((lin, [1.0] * 4), (conv, [[[1.0]]] * 3), (lin, None)):
        with pytest.raises(TypeError, match="input must be a torch.Tensor, got"):
            layer(bad)
