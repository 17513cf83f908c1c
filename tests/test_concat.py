"""Channel concatenation of int8 activations: ops.int8_cat_channels_into (oracle: reference.int8_cat_channels_into,
torch.cat), fastinfer.nn.concat's functions (oracle: torch.cat), quantize_channel_affine reading a channel prefix of
a wider buffer in place, and quantize(w8a8_static) putting them in place of a dense block's chain of torch.cat calls
(oracle: the same quantized model with torch.cat left in, bit for bit)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

import fastinfer
from fastinfer import ops
from fastinfer import reference as ref
from fastinfer.nn import concat
from fastinfer.quantization import chain

from conftest import with_batch_statistics


def _int8(shape, seed, channels_last=True):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _buffer(n, c, h, w, seed=99):
    """An int8 channels_last buffer of random bytes (the channels a call must leave alone keep them)."""
    return _int8((n, c, h, w), seed)


# (N, H, W, channels of the parts): 32-channel parts (a DenseNet's), counts off the 16-byte steps, one pixel, many
# pixels (several work items), an empty batch, a part with no channels
CAT_CASES = [
    (1, 5, 7, [3, 1, 16]),
    (2, 9, 9, [64, 32, 32]),
    (3, 1, 1, [13, 130]),
    (2, 20, 21, [32, 17, 48]),
    (1, 56, 56, [64, 32]),
    (0, 4, 4, [8, 8]),
    (2, 3, 3, [5, 0, 7]),
]


@pytest.mark.parametrize("n,h,w,chans", CAT_CASES, ids=str)
@pytest.mark.parametrize("spare,offset", [(0, 0), (11, 0), (11, 5), (40, 40)])
def test_cat_channels_into_matches_reference(n, h, w, chans, spare, offset):
    parts = [_int8((n, c, h, w), i, channels_last=i % 2 == 0) for i, c in enumerate(chans)]  # NCHW parts too
    total = offset + sum(chans)
    buf = _buffer(n, total + spare, h, w)
    want = buf.clone()
    ref.int8_cat_channels_into(want, parts, offset)
    for out in (buf, buf[:, :total]):  # the buffer, and a channel prefix of it (pixels total + spare apart)
        got = buf.clone() if out is buf else buf.clone()[:, :total]
        ops.int8_cat_channels_into(got, parts, offset)
        full = got if got._base is None else got._base
        assert torch.equal(full, want)  # the parts' channels, and every other byte as it was
    if n:
        assert torch.equal(want[:, offset:total], torch.cat(parts, 1))


def test_cat_channels_into_reads_strided_parts():
    """A part that is itself a channel prefix of a wider buffer is read in place, rows apart by its buffer's."""
    wide = _int8((2, 48, 6, 5), 1)
    part = wide[:, :20]
    other = _int8((2, 12, 6, 5), 2)
    out = torch.empty((2, 32, 6, 5), dtype=torch.int8, memory_format=torch.channels_last)
    ops.int8_cat_channels_into(out, [part, other])
    assert torch.equal(out, torch.cat([part, other], 1))


def test_cat_channels_into_threads():
    parts = [_int8((4, 64, 30, 30), 0), _int8((4, 32, 30, 30), 1)]
    for threads in (1, 2):
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = torch.empty((4, 96, 30, 30), dtype=torch.int8, memory_format=torch.channels_last)
            ops.int8_cat_channels_into(out, parts)
        finally:
            torch.set_num_threads(prev)
        assert torch.equal(out, torch.cat(parts, 1))


def test_cat_channels_into_refuses_bad_arguments():
    part = _int8((2, 4, 3, 3), 0)
    out = torch.empty((2, 8, 3, 3), dtype=torch.int8, memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="out must have dtype Char"):
        ops.int8_cat_channels_into(out.float(), [part])
    with pytest.raises(RuntimeError, match="out must hold its channels contiguously"):
        ops.int8_cat_channels_into(torch.empty((2, 8, 3, 3), dtype=torch.int8), [part])  # NCHW
    with pytest.raises(RuntimeError, match="out must be 4-D"):
        ops.int8_cat_channels_into(torch.empty((8, 3, 3), dtype=torch.int8), [part])
    with pytest.raises(RuntimeError, match=r"parts\[1\] must have dtype Char"):
        ops.int8_cat_channels_into(out, [part, part.float()])
    with pytest.raises(RuntimeError, match=r"parts\[0\] must be 4-D \[N=2, C, H=3, W=3\]"):
        ops.int8_cat_channels_into(out, [_int8((2, 4, 3, 4), 0)])
    with pytest.raises(RuntimeError, match=r"reach channel 12, past out's 8"):
        ops.int8_cat_channels_into(out, [part, part, part])
    with pytest.raises(RuntimeError, match=r"channel_offset must be in \[0, 8\]"):
        ops.int8_cat_channels_into(out, [part], -1)
    with pytest.raises(RuntimeError, match=r"reach channel 10"):
        ops.int8_cat_channels_into(out, [part], 6)
    with pytest.raises(RuntimeError, match=r"parts\[0\] shares memory with out"):
        ops.int8_cat_channels_into(out, [out[:, :4]], 4)


def test_opcheck_cat_channels_into():
    parts = [_int8((2, 4, 3, 3), 0), _int8((2, 5, 3, 3), 1)]
    out = torch.zeros((2, 12, 3, 3), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.fastinfer.int8_cat_channels_into.default, (out, parts, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8], ids=str)
def test_quantize_channel_affine_reads_a_channel_prefix(dtype):
    """A channel slice of a wider channels_last buffer (a DenseNet's features, cat_channels_extend's prefix) gives
    what the same values in a tensor of their own give."""
    g = torch.Generator().manual_seed(0)
    wide = (torch.randint(-127, 128, (2, 40, 5, 6), generator=g) if dtype == torch.int8
            else torch.randn(2, 40, 5, 6, generator=g) * 3).to(dtype).contiguous(memory_format=torch.channels_last)
    x = wide[:, :24]
    scale, shift = torch.rand(24, generator=g), torch.randn(24, generator=g)
    x_scale = 0.03 if dtype == torch.int8 else None
    got = ops.quantize_channel_affine(x, scale, shift, 0.05, True, x_scale)
    want = ops.quantize_channel_affine(x.contiguous(memory_format=torch.channels_last), scale, shift, 0.05, True,
                                       x_scale)
    assert torch.equal(got, want)
    assert torch.equal(got, ref.quantize_channel_affine(x, scale, shift, 0.05, True, x_scale))


def test_concat_functions_compute_torch_cat():
    f0, f1, f2 = _int8((2, 16, 4, 4), 0), _int8((2, 32, 4, 4), 1), _int8((2, 32, 4, 4), 2)
    a = concat.cat_channels_reserve([f0], 64)
    assert a.shape == (2, 16, 4, 4) and torch.equal(a, f0) and a.stride()[3] == 80  # pixels 80 channels apart
    b = concat.cat_channels_extend(a, [f1])
    c = concat.cat_channels_extend(b, [f2])
    assert b.data_ptr() == c.data_ptr() == a.data_ptr() and c.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, f0) and torch.equal(b, torch.cat([f0, f1], 1)) and torch.equal(c, torch.cat([f0, f1, f2], 1))
    assert torch.equal(concat.cat_channels_reserve([f0, f1], 0), torch.cat([f0, f1], 1))
    # No room left (the buffer is full, or prev is not one of these prefixes): a new tensor, the same values.
    d = concat.cat_channels_extend(c, [f1])
    assert d.data_ptr() != c.data_ptr() and torch.equal(d, torch.cat([f0, f1, f2, f1], 1))
    user = _int8((2, 64, 4, 4), 3)
    e = concat.cat_channels_extend(user[:, :16], [f1])  # a slice of someone's tensor: its other channels are not room
    assert torch.equal(e, torch.cat([user[:, :16], f1], 1)) and torch.equal(user, _int8((2, 64, 4, 4), 3))
    # Float parts, mixed dtypes, other ranks: torch.cat itself.
    x, y = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    assert torch.equal(concat.cat_channels_reserve([x], 5), x)
    assert torch.equal(concat.cat_channels_extend(x, [y]), torch.cat([x, y], 1))
    mixed = concat.cat_channels_extend(f0, [torch.randn(2, 3, 4, 4)])  # torch.cat's type promotion
    assert mixed.dtype == torch.float32 and torch.equal(mixed[:, :16], f0.float())
    flat = [torch.ones(2, 3, dtype=torch.int8)] * 2
    assert torch.equal(concat.cat_channels_reserve(flat, 4), torch.ones(2, 6, dtype=torch.int8))


def test_concat_functions_are_fx_leaves():
    class M(nn.Module):
        def forward(self, a, b):
            return concat.cat_channels_extend(concat.cat_channels_reserve([a], 3), [b])

    gm = fx.symbolic_trace(M())
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets == [concat.cat_channels_reserve, concat.cat_channels_extend]
    a, b = _int8((1, 2, 3, 3), 0), _int8((1, 3, 3, 3), 1)
    assert torch.equal(gm(a, b), torch.cat([a, b], 1))


class DenseLayer(nn.Module):
    """torchvision's _DenseLayer in small, its argument tested as torchvision's is (a list, or one tensor)."""

    def __init__(self, c_in, growth):
        super().__init__()
        self.norm1, self.relu1, self.conv1 = nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.Conv2d(c_in, 16, 1)
        self.norm2, self.relu2 = nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(16, growth, 3, padding=1, bias=False)

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        prev = [input] if isinstance(input, Tensor) else input
        x = torch.cat(prev, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, layers, c_in, growth):
        super().__init__({f"layer{i}": DenseLayer(c_in + i * growth, growth) for i in range(layers)})

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Net(nn.Module):
    def __init__(self, block, layers):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.block = block
        self.norm, self.conv = nn.BatchNorm2d(16 + layers * 8), nn.Conv2d(16 + layers * 8, 8, 1)

    def forward(self, x):
        return self.conv(F.relu(self.norm(self.block(self.stem(x)))))


def _trained(model):
    torch.manual_seed(0)
    return with_batch_statistics(model, [torch.randn(8, 3, 12, 12)])


def _quantized(model):
    torch.manual_seed(1)
    calib = [torch.randn(2, 3, 12, 12) for _ in range(2)]
    return fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static", calib_data=calib)


def _calls(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def test_quantize_extends_a_dense_blocks_concatenations(monkeypatch):
    torch.manual_seed(0)
    model = _trained(Net(DenseBlock(3, 16, 8), 3))
    q = _quantized(model)
    block = q.block
    assert isinstance(block, fx.GraphModule) and type(block).__name__ == "DenseBlock"
    assert type(block.layer1) is DenseLayer  # the layers stay (their forward is traced into the block's)
    # each layer's conv2 writes its features behind the ones before (tests/test_conv_into.py)
    assert _calls(block) == [concat.cat_channels_reserve] + [concat.cat_conv_extend] * 3
    reserve = next(n for n in block.graph.nodes if n.target is concat.cat_channels_reserve)
    assert reserve.args[1] == 3 * 8  # room for the three layers' features
    seen = []
    hook = block.layer2.norm1.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    x = torch.randn(2, 3, 12, 12)
    with torch.inference_mode():
        y = q(x)
        feats = q.block(q.stem(x))
    hook.remove()
    # layer 2's norm read the first 32 channels of the block's buffer, int8, in place; the block returned all of it
    assert seen[-1].dtype == torch.int8 and seen[-1].shape[1] == 32 and seen[-1].stride()[3] == 40
    assert feats.dtype == torch.int8 and feats.is_contiguous(memory_format=torch.channels_last)
    # The same bits as the model quantized with torch.cat left in its forwards.
    monkeypatch.setattr(chain, "_cat_chains", lambda module, graph: [])
    plain = _quantized(model)
    assert not isinstance(plain.block, fx.GraphModule)  # nothing else to rewrite there
    with torch.inference_mode():
        assert torch.equal(plain(x), y)
    assert F.cosine_similarity(y.flatten(), model(x).flatten(), dim=0) > 0.99


def test_a_written_concatenation_is_not_extended():
    """A concatenation someone writes into (an in-place ReLU), or that leaves the forward, gets a tensor of its
    own: an extension would write beside it in the same buffer, and the write would reach the later ones. The
    same when its reader runs after the extension, or an added part's channels are unknown."""

    class Block(nn.Module):
        def __init__(self, how):
            super().__init__()
            self.how = how
            self.a, self.b, self.c = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
            self.n1, self.n2 = nn.Conv2d(16, 8, 1), nn.Conv2d(24, 8, 1)

        def forward(self, x):
            a, b, c = self.a(x), self.b(x), self.c(x)
            if self.how == "unknown":
                c = c * 2  # not a conv's output
            ab = torch.cat([a, b], 1)
            if self.how == "written":
                ab = F.relu_(ab)
            h = self.n1(ab) if self.how != "late" else None
            abc = torch.cat([a, b, c], 1)
            if self.how == "late":
                h = self.n1(ab)
            out = self.n2(abc) + h
            return (out, ab) if self.how == "returned" else out

    for how in ("read", "written", "returned", "late", "unknown"):
        block = Block(how).eval()
        chains = chain._cat_chains(block, chain._OwnOpsTracer().trace(block))
        assert len(chains) == (how == "read"), how
        gm = fx.GraphModule(block, chain._OwnOpsTracer().trace(block))
        chain._replace_cat_chains(gm, chain._cat_chains(gm, gm.graph))
        gm.recompile()
        x = torch.randn(1, 8, 4, 4)
        torch.testing.assert_close(gm(x), block(x), rtol=0, atol=0)


def test_only_tensor_tests_are_traced_into_the_caller():
    class TestsAnElement(DenseLayer):
        def forward(self, input: Tensor) -> Tensor:  # noqa: A002
            prev = [input] if isinstance(input[0], Tensor) and isinstance(input, Tensor) else input
            x = torch.cat(prev, 1)
            return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))

    def inlinable(m):
        return chain._inlinable(m, chain._OwnOpsTracer().trace(m))

    assert inlinable(DenseLayer(8, 8)) == ["input"]
    assert inlinable(TestsAnElement(8, 8)) is None
    block = DenseBlock(3, 16, 8)
    block.layer2 = TestsAnElement(32, 8)
    model = _trained(Net(block, 3))
    q = _quantized(model)
    # layers 0 and 1 are traced into the block, and layer 1's concatenation extends layer 0's; layer 2 stays one
    # call with its own torch.cat. The block's last concatenation stays torch.cat: layer 2's output channels are
    # unknown (not a conv's).
    assert _calls(q.block) == [concat.cat_channels_reserve, concat.cat_channels_extend, torch.cat]
    assert type(q.block.layer2) is TestsAnElement
    assert any(n.op == "call_module" and n.target == "layer2" for n in q.block.graph.nodes)
    x = torch.randn(2, 3, 12, 12)
    with torch.inference_mode():
        assert F.cosine_similarity(q(x).flatten(), model(x).flatten(), dim=0) > 0.99


def test_an_extended_prefix_is_not_extended_again():
    f0, f1, f2 = _int8((1, 16, 3, 3), 0), _int8((1, 16, 3, 3), 1), _int8((1, 16, 3, 3), 2)
    a = concat.cat_channels_reserve([f0], 32)
    b = concat.cat_channels_extend(a, [f1])
    other = concat.cat_channels_extend(a, [f2])  # a's room holds f1 now: a tensor of its own
    assert other.data_ptr() != a.data_ptr() and torch.equal(other, torch.cat([f0, f2], 1))
    assert torch.equal(b, torch.cat([f0, f1], 1))


def test_a_dense_block_compiles():
    """Under torch.compile the functions are torch.cat (the compiler plans the copies): the same bits."""
    model = _trained(Net(DenseBlock(2, 16, 8), 2))
    q = _quantized(model)
    assert concat.cat_conv_extend in _calls(q.block)
    x = torch.randn(2, 3, 12, 12)
    compiled = torch.compile(q, fullgraph=True)
    with torch.inference_mode():
        assert torch.equal(compiled(x), q(x))
