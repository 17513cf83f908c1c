"""A convolution written into a channel slice of a wider buffer: ops.int8_conv2d_into (oracle: ops.int8_conv2d's
output, bit for bit, and every other byte of the buffer as it was), fastinfer.nn.concat's cat_conv_reserve /
cat_conv_extend / cat_with_convs (oracle: torch.cat of the convs' outputs), and quantize(w8a8_static) putting them
in a DenseNet block's extensions and in an Inception-style block's torch.cat (oracle: the same quantized model
without that rewrite, bit for bit)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import fastinfer
from fastinfer import _C, ops
from fastinfer.nn import Int8Conv2d, concat
from fastinfer.quantization import api, chain

from conftest import assert_served, with_batch_statistics

# (C, Cout, kernel, stride, padding, dilation, groups, H, W, N): on AMX the direct convolution over the padded width
# or within output rows (tap boxes: dilation 4), a plain 1x1 GEMM, the gathered rows (few channels on a small
# image, 1x1 at stride 2), row segments over the padded width or within rows (few channels), stride planes, narrow
# groups and depthwise (whose kernel writes pixels Cout apart: a copy into the slice). test_conv_into_cases_take_
# every_path checks which ways they reach.
CASES = [
    (64, 32, 3, 1, 1, 1, 1, 9, 11, 2),
    (64, 48, 1, 1, 0, 1, 1, 7, 5, 2),
    (13, 20, 3, 1, 1, 1, 1, 6, 7, 1),
    (13, 20, 3, 1, 1, 1, 1, 20, 20, 1),
    (3, 16, 3, 2, 1, 1, 1, 32, 32, 1),
    (64, 64, 3, 2, 1, 1, 1, 27, 27, 1),
    (64, 32, 3, 1, 2, 2, 1, 12, 12, 1),
    (64, 32, 3, 1, 4, 4, 1, 20, 20, 1),
    (64, 16, 1, 2, 0, 1, 1, 9, 9, 2),
    (32, 32, 3, 1, 1, 1, 4, 6, 6, 2),
    (24, 24, 3, 1, 1, 1, 24, 7, 7, 2),
]


def _conv(c, cout, k, s, p, d, groups, out_scale, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(c, cout, k, s, p, d, groups).eval()
    return Int8Conv2d.from_float(conv, activation="relu", x_scale=0.05, out_scale=out_scale)


def _input(n, c, h, w, int8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-127, 128, (n, c, h, w), generator=g, dtype=torch.int8) if int8 else torch.randn(
        n, c, h, w, generator=g) * 3
    return x.contiguous(memory_format=torch.channels_last)


def _buffer(n, c, h, w, dtype, seed=2):
    """A channels_last buffer of random values: the channels the conv does not own must keep them."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(-128, 128, (n, c, h, w), generator=g, dtype=torch.int8).to(dtype)
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("int8", [True, False], ids=["int8", "fp32"])
def test_conv_into_a_channel_slice(isa, case, int8):
    """int8 in and out, or fp32 in and out, on every tier: the slice holds int8_conv2d's output and the buffer's
    other channels (before and after it) are untouched."""
    c, cout, k, s, p, d, groups, h, w, n = case
    conv = _conv(c, cout, k, s, p, d, groups, 0.07 if int8 else None)
    x = _input(n, c, h, w, int8)
    with torch.inference_mode():
        want = conv(x)
        path = _path()
        oh, ow = want.shape[2:]
        buf = _buffer(n, 5 + cout + 7, oh, ow, want.dtype)
        expect = buf.clone()
        expect[:, 5:5 + cout] = want
        ops.int8_conv2d_into(buf[:, 5:5 + cout], *conv._args(x)[:-3], x_scale=conv.x_scale,
                             out_scale=conv.out_scale, activation=conv.activation)
    assert torch.equal(buf, expect)
    assert _path() == path  # the same kernel and way as int8_conv2d's
    if groups == c:
        assert_served("dwconv", isa)


def _path():
    return tuple(ops.last_kernel(f) for f in ("conv_direct", "conv_direct_mode", "gconv", "dwconv", "int8_gemm"))


# The ways CASES reach on each tier (int8_conv2d's paths; last_kernel's "conv_direct_mode" names the direct ones).
_TIER_PATHS = {
    "amx": {"padded_width", "rows", "padded_width_row_segments", "row_segments", "stride_planes"},
    "avx512_vnni": {"rows", "rows_in_place", "row_segments", "one_row_images"},
    "avx_vnni": {"rows", "rows_in_place", "row_segments"},
    "avx2": {"rows", "rows_in_place", "row_segments"},
}


def test_conv_into_cases_take_every_path(isa):
    seen = set()
    with torch.inference_mode():
        for c, cout, k, s, p, d, groups, h, w, n in CASES:
            _conv(c, cout, k, s, p, d, groups, 0.05)(_input(n, c, h, w, True))
            conv_direct, mode, gconv, dwconv, _ = _path()
            seen.add("dwconv" if groups == c else "gconv" if gconv else mode or "gemm")
    want = {"gemm", "dwconv"} | ({"gconv"} | _TIER_PATHS[isa] if isa != "ref" else set())
    assert seen == want


def test_conv_into_a_tensor_of_its_own_and_threads():
    """out channels_last of the output's own shape (pixels Cout apart), at 1 and 2 threads."""
    conv = _conv(64, 40, 3, 1, 1, 1, 1, 0.05)
    x = _input(3, 64, 20, 19, True)
    want = conv(x)
    for threads in (1, 2):
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = torch.empty_like(want)
            _C.int8_conv2d_into(out, *conv._args(x))
        finally:
            torch.set_num_threads(prev)
        assert torch.equal(out, want)


def test_conv_into_refuses_bad_arguments():
    conv = _conv(16, 8, 3, 1, 1, 1, 1, 0.05)
    x = _input(2, 16, 5, 5, True)
    args = conv._args(x)

    def call(out, x=x):
        torch.ops.fastinfer.int8_conv2d_into(out, x, *args[1:])

    ok = torch.empty((2, 8, 5, 5), dtype=torch.int8, memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match=r"out must be \[N=2, Cout=8, OH=5, OW=5\]"):
        call(torch.empty((2, 8, 5, 4), dtype=torch.int8, memory_format=torch.channels_last))
    with pytest.raises(RuntimeError, match="int8_conv2d_into: out must have dtype Char"):
        call(ok.float())
    with pytest.raises(RuntimeError, match="out must hold its channels contiguously"):
        call(torch.empty((2, 8, 5, 5), dtype=torch.int8))  # NCHW
    wide = torch.empty((2, 24, 5, 5), dtype=torch.int8, memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="out shares memory with x"):
        call(wide[:, 16:], x=wide[:, :16])
    with pytest.raises(RuntimeError, match="x must be float32"):
        call(ok, x=x.to(torch.int16))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="int8_conv2d_into"):
            ops.int8_conv2d_into(ok.cuda(), x, *args[1:5])
    # the direct call answers NotImplemented on bad input (the dispatcher's call raises)
    assert _C.int8_conv2d_into(ok[:, :, :, :4], *args) is NotImplemented


def test_opcheck_conv_into():
    conv = _conv(16, 8, 3, 1, 1, 1, 1, 0.05)
    x = _input(2, 16, 5, 5, True)
    out = torch.zeros((2, 12, 5, 5), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.fastinfer.int8_conv2d_into.default, (out[:, 2:10], *conv._args(x)))


def test_direct_call_serves_and_bumps_the_version():
    conv = _conv(16, 8, 3, 1, 1, 1, 1, 0.05)
    x = _input(2, 16, 5, 5, True)
    out = torch.zeros((2, 8, 5, 5), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    served, version = _C.fast_calls(), out._version
    assert _C.int8_conv2d_into(out, *conv._args(x)) is None
    assert _C.fast_calls() == served + 1 and out._version == version + 1
    assert torch.equal(out, conv(x))


def test_int8_buffer():
    b = _C.int8_buffer(2, 24, 3, 5)
    assert b.shape == (2, 24, 3, 5) and b.dtype == torch.int8 and b.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="sizes must be >= 0"):
        _C.int8_buffer(2, -1, 3, 5)
    with pytest.raises(TypeError, match="takes 4 ints"):
        _C.int8_buffer(2, 3, 5)
    assert _C.int8_buffer(2, 3.0, 5, 5) is NotImplemented  # concat._buffer then takes torch.empty's


def test_concat_conv_functions_compute_torch_cat():
    conv_a, conv_b = _conv(16, 24, 3, 1, 1, 1, 1, 0.05, seed=0), _conv(8, 16, 1, 1, 0, 1, 1, 0.05, seed=1)
    xa, xb = _input(2, 16, 6, 6, True, seed=3), _input(2, 8, 6, 6, False, seed=4)
    ya, yb = conv_a(xa), conv_b(xb)
    f0 = _input(2, 8, 6, 6, True, seed=5)
    # reserve with a conv, then extend with a conv and with a tensor: one buffer, the same values as torch.cat
    a = concat.cat_conv_reserve(conv_a, xa, 16 + 8)
    assert torch.equal(a, ya) and a.stride()[3] == 48
    b = concat.cat_conv_extend(a, conv_b, xb)
    c = concat.cat_channels_extend(b, [f0])
    assert a.data_ptr() == b.data_ptr() == c.data_ptr()
    assert torch.equal(c, torch.cat([ya, yb, f0], 1))
    # no room left, or prev not a reserved prefix: the conv's output joined as torch.cat joins it
    d = concat.cat_conv_extend(c, conv_b, xb)
    assert d.data_ptr() != c.data_ptr() and torch.equal(d, torch.cat([ya, yb, f0, yb], 1))
    assert torch.equal(concat.cat_conv_extend(f0, conv_b, xb), torch.cat([f0, yb], 1))
    # a conv reading the concatenation it extends gets its output copied (it must not write where it reads)
    wide = concat.cat_channels_reserve([f0], 16)
    conv_w = _conv(8, 16, 1, 1, 0, 1, 1, 0.05, seed=2)
    e = concat.cat_conv_extend(wide, conv_w, wide)
    assert torch.equal(e, torch.cat([f0, conv_w(f0)], 1))
    # cat_with_convs: conv parts and tensor parts in one new buffer
    got = concat.cat_with_convs([xa, f0, xb], [conv_a, None, conv_b])
    assert torch.equal(got, torch.cat([ya, f0, yb], 1)) and got.is_contiguous(memory_format=torch.channels_last)


def test_concat_conv_functions_fall_back():
    """A conv that does not write int8 (no out_scale, float modules, a half model's), or inputs it cannot take:
    the module runs as it is and torch.cat's result comes back."""
    x = _input(2, 8, 5, 5, False)
    float_conv = nn.Conv2d(8, 4, 3, padding=1).eval()
    fp32_out = _conv(8, 4, 3, 1, 1, 1, 1, None)
    int8_out = _conv(8, 4, 3, 1, 1, 1, 1, 0.05)
    t = torch.randn(2, 3, 5, 5)
    with torch.inference_mode():
        for conv in (float_conv, fp32_out):
            assert torch.equal(concat.cat_with_convs([x, t], [conv, None]), torch.cat([conv(x), t], 1))
            assert torch.equal(concat.cat_conv_reserve(conv, x, 4), conv(x))
        # an int8 conv beside a float part: torch.cat's type promotion
        assert torch.equal(concat.cat_with_convs([x, t], [int8_out, None]), torch.cat([int8_out(x), t], 1))
        # different spatial sizes: torch.cat's error
        with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
            concat.cat_with_convs([x, _input(2, 8, 4, 4, True)], [int8_out, None])


def test_concat_conv_functions_are_fx_leaves():
    conv = _conv(8, 4, 1, 1, 0, 1, 1, 0.05)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, a, b):
            return concat.cat_with_convs([a, b], [self.conv, None])

    gm = fx.symbolic_trace(M())
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert [n.target for n in calls] == [concat.cat_with_convs]
    a, b = _input(1, 8, 3, 3, True), _input(1, 2, 3, 3, True)
    assert torch.equal(gm(a, b), torch.cat([conv(a), b], 1))


class BasicConv(nn.Module):
    """torchvision's BasicConv2d: conv, BatchNorm, ReLU."""

    def __init__(self, c_in, c_out, **kw):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c_in, c_out, bias=False, **kw), nn.BatchNorm2d(c_out)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """GoogLeNet's block in small, and a max-pooled branch, which is joined as it is."""

    def __init__(self, c):
        super().__init__()
        self.b1 = BasicConv(c, 8, kernel_size=1)
        self.b2 = nn.Sequential(BasicConv(c, 8, kernel_size=1), BasicConv(8, 16, kernel_size=3, padding=1))
        self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), BasicConv(c, 8, kernel_size=1))
        self.pre, self.pool = BasicConv(c, 16, kernel_size=1), nn.MaxPool2d(3, 1, 1)

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.pool(self.pre(x))], 1)


class InceptionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = BasicConv(3, 16, kernel_size=3, padding=1)
        self.block = Inception(16)
        self.head = BasicConv(48, 8, kernel_size=1)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


def _quantized(model, into=True, monkeypatch=None):
    if not into:
        monkeypatch.setattr(api, "convs_into_concatenations", lambda m: [])
    torch.manual_seed(1)
    calib = [torch.randn(2, 3, 10, 10) for _ in range(2)]
    q = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static", calib_data=calib)
    if not into:
        monkeypatch.undo()
    return q


def _calls(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function"]


def test_quantize_writes_an_inception_blocks_convs_into_its_concatenation(monkeypatch, tmp_path):
    model = with_batch_statistics(InceptionNet(), [torch.randn(8, 3, 10, 10)])
    q = _quantized(model)
    block = q.block
    assert isinstance(block, fx.GraphModule) and type(block).__name__ == "Inception"
    assert "block" in q.fastinfer_report.rewritten
    (cat,) = [n for n in _calls(block) if n.target is concat.cat_with_convs]
    convs = [c.target if c is not None else None for c in cat.args[1]]
    # b1's conv, b2's last BasicConv's conv (b2.0 called on its own before it), b3's (b3.0, the pooling, before it);
    # the pooled part joined as it is
    assert convs == ["b1.conv", "b2.1.conv", "b3.1.conv", None]
    assert [n.target for n in block.graph.nodes if n.op == "call_module"] == ["pre", "pool", "b2.0", "b3.0"]
    assert type(block.b2) is nn.Sequential and isinstance(block.b2[1].conv, Int8Conv2d)
    x = torch.randn(2, 3, 10, 10)
    plain = _quantized(model, into=False, monkeypatch=monkeypatch)
    assert not any(n.target is concat.cat_with_convs for m in plain.modules() if isinstance(m, fx.GraphModule)
                   for n in _calls(m))
    with torch.inference_mode():
        y = q(x)
        assert torch.equal(y, plain(x))  # the same bits as torch.cat of the convs' outputs
        assert block(q.stem(x))[0].dtype == torch.int8
    assert F.cosine_similarity(y.flatten(), model(x).flatten(), dim=0) > 0.99
    # int8_residuals=False keeps every forward as written
    torch.manual_seed(1)
    kept = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static",
                              calib_data=[torch.randn(2, 3, 10, 10) for _ in range(2)], int8_residuals=False)
    assert not isinstance(kept.block, fx.GraphModule)
    # load_quantized makes the same rewrite
    torch.save(q.state_dict(), tmp_path / "q.pt")
    loaded = fastinfer.load_quantized(tmp_path / "q.pt", fastinfer.fuse(copy.deepcopy(model)))
    assert any(n.target is concat.cat_with_convs for n in _calls(loaded.block))
    with torch.inference_mode():
        assert torch.equal(loaded(x), y)
    # torch.compile: the functions are torch.cat of the convs' outputs there
    with torch.inference_mode():
        assert torch.equal(torch.compile(q, fullgraph=True)(x), y)
    # torch.jit.trace and torch.export record the ops (the buffer from torch.empty under a tracer)
    with torch.no_grad():
        traced = torch.jit.trace(q, (x,), check_trace=False)
    exported = torch.export.export(q, (x,)).module()
    with torch.inference_mode():
        assert torch.equal(traced(x), y) and torch.equal(traced(2 * x), q(2 * x))
        assert torch.equal(exported(x), y)


class JustConv(nn.Module):
    """A module whose forward is its int8 conv alone (a BasicConv2d once fused)."""

    def __init__(self):
        super().__init__()
        self.conv = Int8Conv2d.from_float(nn.Conv2d(8, 8, 1).eval(), x_scale=0.05, out_scale=0.05)

    def forward(self, x):
        return self.conv(x)


def test_a_conv_not_of_its_own_forward_is_not_moved():
    """A part whose module does more than its conv (an op after it), a conv with a forward hook, a module called
    twice and a part joined twice keep their calls: only a conv's own output, joined once, is written in place."""

    class Scaled(JustConv):
        def forward(self, x):
            return self.conv(x) * 1

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = Scaled(), JustConv(), JustConv(), JustConv()

        def forward(self, x):
            d = self.d(x)
            return torch.cat([self.a(x), self.b(x), self.c(x), self.c(x), d, d], 1)

    block = Block().eval()
    graph = chain._OwnOpsTracer().trace(block)
    assert [[c[:2] for c in convs.values()] for _, convs in chain._conv_join_sites(block, graph)] == [[([], "b.conv")]]
    for mod in (block.b, block.b.conv):  # a hook on the part's module or on its conv: both must still run
        h = mod.register_forward_hook(lambda m, a, y: None)
        assert chain._conv_join_sites(block, graph) == []
        h.remove()


def test_a_conv_is_not_moved_past_a_write():
    """The rewrite calls a part's conv at the concatenation: not where something between may write into what it
    reads (an in-place function, an in-place module, a user module that writes into its argument)."""

    class Adds(nn.Module):
        def forward(self, x):
            x.add_(1)
            return x

    class Block(nn.Module):
        def __init__(self, how):
            super().__init__()
            self.how, self.a, self.b, self.c = how, JustConv(), JustConv(), JustConv()
            self.relu, self.adds = nn.ReLU(inplace=True), Adds()

        def forward(self, x):
            a = self.a(x)
            if self.how == "function":
                y = F.relu(x, inplace=True)
            elif self.how == "module":
                y = self.relu(x)
            elif self.how == "user module":
                y = self.adds(x)
            elif self.how == "out":
                y = torch.clamp(x, min=0, out=x)
            else:
                y = F.relu(x)
            return torch.cat([a, self.b(y), self.c(x)], 1)

    for how in ("function", "module", "user module", "out", "none"):
        block = Block(how).eval()
        graph = chain._OwnOpsTracer().trace(block)
        (site,) = chain._conv_join_sites(block, graph)
        moved = sorted(c[1] for c in site[1].values())
        assert moved == (["a.conv", "b.conv", "c.conv"] if how == "none" else ["b.conv", "c.conv"]), how
        gm = chain._graph_module(block, graph)
        chain._write_convs_into(gm, *site)
        gm.recompile()
        x = torch.randn(1, 8, 4, 4)
        with torch.inference_mode():
            assert torch.equal(gm(x.clone()), block(x.clone())), how


def test_quantize_writes_a_dense_blocks_new_features_in_place(monkeypatch):
    from test_concat import DenseBlock, Net, _trained
    model = _trained(Net(DenseBlock(3, 16, 8), 3))
    torch.manual_seed(1)
    calib = [torch.randn(2, 3, 12, 12) for _ in range(2)]
    q = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static", calib_data=calib)
    calls = [n.target for n in _calls(q.block)]
    assert calls == [concat.cat_channels_reserve] + [concat.cat_conv_extend] * 3
    ext = [n for n in _calls(q.block) if n.target is concat.cat_conv_extend]
    assert [n.args[1].target for n in ext] == ["layer0.conv2", "layer1.conv2", "layer2.conv2"]
    monkeypatch.setattr(api, "convs_into_concatenations", lambda m: [])
    torch.manual_seed(1)
    calib = [torch.randn(2, 3, 12, 12) for _ in range(2)]
    plain = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static", calib_data=calib)
    assert [n.target for n in _calls(plain.block)] == [concat.cat_channels_reserve] + [concat.cat_channels_extend] * 3
    x = torch.randn(2, 3, 12, 12)
    seen = []
    hook = q.block.layer2.norm1.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.inference_mode():
        assert torch.equal(q(x), plain(x))
    hook.remove()
    # layer 2 read the block's buffer in place: 32 channels of its 40, the last 16 written there by layers 0 and 1
    assert seen[-1].shape[1] == 32 and seen[-1].stride()[3] == 40


class Fire(nn.Module):
    """SqueezeNet's fire module: each expand conv's ReLU a module of its own, which fuse folds into the conv."""

    def __init__(self, c, s, e):
        super().__init__()
        self.squeeze, self.squeeze_activation = nn.Conv2d(c, s, 1), nn.ReLU(inplace=True)
        self.expand1x1, self.expand1x1_activation = nn.Conv2d(s, e, 1), nn.ReLU(inplace=True)
        self.expand3x3, self.expand3x3_activation = nn.Conv2d(s, e, 3, padding=1), nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))],
                         1)


def test_quantize_writes_convs_behind_folded_activations(monkeypatch):
    model = with_batch_statistics(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), Fire(16, 8, 12),
                                                Fire(24, 8, 12), nn.Conv2d(24, 4, 1)), [torch.randn(4, 3, 10, 10)])
    q = _quantized(model)
    for i in (2, 3):
        fire = q[i]
        assert isinstance(fire, fx.GraphModule) and type(fire).__name__ == "Fire"
        (cat,) = [n for n in _calls(fire) if n.target is concat.cat_with_convs]
        assert [c.target for c in cat.args[1]] == ["expand1x1", "expand3x3"]
        # the expand convs and their folded activations are no longer called on their own
        assert not any(n.target.startswith("expand") for n in fire.graph.nodes if n.op == "call_module")
    plain = _quantized(model, into=False, monkeypatch=monkeypatch)
    x = torch.randn(2, 3, 10, 10)
    with torch.inference_mode():
        assert torch.equal(q(x), plain(x))
