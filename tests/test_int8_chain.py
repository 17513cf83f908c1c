"""int8 hand-offs between static Int8Conv2d layers found by torch.fx (quantize w8a8_static), and the
int8 max pooling they pass through (ops.int8_max_pool2d vs fastinfer.reference: bit-exact)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastinfer
from fastinfer import ops
from fastinfer import reference as ref
from fastinfer.nn import Int8Conv2d, Int8MaxPool2d

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
]


@pytest.mark.parametrize("g", POOLS, ids=[str(g) for g in POOLS])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_int8_max_pool2d_matches_reference(g, layout):
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
