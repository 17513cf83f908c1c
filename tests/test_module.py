"""Int8Linear and fastinfer.quantize: quality vs float, state_dict, repr, compile/export, opcheck."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastinfer
from fastinfer import ops
from fastinfer.nn import Int8Linear


def sqnr_db(ref, out):
    ref, out = ref.float(), out.float()
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))


class MLP(nn.Module):
    def __init__(self, d=64, h=96, o=10):
        super().__init__()
        self.fc1, self.act, self.fc2, self.head = nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.Linear(h, o)

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


@pytest.mark.parametrize("scheme,min_db", [("w8a8_dynamic", 30.0), ("w8_only", 38.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_close_to_float(scheme, min_db, dtype):
    # int8 per-channel weights (+ per-token activations): SQNR of a Gaussian layer is ~35-45 dB.
    lin = nn.Linear(512, 256)
    q = Int8Linear.from_float(lin, scheme)
    x = torch.randn(4, 33, 512)
    with torch.inference_mode():
        y_ref, y = lin(x), q(x.to(dtype))
    assert y.dtype == dtype and y.shape == (4, 33, 256)
    assert sqnr_db(y_ref, y) > min_db - (8 if dtype == torch.bfloat16 else 0)


def test_dequantized_weight_and_repr():
    lin = nn.Linear(40, 24)
    q = Int8Linear.from_float(lin)
    err = (q.dequantized_weight() - lin.weight).abs().max()
    assert err <= q.weight_scale.max() / 2 + 1e-6  # half a quantization step
    r = repr(q)
    assert "in_features=40" in r and "out_features=24" in r and "scheme=w8a8_dynamic" in r and "isa=" in r


@pytest.mark.parametrize("scheme", ["w8a8_dynamic", "w8_only"])
def test_state_dict_roundtrip(scheme):
    model = fastinfer.quantize(MLP(), scheme=scheme)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    fresh = fastinfer.quantize(MLP(), scheme=scheme)  # other random weights
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    x = torch.randn(5, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert set(model.state_dict()) == {f"{m}.{b}" for m in ("fc1", "fc2", "head")
                                        for b in ("packed_weight", "weight_scale", "bias", "_extra_state")}


def test_dtype_cast_keeps_packed_weight_and_fp32_scales():
    # A cast (model.to(bf16), .half(), .cpu() on a CPU layer) moves no weight between devices: the
    # packed buffer is the same tensor afterwards, and the scales and bias stay fp32.
    q = Int8Linear.from_float(nn.Linear(40, 24))
    x = torch.randn(3, 40)
    with torch.inference_mode():
        want = q(x.bfloat16())
    packed = q.packed_weight
    q.to(torch.bfloat16).cpu()
    assert q.packed_weight is packed
    assert q.weight_scale.dtype == torch.float32 and q.bias.dtype == torch.float32
    with torch.inference_mode():
        torch.testing.assert_close(q(x.bfloat16()), want, rtol=0, atol=0)


def test_load_state_dict_rejects_wrong_shape():
    small = Int8Linear.from_float(nn.Linear(8, 4))
    big = Int8Linear(16, 4)
    with pytest.raises(ValueError, match="packed weight is \\(4, 8\\), expected \\(4, 16\\)"):
        big.load_state_dict(small.state_dict())


def test_cuda_tiles_checkpoint_loads_on_the_cpu(monkeypatch):
    # A w8_only layer saved on a GPU under FASTINFER_WEIGHT_ONLY_LAYOUT=tiles holds int8 [ceil(N/8), ceil(K/64),
    # 8, 64]; loaded on the CPU (map_location='cpu') it is unpacked and packed for the CPU. (The GPU side:
    # tests/test_cuda.py test_int8linear_w8_only_tiles_layout.)
    from fastinfer.nn.linear import cuda_weight_only_layout, weight_layout
    src = Int8Linear.from_float(nn.Linear(100, 20), "w8_only")
    sd = src.state_dict()
    sd["packed_weight"] = ops.pack_weight_only_tiles(src.int8_weight())
    assert weight_layout(sd["packed_weight"]) == "tiles" and weight_layout(src.packed_weight) == "cpu"
    dst = Int8Linear(100, 20, scheme="w8_only")
    dst.load_state_dict(sd)
    assert weight_layout(dst.packed_weight) == "cpu" and torch.equal(dst.int8_weight(), src.int8_weight())
    x = torch.randn(3, 100)
    with torch.inference_mode():
        assert torch.equal(dst(x), src(x))
    sd["packed_weight"] = ops.pack_weight_only_tiles(torch.zeros(20, 130, dtype=torch.int8))  # K = 130: 3 tiles
    with pytest.raises(ValueError, match=r"CUDA tiles weight is \(3, 3, 8, 64\), expected \(3, 2, 8, 64\)"):
        Int8Linear(100, 20, scheme="w8_only").load_state_dict(sd)
    assert cuda_weight_only_layout() == "rows"
    monkeypatch.setenv("FASTINFER_WEIGHT_ONLY_LAYOUT", "tile")
    with pytest.raises(ValueError, match="FASTINFER_WEIGHT_ONLY_LAYOUT must be 'rows' or 'tiles'"):
        cuda_weight_only_layout()


def test_quantize_swaps_and_reports():
    model = MLP()
    x = torch.randn(3, 64)
    with torch.inference_mode():
        y_ref = model(x)
    out = fastinfer.quantize(model, exclude=["head"])
    assert out is model
    assert isinstance(model.fc1, Int8Linear) and isinstance(model.fc2, Int8Linear)
    assert type(model.head) is nn.Linear
    assert model.fastinfer_report.swapped == ["fc1", "fc2"]
    assert model.fastinfer_report.skipped == [("head", "matched by exclude")]
    with torch.inference_mode():
        assert sqnr_db(y_ref, model(x)) > 25
    only = fastinfer.quantize(MLP(), include="fc*", scheme="w8_only")
    assert only.fastinfer_report.swapped == ["fc1", "fc2"] and only.fc1.scheme == "w8_only"
    assert "not matched by include" in str(only.fastinfer_report)


def test_quantize_leaves_what_it_cannot_handle():
    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(4, 4), MyLinear(4, 4), nn.Conv1d(1, 1, 1), nn.Linear(4, 2, device="meta"))
    fastinfer.quantize(model)
    assert isinstance(model[0], Int8Linear) and type(model[1]) is MyLinear and type(model[3]) is nn.Linear
    reasons = dict(model.fastinfer_report.skipped)
    assert "subclass MyLinear" in reasons["1"] and "unsupported by this build" in reasons["3"]


def test_quantize_bad_arguments():
    with pytest.raises(ValueError, match="scheme must be one of"):
        fastinfer.quantize(MLP(), scheme="int4")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fastinfer.quantize("model")
    with pytest.raises(TypeError, match="exclude must be a glob pattern"):
        fastinfer.quantize(MLP(), exclude=[3])
    with pytest.raises(TypeError, match="use fastinfer.nn.Int8Linear.from_float"):
        fastinfer.quantize(nn.Linear(3, 3))
    # wrong types get a TypeError naming the argument (they raised AttributeError / a comparison's TypeError)
    with pytest.raises(TypeError, match="config must be a fastinfer.QuantConfig"):
        fastinfer.quantize(MLP(), config={"scheme": "w8_only"})
    with pytest.raises(TypeError, match="smooth_alpha must be a number"):
        fastinfer.quantize(MLP(), smooth_alpha="0.5", calib_data=[torch.randn(2, 32)])
    with pytest.raises(TypeError, match="calib_data must be an iterable of batches, not one tensor"):
        fastinfer.quantize(MLP(), "w8a8_static", calib_data=torch.randn(4, 32))  # it iterated the rows
    # an observer only the static scheme uses is refused elsewhere, as calib_data is (it was ignored)
    with pytest.raises(ValueError, match="observer='percentile' chooses the activation scales"):
        fastinfer.quantize(MLP(), "w8a8_dynamic", observer="percentile")
    with pytest.raises(ValueError, match="scheme 'w8_only' has none"):
        fastinfer.quantize(MLP(), config=fastinfer.QuantConfig(scheme="w8_only", observer="mse"))
    with pytest.raises(TypeError, match="x_scale must be a number"):
        Int8Linear.from_float(nn.Linear(4, 4), "w8a8_static", x_scale="1")
    with pytest.raises(TypeError, match="x_scale must be a number"):
        Int8Linear.from_float(nn.Linear(4, 4), "w8a8_static", x_scale=True)
    with pytest.raises(RuntimeError, match="torch.jit.script does not support fastinfer's Int8Linear"):
        torch.jit.script(fastinfer.quantize(MLP()))


@pytest.mark.parametrize("scheme", ["w8a8_dynamic", "w8_only"])
def test_torch_compile_fullgraph(scheme):
    model = fastinfer.quantize(MLP(), scheme=scheme).eval()
    x = torch.randn(7, 64)
    with torch.inference_mode():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="eager")(x)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_torch_export():
    model = fastinfer.quantize(MLP()).eval()
    x = torch.randn(7, 64)
    ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "fastinfer.int8_linear_dynamic.default" in targets
    with torch.inference_mode():
        torch.testing.assert_close(ep.module()(x), model(x), rtol=0, atol=0)


def _opcheck_cases():
    w = torch.randint(-127, 128, (24, 40), dtype=torch.int8)
    packed, scale, bias = ops.pack_int8_weight(w), torch.rand(24), torch.randn(24)
    a = torch.randint(-127, 128, (5, 40), dtype=torch.int8)
    x = torch.randn(3, 5, 40)
    return [
        (torch.ops.fastinfer.quantize_per_token.default, (torch.randn(5, 40),)),
        (torch.ops.fastinfer.pack_int8_weight.default, (w,)),
        (torch.ops.fastinfer.int8_mm.default, (a, packed, 24)),
        (torch.ops.fastinfer.int8_scaled_mm.default, (a, torch.rand(5), packed, scale, bias, torch.bfloat16)),
        (torch.ops.fastinfer.int8_linear_dynamic.default, (x, packed, scale, bias)),
        (torch.ops.fastinfer.int8_linear_weight_only.default, (x.bfloat16(), packed, scale, None)),
    ]


@pytest.mark.parametrize("case", range(6))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


class Outliers(nn.Module):
    """A Linear whose input has a few channels 60x larger than the rest (as in transformers)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(256, 128)
        gain = torch.ones(256)
        gain[[3, 77, 200]] = 60.0
        self.register_buffer("gain", gain)

    def forward(self, x):
        return self.fc(x * self.gain)


def test_smoothquant_improves_outlier_layer():
    model = Outliers().eval()
    calib = [torch.randn(16, 256) for _ in range(4)]
    x = torch.randn(64, 256)
    with torch.inference_mode():
        y_ref = model(x)
    plain = fastinfer.quantize(copy.deepcopy(model), scheme="w8a8_dynamic")
    smooth = fastinfer.quantize(copy.deepcopy(model), scheme="w8a8_dynamic", smooth_alpha=0.5, calib_data=calib)
    static = fastinfer.quantize(copy.deepcopy(model), scheme="w8a8_static", smooth_alpha=0.5, calib_data=calib)
    assert smooth.fc.input_smooth is not None and "smoothed" in repr(smooth.fc)
    with torch.inference_mode():
        db_plain, db_smooth, db_static = (sqnr_db(y_ref, m(x)) for m in (plain, smooth, static))
    assert db_smooth > db_plain + 3, (db_plain, db_smooth)
    assert db_static > 25
    torch.testing.assert_close(smooth.fc.dequantized_weight(), model.fc.weight, rtol=0.05, atol=0.02)
    buf = io.BytesIO()
    torch.save(smooth.state_dict(), buf)
    fresh = fastinfer.quantize(copy.deepcopy(model), scheme="w8a8_dynamic")
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    with torch.inference_mode():
        torch.testing.assert_close(fresh(x), smooth(x), rtol=0, atol=0)


def test_smoothquant_static_calibrates_later_layers_on_float_values():
    """Static SmoothQuant calibrates each layer on the smoothed input its int8 version will see. The
    calibration once divided a smoothed layer's input by s without scaling its weight, so every later
    layer was calibrated on wrong activations (fc2's scale 0.0018 for a true 0.0043: clipped)."""
    import torch.nn.functional as F

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(20, 36), nn.Linear(36, 36), nn.Linear(36, 10)

        def forward(self, x):
            return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    model, x = MLP().eval(), torch.randn(8, 20)
    static = fastinfer.quantize(copy.deepcopy(model), "w8a8_static", calib_data=[x], observer="minmax")
    smooth = fastinfer.quantize(copy.deepcopy(model), "w8a8_static", calib_data=[x], smooth_alpha=0.5,
                                observer="minmax")  # the scale is max|smoothed x| / 127
    with torch.inference_mode():
        h1 = F.relu(model.fc1(x))
        want = float((h1 * smooth.fc2.input_smooth).abs().max()) / 127
        assert smooth.fc2.x_scale == pytest.approx(want, rel=1e-3)
        y = model(x)
        assert sqnr_db(y, smooth(x)) > sqnr_db(y, static(x)) - 3
    # A calibration that fails leaves the float weights as they were (they are scaled meanwhile): a
    # forward that runs for the smoothing pass and raises in the calibration's.
    class FailsSecondTime(MLP):
        calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("second forward")
            return super().forward(x)

    failing = FailsSecondTime().eval()
    before = {n: p.clone() for n, p in failing.named_parameters()}
    with pytest.raises(RuntimeError, match="second forward"):
        fastinfer.quantize(failing, "w8a8_static", calib_data=[x], smooth_alpha=0.5)
    assert all(torch.equal(p, before[n]) for n, p in failing.named_parameters())


def test_smoothquant_static_with_a_tied_weight_and_keyword_calls():
    # An lm_head sharing the embedding's weight: calibrating the smoothed head once scaled the shared tensor
    # in place, so the embedding fed every later layer scaled values (scales off by up to 2.7x on OPT).
    # The layers are called as layer(input=x), which the smoothing hooks read too.
    class TiedLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc, self.head = nn.Embedding(30, 16), nn.Linear(16, 16), nn.Linear(16, 30, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            h = self.emb(ids)
            return self.head(input=torch.relu(self.fc(input=h)) + h)

    torch.manual_seed(0)
    tied = TiedLM().eval()
    untied = copy.deepcopy(tied)
    untied.head.weight = nn.Parameter(tied.emb.weight.detach().clone())
    ids = [torch.randint(0, 30, (4, 9)) for _ in range(2)]
    emb_before = tied.emb.weight.detach().clone()
    q_tied = fastinfer.quantize(copy.deepcopy(tied), "w8a8_static", calib_data=ids, smooth_alpha=0.5)
    q_untied = fastinfer.quantize(untied, "w8a8_static", calib_data=ids, smooth_alpha=0.5)
    assert (q_tied.fc.x_scale, q_tied.head.x_scale) == (q_untied.fc.x_scale, q_untied.head.x_scale)
    assert torch.equal(q_tied.emb.weight, emb_before)
    with torch.inference_mode():
        assert sqnr_db(tied(ids[0]), q_tied(ids[0])) > 25
    # the head now holds its own int8 copy: the report notes the tie it broke (it said only "swapped head")
    assert [n for n, _ in q_tied.fastinfer_report.notes] == ["head"] and not q_untied.fastinfer_report.notes
    assert "tied to emb.weight" in str(q_tied.fastinfer_report)


def test_smoothquant_bad_arguments():
    with pytest.raises(ValueError, match="smooth_alpha needs calib_data"):
        fastinfer.quantize(Outliers(), smooth_alpha=0.5)
    with pytest.raises(ValueError, match="needs an int8-activation scheme"):
        fastinfer.quantize(Outliers(), scheme="w8_only", smooth_alpha=0.5, calib_data=[torch.randn(2, 256)])
    with pytest.raises(ValueError, match=r"smooth_alpha must be in \[0, 1\]"):
        fastinfer.quantize(Outliers(), smooth_alpha=2.0, calib_data=[torch.randn(2, 256)])
    with pytest.raises(ValueError, match="w8a8_static' needs calib_data"):
        fastinfer.quantize(Outliers(), scheme="w8a8_static")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("scheme", ["w8a8_dynamic", "w8a8_static", "w8_only"])
def test_half_precision_cnn_after_quantize(dtype, scheme):
    """A model cast to bf16/fp16 (or float64) keeps running after quantize on the CPU: the conv kernel (and the
    linear one, for fp16 and fp64) takes float32, so the layer converts once and returns its float output in the
    input's dtype. Such a model used to have every layer swapped and then fail at its first forward."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        want = model(x)
    half = copy.deepcopy(model).to(dtype)
    q = fastinfer.quantize(half, scheme, **({"calib_data": [x.to(dtype)]} if scheme == "w8a8_static" else {}))
    assert q.fastinfer_report.swapped == (["3"] if scheme == "w8_only" else ["0", "3"])  # w8_only: Linear only
    with torch.inference_mode():
        y = q(x.to(dtype))
    assert y.dtype == dtype
    assert torch.nn.functional.cosine_similarity(y.float().flatten(), want.flatten(), dim=0) > 0.99
    if dtype == torch.float64:  # a quantized fp32 model cast with .double() afterwards runs too
        q32 = fastinfer.quantize(copy.deepcopy(model), scheme, **({"calib_data": [x]} if scheme == "w8a8_static"
                                                                   else {})).double()
        with torch.inference_mode():
            assert q32(x.double()).dtype == torch.float64


def test_sparse_layer_takes_float64():
    model = nn.Sequential(nn.Linear(64, 32)).double()
    fastinfer.prune(model, sparsity=0.9)
    fastinfer.sparsify(model.eval())
    x = torch.randn(3, 64, dtype=torch.float64)
    with torch.inference_mode():
        y = model(x)
    assert y.dtype == torch.float64 and type(model[0]).__name__ == "SparseLinear"


def test_layer_registered_under_two_names_is_swapped_under_both():
    """`self.k = self.q` is one layer held by two attributes: quantize and sparsify swap it under both (only
    the first name was swapped; the other stayed a float layer that the report did not mention)."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(16, 16)
            self.k = self.q

        def forward(self, x):
            return self.q(x) + self.k(x)

    x = torch.randn(3, 16)
    q = fastinfer.quantize(Shared().eval())
    assert isinstance(q.q, Int8Linear) and q.k is q.q
    assert q.fastinfer_report.swapped == ["q", "k"]
    s = Shared().eval()
    with torch.no_grad():
        s.q.weight[torch.rand(16, 16) < 0.9] = 0
    fastinfer.sparsify(s)
    assert type(s.q).__name__ == "SparseLinear" and s.k is s.q
    q(x), s(x)


def test_quantize_twice_is_a_no_op_that_says_so():
    """A second quantize finds nothing to swap: its report lists the int8 layers as already quantized (with
    w8a8_static it used to fail with 'model has no Conv2d / Linear module to calibrate')."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(2, 8)
    fastinfer.quantize(model, "w8a8_static", calib_data=[x])
    with torch.inference_mode():
        y = model(x)
    fastinfer.quantize(model, "w8a8_static", calib_data=[x])
    assert model.fastinfer_report.swapped == []
    assert model.fastinfer_report.skipped == [("0", "already quantized"), ("2", "already quantized")]
    with torch.inference_mode():
        assert torch.equal(model(x), y)


def _layers_with_torch_signature():
    torch.manual_seed(0)
    lin, conv = nn.Linear(16, 8), nn.Conv2d(3, 8, 3)
    x, img = torch.randn(2, 16), torch.randn(1, 3, 8, 8)
    from fastinfer.nn import ConvAct2d, Int8Conv2d, Int8MaxPool2d, LinearAct, SparseLinear
    return [(Int8Linear.from_float(lin), x), (Int8Linear.from_float(lin, "w8_only"), x),
            (SparseLinear.from_float(lin, torch.float32), x), (LinearAct.from_linear(lin, "relu"), x),
            (Int8Conv2d.from_float(conv), img), (ConvAct2d.from_conv(conv, "relu6"), img),
            (Int8MaxPool2d(2), img), (Int8MaxPool2d(2), torch.randint(-127, 128, (1, 3, 8, 8), dtype=torch.int8))]


@pytest.mark.parametrize("case", range(8))
def test_layers_take_torchs_keyword_input(case):
    # A model written for nn.Linear / nn.Conv2d / nn.MaxPool2d may call them as layer(input=x).
    layer, x = _layers_with_torch_signature()[case]
    with torch.inference_mode():
        assert torch.equal(layer(input=x), layer(x))


@pytest.mark.parametrize("act", ["relu", "relu6", "gelu", "hardswish"])
def test_w8_only_takes_a_fused_activation(act):
    # The weight-only kernels have no activation epilogue; a LinearAct's activation runs after them.
    from fastinfer.nn import LinearAct
    torch.manual_seed(0)
    lin = nn.Linear(64, 96)
    fused = LinearAct.from_linear(lin, act)
    q = Int8Linear.from_float(fused, "w8_only")
    assert q.activation == act
    x = torch.randn(8, 64) * 3
    with torch.inference_mode():
        want = fused(x)
        plain = Int8Linear.from_float(lin, "w8_only")(x)
        assert sqnr_db(want, q(x)) > 38.0
        apply = {"relu": torch.relu, "relu6": nn.functional.relu6, "gelu": nn.functional.gelu,
                 "hardswish": nn.functional.hardswish}[act]
        assert torch.equal(q(x), apply(plain))
    model = fastinfer.quantize(fastinfer.fuse(nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 4)).eval()),
                               "w8_only")
    assert model.fastinfer_report.swapped == ["0", "2"] and model[0].activation == "relu"


@pytest.mark.parametrize("how", ["w8a8_dynamic", "w8a8_static", "sparsify", "load_quantized"])
def test_torch_transformer_encoder_runs_swapped_layers(how):
    # nn.TransformerEncoderLayer's eval fast path reads linear1.weight / linear2.weight (a fused float kernel),
    # and nn.TransformerEncoder's nested-tensor path too: swapped layers have no float weight, so both are off.
    from fastinfer.nn import SparseLinear
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2,
                                enable_nested_tensor=True).eval()
    x = torch.randn(3, 7, 32)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1:, 5:] = True
    q = copy.deepcopy(enc)
    if how == "sparsify":
        with torch.no_grad():
            for layer in q.layers:
                for lin in (layer.linear1, layer.linear2):
                    lin.weight[lin.weight.abs() < lin.weight.abs().quantile(0.7)] = 0
        ref_model = copy.deepcopy(q)
        fastinfer.sparsify(q)
        assert isinstance(q.layers[0].linear1, SparseLinear)
    else:
        ref_model = enc
        calib = {"calib_data": [x]} if how == "w8a8_static" else {}
        fastinfer.quantize(q, "w8a8_static" if how == "w8a8_static" else "w8a8_dynamic", **calib)
        assert isinstance(q.layers[1].linear2, Int8Linear)
        if how == "load_quantized":
            q = fastinfer.load_quantized(q.state_dict(), copy.deepcopy(enc))
    with torch.inference_mode():
        for kw in ({}, {"src_key_padding_mask": pad}):
            want, got = ref_model(x, **kw), q(x, **kw)
            keep = ~pad[:, :, None].expand_as(want) if kw else torch.ones_like(want, dtype=torch.bool)
            assert F.cosine_similarity(want[keep], got[keep], dim=0) > (0.99999 if how == "sparsify" else 0.995)


def test_weight_property_reads_like_a_float_layers():
    # Model code reads layer.weight.dtype / .device in its forward (Hugging Face T5, ViT): the int8 and sparse
    # layers give a LazyWeight with the float layer's shape, dtype and device, valued when an op reads it.
    from fastinfer.nn import Int8Conv1d, Int8Conv2d, SparseLinear
    from fastinfer.nn._common import LazyWeight
    torch.manual_seed(0)
    lin, conv, conv1 = nn.Linear(16, 8), nn.Conv2d(4, 6, 3, groups=2), nn.Conv1d(4, 6, 5)
    with torch.no_grad():
        lin.weight[lin.weight.abs() < 0.1] = 0
    cases = [(Int8Linear.from_float(lin), lin), (SparseLinear.from_float(lin, torch.int8), lin),
             (SparseLinear.from_float(lin, torch.float32), lin), (Int8Conv2d.from_float(conv), conv),
             (Int8Conv1d.from_float(conv1), conv1)]
    for q, float_layer in cases:
        w = q.weight
        assert isinstance(w, LazyWeight) and isinstance(w, torch.Tensor) and "computed when read" in repr(w)
        assert (w.shape, w.dtype, w.device) == (float_layer.weight.shape, torch.float32, float_layer.weight.device)
        want = q.dense_weight() if isinstance(q, SparseLinear) else q.dequantized_weight()
        assert torch.equal(w + 0, want) and torch.equal(w.clone(), want)
        assert (w.float() - float_layer.weight).abs().max() <= float_layer.weight.abs().max() / 127
        def assign_data():
            w.data = want.clone()

        def set_item():
            w[0] = 0

        writes = (lambda: w.mul_(2), lambda: w.data.zero_(), lambda: w.detach().fill_(1), set_item,
                  lambda: w.view(-1).mul_(2), lambda: w.transpose(0, 1).add_(1), assign_data)
        for write in writes:
            with pytest.raises(RuntimeError, match="read-only"):  # it would change a copy: refused, not ignored
                write()
        with pytest.raises(RuntimeError, match="no storage to share"):  # it used to crash the interpreter
            w.share_memory_()
        assert torch.equal(w[1], want[1]) and torch.equal(w.transpose(0, 1) + 0, want.transpose(0, 1))
        assert torch.equal(copy.deepcopy(w), want) and w.tolist() == want.tolist()
        with pytest.raises(AttributeError, match="cannot be assigned"):  # as Hugging Face's tie_weights does
            q.weight = nn.Parameter(want.clone())
        assert torch.equal(q.weight + 0, want)
        assert q.to(torch.bfloat16).weight.dtype == torch.bfloat16  # the model's dtype after a cast
    x = torch.randn(3, 16)
    q = Int8Linear.from_float(lin)
    # F.linear on the weight runs the layer (test_functional_linear_runs_the_layers_kernels); an op on a view of
    # it computes with the dequantized values
    torch.testing.assert_close(F.linear(x, q.weight.t().t(), q.bias), x @ q.dequantized_weight().t() + q.bias)

    class ReadsDtype(nn.Module):  # as T5's feed-forward does before its output layer
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 8)

        def forward(self, h):
            return self.fc(h.to(self.fc.weight.dtype))

    model = fastinfer.quantize(ReadsDtype().eval())
    assert not model.fc.training  # swapped-in layers take the mode of the layer they replace
    model.type(torch.float16)  # casts every tensor: the packed int8 weight keeps its dtype
    assert model.fc.packed_weight.dtype == Int8Linear.from_float(nn.Linear(16, 8)).packed_weight.dtype
    model.float()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.inference_mode():
        assert torch.equal(compiled(x), model(x))


class AppliesWeights(nn.Module):
    """Applies its layers' weights itself, as torchvision's Swin attention does (F.linear(x, self.qkv.weight, ...)):
    with the layer's own bias, with no bias (by keyword) and with a bias of its own making."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(40, 96)
        self.proj = nn.Linear(32, 24)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias)
        h = F.linear(input=torch.relu(qkv[..., :32]), weight=self.proj.weight)
        bias = self.head.bias.clone()
        bias[:5] = 0  # as Swin V2 zeroes the keys' bias in a copy
        return F.linear(h, self.head.weight, bias) + qkv[..., 32:42]


@pytest.mark.parametrize("scheme", ["w8a8_dynamic", "w8a8_static", "w8_only"])
def test_functional_linear_runs_the_layers_kernels(scheme):
    torch.manual_seed(0)
    lin = nn.Linear(40, 24)
    q = Int8Linear.from_float(lin, scheme, x_scale=0.03 if scheme == "w8a8_static" else None)
    x, other = torch.randn(2, 5, 40), torch.randn(24)
    b = q._buffers

    def op(x, bias):  # the layer's op, called by hand with this bias
        if scheme == "w8a8_dynamic":
            return torch.ops.fastinfer.int8_linear_dynamic(x, b["packed_weight"], b["weight_scale"], bias, "none", None)
        if scheme == "w8a8_static":
            return torch.ops.fastinfer.int8_linear_static(x, 0.03, b["packed_weight"], b["weight_scale"], bias, "none",
                                                          None, None)
        return torch.ops.fastinfer.int8_linear_weight_only(x, b["packed_weight"], b["weight_scale"], bias)
    with torch.inference_mode():
        y = q(x)
        assert torch.equal(F.linear(x, q.weight, q.bias), y)
        assert torch.equal(F.linear(x, weight=q.weight, bias=q.bias), y)
        assert torch.equal(F.linear(x, q.weight.detach()), op(x, None))  # .detach() / .data: still the layer's
        assert torch.equal(F.linear(x, q.weight, other), op(x, other))
        assert torch.equal(F.linear(x, q.weight, other.double()), op(x, other))  # a float bias of any width
        assert torch.equal(F.linear(x.half(), q.weight, q.bias), q(x.half()))   # fp16 on the CPU: a float32 copy
        by_float = x @ q.dequantized_weight().t() + q.bias
        if scheme != "w8_only":  # the int8 product, not torch's on the dequantized weight
            assert not torch.allclose(y, by_float, rtol=0, atol=1e-5)
        # A view of the weight is not the layer: computed with the dequantized values, as before.
        torch.testing.assert_close(F.linear(x, q.weight.t().t(), q.bias), by_float)
        with pytest.raises(RuntimeError, match="bias must be 1-D of length 24"):  # the op's check
            F.linear(x, q.weight, torch.zeros(7))
        # A layer with a fused activation (or int8 output) computes more than F.linear: the float path.
        relu = Int8Linear.from_float(lin, scheme, activation="relu", x_scale=q.x_scale)
        pre = F.linear(x, relu.weight, relu.bias)
        assert bool((pre < 0).any())
        torch.testing.assert_close(pre, by_float)


def test_functional_linear_of_sparse_layers_and_quantized_models():
    torch.manual_seed(1)
    lin = nn.Linear(64, 32)
    with torch.no_grad():
        lin.weight[lin.weight.abs() < 0.05] = 0
    x = torch.randn(3, 64)
    for value_dtype in (torch.float32, torch.int8):
        s = fastinfer.nn.SparseLinear.from_float(lin, value_dtype=value_dtype)
        with torch.inference_mode():
            assert torch.equal(F.linear(x, s.weight, s.bias), s(x))
    model = AppliesWeights().eval()
    calib = [torch.randn(4, 40) for _ in range(3)]
    xs = torch.randn(6, 40)
    with torch.inference_mode():
        want = model(xs)
    for scheme in ("w8a8_dynamic", "w8a8_static"):
        q = fastinfer.quantize(copy.deepcopy(model), scheme, calib_data=calib if scheme == "w8a8_static" else None,
                               observer="minmax" if scheme == "w8a8_static" else None)
        assert sorted(q.fastinfer_report.swapped) == ["head", "proj", "qkv"] and not q.fastinfer_report.skipped
        with torch.inference_mode():
            got = q(xs)
            qkv = q.qkv(xs)
            bias = q.head.bias.clone()
            bias[:5] = 0
            by_hand = q.head._linear(q.proj._linear(torch.relu(qkv[..., :32]), None), bias) + qkv[..., 32:42]
        assert torch.equal(got, by_hand)
        assert F.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.999
    # calibrated on the functional calls' inputs: proj's is relu(qkv)[..., :32]
    with torch.inference_mode():
        amax = max(float(torch.relu(model.qkv(c)[..., :32]).abs().max()) for c in calib)
    assert q.proj.x_scale == pytest.approx(amax / 127, rel=1e-6)


def test_weight_bits_7_rounds_to_63_levels_and_takes_the_shifted_step():
    lin = nn.Linear(300, 70)
    q8, q7 = Int8Linear.from_float(lin), Int8Linear.from_float(lin, weight_bits=7)
    w_ref, s_ref = fastinfer.reference.quantize_weight_per_channel(lin.weight, 7)
    assert torch.equal(q7.int8_weight(), w_ref) and torch.equal(q7.weight_scale, s_ref)
    assert int(w_ref.abs().max()) == 63 and torch.equal(s_ref, lin.weight.detach().abs().amax(1) / 63)
    assert q7.weight_bits == 7 and "per-channel (7-bit)" in repr(q7) and "7-bit" not in repr(q8)
    x = torch.randn(9, 300)
    with torch.inference_mode():
        y7 = q7(x)
        assert ops.last_kernel("int8_gemm_step") == ("shifted" if ops.cpu_capabilities()["active"] == "avx2" else "")
        y8, y = q8(x), lin(x)
    torch.testing.assert_close(y7, fastinfer.reference.int8_linear_dynamic(x, w_ref, s_ref, lin.bias), rtol=0, atol=0)
    # Half the weight levels: about 6 dB less on the weights' share of the error, still close to float.
    assert sqnr_db(y, y8) > sqnr_db(y, y7) > 30


def test_weight_bits_state_dict_and_old_files():
    q7 = Int8Linear.from_float(nn.Linear(40, 24), weight_bits=7)
    sd = q7.state_dict()
    assert sd["_extra_state"]["weight_bits"] == 7
    fresh = Int8Linear(40, 24)
    fresh.load_state_dict(sd)
    assert fresh.weight_bits == 7
    old = {**sd, "_extra_state": {k: v for k, v in sd["_extra_state"].items() if k != "weight_bits"}}
    fresh.load_state_dict(old)  # a file from before weight_bits
    assert fresh.weight_bits == 8
    model = fastinfer.quantize(MLP(), weight_bits=7)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    loaded = fastinfer.load_quantized(buf, MLP())
    assert all(m.weight_bits == 7 for m in (loaded.fc1, loaded.fc2, loaded.head))
    x = torch.randn(5, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_quantize_weight_bits_and_bad_values():
    model = fastinfer.quantize(MLP(), weight_bits=7)
    assert all(m.weight_bits == 7 and int(m.int8_weight().abs().max()) <= 63 for m in (model.fc1, model.fc2, model.head))
    cfg = fastinfer.quantize(MLP(), config=fastinfer.QuantConfig(weight_bits=7))
    assert cfg.fc1.weight_bits == 7
    assert fastinfer.quantize(MLP()).fc1.weight_bits == 8
    # an argument beside config= would be ignored: refused, naming it
    with pytest.raises(ValueError, match="pass exclude, weight_bits in config"):
        fastinfer.quantize(MLP(), config=fastinfer.QuantConfig(), exclude="head", weight_bits=7)
    assert fastinfer.quantize(MLP(), "w8a8_dynamic", config=fastinfer.QuantConfig(weight_bits=7)).head.weight_bits == 7
    for bad in (6, 16, True, "7", 7.5):
        with pytest.raises(ValueError, match="weight_bits must be 8 or 7"):
            fastinfer.quantize(MLP(), weight_bits=bad)
    with pytest.raises(ValueError, match="weight_bits=7 is for the w8a8 schemes"):
        fastinfer.quantize(MLP(), scheme="w8_only", weight_bits=7)
    with pytest.raises(ValueError, match="weight_bits=7 is for the w8a8 schemes"):
        Int8Linear.from_float(nn.Linear(4, 4), "w8_only", weight_bits=7)


def test_load_recomputes_column_sums_and_pack_flags():
    # The file's column sums and header flags are not trusted: a 7-bit flag on a weight holding +-127 would
    # send AVX2 to a step that saturates, and the VNNI kernels subtract 128 * colsum. The load packs again.
    q = Int8Linear.from_float(nn.Linear(64, 32))
    forged = q.state_dict()
    packed = forged["packed_weight"].clone()
    packed[14] |= 0x02  # format bit 17: "every weight is in [-64, 63]"
    packed[64:72] = 0   # colsum[0], colsum[1]
    forged["packed_weight"] = packed
    fresh = Int8Linear(64, 32)
    fresh.load_state_dict(forged)
    assert torch.equal(fresh.packed_weight, q.packed_weight)
    x = torch.randn(5, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fresh(x), q(x), rtol=0, atol=0)


def test_w8_only_state_with_7_bit_weights_refused():
    sd = Int8Linear.from_float(nn.Linear(8, 4), "w8_only").state_dict()
    sd["_extra_state"] = {**sd["_extra_state"], "weight_bits": 7}
    with pytest.raises(ValueError, match="weight_bits=7 is for the w8a8 schemes"):
        Int8Linear(8, 4, scheme="w8_only").load_state_dict(sd)
