"""fastinfer.nn.int8_interpolate (F.interpolate that also upsamples int8: quantize calls it for a forward's
F.interpolate calls) and the int8 hand-offs through it: DeepLabV3's pooled ASPP branch, which upsamples a 1 x 1 map
bilinearly (a broadcast), and U-Net decoders that upsample with a nearest F.interpolate."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import fastinfer
from fastinfer.nn import Int8Conv2d, int8_interpolate

from test_int8_chain import unchained


def _int8(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8).contiguous(memory_format=torch.channels_last)


# (input shape, F.interpolate's arguments after the input)
CASES = [
    ((2, 5, 1, 1), dict(size=(9, 7), mode="bilinear", align_corners=False)),
    ((2, 5, 1, 1), dict(size=torch.Size([4, 4]), mode="bilinear", align_corners=True)),
    ((1, 70, 1, 1), dict(size=(3, 11), mode="bilinear")),
    ((3, 4, 1, 1), dict(scale_factor=(2.5, 3), mode="bilinear")),
    ((2, 5, 1, 1), dict(size=6, mode="bilinear")),
    ((2, 5, 6, 7), dict(size=(13, 9), mode="bilinear", align_corners=False)),   # a larger map: rounded
    ((1, 3, 5, 4), dict(scale_factor=2, mode="bilinear", align_corners=True)),
    ((2, 5, 6, 7), dict(scale_factor=2, mode="nearest")),
    ((2, 5, 6, 7), dict(size=(9, 16), mode="nearest-exact")),
    ((0, 5, 1, 1), dict(size=(3, 3), mode="bilinear")),                         # empty batch
]


def _call(x, kw):
    return int8_interpolate(x, kw.get("size"), kw.get("scale_factor"), kw["mode"], kw.get("align_corners"))


@pytest.mark.parametrize("shape,kw", CASES, ids=[f"{s}-{k['mode']}-{k.get('size', k.get('scale_factor'))}"
                                                 for s, k in CASES])
def test_int8_interpolate_matches_the_float_upsampling(shape, kw):
    x = torch.randn(shape)
    assert torch.equal(_call(x, kw), F.interpolate(x, **kw))  # float inputs: F.interpolate
    xq = _int8(shape)
    y = _call(xq, kw)
    assert y.dtype == torch.int8 and y.is_contiguous(memory_format=torch.channels_last)
    exact = F.interpolate(xq.float(), **kw)
    # nearest copies values, and bilinear of one pixel is a broadcast: the int8 image of the float upsampling;
    # bilinear of a larger map is rounded half to even, within half an int8 step
    assert y.shape == exact.shape and torch.equal(y, torch.round(exact).to(torch.int8))
    close = kw["mode"] != "bilinear" or shape[-2:] == (1, 1)
    assert torch.all((y.float() - exact).abs() <= (1e-4 if close else 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings
        traced = torch.jit.trace(lambda t: _call(t, kw), xq)
    assert torch.equal(traced(xq), y)


def test_int8_interpolate_is_an_fx_leaf_and_refuses_other_modes():
    for fn in (lambda t: int8_interpolate(t, t.shape[-2:], None, "bilinear", False),
               lambda t: int8_interpolate(t, size=t.shape[-2:], mode="bilinear")):
        calls = [n for n in fx.symbolic_trace(fn).graph.nodes if n.op == "call_function"]
        assert calls[-1].target is int8_interpolate  # one node, not what it does
        x = _int8((2, 3, 1, 1))
        assert torch.equal(fn(x), x.expand(2, 3, 1, 1))
    for mode in ("bicubic", "area"):
        with pytest.raises(ValueError, match=f"mode='{mode}'"):
            int8_interpolate(_int8((1, 2, 3, 3)), None, 2, mode)
    with pytest.raises(ValueError, match="size must be an int or 2 ints"):
        int8_interpolate(_int8((1, 2, 1, 1)), (3, 3, 3), None, "bilinear")
    with pytest.raises(ValueError, match="one of size and scale_factor"):
        int8_interpolate(_int8((1, 2, 1, 1)), None, None, "bilinear")


class Pooled(nn.Sequential):
    """torchvision's ASPPPooling: a global average pooling, a 1x1 conv, BatchNorm, ReLU, then the 1 x 1 map
    upsampled bilinearly to the input's size, read from its shape."""

    def __init__(self, c_in, c_out, conv=None):
        super().__init__(nn.AdaptiveAvgPool2d(1), conv or nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU())

    def forward(self, x):
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """torchvision's ASPP in miniature: a 1x1 branch, two dilated 3x3 ones and the pooled one, concatenated and
    projected; behind a stem, before a head."""

    def __init__(self, pooled=None):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        branches = [nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())]
        branches += [nn.Sequential(nn.Conv2d(16, 8, 3, padding=d, dilation=d, bias=False), nn.BatchNorm2d(8),
                                   nn.ReLU()) for d in (2, 12)]
        branches.append(pooled or Pooled(16, 8))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(nn.Conv2d(32, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.project(torch.cat([conv(x) for conv in self.convs], dim=1)))


def _model(pooled=None, seed=0):
    torch.manual_seed(seed)
    model = ASPP(pooled).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2)
                m.running_mean.uniform_(-0.3, 0.3)
    return model


def _quantized(model, int8_residuals=True, size=17):
    torch.manual_seed(1)
    calib = [torch.randn(4, 3, size, size) for _ in range(3)]
    return fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static", calib_data=calib,
                              int8_residuals=int8_residuals)


def _interpolations(mod):
    """The modes of the int8_interpolate calls in mod's forward (a GraphModule's)."""
    if not isinstance(mod, fx.GraphModule):
        return []
    return [n.args[3] for n in mod.graph.nodes if n.target is int8_interpolate]


def _dtypes_seen(q, x, **mods):
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, inp, n=n: seen.__setitem__(n, inp[0].dtype))
             for n, m in mods.items()]
    with torch.inference_mode():
        y = q(x)
    for h in hooks:
        h.remove()
    return y, seen


def test_pooled_branch_hands_off_int8_through_the_broadcast(tmp_path):
    model = _model()
    q = _quantized(model)
    pooled = q.convs[3]
    assert _interpolations(pooled) == ["bilinear"]
    assert len(pooled) == 4 and isinstance(pooled[1], Int8Conv2d)  # still indexed as the nn.Sequential it was
    convs = [q.convs[0][0], q.convs[1][0], q.convs[2][0], pooled[1]]
    # every branch writes int8 at the projection's scale, so the concatenation is int8
    assert {c.out_scale for c in convs} == {q.project[0].x_scale}
    assert "convs.3.1 -> project.0" in q.fastinfer_report.chained
    x = torch.randn(2, 3, 17, 17)
    y, seen = _dtypes_seen(q, x, pooled_conv=pooled[1], project=q.project[0])
    assert seen == {"pooled_conv": torch.float32, "project": torch.int8}
    # against the same quantized model with float hand-offs into the concatenation (each conv's output quantized
    # by the projection at the same scale): the same bits but for the folded epilogue's rare last-place rounding
    plain = copy.deepcopy(q)
    for c in (plain.convs[0][0], plain.convs[1][0], plain.convs[2][0], plain.convs[3][1]):
        c.out_scale = None
    with torch.inference_mode():
        torch.testing.assert_close(y, plain(x), rtol=0.02, atol=0.02)
        assert F.cosine_similarity(y.flatten(), model(x).flatten(), dim=0) > 0.99
    torch.save(q.state_dict(), tmp_path / "q.pt")
    loaded = fastinfer.load_quantized(tmp_path / "q.pt", fastinfer.fuse(copy.deepcopy(model)))
    assert _interpolations(loaded.convs[3]) == ["bilinear"]
    with torch.inference_mode():
        assert torch.equal(loaded(x), y)
    # A file from before this hand-off: the branches write float. It loads as it was written.
    old = dict(q.state_dict())
    for name in ("convs.0.0", "convs.1.0", "convs.2.0", "convs.3.1"):
        old[f"{name}._extra_state"] = {**old[f"{name}._extra_state"], "out_scale": None}
    again = fastinfer.load_quantized(old, fastinfer.fuse(copy.deepcopy(model)))
    y_old, seen = _dtypes_seen(again, x, project=again.project[0])
    assert seen == {"project": torch.float32}
    with torch.inference_mode():
        assert torch.equal(y_old, plain(x))


def test_pooled_branch_under_compile_and_trace():
    q = _quantized(_model())
    x = torch.randn(2, 3, 17, 17)
    with torch.inference_mode():
        y = q(x)
        assert torch.equal(torch.compile(q, fullgraph=True)(x), y)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        assert torch.equal(torch.jit.trace(q, (x,), check_trace=False)(x), y)


@pytest.mark.parametrize("case", ["padded_conv", "pool_2x2", "no_residuals"])
def test_bilinear_upsampling_of_a_larger_map_stays_float(case):
    # Bilinear upsampling of more than one pixel computes new values: no hand-off through it. A 1x1 conv with
    # padding makes a 3 x 3 map of a pooled pixel; a pooling to 2 x 2 a 2 x 2 one.
    if case == "padded_conv":
        pooled = Pooled(16, 8, nn.Conv2d(16, 8, 1, padding=1, bias=False))
    elif case == "pool_2x2":
        pooled = Pooled(16, 8)
        pooled[0] = nn.AdaptiveAvgPool2d(2)
    else:
        pooled = None
    model = _model(pooled)
    q = _quantized(model, int8_residuals=case != "no_residuals")
    # int8_residuals=False keeps the forwards as written: the functional call stays
    assert _interpolations(q.convs[3]) == ([] if case == "no_residuals" else ["bilinear"])
    assert q.convs[3][1].out_scale is None and q.convs[0][0].out_scale is None
    x = torch.randn(2, 3, 17, 17)
    _, seen = _dtypes_seen(q, x, project=q.project[0])
    assert seen == {"project": torch.float32}


class Calls(nn.Module):
    """F.interpolate calls that are not rewritten: a size of traced ints, antialias, bicubic; and one that is (a
    scale factor)."""

    def forward(self, x):
        h, w = x.shape[-2:]
        a = F.interpolate(x, size=(h * 2, w * 2), mode="bilinear")
        b = F.interpolate(x, scale_factor=2, mode="bilinear", antialias=True)
        c = F.interpolate(x, scale_factor=2, mode="bicubic")
        d = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return a + b + c + d


def test_which_interpolate_calls_become_modules():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.calls = Calls()

        def forward(self, x):
            return self.calls(self.conv(x))

    torch.manual_seed(0)
    model = Net().eval()
    q = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static",
                           calib_data=[torch.randn(2, 3, 8, 8)])
    calls = [n.args for n in q.calls.graph.nodes if n.target is int8_interpolate]
    assert [a[1:] for a in calls] == [(None, 2.0, "nearest", None, None)]
    assert isinstance(q.conv, Int8Conv2d) and q.conv.out_scale is None
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(q(x), model(x), rtol=0.05, atol=0.05)


class Decoder(nn.Module):
    """A U-Net decoder level as segmentation_models_pytorch and torchvision's FPN write it: F.interpolate in the
    forward (to the skip's size, or by a scale factor), joined with the skip, then a conv."""

    def __init__(self, cin, cskip, cout, how):
        super().__init__()
        self.how = how
        self.conv = nn.Sequential(nn.Conv2d(cin + cskip, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x, skip):
        if self.how == "size":
            up = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        else:
            up = F.interpolate(x, scale_factor=2.0, mode="nearest-exact")
        return self.conv(torch.cat([skip, up], dim=1))


class FunctionalUNet(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.dec = Decoder(16, 8, 8, how)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        return self.head(self.dec(self.enc2(e1), e1))


@pytest.mark.parametrize("how", ["size", "scale_factor"])
def test_functional_nearest_upsampling_hands_off_int8(how, tmp_path):
    # Nearest upsampling copies values: the decoder's concatenation of the skip and the upsampled level is int8
    torch.manual_seed(0)
    model = FunctionalUNet(how).eval()
    with torch.no_grad():
        model.dec.conv[1].running_var.uniform_(0.5, 2)
    q = _quantized(model, size=16)  # even: the pooled level upsampled by 2 meets the skip
    assert {"enc1.0 -> dec.conv.0", "enc2.1 -> dec.conv.0", "enc1.0 -> enc2.1"} <= set(q.fastinfer_report.chained)
    assert q.enc1[0].out_scale == q.enc2[1].out_scale == q.dec.conv[0].x_scale
    assert _interpolations(q.dec) == ["nearest" if how == "size" else "nearest-exact"]
    x = torch.randn(2, 3, 16, 16)
    y, seen = _dtypes_seen(q, x, dec=q.dec.conv[0])
    assert seen == {"dec": torch.int8}
    with torch.inference_mode():
        torch.testing.assert_close(y, unchained(q)(x), rtol=0.02, atol=0.02)
        assert F.cosine_similarity(y.flatten(), model(x).flatten(), dim=0) > 0.99
    torch.save(q.state_dict(), tmp_path / "q.pt")
    loaded = fastinfer.load_quantized(tmp_path / "q.pt", fastinfer.fuse(copy.deepcopy(model)))
    with torch.inference_mode():
        assert torch.equal(loaded(x), y)
    # forwards kept as written: the call stays F.interpolate, which the hand-off cannot pass
    kept = _quantized(model, int8_residuals=False, size=16)
    assert kept.enc1[0].out_scale is None and kept.enc2[1].out_scale is None
