"""int8 hand-offs between static Int8Conv2d layers found by torch.fx (quantize w8a8_static), and the
int8 max pooling they pass through (ops.int8_max_pool2d vs fastinfer.reference: bit-exact)."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastinfer
from fastinfer import ops
from fastinfer import reference as ref
from fastinfer.nn import Int8Add, Int8Conv2d, Int8MaxPool2d

from conftest import assert_served, served_by, with_batch_statistics

# (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
POOLS = [
    (1, 3, 7, 7, 3, 2, 1, 1, False),
    (2, 13, 9, 11, 2, 2, 0, 1, False),
    (1, 64, 56, 56, 3, 2, 1, 1, False),    # torch's own kernel fails on this channels_last int8 tensor
    (3, 1, 5, 5, 3, 2, 0, 1, True),        # ceil_mode: a last window past the input
    (1, 5, 8, 9, 3, 1, 1, 2, False),       # dilation
    (2, 17, 10, 7, (3, 2), (2, 1), (1, 0), 1, True),
    (1, 4, 1, 1, 1, 1, 0, 1, False),
    (0, 4, 6, 6, 2, 2, 0, 1, False),       # empty batch
    (1, 3, 3, 3, 4, 2, 0, 1, True),        # ceil_mode: one window larger than the input (torch's size rule)
]
# Channel counts around the vectors' 32 and 64 bytes (GoogLeNet's and Inception's branch poolings: 3x3 stride 1)
WIDE_POOLS = [
    (2, 64, 9, 8, 3, 1, 1, 1, False),
    (1, 95, 7, 7, 3, 1, 1, 1, False),      # one full vector and 31 masked channels
    (1, 160, 10, 11, 3, 2, 0, 1, True),    # 2.5 vectors, ceil_mode
    (2, 33, 6, 6, 2, 2, 0, 1, False),      # AVX2: one vector and one channel
    (1, 512, 5, 5, (3, 1), 1, (1, 0), 1, False),   # AVX-512: two groups of four vectors
    (2, 300, 6, 7, 3, 1, 1, 1, False),     # a group of four vectors, then 44 masked channels
]


@pytest.mark.parametrize("g", POOLS + WIDE_POOLS, ids=[str(g) for g in POOLS + WIDE_POOLS])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_int8_max_pool2d_matches_reference(isa, g, layout):
    # The vector kernels (AVX-512: 64 channels a vector, the last masked; AVX2: 32, then one at a time; AMX's and
    # AVX-VNNI's sets copy them) and the portable one on the scalar tier.
    N, C, H, W, k, s, p, d, ceil = g
    torch.manual_seed(0)
    x = torch.randint(-128, 128, (N, C, H, W), dtype=torch.int8)
    x.view(-1)[: min(3, x.numel())] = -128  # the extreme value in a window of its own
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    out = ops.int8_max_pool2d(x, k, s, p, d, ceil)
    want = ref.int8_max_pool2d(x, k, s, p, d, ceil)
    assert out.dtype == torch.int8 and out.shape == want.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, want)
    if out.numel():
        assert_served("max_pool", isa)


def test_int8_max_pool2d_all_minus_128():
    # -128 everywhere: the vector kernels start each window from -128, the value itself
    x = torch.full((2, 70, 9, 9), -128, dtype=torch.int8)
    assert torch.equal(ops.int8_max_pool2d(x, 3, 1, 1), torch.full((2, 70, 9, 9), -128, dtype=torch.int8))


def test_int8_max_pool2d_threads():
    x = torch.randint(-128, 128, (3, 40, 23, 19), dtype=torch.int8)
    want = ref.int8_max_pool2d(x, 3, 2, 1, 1)
    old = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            assert torch.equal(ops.int8_max_pool2d(x, 3, 2, 1), want)
    finally:
        torch.set_num_threads(old)


def test_int8_max_pool2d_bad_input():
    x = torch.zeros(1, 4, 8, 8, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="x must have dtype Char"):
        ops.int8_max_pool2d(x.float(), 2)
    with pytest.raises(RuntimeError, match="x must be 4-D"):
        ops.int8_max_pool2d(x[0], 2)
    with pytest.raises(RuntimeError, match="padding must be at most half the kernel size"):
        ops.int8_max_pool2d(x, 3, 1, 2)
    with pytest.raises(RuntimeError, match="padding must be >= 0"):
        ops.int8_max_pool2d(x, 3, 1, -1)
    with pytest.raises(RuntimeError, match="kernel_size must be >= 1"):
        ops.int8_max_pool2d(x, 0)
    with pytest.raises(RuntimeError, match="stride must be >= 1"):
        ops.int8_max_pool2d(x, 2, 0)
    with pytest.raises(RuntimeError, match="is smaller than the dilated kernel"):
        ops.int8_max_pool2d(x, 5, 1, 0, 2)
    with pytest.raises(RuntimeError, match="is smaller than the dilated kernel"):  # no window, whatever the stride
        ops.int8_max_pool2d(x, 9, 9)
    # A dilated window with every tap in the padding (torch: -inf, no int8 value): refused, not left unwritten.
    with pytest.raises(RuntimeError, match="window of output column 0 has every tap in the padding"):
        ops.int8_max_pool2d(torch.zeros(1, 64, 3, 1, dtype=torch.int8), (2, 2), (3, 2), (0, 1), (1, 2))
    with pytest.raises(RuntimeError, match="window of output row 0 has every tap in the padding"):
        ops.int8_max_pool2d(torch.zeros(1, 4, 1, 4, dtype=torch.int8), (2, 1), (2, 1), (1, 0), (2, 1), True)


def test_opcheck_int8_max_pool2d():
    x = torch.randint(-128, 128, (2, 6, 9, 8), dtype=torch.int8)
    torch.library.opcheck(torch.ops.fastinfer.int8_max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], [1, 1], True))


def test_int8_max_pool_module():
    pool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
    mod = Int8MaxPool2d.from_float(pool)
    x = torch.randn(2, 5, 9, 9)
    assert torch.equal(mod(x), pool(x))  # float inputs: torch's pooling
    xq = torch.randint(-128, 128, (2, 5, 9, 9), dtype=torch.int8)
    assert torch.equal(mod(xq), ref.int8_max_pool2d(xq, 3, 2, 1, 1, True))
    with pytest.raises(ValueError, match="return_indices"):
        Int8MaxPool2d.from_float(nn.MaxPool2d(2, return_indices=True))


class Block(nn.Module):
    """A ResNet-style bottleneck written as a forward (not an nn.Sequential), with a stem before it."""

    def __init__(self, pool=None, mid=None):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.pool = pool if pool is not None else nn.MaxPool2d(3, 2, 1)
        self.conv1 = nn.Conv2d(16, 8, 1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.mid = mid if mid is not None else nn.ReLU()
        self.conv3 = nn.Conv2d(8, 16, 1)
        self.down = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.pool(self.relu(self.bn(self.stem(x))))
        out = self.conv3(self.mid(self.conv2(self.relu(self.conv1(x)))))
        out = self.relu(out + self.down(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def quantize_static(model, seed=0):
    torch.manual_seed(seed)
    calib = [torch.randn(4, 3, 20, 20) for _ in range(3)]
    return fastinfer.quantize(fastinfer.fuse(model.eval()), scheme="w8a8_static", calib_data=calib)


def unchained(model):
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if isinstance(m, Int8Conv2d):
            m.out_scale = None
    return plain


def test_graph_chains_a_forward_written_block():
    torch.manual_seed(0)
    q = quantize_static(Block())
    # stem -> pool -> {conv1, down}: one input, one calibrated scale; conv3 feeds the add: not chained
    assert q.fastinfer_report.chained == ["stem -> conv1", "stem -> down", "conv1 -> conv2", "conv2 -> conv3"]
    assert q.stem.out_scale == q.conv1.x_scale == q.down.x_scale
    assert q.conv3.out_scale is None and q.down.out_scale is None
    assert type(q.pool) is Int8MaxPool2d
    x = torch.randn(2, 3, 20, 20)
    plain = unchained(q)
    with torch.inference_mode():
        # each hand-off is the int8 image of the unchained layer's fp32 output with the consumer's scale
        # (the folded epilogue may round the last place differently, rarely)
        h = q.stem(x)
        assert h.dtype == torch.int8
        want = ref.quantize_static(plain.stem(x), q.conv1.x_scale)
        assert (h.int() - want.int()).abs().max() <= 1 and (h != want).float().mean() < 0.01
        y, y_plain = q(x), plain(x)
    torch.testing.assert_close(y, y_plain, rtol=0.02, atol=0.02)


def test_dropout_on_a_hand_off():
    # nn.Dropout between two static convs passes the int8 hand-off on in eval mode (Int8Dropout); in training
    # mode (a model quantized without .eval()) it refuses with a message instead of failing inside torch.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Dropout(0.1), nn.Conv2d(16, 8, 3, padding=1))
    x = torch.randn(2, 3, 10, 10)
    q = fastinfer.quantize(copy.deepcopy(model), "w8a8_static", calib_data=[x])
    assert q.fastinfer_report.chained == ["0 -> 3"] and type(q[2]) is fastinfer.nn.Int8Dropout and q.training
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"training mode.*call model.eval\(\)"):
        q(x)
    with torch.inference_mode():
        y, y_plain = q.eval()(x), unchained(q)(x)
        assert torch.equal(q[2](q[1](q[0](x))), q[1](q[0](x)))  # eval: the int8 values unchanged
    torch.testing.assert_close(y, y_plain, rtol=0.02, atol=0.02)
    assert fastinfer.nn.Int8Dropout(0.5).train()(torch.ones(4)).dtype == torch.float32  # float: torch's own


def test_chained_model_stays_close_to_float():
    torch.manual_seed(1)
    model = Block().eval()
    q = quantize_static(copy.deepcopy(model))
    x = torch.randn(8, 3, 20, 20)
    with torch.inference_mode():
        cos = F.cosine_similarity(q(x).flatten(), model(x).flatten(), dim=0)
    assert cos > 0.99


@pytest.mark.parametrize("case", ["float_clamp", "functional_pool", "twice", "scales_differ"])
def test_no_chain_where_int8_would_change_results(case):
    torch.manual_seed(0)
    if case == "float_clamp":  # a clamp's bounds are float values (so is ReLU6's, when fuse cannot fold it)
        q = quantize_static(Block(mid=nn.Hardtanh(0.0, 0.5)))
        assert "conv2 -> conv3" not in q.fastinfer_report.chained
        assert "conv1 -> conv2" in q.fastinfer_report.chained
    elif case == "functional_pool":  # torch's max_pool2d cannot run int8 channels_last, and cannot be swapped

        class FPool(Block):
            def forward(self, x):
                x = F.max_pool2d(self.relu(self.bn(self.stem(x))), 3, 2, 1)
                return self.head(torch.flatten(F.adaptive_avg_pool2d(self.conv1(x), 1), 1).repeat(1, 2))

        q = quantize_static(FPool())
        assert not any(c.startswith("stem") for c in q.fastinfer_report.chained)
        assert q.stem.out_scale is None
    elif case == "twice":  # a module called twice has one out_scale for both calls

        class Twice(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 1)

            def forward(self, x):
                return self.b(self.a(self.a(x)))

        q = quantize_static(Twice())
        assert q.fastinfer_report.chained == [] and q.a.out_scale is None
    else:  # two consumers of one output calibrated to different scales (one sees a scaled copy)

        class Two(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b, self.c = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

            def forward(self, x):
                y = torch.relu(self.a(x))
                return self.b(y) + self.c(y * 2)

        q = quantize_static(Two())
        assert q.a.out_scale is None and q.fastinfer_report.chained == []
    x = torch.randn(2, 3, 20, 20)
    with torch.inference_mode():
        q(x)  # runs: nothing int8 reaches a layer that cannot take it


class Branches(nn.Module):
    """Inception-style blocks: branches (one behind a max pooling) joined by torch.cat on the channels."""

    def __init__(self, join=None):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.Conv2d(8, 4, 1)
        self.b2 = nn.Sequential(nn.Conv2d(8, 6, 1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1))
        self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(8, 3, 1))
        self.next1 = nn.Conv2d(12, 8, 1)
        self.next2 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), nn.Conv2d(12, 4, 3, padding=1))
        self.head = nn.Linear(12, 3)
        self.join = join or (lambda parts, x: torch.cat(parts, 1))

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.join([torch.relu(self.b1(x)), torch.relu(self.b2(x)), torch.relu(self.b3(x))], x)
        z = torch.cat([self.next1(y), self.next2(y)], dim=1)  # reaches the average pooling: stays float
        return self.head(torch.flatten(F.adaptive_avg_pool2d(z, 1), 1))


def test_branches_hand_off_int8_through_a_channel_concatenation(tmp_path):
    torch.manual_seed(0)
    model = Branches().eval()
    q = quantize_static(copy.deepcopy(model))
    chained = q.fastinfer_report.chained
    # The stem feeds b1 and b2.0 directly and b3.1 through a max pooling, which takes the direct ones' scale.
    assert {"stem -> b1", "stem -> b2.0", "stem -> b3.1", "b2.0 -> b2.2"} <= set(chained)
    assert q.b3[1].x_scale == q.b1.x_scale == q.b2[0].x_scale == q.stem.out_scale
    # All three branches reach the concatenation, whose consumers read it int8 at one scale.
    for producer in ("b1", "b2.2", "b3.1"):
        assert {f"{producer} -> next1", f"{producer} -> next2.1"} <= set(chained)
        assert q.get_submodule(producer).out_scale == q.next1.x_scale == q.next2[1].x_scale
    assert type(q.b3[0]) is Int8MaxPool2d and type(q.next2[0]) is Int8MaxPool2d
    assert q.next1.out_scale is None and q.next2[1].out_scale is None
    x = torch.randn(2, 3, 20, 20)
    plain = unchained(q)
    with torch.inference_mode():
        h = q.stem(x)
        parts = [torch.relu(q.b1(h)), torch.relu(q.b2(h)), torch.relu(q.b3(h))]
        assert all(p.dtype == torch.int8 for p in parts)
        joined = torch.cat(parts, 1)
        hp = plain.stem(x)
        want = ref.quantize_static(torch.cat([torch.relu(plain.b1(hp)), torch.relu(plain.b2(hp)),
                                              torch.relu(plain.b3(hp))], 1), q.next1.x_scale)
        assert (joined.int() - want.int()).abs().max() <= 1 and (joined != want).float().mean() < 0.01
        y = q(x)
        torch.testing.assert_close(y, plain(x), rtol=0.02, atol=0.02)
        assert F.cosine_similarity(y.flatten(), model(x).flatten(), dim=0) > 0.99
    # a saved model loads with the same hand-offs
    torch.save(q.state_dict(), tmp_path / "q.pt")
    loaded = fastinfer.load_quantized(tmp_path / "q.pt", fastinfer.fuse(copy.deepcopy(model)))
    with torch.inference_mode():
        assert torch.equal(loaded(x), y)
    assert type(loaded.b3[0]) is Int8MaxPool2d and loaded.b1.out_scale == q.b1.out_scale


@pytest.mark.parametrize("case", ["float_input", "twice"])
def test_concatenations_that_stay_float(case):
    # Every input of an int8 concatenation must be an int8 hand-off of one scale, each once.
    joins = {"float_input": lambda parts, x: torch.cat(parts + [x * 0.5], 1),   # an input no conv writes
             "twice": lambda parts, x: torch.cat(parts + [parts[0]], 1)}         # one branch twice
    torch.manual_seed(0)
    model = Branches(joins[case]).eval()
    width = {"float_input": 20, "twice": 16}[case]  # the consumers' channel count
    model.next1, model.next2[1] = nn.Conv2d(width, 8, 1), nn.Conv2d(width, 4, 3, padding=1)
    q = quantize_static(model)
    assert q.b1.out_scale is None and q.b3[1].out_scale is None
    assert not any(c.endswith(("-> next1", "-> next2.1")) for c in q.fastinfer_report.chained)
    assert "stem -> b1" not in q.fastinfer_report.chained or case == "twice"
    with torch.inference_mode():
        assert q(torch.randn(2, 3, 20, 20)).dtype == torch.float32


@pytest.mark.parametrize("dim", [0, 2, -1])
def test_concatenation_along_other_dims(dim):
    # One scale makes any concatenation of int8 tensors exact, along the batch or the image too.
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1), nn.Conv2d(4, 5, 1)

        def forward(self, x):
            return self.c(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=dim))

    torch.manual_seed(0)
    q = quantize_static(Stack())
    assert sorted(q.fastinfer_report.chained) == ["a -> c", "b -> c"]
    x = torch.randn(2, 3, 20, 20)
    with torch.inference_mode():
        torch.testing.assert_close(q(x), unchained(q)(x), rtol=0.02, atol=0.02)


def test_untraceable_model_falls_back_to_sequential_order():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1))

        def forward(self, x):
            if x.sum() > 1e9:  # data-dependent control flow: torch.fx cannot trace it
                x = x * 0
            return self.body(x)

    torch.manual_seed(0)
    q = quantize_static(Untraceable())
    assert q.fastinfer_report.chained == ["body.0 -> body.3"]
    assert type(q.body[2]) is Int8MaxPool2d
    x = torch.randn(2, 3, 20, 20)
    with torch.inference_mode():
        torch.testing.assert_close(q(x), unchained(q)(x), rtol=0.02, atol=0.02)


# ---------------------------------------------------------------- the residual add (ops.int8_add, Int8Add)

ADD_SHAPES = [(2, 13, 5, 7), (1, 64, 9, 9), (37,), (3, 1029)]


def _operand(kind, shape, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "int8":
        return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8), 0.037
    x = torch.randn(shape, generator=g) * 3
    flat = x.view(-1)
    flat[:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e30, -1e30])[: flat.numel()]
    return x, None


@pytest.mark.parametrize("shape", ADD_SHAPES, ids=[str(s) for s in ADD_SHAPES])
@pytest.mark.parametrize("kinds", [("int8", "int8"), ("fp32", "int8"), ("int8", "fp32"), ("fp32", "fp32")],
                         ids=lambda k: "+".join(k))
@pytest.mark.parametrize("relu", [False, True], ids=["add", "add_relu"])
@pytest.mark.parametrize("out_scale", [None, 0.05], ids=["fp32_out", "int8_out"])
def test_int8_add_matches_reference(isa, shape, kinds, relu, out_scale):
    a, sa = _operand(kinds[0], shape, 1)
    b, sb = _operand(kinds[1], shape, 2)
    if len(shape) == 4:  # mixed layouts: the op runs channels_last
        a = a.contiguous(memory_format=torch.channels_last)
    out = ops.int8_add(a, b, sa, sb, relu, out_scale)
    want = ref.int8_add(a, b, sa, sb, relu, out_scale)
    assert out.dtype == (torch.int8 if out_scale else torch.float32) and out.shape == want.shape
    if len(shape) == 4:
        assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, want, rtol=0, atol=0, equal_nan=True)
    assert_served("add", isa)
    assert ops.last_kernel("add_path") == _add_path(isa, kinds == ("int8", "int8") and out_scale is not None)


def _add_path(isa: str, int8_lines: bool) -> str:
    """The way int8_add's kernel takes: the AVX-512 tiers (avx512_vnni; amx runs its kernel) add int8 + int8 -> int8 64
    elements at a time where every |y / out_scale| fits int32 ("int8_lines": whole groups of 64, a tail by 16
    lanes), else 16 lanes ("lanes"); the other tiers have one way ("")."""
    if served_by("add", isa) != "avx512_vnni":
        return ""
    return "int8_lines" if int8_lines else "lanes"


# int8 + int8 -> int8 scales: (a_scale, b_scale, out_scale). Heavy saturation on both sides (|y / out_scale| up to
# ~2.6e6, still inside int32: the 64-element way's packs clamp), scales unequal by orders of magnitude, one past
# its bound (128 (|a_scale| + |b_scale|) / out_scale >= 2^30: the 16-lane way), and the largest scale the op
# accepts (8e37: products past float32's range, +-inf).
ADD_INT8_SCALES = [(2.0, 3.0, 0.00025), (0.5, 1e-5, 0.01), (1e3, 1e3, 1e-4), (8e37, 0.1, 0.05)]


@pytest.mark.parametrize("scales", ADD_INT8_SCALES, ids=["saturating", "unequal", "past-bound", "huge-scale"])
@pytest.mark.parametrize("relu", [False, True], ids=["add", "add_relu"])
def test_int8_add_int8_edges(isa, scales, relu):
    sa, sb, so = scales
    g = torch.Generator().manual_seed(3)
    # 2 * 64 * 29 + 37 elements: 58 whole 64-element groups and a tail; b's first 256 are every int8 value
    a = torch.randint(-128, 128, (2, 64, 29, 1), generator=g, dtype=torch.int8).reshape(-1)
    a = torch.cat([a, torch.arange(-128, 128, dtype=torch.int8)[:37]])
    b = torch.randint(-128, 128, a.shape, generator=g, dtype=torch.int8)
    b[:256] = torch.arange(-128, 128, dtype=torch.int8)
    out = ops.int8_add(a, b, sa, sb, relu, so)
    torch.testing.assert_close(out, ref.int8_add(a, b, sa, sb, relu, so), rtol=0, atol=0)
    fits = 128.0 * (abs(sa) + abs(sb)) / so < 2.0**30
    assert ops.last_kernel("add_path") == _add_path(isa, fits)


def test_int8_add_int8_lines_split_over_threads(isa):
    # Past the op's grain (2^16 elements a task): each thread's range starts off a multiple of 64 (3 threads) and
    # runs 64-element groups from there, its tail by 16 lanes.
    g = torch.Generator().manual_seed(4)
    a = torch.randint(-128, 128, (2 * 65536 + 4099,), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, a.shape, generator=g, dtype=torch.int8)
    want = ref.int8_add(a, b, 0.4, 0.7, True, 0.003)
    old = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            assert torch.equal(ops.int8_add(a, b, 0.4, 0.7, True, 0.003), want)
            assert ops.last_kernel("add_path") == _add_path(isa, True)
    finally:
        torch.set_num_threads(old)


def test_int8_add_rounds_half_to_even_and_threads(isa):
    a = torch.arange(-300, 300, dtype=torch.float32) * 0.5  # every half-way point of the rounding, and clamps
    z = torch.zeros_like(a)
    torch.testing.assert_close(ops.int8_add(a, z, out_scale=1.0), ref.int8_add(a, z, out_scale=1.0), rtol=0, atol=0)
    x = torch.randint(-128, 128, (3, 40, 23, 19), dtype=torch.int8)
    y = torch.randn(3, 40, 23, 19)
    want = ref.int8_add(x, y, 0.1, None, True, 0.2)
    old = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            assert torch.equal(ops.int8_add(x, y, 0.1, None, True, 0.2), want)
    finally:
        torch.set_num_threads(old)


def test_int8_add_bad_input():
    a = torch.zeros(2, 4, 3, 3, dtype=torch.int8)
    f = torch.zeros(2, 4, 3, 3)
    with pytest.raises(RuntimeError, match="a_scale is needed for an int8 a"):
        ops.int8_add(a, f)
    with pytest.raises(RuntimeError, match="b_scale must be None for a float32 b"):
        ops.int8_add(a, f, 0.1, 0.1)
    with pytest.raises(RuntimeError, match="same shape"):
        ops.int8_add(a, f[:, :2], 0.1)
    with pytest.raises(RuntimeError, match="b must be int8 .* or float32"):
        ops.int8_add(a, f.double(), 0.1)
    with pytest.raises(RuntimeError, match="out_scale must be a positive finite number"):
        ops.int8_add(a, f, 0.1, None, False, -1.0)


def test_opcheck_int8_add():
    a = torch.randint(-128, 128, (2, 6, 5, 4), dtype=torch.int8)
    b = torch.randn(2, 6, 5, 4)
    torch.library.opcheck(torch.ops.fastinfer.int8_add.default, (a, b, 0.1, None, True, 0.05))
    torch.library.opcheck(torch.ops.fastinfer.int8_add.default, (b, b, None, None, False, None))


def test_int8_add_module():
    from fastinfer.nn import Int8Add

    a, b = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    assert torch.equal(Int8Add(relu=True)(a, b), torch.relu(a + b))  # nothing int8: torch's own
    bias = torch.randn(4, 1, 1)
    assert torch.equal(Int8Add()(a, bias), a + bias)  # broadcasting still works
    qa = torch.randint(-128, 128, (2, 4, 5, 5), dtype=torch.int8)
    mod = Int8Add(relu=True, a_scale=0.1, out_scale=0.05)
    assert torch.equal(mod(qa, b), ref.int8_add(qa, b, 0.1, None, True, 0.05))
    assert torch.equal(mod(qa, bias), ref.int8_add(qa.float() * torch.tensor(0.1), bias.expand_as(b), None, None,
                                                   True, 0.05))
    state = mod.state_dict()
    fresh = Int8Add()
    fresh.load_state_dict(state)
    assert (fresh.relu, fresh.a_scale, fresh.out_scale) == (True, 0.1, 0.05)


class Bottle(nn.Module):
    """A ResNet bottleneck as torchvision writes it: shared ReLU, `out += identity`."""

    def __init__(self, cin, width, cout, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        self.layer = nn.Sequential(Bottle(16, 8, 32, 2), Bottle(32, 8, 32))
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = self.layer(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _trained_like(model, seed=0):
    torch.manual_seed(seed)
    return with_batch_statistics(model, [torch.randn(4, 3, 20, 20) for _ in range(3)])


def test_residual_adds_become_int8():
    from fastinfer.nn import Int8Add

    model = _trained_like(TinyResNet())
    q = quantize_static(copy.deepcopy(model))
    kept = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static",
                              calib_data=[torch.randn(4, 3, 20, 20) for _ in range(3)], int8_residuals=False)
    r = q.fastinfer_report
    assert r.rewritten == ["layer.1", "layer.0"] and kept.fastinfer_report.rewritten == []
    assert type(kept.layer[0]) is Bottle
    b0, b1 = q.layer[0], q.layer[1]
    assert isinstance(b0, torch.fx.GraphModule) and type(b0).__name__ == "Bottle"
    assert isinstance(b0.residual_add, Int8Add) and b0.residual_add.relu
    # block 0's output is int8 for block 1's conv1 and for its residual add; block 1 feeds a float pooling
    assert "layer.0.residual_add -> layer.1.conv1" in r.chained
    assert "layer.0.residual_add -> layer.1.residual_add" in r.chained
    assert b0.residual_add.out_scale == b1.conv1.x_scale == b1.residual_add.b_scale
    assert b1.residual_add.out_scale is None
    # conv3 and the downsample conv feed only the add: int8 with their own calibrated output scales
    assert "layer.1.conv3 -> layer.1.residual_add" in r.chained
    assert "layer.0.downsample.0 -> layer.0.residual_add" in r.chained
    assert b1.residual_add.a_scale == b1.conv3.out_scale and b0.residual_add.b_scale == b0.downsample[0].out_scale
    # the shared ReLU after conv1/conv2 (which apply it themselves) is gone from the rewritten forward
    assert "relu" not in b1.code
    # the state_dict keeps every key (the Int8Add adds its extra state)
    keys = {k for k in q.state_dict() if not k.endswith("residual_add._extra_state")}
    assert keys == set(kept.state_dict())
    x = torch.randn(6, 3, 20, 20)
    with torch.inference_mode():
        h = q.maxpool(q.relu(q.bn1(q.conv1(x))))
        assert h.dtype == torch.int8 and q.layer[0](h).dtype == torch.int8
        y, y_fp32 = q(x), model(x)
        assert F.cosine_similarity(y.flatten(), y_fp32.flatten(), dim=0) > 0.99
    compiled = torch.compile(q, fullgraph=True)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), y, rtol=1e-5, atol=1e-5)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: ``x + self.conv(x)``, the conv stack an nn.Sequential whose last conv has no
    activation, and no ReLU after the add."""

    def __init__(self, c, t=4, tail=None):
        super().__init__()
        h = c * t
        layers = [nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
                  nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
                  nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c)]
        self.conv = nn.Sequential(*layers, *([tail] if tail is not None else []))

    def forward(self, x):
        return x + self.conv(x)


class TinyMobileNet(nn.Module):
    def __init__(self, tail=None):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(InvertedResidual(8, tail=tail), InvertedResidual(8, tail=tail))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


def test_residual_add_of_a_sequential_becomes_int8():
    # The add's conv operand is the output of an nn.Sequential (after fuse: its last conv, then the
    # Identity of the folded BatchNorm); the add has no ReLU. Both blocks hand int8 on.
    model = _trained_like(TinyMobileNet())
    q = quantize_static(copy.deepcopy(model))
    r = q.fastinfer_report
    assert r.rewritten == ["blocks.1", "blocks.0"]
    b0, b1 = q.blocks[0], q.blocks[1]
    assert isinstance(b0, torch.fx.GraphModule) and type(b0).__name__ == "InvertedResidual"
    assert isinstance(b0.residual_add, Int8Add) and not b0.residual_add.relu
    assert "blocks.0.conv.6 -> blocks.0.residual_add" in r.chained
    assert "stem.0 -> blocks.0.residual_add" in r.chained and "stem.0 -> blocks.0.conv.0" in r.chained
    assert "blocks.0.residual_add -> blocks.1.residual_add" in r.chained
    assert b0.residual_add.out_scale == b1.conv[0].x_scale == b1.residual_add.a_scale  # x + conv(x): x is a
    assert b1.residual_add.out_scale is None  # the pooling reads float
    x = torch.randn(6, 3, 20, 20)
    with torch.inference_mode():
        h = q.stem(x)
        assert h.dtype == torch.int8 and b0(h).dtype == torch.int8
        y, y_fp32 = q(x), model(x)
        assert F.cosine_similarity(y.flatten(), y_fp32.flatten(), dim=0) > 0.99
        # the same model with fp32 residuals: the int8 adds change the logits by rounding only
        kept = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static",
                                  calib_data=[torch.randn(4, 3, 20, 20, generator=torch.Generator().manual_seed(0))
                                              for _ in range(3)], int8_residuals=False)
        assert kept.fastinfer_report.rewritten == []
        assert F.cosine_similarity(kept(x).flatten(), y.flatten(), dim=0) > 0.99


def test_residual_add_of_a_sequential_ending_in_hardswish_becomes_int8():
    # fuse folds the tail Hardswish into the last conv (ConvAct2d 'hardswish'), so the Sequential ends in a
    # static conv whose int8 output feeds the int8 add. (A Hardswish module shared by the two blocks would stay.)
    model = TinyMobileNet(tail=nn.Hardswish())
    model.blocks[1].conv[8] = nn.Hardswish()
    model = _trained_like(model)
    q = quantize_static(copy.deepcopy(model))
    assert q.fastinfer_report.rewritten == ["blocks.1", "blocks.0"]
    assert q.blocks[0].conv[6].activation == "hardswish" and isinstance(q.blocks[0].conv[8], nn.Identity)
    assert "blocks.0.conv.6 -> blocks.0.residual_add" in q.fastinfer_report.chained
    x = torch.randn(4, 3, 20, 20)
    with torch.inference_mode():
        assert q.blocks[0](q.stem(x)).dtype == torch.int8
        assert F.cosine_similarity(q(x).flatten(), model(x).flatten(), dim=0) > 0.99


def _channel_linear():  # a float layer over the channels of an NCHW tensor
    return nn.Sequential(Permute((0, 2, 3, 1)), nn.Linear(8, 8), Permute((0, 3, 1, 2)))


@pytest.mark.parametrize("tail", [nn.Sigmoid, nn.Tanh, _channel_linear], ids=["sigmoid", "tanh", "linear"])
def test_residual_add_of_a_sequential_ending_in_float_stays(tail):
    # A Sequential whose last module is not a static conv feeds the add a float tensor: left as written.
    model = _trained_like(TinyMobileNet(tail=tail()))
    q = quantize_static(copy.deepcopy(model))
    assert q.fastinfer_report.rewritten == []
    x = torch.randn(2, 3, 20, 20)
    with torch.inference_mode():
        assert F.cosine_similarity(q(x).flatten(), model(x).flatten(), dim=0) > 0.98


class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def test_residual_adds_left_alone():
    class RootAdd(nn.Module):  # an add in the model's own forward: the model object is never replaced
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.a(x) + self.b(x))

    class BiasAdd(nn.Module):  # conv output + a parameter: not a residual add
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3, padding=1)
            self.shift = nn.Parameter(torch.randn(4, 1, 1))

        def forward(self, x):
            return self.c(x) + self.shift

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = BiasAdd()

        def forward(self, x):
            return self.inner(x)

    for model in (RootAdd(), Wrap()):
        q = quantize_static(model)
        assert q.fastinfer_report.rewritten == []
        with torch.inference_mode():
            q(torch.randn(2, 3, 20, 20))


class UpBlock(nn.Module):  # a decoder block whose skip connection is optional
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x, skip=None):
        out = self.conv(x)
        if skip is not None:
            out = out + skip
        return F.relu(out)


class UNetTail(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.up1, self.up2 = nn.Conv2d(3, 8, 3, padding=1), UpBlock(), UpBlock()

    def forward(self, x):
        e = self.stem(x)
        return self.up2(self.up1(e, e))  # up1 with its skip, up2 without


def test_block_with_optional_arguments_keeps_its_forward(tmp_path):
    # A trace sees `skip` as a tensor, so `if skip is not None:` would be baked in as taken, and up2 (called
    # without it) would hand None to the add: such a forward is kept as written, and the report says why.
    model = UNetTail().eval()
    x = torch.randn(2, 3, 20, 20)
    q = quantize_static(copy.deepcopy(model))
    assert q.fastinfer_report.rewritten == []
    assert sorted(n for n, _ in q.fastinfer_report.kept_adds) == ["up1", "up2"]
    assert "optional arguments (skip)" in str(q.fastinfer_report)
    torch.manual_seed(0)  # quantize_static's calibration batches, with no rewriting asked for
    calib = [torch.randn(4, 3, 20, 20) for _ in range(3)]
    plain = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static", calib_data=calib,
                               int8_residuals=False)
    with torch.inference_mode():
        y = q(x)
        assert F.cosine_similarity(y.flatten(), model(x).flatten(), dim=0) > 0.99
        torch.save(q.state_dict(), tmp_path / "q.pt")
        loaded = fastinfer.load_quantized(tmp_path / "q.pt", fastinfer.fuse(UNetTail().eval()))
        assert torch.equal(loaded(x), y) and torch.equal(plain(x), y)


def test_block_testing_a_required_argument_against_none_keeps_its_forward():
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x, skip):
            out = self.conv(x)
            return out if skip is None else out + skip

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.up = nn.Conv2d(3, 8, 3, padding=1), Up()

        def forward(self, x):
            return self.up(self.stem(x), None)

    q = quantize_static(Net().eval())
    assert q.fastinfer_report.rewritten == [] and "tests skip (against None" in dict(q.fastinfer_report.kept_adds)["up"]
    with torch.inference_mode():
        q(torch.randn(2, 3, 20, 20))

    class ByType(Up):  # a trace takes isinstance(skip, Tensor) as false and drops skip: silently wrong if rewritten
        def forward(self, x, skip):
            out = self.conv(x)
            return out + skip if isinstance(skip, torch.Tensor) else out + x

    class ViaHelper(Up):  # the None test in a helper method
        def merge(self, out, skip):
            return out if skip is None else out + skip

        def forward(self, x, skip):
            return self.merge(self.conv(x), skip)

    for block in (ByType(), ViaHelper()):
        class Net2(nn.Module):
            def __init__(self):
                super().__init__()
                self.stem, self.up = nn.Conv2d(3, 8, 3, padding=1), block

            def forward(self, x):
                h = self.stem(x)
                return self.up(h, h * 0.5)

        model = Net2().eval()
        q = quantize_static(copy.deepcopy(model))
        assert q.fastinfer_report.rewritten == [] and "up" in dict(q.fastinfer_report.kept_adds)
        with torch.inference_mode():
            x = torch.randn(2, 3, 20, 20)
            assert F.cosine_similarity(q(x).flatten(), model(x).flatten(), dim=0) > 0.999


def test_int8_add_refuses_a_missing_operand():
    with pytest.raises(TypeError, match="needs two tensors, got Tensor and NoneType.*int8_residuals=False"):
        Int8Add()(torch.randn(2, 3), None)


def test_rewritten_block_keeps_every_child_and_tensor():
    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.unused = nn.Linear(3, 3)  # never called: must stay in the state_dict

    class Blk(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()
            self.register_buffer("step", torch.tensor(3.0))

        def forward(self, x):
            return torch.relu(self.inner.conv(x) + x)  # a grandchild called directly

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blk = Blk()

        def forward(self, x):
            return self.blk(x)

    model = Net().eval()
    calib = [torch.randn(2, 4, 6, 6)]
    kept = fastinfer.quantize(copy.deepcopy(model), scheme="w8a8_static", calib_data=calib, int8_residuals=False)
    keys = {k for k in kept.state_dict() if not k.endswith("_extra_state")}
    q = fastinfer.quantize(copy.deepcopy(model), scheme="w8a8_static", calib_data=calib)
    assert q.fastinfer_report.rewritten == ["blk"]
    assert q.blk.inner is not None and isinstance(q.blk.inner.unused, nn.Linear)
    assert {k for k in q.state_dict() if not k.endswith("_extra_state")} == keys
    x = torch.randn(2, 4, 6, 6)
    with torch.inference_mode():
        assert F.cosine_similarity(q(x).flatten(), model(x).flatten(), dim=0) > 0.99


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_with_int8_hand_offs(dtype):
    # After model.half(), a layer that gets an int8 hand-off (a conv, an Int8Add) returns its float output in
    # the model's dtype, as the dynamic layers do (it returned fp32, which the next 16-bit layer refused).
    seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    torch.manual_seed(0)
    seq = fastinfer.quantize(seq, scheme="w8a8_static", calib_data=[torch.randn(2, 3, 12, 12)])
    assert seq.fastinfer_report.chained == ["0 -> 2"]
    x = torch.randn(2, 3, 12, 12).to(dtype)
    with torch.inference_mode():
        want = seq(x.float())  # the fp32 model on the same values
        seq.to(dtype)
        assert seq[2].float_dtype == dtype
        y = seq(x)
        assert y.dtype == dtype
        assert torch.equal(y, want.to(dtype))  # the same int8 path: only the cast differs
        seq.float()
        assert seq[2].float_dtype is None and seq(x.float()).dtype == torch.float32

    model = _trained_like(TinyResNet())
    q = quantize_static(model)
    assert q.fastinfer_report.rewritten
    with torch.inference_mode():
        x = torch.randn(3, 3, 20, 20)
        want = q(x)
        q.to(dtype)
        y = q(x.to(dtype))
    assert y.dtype == dtype
    assert F.cosine_similarity(y.float().flatten(), want.flatten(), dim=0) > 0.99


def test_unbatched_inputs():
    # nn.Conv2d and nn.MaxPool2d take [C, H, W]; their replacements do too.
    conv = nn.Conv2d(4, 6, 3, padding=1).eval()
    x = torch.randn(4, 9, 9)
    for q in (Int8Conv2d.from_float(conv), Int8Conv2d.from_float(conv, x_scale=0.03, out_scale=0.05)):
        y = q(x)
        assert y.shape == (6, 9, 9)
        assert torch.equal(y, q(x[None])[0])
    pool = Int8MaxPool2d.from_float(nn.MaxPool2d(3, 2, 1))
    xq = torch.randint(-127, 128, (1, 8, 9, 9), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    assert torch.equal(pool(xq[0]), pool(xq)[0])
    for bad in (torch.randn(4, 9), torch.randn(1, 1, 4, 9, 9)):
        with pytest.raises(ValueError, match=r"input must be 4-D \[N, C, H, W\] or unbatched 3-D"):
            Int8Conv2d.from_float(conv)(bad)
    with pytest.raises(ValueError, match="unbatched 3-D"):
        pool(xq[0, 0])
    with pytest.raises(ValueError, match=r"expected an input with 4 channels .* got shape \[2, 5, 9, 9\]"):
        Int8Conv2d.from_float(conv)(torch.randn(2, 5, 9, 9))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_quantizing_a_half_precision_model(dtype):
    # A model cast to 16 bits before quantize: its int8 hand-offs (a chained conv, the Int8Adds) return that
    # dtype, as when the quantized model is cast afterwards.
    model = _trained_like(TinyResNet())
    calib = [torch.randn(4, 3, 20, 20) for _ in range(2)]
    after = quantize_static(copy.deepcopy(model)).to(dtype)
    before = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)).to(dtype), scheme="w8a8_static",
                                calib_data=[c.to(dtype) for c in calib])
    assert before.layer[0].residual_add.float_dtype == dtype
    with torch.inference_mode():
        y = before(torch.randn(2, 3, 20, 20).to(dtype))
    assert y.dtype == dtype and after.layer[0].residual_add.float_dtype == dtype


def test_int8_upsample_module():
    x = torch.randn(2, 5, 6, 7)
    xq = torch.randint(-128, 128, (2, 5, 6, 7), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    for up in (nn.Upsample(scale_factor=2), nn.Upsample(size=(9, 16), mode="nearest-exact"),
               nn.UpsamplingNearest2d(scale_factor=(1.5, 3))):
        mod = fastinfer.nn.Int8Upsample.from_float(up)
        assert torch.equal(mod(x), up(x))  # float inputs: torch's upsampling
        y = mod(xq)  # torch's own upsampling refuses int8 in channels_last
        assert y.dtype == torch.int8 and y.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(y.float(), up(xq.float()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings
            assert torch.equal(torch.jit.trace(mod, xq)(xq), y)  # traced: the bytes cast, not viewed
    with pytest.raises(ValueError, match="mode='bilinear'"):
        fastinfer.nn.Int8Upsample.from_float(nn.Upsample(scale_factor=2, mode="bilinear"))


class TinyUNet(nn.Module):
    """An encoder level, a pooled one below it, and a decoder joining the upsampled level with the skip."""

    def __init__(self, mode="nearest"):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.enc2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.reduce = nn.Conv2d(16, 8, 1)
        self.up = nn.Upsample(scale_factor=2, mode=mode)
        self.dec = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        u = self.up(torch.relu(self.reduce(e2)))
        return self.head(self.dec(torch.cat([u, e1], 1)))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_unet_skip_connections_hand_off_int8(mode, tmp_path):
    torch.manual_seed(0)
    model = TinyUNet(mode).eval()
    q = quantize_static(copy.deepcopy(model))
    chained = set(q.fastinfer_report.chained)
    assert {"enc2.0 -> reduce", "dec.0 -> head"} <= chained
    if mode == "bilinear":
        # computes new values: the decoder's concatenation stays fp32, so the skip, which also feeds the next
        # level, writes fp32 for both
        assert not any(c.startswith(("enc1.0", "reduce")) for c in chained)
        assert type(q.up) is nn.Upsample and q.reduce.out_scale is None and q.enc1[0].out_scale is None
    else:
        assert "enc1.0 -> enc2.0" in chained
        # the skip and the upsampled level reach the decoder through the concatenation, at its scale; the
        # encoder's next level, behind the max pooling, takes that scale too
        assert {"enc1.0 -> dec.0", "reduce -> dec.0"} <= chained
        assert q.enc1[0].out_scale == q.reduce.out_scale == q.dec[0].x_scale == q.enc2[0].x_scale
        assert type(q.up) is fastinfer.nn.Int8Upsample and type(q.pool) is Int8MaxPool2d
    x = torch.randn(2, 3, 20, 20)
    with torch.inference_mode():
        y = q(x)
        torch.testing.assert_close(y, unchained(q)(x), rtol=0.03, atol=0.03)
        assert F.cosine_similarity(y.flatten(), model(x).flatten(), dim=0) > 0.99
    torch.save(q.state_dict(), tmp_path / "q.pt")
    loaded = fastinfer.load_quantized(tmp_path / "q.pt", fastinfer.fuse(copy.deepcopy(model)))
    with torch.inference_mode():
        assert torch.equal(loaded(x), y)
    assert type(loaded.up) is type(q.up)


class Basic(nn.Module):
    """torchvision's BasicConv2d: conv, BatchNorm, a functional ReLU."""

    def __init__(self, c_in, c_out, k):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionLike(nn.Module):
    """Inception v3's block kinds in small: pooled branches written with F.avg_pool2d (A) and F.max_pool2d (B,
    whose pooled input is itself a part of the concatenation)."""

    def __init__(self):
        super().__init__()
        self.stem = Basic(3, 16, 3)
        self.a1, self.a3, self.a_pool = Basic(16, 8, 1), Basic(16, 8, 3), Basic(16, 8, 1)
        self.b3 = Basic(24, 8, 3)
        self.a2_1, self.a2_pool = Basic(32, 8, 1), Basic(32, 8, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.a1(x), self.a3(x), self.a_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))], 1)
        x = torch.cat([self.b3(x), F.max_pool2d(x, 3, 1, 1)], 1)
        x = torch.cat([self.a2_1(x), self.a2_pool(F.avg_pool2d(x, 3, stride=1, padding=1))], 1)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InceptionModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = InceptionLike()

    def forward(self, x):
        return self.body(x)


def test_functional_poolings_become_int8_modules(tmp_path):
    torch.manual_seed(0)
    model = InceptionModel().eval()
    q = quantize_static(copy.deepcopy(model))
    body = q.body
    assert "body" in q.fastinfer_report.rewritten
    assert type(body.avg_pool) is fastinfer.nn.Int8AvgPool2d and type(body.max_pool) is Int8MaxPool2d
    assert (body.avg_pool.kernel_size, body.avg_pool.stride, body.avg_pool.padding) == (3, 1, 1)
    chained = set(q.fastinfer_report.chained)
    # the first block's branches join through its cat, read by the second block's conv and (through the max
    # pooling) its own cat; all of them, and the second block's conv, hand off at the group's one scale
    group = [body.a1.conv, body.a3.conv, body.a_pool.conv, body.b3.conv]
    assert len({m.out_scale for m in group}) == 1 and group[0].out_scale is not None
    assert body.b3.conv.x_scale == group[0].out_scale == body.a2_1.conv.x_scale
    assert {"body.stem.conv -> body.a_pool.conv", "body.a1.conv -> body.b3.conv", "body.b3.conv -> body.a2_1.conv",
            "body.a3.conv -> body.a2_pool.conv"} <= chained
    # The group's scale is the largest of its members' (the calibrated input scales of the convs behind the two
    # cats; the min-max observer is deterministic, so a calibration of the same data gives them).
    data = [torch.randn(4, 3, 20, 20) for _ in range(3)]
    wide = copy.deepcopy(model)
    with torch.no_grad():
        wide.body.b3.conv.weight *= 4  # its outputs, in the second cat, past the first cat's range
    mm = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(wide)), scheme="w8a8_static", calib_data=data,
                            observer="minmax")
    calib = fastinfer.calibrate(fastinfer.fuse(wide), data, "minmax", progress=False)
    want = max(calib.input_scale["body.b3.conv"], calib.input_scale["body.a2_1.conv"])
    assert calib.input_scale["body.b3.conv"] < calib.input_scale["body.a2_1.conv"]
    assert mm.body.a1.conv.out_scale == mm.body.b3.conv.out_scale == mm.body.a2_1.conv.x_scale == want
    x = torch.randn(2, 3, 12, 12)
    with torch.inference_mode():
        y = q(x)
        assert F.cosine_similarity(y.flatten(), model(x).flatten(), dim=0) > 0.99
    torch.save(q.state_dict(), tmp_path / "q.pt")
    loaded = fastinfer.load_quantized(tmp_path / "q.pt", fastinfer.fuse(copy.deepcopy(model)))
    assert type(loaded.body.avg_pool) is fastinfer.nn.Int8AvgPool2d
    with torch.inference_mode():
        assert torch.equal(loaded(x), y)
    # without the rewrites (int8_residuals=False) the calls stay functional and their inputs float; a file written
    # so loads too (load_quantized rewrites the poolings, which the file's float hand-offs leave float)
    plain = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static", int8_residuals=False,
                               calib_data=[torch.randn(4, 3, 12, 12) for _ in range(3)])
    assert not hasattr(plain.body, "avg_pool") and "body" not in plain.fastinfer_report.rewritten
    assert plain.body.stem.conv.out_scale is None and plain.body.a1.conv.out_scale is None  # they reach the calls
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    again = fastinfer.load_quantized(tmp_path / "plain.pt", fastinfer.fuse(copy.deepcopy(model)))
    with torch.inference_mode():
        assert torch.equal(again(x), plain(x))


class TinyASPP(nn.Module):
    """DeepLabV3's head in miniature: the stem's output goes to a 1x1 conv, a dilated 3x3 (dilation beyond the
    map, as ASPP's 36 at 32 x 32) and a global average pooling whose conv is upsampled to the map's size read from
    ``x.shape``; the branches are concatenated and projected."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(16, 8, 1), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(16, 8, 3, padding=12, dilation=12), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pconv = nn.Sequential(nn.Conv2d(16, 8, 1), nn.ReLU())
        self.proj = nn.Conv2d(24, 8, 1)

    def forward(self, x):
        x = self.stem(x)
        size = x.shape[-2:]
        p = F.interpolate(self.pconv(self.pool(x)), size=size, mode="bilinear", align_corners=False)
        return self.proj(torch.cat([self.b1(x), self.b2(x), p], 1))


def test_global_average_pooling_beside_convs_reads_int8(tmp_path):
    # The stem hands its int8 output to both convs and to the pooling, which becomes an Int8AdaptiveAvgPool2d
    # (int8 in, float out) at the convs' scale; the shape query beside them does not stop the hand-off.
    torch.manual_seed(0)
    model = TinyASPP().eval()
    with torch.no_grad():
        model.stem[1].running_var.uniform_(0.5, 2)
    q = quantize_static(copy.deepcopy(model))
    assert type(q.pool) is fastinfer.nn.Int8AdaptiveAvgPool2d
    assert q.stem[0].out_scale == q.b1[0].x_scale == q.b2[0].x_scale == q.pool.x_scale is not None
    assert {"stem.0 -> b1.0", "stem.0 -> b2.0", "stem.0 -> pool"} <= set(q.fastinfer_report.chained)
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, inp, n=n: seen.__setitem__(n, inp[0].dtype))
             for n, m in (("pool", q.pool), ("b2", q.b2[0]), ("pconv", q.pconv[0]))]
    x = torch.randn(2, 3, 14, 14)
    with torch.inference_mode():
        y = q(x)
        assert ops.last_kernel("gate") != ""  # the channel mean kernel pooled
    for h in hooks:
        h.remove()
    assert seen == {"pool": torch.int8, "b2": torch.int8, "pconv": torch.float32}
    with torch.inference_mode():
        want = model(x)
        assert F.cosine_similarity(y.flatten(), want.flatten(), dim=0) > 0.99
        # the pooled branch: the int8 mean of the stem's int8 output, as the reference computes it
        stem = q.stem(x)
        assert stem.dtype == torch.int8
        torch.testing.assert_close(q.pool(stem), ref.int8_channel_mean(stem, q.pool.x_scale), rtol=0, atol=0)
        torch.testing.assert_close(q.pool(stem.float() * q.pool.x_scale), F.adaptive_avg_pool2d(
            stem.float() * q.pool.x_scale, 1))  # a float input is pooled as before
    torch.save(q.state_dict(), tmp_path / "q.pt")
    loaded = fastinfer.load_quantized(tmp_path / "q.pt", fastinfer.fuse(copy.deepcopy(model)))
    assert type(loaded.pool) is fastinfer.nn.Int8AdaptiveAvgPool2d and loaded.pool.x_scale == q.pool.x_scale
    with torch.inference_mode():
        assert torch.equal(loaded(x), y)
    # A file from before this swap: the float pooling, and a stem that writes float. It loads as it was written.
    old = dict(q.state_dict())
    del old["pool._extra_state"]
    old["stem.0._extra_state"] = {**old["stem.0._extra_state"], "out_scale": None}
    again = fastinfer.load_quantized(old, fastinfer.fuse(copy.deepcopy(model)))
    assert type(again.pool) is nn.AdaptiveAvgPool2d and again.stem[0].out_scale is None
    with torch.inference_mode():
        assert again.stem(x).dtype == torch.float32
        assert F.cosine_similarity(again(x).flatten(), want.flatten(), dim=0) > 0.99


def test_global_average_pooling_called_twice_stays_float():
    # One module called on two tensors would need two x_scales: it stays an nn.AdaptiveAvgPool2d, and the
    # producer's output that reaches it stays float.
    class Twice(TinyASPP):
        def forward(self, x):
            x = self.stem(x)
            return self.proj(torch.cat([self.b1(x), self.pconv(self.pool(x)).expand(-1, -1, *x.shape[-2:]),
                                        self.pconv(self.pool(self.b2(x).repeat(1, 2, 1, 1)))
                                        .expand(-1, -1, *x.shape[-2:])], 1))
    torch.manual_seed(0)
    q = quantize_static(Twice().eval())
    assert type(q.pool) is nn.AdaptiveAvgPool2d and q.stem[0].out_scale is None


class BasicConv(nn.Module):
    """torchvision Inception's BasicConv2d: conv, BatchNorm, then a functional in-place ReLU in its forward."""

    def __init__(self, c_in, c_out, shift=False):
        super().__init__()
        self.conv, self.bn, self.shift = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), shift

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x + 0.5 if self.shift else x, inplace=True)


def test_a_relu_after_a_fused_relu_is_dropped(monkeypatch, tmp_path):
    """fuse folds the BatchNorm and the ReLU into the conv but cannot edit the forward, so its F.relu ran again
    over the conv's int8 output (94 times in Inception v3's forward). quantize drops it: the same bits without it."""
    from fastinfer.quantization import chain
    torch.manual_seed(0)
    model = nn.Sequential(BasicConv(3, 8), BasicConv(8, 8), BasicConv(8, 8, shift=True), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 10, 10)
    q = quantize_static(copy.deepcopy(model))
    assert set(q.fastinfer_report.rewritten) == {"0", "1"}  # the shifted one's ReLU follows an add: it stays
    for block in (q[0], q[1]):
        assert not any(n.op == "call_function" and n.target is F.relu for n in block.graph.nodes)
        assert block.conv.activation == "relu"
    assert not isinstance(q[2], torch.fx.GraphModule)
    monkeypatch.setattr(chain, "_repeated_relu", lambda module, node: False)
    kept = quantize_static(copy.deepcopy(model))
    assert kept.fastinfer_report.rewritten == []
    monkeypatch.undo()
    with torch.inference_mode():
        y = q(x)
        assert torch.equal(y, kept(x))
    torch.save(q.state_dict(), tmp_path / "q.pt")
    loaded = fastinfer.load_quantized(tmp_path / "q.pt", fastinfer.fuse(copy.deepcopy(model)))
    assert isinstance(loaded[0], torch.fx.GraphModule)
    with torch.inference_mode():
        assert torch.equal(loaded(x), y)
