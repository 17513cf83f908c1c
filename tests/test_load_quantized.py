"""fastinfer.load_quantized: a quantized / sparsified model rebuilt from its state_dict and the float code."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastinfer
from fastinfer.nn import Int8Add, Int8Conv2d, Int8Linear, Int8MaxPool2d, SparseLinear
from test_int8_chain import Block, TinyResNet, _trained_like


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 48), nn.ReLU(), nn.Linear(48, 40), nn.GELU(), nn.Linear(40, 8)).eval()


def _same(a, b, x):
    with torch.inference_mode():
        ya, yb = a(x), b(x)
    assert ya.dtype == yb.dtype and torch.equal(ya, yb)


@pytest.mark.parametrize("scheme", ["w8a8_dynamic", "w8_only", "w8a8_static", "smooth"])
def test_linear_model_round_trip(tmp_path, scheme):
    calib = [torch.randn(16, 24) for _ in range(3)]
    kw = {"w8a8_static": dict(calib_data=calib), "smooth": dict(calib_data=calib, smooth_alpha=0.5)}.get(scheme, {})
    q = fastinfer.quantize(_mlp(), scheme="w8a8_dynamic" if scheme == "smooth" else scheme, **kw)
    path = tmp_path / "q.pt"
    torch.save(q.state_dict(), path)
    fresh = _mlp()
    with torch.no_grad():  # the float weights of the fresh instance play no part
        for p in fresh.parameters():
            p.normal_()
    loaded = fastinfer.load_quantized(path, fresh)
    assert loaded is fresh
    assert [type(m) for m in loaded] == [type(m) for m in q]
    assert all(getattr(a, "scheme", None) == getattr(b, "scheme", None) for a, b in zip(loaded, q))
    if scheme == "smooth":
        assert loaded[0].input_smooth is not None
    _same(q, loaded, torch.randn(5, 24))


def test_static_cnn_with_residual_adds_and_int8_pooling():
    model = _trained_like(TinyResNet())
    torch.manual_seed(1)
    calib = [torch.randn(4, 3, 20, 20) for _ in range(3)]
    q = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static", calib_data=calib)
    assert q.fastinfer_report.rewritten and q.fastinfer_report.chained
    sd = q.state_dict()
    fresh = TinyResNet().eval()
    with pytest.raises(ValueError, match="fastinfer.fuse"):
        fastinfer.load_quantized(sd, fresh)  # the quantized model was fused: BN statistics are not in the file
    loaded = fastinfer.load_quantized(sd, fastinfer.fuse(TinyResNet().eval()))
    assert isinstance(loaded.layer[0].residual_add, Int8Add) and isinstance(loaded.maxpool, Int8MaxPool2d)
    for (name, a), (_, b) in zip(q.named_modules(), loaded.named_modules()):
        assert type(a).__name__ == type(b).__name__, name
        if isinstance(a, (Int8Conv2d, Int8Linear, Int8Add)):
            for attr in ("x_scale", "out_scale", "a_scale", "b_scale", "activation", "relu"):
                assert getattr(a, attr, None) == getattr(b, attr, None), (name, attr)
    _same(q, loaded, torch.randn(3, 3, 20, 20))


def test_static_block_without_residual_rewrite():
    torch.manual_seed(2)
    calib = [torch.randn(4, 3, 20, 20) for _ in range(2)]
    q = fastinfer.quantize(fastinfer.fuse(Block().eval()), scheme="w8a8_static", calib_data=calib,
                           int8_residuals=False)
    loaded = fastinfer.load_quantized(q.state_dict(), fastinfer.fuse(Block().eval()))
    assert type(loaded) is Block and not any(isinstance(m, Int8Add) for m in loaded.modules())
    _same(q, loaded, torch.randn(2, 3, 20, 20))


def test_dynamic_conv_and_partial_quantization():
    def net():
        torch.manual_seed(3)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding="same"), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                             nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    q = fastinfer.quantize(net(), scheme="w8a8_dynamic", exclude="4")
    loaded = fastinfer.load_quantized(q.state_dict(), net())
    assert [type(m) for m in loaded] == [Int8Conv2d, nn.ReLU, Int8Conv2d, nn.Flatten, nn.Linear]
    assert loaded[0].padding == (1, 1)
    _same(q, loaded, torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("value_dtype", [torch.float32, torch.int8])
def test_sparsified_model(tmp_path, value_dtype):
    model = _mlp()
    fastinfer.prune(model, "unstructured", sparsity=0.8)
    s = fastinfer.sparsify(model, value_dtype=value_dtype)
    assert any(isinstance(m, SparseLinear) for m in s.modules())
    torch.save(s.state_dict(), tmp_path / "s.pt")  # read back with weights_only=True
    loaded = fastinfer.load_quantized(tmp_path / "s.pt", _mlp())
    assert [type(m) for m in loaded] == [type(m) for m in s]
    assert [getattr(m, "format", None) for m in loaded] == [getattr(m, "format", None) for m in s]
    _same(s, loaded, torch.randn(7, 24))


def test_tied_layer_swapped_under_both_names():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(4)
            self.q = nn.Linear(16, 16)
            self.k = self.q

        def forward(self, x):
            return self.k(self.q(x))

    q = fastinfer.quantize(Tied().eval())
    loaded = fastinfer.load_quantized(q.state_dict(), Tied().eval())
    assert isinstance(loaded.q, Int8Linear) and loaded.k is loaded.q
    _same(q, loaded, torch.randn(3, 16))


def test_file_object_source():
    q = fastinfer.quantize(_mlp())
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    _same(q, fastinfer.load_quantized(buf, _mlp()), torch.randn(3, 24))


def test_bad_sources(tmp_path):
    with pytest.raises(TypeError, match="model must be"):
        fastinfer.load_quantized({}, "not a model")
    # a whole pickled model, or bytes that are no checkpoint: a ValueError saying what the file should be
    torch.save(fastinfer.quantize(_mlp()), tmp_path / "whole.pt")
    for source in (tmp_path / "whole.pt", io.BytesIO(b"not a checkpoint")):
        with pytest.raises(ValueError, match=r"could not read .* as tensors saved by torch.save\(model.state_dict"):
            fastinfer.load_quantized(source, _mlp())
    with pytest.raises(FileNotFoundError):
        fastinfer.load_quantized(tmp_path / "missing.pt", _mlp())
    with pytest.raises(TypeError, match="source must be a state_dict"):
        fastinfer.load_quantized([1, 2], _mlp())
    q = fastinfer.quantize(_mlp())
    other = nn.Sequential(nn.Linear(24, 48), nn.ReLU(), nn.Linear(48, 41), nn.GELU(), nn.Linear(41, 8)).eval()
    with pytest.raises(ValueError, match="packed weight is"):  # a layer of another shape
        fastinfer.load_quantized(q.state_dict(), other)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    sd = fastinfer.quantize(copy.deepcopy(conv)).state_dict()
    conv[0].padding_mode = "reflect"
    with pytest.raises(ValueError, match="padding_mode"):
        fastinfer.load_quantized(sd, conv)
    # a float state_dict loads as a plain one
    plain = _mlp()
    loaded = fastinfer.load_quantized(plain.state_dict(), _mlp())
    assert not any(isinstance(m, Int8Linear) for m in loaded.modules())
    with torch.inference_mode():
        x = torch.randn(2, 24)
        assert torch.equal(F.linear(x, loaded[0].weight, loaded[0].bias), F.linear(x, plain[0].weight, plain[0].bias))


def test_fused_and_unfused_files_are_told_apart():
    # A fused layer applies its activation itself (and fuse made the activation module an Identity): a file
    # and a model fused differently would apply it twice, or not at all. Models without BatchNorm too.
    def mlp():
        torch.manual_seed(5)
        return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)).eval()

    fused_file = fastinfer.quantize(fastinfer.fuse(mlp())).state_dict()
    with pytest.raises(ValueError, match="fastinfer.fuse"):
        fastinfer.load_quantized(fused_file, mlp())
    plain_file = fastinfer.quantize(mlp()).state_dict()
    with pytest.raises(ValueError, match="fused differently"):
        fastinfer.load_quantized(plain_file, fastinfer.fuse(mlp()))
    q = fastinfer.quantize(fastinfer.fuse(mlp()))
    _same(q, fastinfer.load_quantized(fused_file, fastinfer.fuse(mlp())), torch.randn(4, 16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model(dtype):
    # Loading into a model cast to 16 bits gives what casting the quantized model gives.
    model = _trained_like(TinyResNet())
    torch.manual_seed(1)
    q = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static",
                           calib_data=[torch.randn(4, 3, 20, 20) for _ in range(2)])
    loaded = fastinfer.load_quantized(q.state_dict(), fastinfer.fuse(TinyResNet().eval()).to(dtype))
    x = torch.randn(2, 3, 20, 20).to(dtype)
    _same(copy.deepcopy(q).to(dtype), loaded, x)
    with torch.inference_mode():
        assert loaded(x).dtype == dtype


def test_conv_checkpoint_without_weight_shape():
    # Int8Conv2d checkpoints written before the weight_shape entry still load.
    def net():
        torch.manual_seed(6)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    q = fastinfer.quantize(net())
    sd = q.state_dict()
    for k, v in sd.items():
        if k.endswith("_extra_state") and "weight_shape" in v:
            sd[k] = {n: e for n, e in v.items() if n != "weight_shape"}
    _same(q, fastinfer.load_quantized(sd, net()), torch.randn(2, 3, 6, 6))


def test_gpt2_conv1d_layers_quantized_and_reloaded():
    # transformers' Conv1D (GPT-2's c_attn, c_proj, c_fc) is a Linear with its weight transposed: quantize
    # swaps it as one, and load_quantized finds it again in a fresh model.
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=32, bos_token_id=0,
                                  eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 50, (2, 10))
    with torch.inference_mode():
        ref = model(ids).logits
    for scheme, kw in (("w8a8_dynamic", {}), ("w8a8_static", {"calib_data": [ids]})):
        q = fastinfer.quantize(copy.deepcopy(model), scheme, **kw)
        assert {"transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"} <= set(q.fastinfer_report.swapped)
        assert isinstance(q.transformer.h[1].mlp.c_fc, Int8Linear) and q.transformer.h[1].mlp.c_fc.in_features == 32
        with torch.inference_mode():
            y = q(ids).logits
            assert F.cosine_similarity(y.flatten(), ref.flatten(), dim=0) > 0.999
            loaded = fastinfer.load_quantized(q.state_dict(), transformers.GPT2LMHeadModel(cfg).eval())
            assert torch.equal(loaded(ids).logits, y)
    # A Conv1D that is not swapped stays a Conv1D (its checkpoint loads into GPT-2), also when quantize raises.
    odd = copy.deepcopy(model)
    with torch.no_grad():
        odd.transformer.h[1].mlp.c_proj.weight[0, 0] = float("inf")
    q = fastinfer.quantize(odd)
    assert [n for n, _ in q.fastinfer_report.skipped] == ["transformer.h.1.mlp.c_proj"]
    assert type(q.transformer.h[1].mlp.c_proj).__name__ == "Conv1D"
    failed = copy.deepcopy(model)
    with pytest.raises(ValueError, match="calibration data is empty"):
        fastinfer.quantize(failed, "w8a8_static", calib_data=[])
    assert type(failed.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    failed.load_state_dict(model.state_dict())
    # sparsify takes them as Linears too, profile counts their MACs, and weight masks say why they skip them
    sparse = copy.deepcopy(model)
    with torch.no_grad():
        w = sparse.transformer.h[0].mlp.c_fc.weight
        w[w.abs() < w.abs().quantile(0.8)] = 0
    with torch.inference_mode():
        want = sparse(ids).logits
    fastinfer.sparsify(sparse)
    assert isinstance(sparse.transformer.h[0].mlp.c_fc, SparseLinear)
    with torch.inference_mode():
        torch.testing.assert_close(sparse(ids).logits, want, rtol=1e-4, atol=1e-4)
    prof = fastinfer.profile(model, ids, warmup=0, iters=1)
    row = next(r for r in prof.rows if r.name == "transformer.h.0.attn.c_attn")
    assert row.macs == 2 * 10 * 32 * 96
    report = fastinfer.pruning.prune_weights(copy.deepcopy(model), 0.5)
    assert "transformers Conv1D" in dict(report.skipped)["transformer.h.0.attn.c_attn"]


def test_t5_and_vit_read_their_layers_weight_dtype():
    # T5's feed-forward reads wo.weight.dtype and ViT's embeddings projection.weight.dtype in forward: the
    # quantized layers answer with a float dtype (LazyWeight) instead of failing.
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=40, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1)).eval()
    vit = transformers.ViTModel(transformers.ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                                       num_attention_heads=4, intermediate_size=64)).eval()
    ids, dec, px = torch.randint(2, 40, (2, 7)), torch.randint(2, 40, (2, 4)), torch.randn(2, 3, 16, 16)
    for model, run in ((t5, lambda m: m(input_ids=ids, decoder_input_ids=dec).logits),
                       (vit, lambda m: m(pixel_values=px).last_hidden_state)):
        with torch.inference_mode():
            want = run(model)
            q = fastinfer.quantize(copy.deepcopy(model))
            y = run(q)
            assert F.cosine_similarity(y.flatten(), want.flatten(), dim=0) > 0.999
            assert run(q.to(torch.bfloat16)).dtype == torch.bfloat16


def test_conv_subclasses_that_compute_as_their_base():
    # A Conv2d subclass that only sets itself up (EfficientNet's depthwise conv class) and a weight-norm
    # parametrized Conv1d (wav2vec2's positional conv) compute as nn.Conv2d / nn.Conv1d: swapped, and found
    # again by load_quantized. A subclass with its own forward is not.
    from torch.nn.utils.parametrizations import weight_norm

    class Depthwise(nn.Conv2d):
        def __init__(self, c):
            super().__init__(c, c, 3, padding=1, groups=c)

    class Shifted(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) + 1

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.dw, self.odd = nn.Conv2d(3, 8, 3, padding=1), Depthwise(8), Shifted(8, 8, 1)
            self.wn = weight_norm(nn.Conv1d(8, 8, 5, padding=2, groups=2), dim=2)

        def forward(self, x):
            return self.wn(self.odd(self.dw(self.a(x))).flatten(2))

    # hooks, which a swapped layer would not run: the hook weight_norm, and any forward hook
    hooked = nn.Sequential(nn.utils.weight_norm(nn.Conv1d(8, 8, 3)), nn.Conv1d(8, 8, 3)).eval()
    hooked[1].register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    report = fastinfer.quantize(hooked).fastinfer_report
    assert not report.swapped and all("forward hooks" in why for _, why in report.skipped)
    lazy = fastinfer.quantize(nn.Sequential(nn.LazyConv1d(8, 3)).eval()).fastinfer_report
    assert lazy.skipped == [("0", "an uninitialized lazy module (no weight yet): run one forward first")]

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 6, 6)
    for scheme, kw in (("w8a8_dynamic", {}), ("w8a8_static", {"calib_data": [x]})):
        q = fastinfer.quantize(copy.deepcopy(model), scheme, **kw)
        assert q.fastinfer_report.swapped == ["a", "dw", "wn"]
        assert dict(q.fastinfer_report.skipped)["odd"].startswith("subclass Shifted of Conv2d")
        with torch.inference_mode():
            y = q(x)
            assert F.cosine_similarity(y.flatten(), model(x).flatten(), dim=0) > 0.999
        _same(q, fastinfer.load_quantized(q.state_dict(), copy.deepcopy(model)), x)


def test_parametrized_linears_are_swapped_reading_their_computed_weight():
    # weight_norm / spectral_norm Linears (torch's Parametrized<Linear> class) compute as nn.Linear from the
    # weight their parametrization makes: swapped (they were skipped with advice meant for pruning masks), and
    # found again by load_quantized; a Linear holding a pruning mask stays float with its own advice.
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Linear(16, 32)), nn.ReLU(), spectral_norm(nn.Linear(32, 8))).eval()
    x = torch.randn(4, 16)
    for scheme, kw in (("w8a8_dynamic", {}), ("w8_only", {}), ("w8a8_static", {"calib_data": [x]})):
        q = fastinfer.quantize(copy.deepcopy(model), scheme, **kw)
        assert q.fastinfer_report.swapped == ["0", "2"] and not q.fastinfer_report.skipped
        with torch.inference_mode():
            assert F.cosine_similarity(q(x).flatten(), model(x).flatten(), dim=0) > 0.999
        _same(q, fastinfer.load_quantized(q.state_dict(), copy.deepcopy(model)), x)
    masked = nn.Sequential(nn.Linear(16, 16)).eval()
    fastinfer.prune(masked, sparsity=0.5)
    assert "pruning mask" in dict(fastinfer.quantize(masked).fastinfer_report.skipped)["0"]
