"""int8 hand-offs through YOLOv8's blocks (written as ultralytics writes them): a C2f's ``list(cv1(x).chunk(2, 1))``,
which torch.fx alone cannot trace (fuse.PiecesTracer can), the chunk's pieces, Conv modules with a forward of their
own, bottleneck residual adds, SPPF's concatenation of one output max-pooled three times, and consumers that
disagree on a scale because one reads a piece and another the concatenation; and the stochastic depth of
EfficientNet's residual branches (torchvision's StochasticDepth, timm's DropPath) on a hand-off."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import fastinfer
from fastinfer.nn import Int8Add, Int8Conv2d
from fastinfer.quantization.fuse import PiecesTracer, pieces


class Conv(nn.Module):
    def __init__(self, c1, c2, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=False, split=False):
        super().__init__()
        self.c, self.split = c2 // 2, split
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        if self.split:  # ultralytics' forward_split
            y = list(self.cv1(x).split((self.c, self.c), 1))
        else:
            y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1, self.cv2, self.m = Conv(c1, c_, 1), Conv(c_ * 4, c2, 1), nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class Tiny(nn.Module):
    def __init__(self, shortcut=True, split=False):
        super().__init__()
        self.stem = Conv(3, 16, 3, 2)
        self.c2f = C2f(16, 16, 2, shortcut, split)
        self.down = Conv(16, 32, 3, 2)
        self.sppf = SPPF(32, 32)
        self.head = nn.Conv2d(32, 6, 1)

    def forward(self, x):
        return self.head(self.sppf(self.down(self.c2f(self.stem(x)))))


def _model(**kw):
    torch.manual_seed(0)
    model = Tiny(**kw).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2)
                m.running_mean.uniform_(-0.3, 0.3)
    return model


def _quantized(model):
    torch.manual_seed(1)
    calib = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    return fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static", calib_data=calib)


def test_pieces_tracer_iterates_a_chunk_or_split_it_can_count():
    def halves(x):
        return torch.cat(list(x.chunk(2, 1))[::-1], 1)

    def sizes(x):
        a, b, c = torch.split(x, [1, 2, 3], dim=1)
        return torch.cat(list(x.split([3, 3], 1)) + [a, b, c], 1)

    for fn in (halves, sizes):
        with pytest.raises(Exception, match="cannot be iterated|'len' is not supported"):
            fx.symbolic_trace(fn)  # torch.fx alone
        gm = fx.GraphModule(nn.Module(), PiecesTracer().trace(fn))
        x = torch.randn(2, 6, 3, 3)
        assert torch.equal(gm(x), fn(x))
    # counts it cannot tell: left to torch.fx (which refuses)
    graph = fx.Graph()
    x = graph.placeholder("x")
    assert pieces(graph.call_method("chunk", (x, 3, 1))) is None
    assert pieces(graph.call_method("split", (x, 2, 1))) is None
    assert pieces(graph.call_method("chunk", (x, 2, 1))) == 2
    assert pieces(graph.call_function(torch.split, (x, [1, 2, 3]), {"dim": 1})) == 3
    with pytest.raises(Exception, match="cannot be iterated|'len' is not supported"):
        PiecesTracer().trace(lambda t: torch.cat(list(t.chunk(3, 1)), 1))


@pytest.mark.parametrize("split", [False, True], ids=["chunk", "split"])
def test_yolo_blocks_hand_off_int8(split, tmp_path):
    model = _model(split=split)
    q = _quantized(model)
    convs = {n: m for n, m in q.named_modules() if isinstance(m, Int8Conv2d)}
    # every conv but the head's hands off int8: the stem to the C2f, cv1 through the chunk's pieces to the
    # bottlenecks, their adds and the concatenation, SPPF's cv1 through the max poolings and its concatenation
    assert sorted(n for n, m in convs.items() if m.out_scale is None) == ["head"]
    adds = [m for m in q.modules() if isinstance(m, Int8Add)]
    assert len(adds) == 2 and all(a.a_scale is not None and a.b_scale is not None and a.out_scale is not None
                                  for a in adds)
    # cv1's consumers disagree (the bottleneck reads one half, cv2 the concatenation): the larger scale
    cv1 = q.c2f.cv1.conv
    assert cv1.out_scale == max(q.c2f.m[0].cv1.conv.x_scale, q.c2f.cv2.conv.x_scale)
    assert q.c2f.m[0].cv1.conv.x_scale == q.c2f.cv2.conv.x_scale == cv1.out_scale
    seen = {}
    readers = (("c2f.cv2", q.c2f.cv2.conv), ("sppf.cv2", q.sppf.cv2.conv), ("bottleneck", q.c2f.m[1].cv1.conv))
    hooks = [m.register_forward_pre_hook(lambda m, inp, n=n: seen.__setitem__(n, inp[0].dtype)) for n, m in readers]
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        y = q(x)
    for h in hooks:
        h.remove()
    assert set(seen.values()) == {torch.int8}
    with torch.inference_mode():
        assert F.cosine_similarity(y.flatten(), model(x).flatten(), dim=0) > 0.99
    torch.save(q.state_dict(), tmp_path / "q.pt")
    loaded = fastinfer.load_quantized(tmp_path / "q.pt", fastinfer.fuse(copy.deepcopy(model)))
    with torch.inference_mode():
        assert torch.equal(loaded(x), y)


def test_sppf_joins_one_output_pooled_three_times():
    q = _quantized(_model())
    # SPPF's cv1 reaches its concatenation four times (directly, then through one, two and three max poolings):
    # the one producer of all its parts, at the scale of cv2, which reads it
    assert q.sppf.cv1.conv.out_scale == q.sppf.cv2.conv.x_scale is not None
    assert "sppf.cv1.conv -> sppf.cv2.conv" in q.fastinfer_report.chained
    assert type(q.sppf.m).__name__ == "Int8MaxPool2d"


def test_an_add_of_two_paths_from_one_producer_sets_both_operand_scales():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, padding=1)
            self.pool = nn.MaxPool2d(3, 1, 1)
            self.out = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.conv(x)
            return self.out(self.pool(y) + y)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.block = Block()

        def forward(self, x):
            return self.block(self.stem(x))

    torch.manual_seed(0)
    model = Net().eval()
    q = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static",
                           calib_data=[torch.randn(2, 3, 8, 8) for _ in range(2)])
    add = q.block.residual_add
    assert q.block.conv.out_scale is not None and add.a_scale == add.b_scale == q.block.conv.out_scale
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        assert F.cosine_similarity(q(x).flatten(), model(x).flatten(), dim=0) > 0.99


def _stochastic_depth_class(package):
    """A stand-in for torchvision's StochasticDepth (row mode) or timm's DropPath, known to fastinfer by class name
    and package (it depends on neither)."""
    class Drop(nn.Module):
        def __init__(self, p):
            super().__init__()
            self.p = p

        def forward(self, x):
            if not self.training or self.p == 0:
                return x
            keep = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype).bernoulli_(1 - self.p)
            return x * keep / (1 - self.p)

    Drop.__name__ = Drop.__qualname__ = "StochasticDepth" if package == "torchvision" else "DropPath"
    Drop.__module__ = "torchvision.ops.stochastic_depth" if package == "torchvision" else "timm.layers.drop"
    return Drop


@pytest.mark.parametrize("package", ["torchvision", "timm"])
def test_residual_through_stochastic_depth_is_int8(package):
    # EfficientNet's MBConv: result = self.stochastic_depth(self.block(x)); result += x
    drop = _stochastic_depth_class(package)

    class MBConv(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.SiLU(),
                                       nn.Conv2d(c, c, 1), nn.BatchNorm2d(c))
            self.stochastic_depth = drop(0.2)

        def forward(self, x):
            result = self.block(x)
            result = self.stochastic_depth(result)
            result += x
            return result

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU())
            self.blocks = nn.Sequential(MBConv(8), MBConv(8))
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)))

    torch.manual_seed(0)
    model = Net().eval()
    q = fastinfer.quantize(fastinfer.fuse(copy.deepcopy(model)), scheme="w8a8_static",
                           calib_data=[torch.randn(2, 3, 12, 12) for _ in range(2)])
    assert [type(b.residual_add).__name__ for b in q.blocks] == ["Int8Add", "Int8Add"]
    # the block's last conv hands off through the stochastic depth (swapped for an Int8DropPath) to the add
    assert all(b.block[3].out_scale is not None for b in q.blocks) and q.stem[0].out_scale is not None
    assert all(type(b.stochastic_depth) is fastinfer.nn.Int8DropPath for b in q.blocks)
    x = torch.randn(2, 3, 12, 12)
    with torch.inference_mode():
        y = q(x)
        assert F.cosine_similarity(y.flatten(), model(x).flatten(), dim=0) > 0.99
    q.train()
    with pytest.raises(RuntimeError, match="call model.eval"), torch.inference_mode():
        q(x)

