"""nn.MultiheadAttention under fastinfer: SplitMultiheadAttention (oracle: torch's nn.MultiheadAttention with the
same weights) and its int8 projections through quantize, load_quantized and profile."""
import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastinfer
from fastinfer.nn import Int8Linear, SplitMultiheadAttention

E, H = 32, 4


def _inputs(batched, batch_first, n, length, dim, gen):
    if not batched:
        return torch.randn(length, dim, generator=gen)
    return torch.randn(n, length, dim, generator=gen) if batch_first else torch.randn(length, n, dim, generator=gen)


def _masks(kind, batched, n, tgt, src, gen):
    """(key_padding_mask, attn_mask, is_causal) of one kind; a padding mask leaves key 0 unmasked, so no query
    row is fully masked."""
    kpm = am = None
    if kind in ("kpm", "kpm_float", "both"):
        kpm = torch.rand(n, src, generator=gen) < 0.4
        kpm[:, 0] = False
        if kind == "kpm_float":
            kpm = torch.zeros(n, src).masked_fill(kpm, -1e4)
        kpm = kpm if batched else kpm[0]
    if kind in ("bool", "both"):
        am = torch.rand(tgt, src, generator=gen) < 0.3
        am[:, 0] = False
    if kind == "float":
        am = torch.randn(tgt, src, generator=gen)
    if kind == "3d":
        am = torch.randn(n * H if batched else H, tgt, src, generator=gen)
    if kind == "causal":
        return kpm, nn.Transformer.generate_square_subsequent_mask(tgt), True
    return kpm, am, False


GRID = list(itertools.product([False, True], [True, False], [False, True], [False, True], [None, 24]))


@pytest.mark.parametrize("batch_first,bias,bias_kv,zero_attn,kdim", GRID)
def test_split_attention_matches_torch(batch_first, bias, bias_kv, zero_attn, kdim):
    # Oracle: nn.MultiheadAttention with the same weights, every argument combination of its forward.
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(E, H, bias=bias, add_bias_kv=bias_kv, add_zero_attn=zero_attn, kdim=kdim, vdim=kdim,
                                batch_first=batch_first).eval()
    if bias_kv:
        nn.init.normal_(mha.bias_k)
        nn.init.normal_(mha.bias_v)
    split = SplitMultiheadAttention.from_float(mha)
    assert not split.training
    n, tgt = 3, 5
    kd = kdim or E
    for batched, masks, need_weights, average in itertools.product(
            [True, False], ["none", "bool", "float", "kpm", "kpm_float", "both", "3d", "causal"], [True, False],
            [True, False]):
        self_attention = kd == E and masks != "3d"
        src = tgt if self_attention or masks == "causal" else 7
        if masks == "causal" and kd != E:
            continue
        q = _inputs(batched, batch_first, n, tgt, E, gen)
        k, v = (q, q) if self_attention else (_inputs(batched, batch_first, n, src, kd, gen),
                                              _inputs(batched, batch_first, n, src, kd, gen))
        kpm, am, causal = _masks(masks, batched, n, tgt, src, gen)
        kw = dict(key_padding_mask=kpm, need_weights=need_weights, attn_mask=am, average_attn_weights=average,
                  is_causal=causal)
        with torch.no_grad():
            want, want_w = mha(q, k, v, **kw)
            got, got_w = split(q, k, v, **kw)
        case = (batched, masks, need_weights, average)
        assert got.shape == want.shape, case
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{case}: {m}")
        assert (got_w is None) == (want_w is None), case
        if want_w is not None:
            torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6, msg=lambda m: f"{case}: {m}")


def test_split_attention_dropout_and_train_mode():
    # In training mode the attention probabilities get dropout (as torch's); in eval none.
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, dropout=0.5, batch_first=True)
    split = SplitMultiheadAttention.from_float(mha)
    assert split.training and split.dropout == 0.5
    x = torch.randn(2, 6, E)
    with torch.no_grad():
        a, b = split(x, x, x)[0], split(x, x, x)[0]
        assert not torch.equal(a, b)
        split.eval()
        mha.eval()
        torch.testing.assert_close(split(x, x, x)[0], mha(x, x, x)[0], rtol=1e-5, atol=1e-5)


def _encoder(layers=2, **kw):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, 2 * E, batch_first=True, dropout=0.0)
    return nn.TransformerEncoder(layer, layers, **kw).eval()


def _padded_batch():
    """A batch of two sequences of 5, the second padded after 3 (the mask: True where padded)."""
    return torch.randn(2, 5, E), torch.tensor([[False] * 5, [False, False, False, True, True]])


def _decoder():
    torch.manual_seed(0)
    return nn.TransformerDecoder(nn.TransformerDecoderLayer(E, H, 2 * E, dropout=0.0), 2).eval()


@pytest.mark.parametrize("scheme", ["w8_only", "w8a8_dynamic", "w8a8_static"])
def test_quantize_splits_attention_projections(scheme):
    enc = _encoder()
    x = torch.randn(3, 9, E)
    q = copy.deepcopy(enc)
    calib = {"calib_data": [torch.randn(3, 9, E) for _ in range(3)]} if scheme == "w8a8_static" else {}
    fastinfer.quantize(q, scheme, **calib)
    report = q.fastinfer_report
    for i in range(2):
        attn = q.layers[i].self_attn
        assert isinstance(attn, SplitMultiheadAttention)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            assert isinstance(getattr(attn, proj), Int8Linear) and getattr(attn, proj).scheme == scheme
            assert f"layers.{i}.self_attn.{proj}" in report.swapped
    assert not report.skipped
    # The same model with float projections of the int8 weights: w8_only's float activations match it closely.
    deq = copy.deepcopy(enc)
    for i in range(2):
        split = SplitMultiheadAttention.from_float(deq.layers[i].self_attn)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            with torch.no_grad():
                getattr(split, proj).weight.copy_(getattr(q.layers[i].self_attn, proj).dequantized_weight())
        deq.layers[i].self_attn = split
        for lin in ("linear1", "linear2"):
            with torch.no_grad():
                getattr(deq.layers[i], lin).weight.copy_(getattr(q.layers[i], lin).dequantized_weight())
    with torch.inference_mode():
        got, close, want = q(x), deq(x), enc(x)
    if scheme == "w8_only":
        torch.testing.assert_close(got, close, rtol=1e-4, atol=1e-4)
    assert F.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.999


def test_quantize_attention_cross_attention_and_masks():
    # Decoder layers: causal self-attention and cross-attention on a memory of another length (seq first).
    dec = _decoder()
    tgt, mem = torch.randn(6, 2, E), torch.randn(11, 2, E)
    mask = nn.Transformer.generate_square_subsequent_mask(6)
    pad = torch.zeros(2, 11, dtype=torch.bool)
    pad[1, 8:] = True
    q = fastinfer.quantize(copy.deepcopy(dec), "w8a8_dynamic")
    assert isinstance(q.layers[0].multihead_attn.k_proj, Int8Linear)
    with torch.inference_mode():
        for kw in ({"tgt_mask": mask, "tgt_is_causal": True}, {"memory_key_padding_mask": pad}):
            want, got = dec(tgt, mem, **kw), q(tgt, mem, **kw)
            assert F.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.999


def test_quantize_attention_kdim_vdim():
    torch.manual_seed(0)
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(E, H, kdim=24, vdim=40)}).eval()
    q = fastinfer.quantize(copy.deepcopy(model), "w8a8_dynamic")
    attn = q["attn"]
    assert (attn.k_proj.in_features, attn.v_proj.in_features) == (24, 40)
    query, key, value = torch.randn(5, 2, E), torch.randn(7, 2, 24), torch.randn(7, 2, 40)
    with torch.inference_mode():
        want, want_w = model["attn"](query, key, value)
        got, got_w = attn(query, key, value)
    assert F.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.999
    assert got_w.shape == want_w.shape == (2, 5, 7)


def test_encoder_fast_paths_stay_off_with_split_attention():
    # The layer's and the encoder's fused float paths would read in_proj_weight and skip the int8 projections:
    # with padding (the nested-tensor path) and without, the int8 model runs its layers.
    enc = _encoder(enable_nested_tensor=True)
    x = torch.randn(3, 7, E)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1:, 5:] = True
    q = fastinfer.quantize(copy.deepcopy(enc), "w8a8_dynamic", include="*self_attn*")
    assert isinstance(q.layers[0].linear1, nn.Linear)  # only the attention swapped
    calls = []
    q.layers[0].self_attn.q_proj.register_forward_hook(lambda *a: calls.append(1))
    with torch.inference_mode():
        for kw in ({}, {"src_key_padding_mask": pad}):
            want, got = enc(x, **kw), q(x, **kw)
            keep = ~pad[:, :, None].expand_as(want) if kw else torch.ones_like(want, dtype=torch.bool)
            assert F.cosine_similarity(want[keep], got[keep], dim=0) > 0.999
    assert len(calls) == 2
    # A split layer reads as torch's separate-weights attention; nothing reads a packed in_proj_weight.
    attn = q.layers[0].self_attn
    assert attn.in_proj_weight is None and not attn._qkv_same_embed_dim
    torch.testing.assert_close(attn.in_proj_bias, enc.layers[0].self_attn.in_proj_bias)
    torch.testing.assert_close(attn.k_proj_weight, enc.layers[0].self_attn.in_proj_weight[E:2 * E], atol=0.01,
                               rtol=0)


def test_attention_not_split_when_no_projection_is_quantized():
    enc = _encoder()
    q = fastinfer.quantize(copy.deepcopy(enc), "w8a8_dynamic", exclude="*self_attn*")
    assert type(q.layers[0].self_attn) is nn.MultiheadAttention
    assert ("layers.0.self_attn.q_proj", "matched by exclude") not in q.fastinfer_report.skipped
    assert isinstance(q.layers[0].linear1, Int8Linear)
    # one projection excluded: the layer is split, that projection stays a float Linear
    q = fastinfer.quantize(copy.deepcopy(enc), "w8a8_dynamic", exclude="*.v_proj")
    attn = q.layers[1].self_attn
    assert type(attn.v_proj) is nn.Linear and isinstance(attn.q_proj, Int8Linear)
    assert ("layers.1.self_attn.v_proj", "matched by exclude") in q.fastinfer_report.skipped
    # static calibration over data that never calls the attention: put back as it was
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(E, H), "lin": nn.Linear(E, E)}).eval()

    class Caller(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m["lin"](x)
    q = fastinfer.quantize(Caller(), "w8a8_static", calib_data=[torch.randn(2, E)])
    assert type(q.m["attn"]) is nn.MultiheadAttention
    assert ("m.attn.q_proj", "no activation scale from calibration (layer not called)") in q.fastinfer_report.skipped


def test_attention_with_hooks_is_left_float():
    enc = _encoder()
    enc.layers[0].self_attn.register_forward_hook(lambda *a: None)
    q = fastinfer.quantize(enc, "w8a8_dynamic")
    assert type(q.layers[0].self_attn) is nn.MultiheadAttention
    assert isinstance(q.layers[1].self_attn, SplitMultiheadAttention)
    reasons = dict(q.fastinfer_report.skipped)
    assert reasons["layers.0.self_attn"].startswith("nn.MultiheadAttention has forward hooks")


def test_quantize_a_bare_attention_layer_is_refused():
    with pytest.raises(TypeError, match="SplitMultiheadAttention.from_float"):
        fastinfer.quantize(nn.MultiheadAttention(E, H), "w8a8_dynamic")
    q = fastinfer.quantize(SplitMultiheadAttention.from_float(nn.MultiheadAttention(E, H)), "w8a8_dynamic")
    assert isinstance(q.out_proj, Int8Linear)


def test_load_quantized_splits_attention_again(tmp_path):
    enc = _encoder()
    q = fastinfer.quantize(copy.deepcopy(enc), "w8a8_static", calib_data=[torch.randn(2, 5, E)],
                           exclude="*.k_proj")
    path = tmp_path / "q.pt"
    torch.save(q.state_dict(), path)
    loaded = fastinfer.load_quantized(path, _encoder())
    assert isinstance(loaded.layers[0].self_attn, SplitMultiheadAttention)
    assert type(loaded.layers[0].self_attn.k_proj) is nn.Linear
    x = torch.randn(2, 5, E)
    with torch.inference_mode():
        assert torch.equal(loaded(x), q(x))


def test_split_attention_bad_input():
    attn = SplitMultiheadAttention.from_float(nn.MultiheadAttention(E, H, batch_first=True))
    x = torch.randn(2, 5, E)
    cases = [
        ((torch.randn(5, E, 1, 1), x, x), {}, "query must be 3-D"),
        ((x, torch.randn(5, E), x), {}, "key and value must be 3-D"),
        ((x, torch.randn(2, 5, 16), x), {}, "key's last dimension must be 32"),
        ((x, torch.randn(2, 6, E), x), {}, "same sequence and batch sizes"),
        ((x, torch.randn(3, 5, E), torch.randn(3, 5, E)), {}, "same batch size"),
        ((x, x, x), {"key_padding_mask": torch.zeros(2, 4, dtype=torch.bool)},
         r"key_padding_mask must have shape \(2, 5\)"),
        ((x, x, x), {"key_padding_mask": torch.zeros(5, dtype=torch.bool)}, "key_padding_mask must be 2-D"),
        ((x, x, x), {"attn_mask": torch.zeros(4, 5)}, r"attn_mask must have shape \(5, 5\)"),
        ((x, x, x), {"attn_mask": torch.zeros(2, 5, 5)}, r"attn_mask must have shape \(8, 5, 5\)"),
        ((x, x, x), {"attn_mask": torch.zeros(5, 5, dtype=torch.int64)}, "attn_mask must be a bool or floating"),
        ((x, x, x), {"is_causal": True}, "pass attn_mask as well"),
    ]
    for args, kw, match in cases:
        with pytest.raises(ValueError if "floating" not in match else TypeError, match=match):
            attn(*args, **kw)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        SplitMultiheadAttention(30, 4)
    with pytest.raises(TypeError, match="must be a torch.nn.MultiheadAttention"):
        SplitMultiheadAttention.from_float(nn.Linear(4, 4))


def test_profile_counts_split_attention():
    enc = _encoder(layers=1)
    x = torch.randn(2, 6, E)
    before = fastinfer.profile(enc, (x,), iters=1, warmup=0)
    after = fastinfer.profile(fastinfer.quantize(copy.deepcopy(enc), "w8a8_dynamic"), (x,), iters=1, warmup=0)
    assert before.totals.macs == after.totals.macs and not after.totals.uncounted
    core = after.layer("layers.0.self_attn.attention")
    assert core.macs == 2 * 2 * 6 * 6 * E and not core.int8
    assert after.layer("layers.0.self_attn.q_proj").int8
    assert after.totals.int8_macs == after.totals.macs - core.macs


def test_export_quantized_encoder_layer():
    layer = nn.TransformerEncoderLayer(E, H, 2 * E, batch_first=True, dropout=0.0).eval()
    q = fastinfer.quantize(layer, "w8a8_dynamic")
    x = torch.randn(2, 6, E)
    ep = torch.export.export(q, (x,))
    with torch.inference_mode():
        torch.testing.assert_close(ep.module()(x), q(x))


def test_quantize_that_keeps_attention_float_leaves_fast_paths_as_they_were():
    # The split is tried before calibration: a quantize that raises, or whose calibration never calls the encoder,
    # puts the attention back and turns torch's fused paths back on (padded rows stay zero, outputs unchanged).
    enc = _encoder(enable_nested_tensor=True)
    x, pad = _padded_batch()
    with torch.inference_mode():
        want = enc(x, src_key_padding_mask=pad)
    a = copy.deepcopy(enc)
    with pytest.raises(ValueError, match="last dimension must be 32"):
        fastinfer.quantize(a, "w8a8_static", calib_data=[torch.randn(2, 5, 7)])

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.head = copy.deepcopy(enc), nn.Linear(E, 4)

        def forward(self, h):
            return self.head(h)
    b = fastinfer.quantize(Head().eval(), "w8a8_static", calib_data=[torch.randn(2, E)])
    for model in (a, b.enc):
        assert type(model.layers[0].self_attn) is nn.MultiheadAttention
        assert model.use_nested_tensor and model.layers[0].activation_relu_or_gelu == 1
        with torch.inference_mode():
            assert torch.equal(model(x, src_key_padding_mask=pad), want)


def test_hand_built_split_attention_takes_the_encoders_nested_input():
    # Set by hand (not through quantize), the encoder still hands its layers a nested batch with a padding mask.
    enc = _encoder(enable_nested_tensor=True)
    x, pad = _padded_batch()
    with torch.inference_mode():
        want = enc(x, src_key_padding_mask=pad)
        for layer in enc.layers:
            layer.self_attn = SplitMultiheadAttention.from_float(layer.self_attn)
        got = enc(x, src_key_padding_mask=pad)
        torch.testing.assert_close(got[~pad], want[~pad], rtol=1e-5, atol=1e-5)
        nested = torch.nested.nested_tensor([torch.randn(3, E), torch.randn(5, E)])
        with pytest.raises(ValueError, match="batch-first self-attention only"):
            enc.layers[0].self_attn(nested, torch.randn(2, 5, E), nested)


def test_report_names_attention_left_float_once():
    enc = _encoder(layers=1)
    q = fastinfer.quantize(copy.deepcopy(enc), "w8a8_dynamic", exclude="*self_attn*")
    assert q.fastinfer_report.skipped == [("layers.0.self_attn", "nn.MultiheadAttention left as it is: its "
                                                                 "projections matched by exclude")]

    class MyAttention(nn.MultiheadAttention):
        pass
    model = nn.ModuleDict({"attn": MyAttention(E, H), "fc": nn.Linear(E, E)})
    q = fastinfer.quantize(model, "w8a8_dynamic")
    assert q.fastinfer_report.swapped == ["fc"] and type(q["attn"]) is MyAttention
    assert q.fastinfer_report.skipped == [("attn", "subclass MyAttention of nn.MultiheadAttention (may change "
                                                   "forward): left float")]


def test_quantize_raising_in_the_scan_puts_attention_back():
    # The include callable raises after the attention was split (during the layer scan): undone too.
    enc = _encoder(enable_nested_tensor=True)

    def include(name, mod):
        if name.endswith("linear2"):
            raise RuntimeError("user callable failed")
        return True
    with pytest.raises(RuntimeError, match="user callable failed"):
        fastinfer.quantize(enc, "w8a8_dynamic", include=include)
    assert all(type(layer.self_attn) is nn.MultiheadAttention for layer in enc.layers)
    assert enc.use_nested_tensor and enc.layers[0].activation_relu_or_gelu == 1
