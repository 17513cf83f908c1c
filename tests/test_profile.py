"""fastinfer.profiling.profile: MAC/FLOP/param counts (oracles: hand arithmetic in each test, and
torch's FlopCounterMode for conv/linear), Int8Linear rows, timing fields, state restoration, errors."""
import copy
import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import fastinfer
from fastinfer.nn import Int8Linear
from fastinfer.profiling import ProfileReport, compare_profiles, profile

# Tiny models and few iterations: these tests check counts and bookkeeping, not speed.
FAST = dict(warmup=1, iters=3, threads=1)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)                          # 16x16 -> 8x8
        self.bn1 = nn.BatchNorm2d(8)
        self.act = nn.ReLU()                                                          # called twice
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False)     # depthwise, 8x8
        self.pw = nn.Conv2d(8, 16, 1, groups=4)                                       # grouped 1x1
        self.pool = nn.MaxPool2d(2)                                                   # 8x8 -> 4x4
        self.avg = nn.AdaptiveAvgPool2d(3)                                            # 4x4 -> 3x3, overlapping
        self.fc = nn.Linear(16 * 9, 10)

    def forward(self, x):
        y = self.act(self.bn1(self.conv1(x)))
        y = y + self.dw(y)                       # functional add: in no row
        y = self.pool(self.act(self.pw(y)))
        return self.fc(torch.flatten(self.avg(y), 1))


def test_small_cnn_exact_counts():
    rep = profile(SmallCNN(), torch.randn(2, 3, 16, 16), **FAST)
    # (name, params, output shape, MACs, FLOPs, calls), worked out by hand for batch 2:
    #   conv1: out 2*8*8*8 = 1024 elements, each 3 in-channels x 3x3 taps
    #   dw:    1024 outputs x (8/8 channels) x 3x3;   pw: 2048 outputs x (8/4 channels) x 1x1
    #   act:   1024 + 2048 elements (two calls);      pool: 512 outputs x 2x2 window
    #   avg:   4 -> 3 windows [0,2) [1,3) [2,4): 6 elements per dim, 2*16 planes x 6*6
    #   fc:    2 rows x 10 outputs x 144 inputs
    expected = [
        ("conv1", 8 * 3 * 9 + 8, (2, 8, 8, 8), 1024 * 27, 2 * 1024 * 27, 1),
        ("bn1", 16, (2, 8, 8, 8), 0, 2 * 1024, 1),
        ("act", 0, (2, 8, 8, 8), 0, 1024 + 2048, 2),
        ("dw", 8 * 9, (2, 8, 8, 8), 1024 * 9, 2 * 1024 * 9, 1),
        ("pw", 16 * 2 + 16, (2, 16, 8, 8), 2048 * 2, 2 * 2048 * 2, 1),
        ("pool", 0, (2, 16, 4, 4), 0, 512 * 4, 1),
        ("avg", 0, (2, 16, 3, 3), 0, 2 * 16 * 6 * 6, 1),
        ("fc", 144 * 10 + 10, (2, 10), 2 * 10 * 144, 2 * 2 * 10 * 144, 1),
    ]
    assert [r.name for r in rep.rows] == [e[0] for e in expected]
    for name, params, shape, macs, flops, calls in expected:
        r = rep.layer(name)
        got = (r.params, r.output_shape, r.macs, r.flops, r.calls, r.int8)
        assert got == (params, shape, macs, flops, calls, False), name
    assert "called 2x" in rep.layer("act").note
    # bn1: weight, bias, running mean and var (fp32) + num_batches_tracked (int64).
    assert rep.layer("bn1").bytes == 4 * 8 * 4 + 8
    t = rep.totals
    macs = 1024 * 27 + 1024 * 9 + 2048 * 2 + 2880
    assert (t.params, t.macs, t.int8_macs, t.uncounted) == (1810, macs, 0, [])
    assert t.flops == 2 * macs + 2048 + 3072 + 2048 + 1152
    assert t.bytes == 1810 * 4 + 16 * 4 + 8
    # Independent oracle: torch counts the same conv/linear work (the functional add is in neither).
    assert t.total_flops_flopcounter == 2 * macs


@pytest.mark.parametrize("layer,shape", [
    (nn.Conv1d(6, 9, 5, stride=2, padding=3, dilation=2, groups=3), (2, 6, 23)),
    (nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2), groups=2), (1, 4, 11, 13)),
    (nn.Conv2d(8, 8, 3, padding=1, groups=8), (3, 8, 7, 7)),
    (nn.Conv3d(2, 4, 3, padding=1), (1, 2, 5, 6, 7)),
    (nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), (2, 4, 5, 5)),
    (nn.Linear(33, 17), (2, 7, 33)),
])
def test_conv_linear_macs_match_flopcounter(layer, shape):
    # Oracle: torch.utils.flop_counter (2 FLOPs per MAC, bias not counted, as here).
    x = torch.randn(shape)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        layer(x)
    rep = profile(layer, x, warmup=0, iters=1, threads=1)
    (row,) = rep.rows
    assert row.name == "(model)" and row.flops == 2 * row.macs == fc.get_total_flops()


@pytest.mark.parametrize("kwargs,q_shape,kv_shapes", [
    ({"batch_first": True}, (2, 5, 16), None),
    ({"batch_first": False}, (5, 2, 16), None),
    ({}, (5, 16), None),                                                      # unbatched
    ({"batch_first": True, "kdim": 8, "vdim": 12}, (2, 5, 16), ((2, 7, 8), (2, 7, 12))),
    ({"add_bias_kv": True, "add_zero_attn": True}, (5, 2, 16), None),         # two extra key positions
])
def test_multihead_attention_macs_match_flopcounter(kwargs, q_shape, kv_shapes):
    # Oracle: FlopCounterMode on the unfused (training-mode) path, which runs every matmul in aten.
    mha = nn.MultiheadAttention(16, 4, **kwargs)
    q = torch.randn(q_shape)
    k, v = (q, q) if kv_shapes is None else (torch.randn(kv_shapes[0]), torch.randn(kv_shapes[1]))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        mha(q, k, v)
    (row,) = profile(mha, (q, k, v), warmup=0, iters=1, threads=1).rows
    assert 2 * row.macs == fc.get_total_flops()


class Halve(nn.Module):
    """A leaf type the profiler has no formula for."""
    def forward(self, x):
        return x * 0.5


class TaggedLinear(nn.Linear):
    """A subclass: counted with its nearest known base."""


class SeqModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.norm = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.conv = nn.Conv1d(16, 8, 3, padding=1)
        self.act = nn.GELU()
        self.halve = Halve()
        self.head = TaggedLinear(8, 3)

    def forward(self, ids):
        h = self.norm(self.emb(ids))
        h, _ = self.attn(h, h, h, need_weights=False)
        h = self.act(self.conv(h.transpose(1, 2)))
        return self.head(self.halve(h).mean(-1))


def test_sequence_model_counts_and_unknown_leaf():
    rep = profile(SeqModel(), torch.randint(0, 50, (2, 5)), **FAST)
    # MultiheadAttention is one row (its out_proj child is not): N=2, L=S=5, E=16, 4 heads.
    assert [r.name for r in rep.rows] == ["emb", "norm", "attn", "conv", "act", "halve", "head"]
    n, l, e = 2, 5, 16
    attn_macs = 4 * n * l * e * e + 2 * n * l * l * e          # q, k, v, out projections; QK^T, attn @ V
    expected = {
        "emb": (50 * 16, (2, 5, 16), 0, 0),
        "norm": (32, (2, 5, 16), 0, 7 * 160),                    # 5 per element + 2 for the affine
        "attn": (3 * 16 * 16 + 48 + 16 * 16 + 16, (2, 5, 16), attn_macs, 2 * attn_macs + 3 * n * 4 * l * l),
        "conv": (8 * 16 * 3 + 8, (2, 8, 5), 80 * 16 * 3, 2 * 80 * 16 * 3),
        "act": (0, (2, 8, 5), 0, 80),
        "halve": (0, (2, 8, 5), None, None),
        "head": (8 * 3 + 3, (2, 3), 2 * 3 * 8, 2 * 2 * 3 * 8),
    }
    for name, (params, shape, macs, flops) in expected.items():
        r = rep.layer(name)
        assert (r.params, r.output_shape, r.macs, r.flops) == (params, shape, macs, flops), name
    assert "no MAC/FLOP formula for Halve" in rep.layer("halve").note
    assert rep.layer("head").note == "counted as Linear"
    assert rep.totals.uncounted == ["halve"]
    assert rep.totals.macs == attn_macs + 3840 + 48
    assert "uncounted" in str(rep)


class MLP(nn.Module):
    def __init__(self, d=64, h=96, o=10):
        super().__init__()
        self.fc1, self.act, self.fc2, self.head = nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.Linear(h, o)

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


@pytest.mark.parametrize("scheme", ["w8a8_dynamic", "w8_only"])
def test_int8_linear_counted_like_linear(scheme):
    x = torch.randn(4, 64)
    float_model = MLP()
    before = profile(float_model, x, **FAST)
    q = fastinfer.quantize(copy.deepcopy(float_model), scheme=scheme)
    after = profile(q, x, **FAST)
    int8 = scheme == "w8a8_dynamic"
    for name, (k, n) in {"fc1": (64, 96), "fc2": (96, 96), "head": (96, 10)}.items():
        r, f = after.layer(name), before.layer(name)
        mod = q.get_submodule(name)
        assert isinstance(mod, Int8Linear) and r.type == "Int8Linear"
        assert r.params == f.params == k * n + n            # logical weight count + bias
        assert r.macs == f.macs == 4 * n * k and r.flops == 2 * r.macs
        assert r.int8 is int8 and (int8 or "w8_only" in r.note)
        assert r.bytes == sum(b.numel() * b.element_size() for b in mod.buffers())
    assert after.layer("fc2").bytes < before.layer("fc2").bytes / 3   # int8 + fp32 scales vs fp32
    macs = 4 * (96 * 64 + 96 * 96 + 10 * 96)
    assert after.totals.macs == before.totals.macs == macs
    assert after.totals.int8_macs == (macs if int8 else 0)
    # FlopCounterMode does not see fastinfer's ops: nothing float is left to count.
    assert after.totals.total_flops_flopcounter == 0 and before.totals.total_flops_flopcounter == 2 * macs
    cmp = compare_profiles(before, after)
    assert cmp.ratios["params"] == 1.0 and cmp.ratios["flops"] == 1.0 and cmp.ratios["bytes"] < 0.35
    assert cmp.ratios["latency_ms"] > 0 and cmp.speedup > 0
    assert [(l.name, l.type_after) for l in cmp.layers][0] == ("fc1", "Int8Linear")
    assert "fc2" in str(before.compare(after)) and json.dumps(cmp.to_dict())


def test_masked_and_sparsified_layers_counted():
    """A masked layer (its parametrizations are children) is one row counted as its float layer, with the
    FlopCounterMode cross-check; a SparseLinear counts the products its kernel does (nonzeros per token)
    and the weights it stores. Masked layers used to vanish from the table (their Mask modules took the
    rows, 0 MACs) and SparseLinear had no formula."""
    x = torch.randn(4, 64)
    model = MLP()
    dense = profile(model, x, **FAST)
    masked = copy.deepcopy(model)
    fastinfer.prune(masked, pattern="unstructured", sparsity=0.75)
    pm = profile(masked, x, **FAST)
    assert [r.name for r in pm.rows] == [r.name for r in dense.rows]
    assert pm.totals.macs == dense.totals.macs and pm.totals.total_flops_flopcounter == 2 * dense.totals.macs
    sparse = fastinfer.sparsify(copy.deepcopy(masked))
    ps = profile(sparse, x, **FAST)
    for name in ("fc1", "fc2", "head"):
        layer, row = sparse.get_submodule(name), ps.layer(name)
        assert row.type == "SparseLinear" and row.macs == 4 * layer.nnz and row.flops == 2 * row.macs
        assert row.params == layer.nnz + layer.out_features
    assert ps.totals.macs < 0.3 * dense.totals.macs


def test_latency_fields_and_settings():
    rep = profile(SmallCNN(), torch.randn(1, 3, 16, 16), warmup=1, iters=4, threads=1)
    assert all(r.latency_ms > 0 for r in rep.rows)
    t = rep.totals
    assert 0 < t.latency_ms <= t.latency_p90_ms and t.layer_latency_ms > 0
    assert rep.settings["iters"] == 4 and rep.settings["warmup"] == 1 and rep.settings["threads"] == 1


class Probe(nn.Module):
    """Records, at each forward, the state profile() is supposed to set up."""
    def __init__(self):
        super().__init__()
        self.lin, self.bn, self.seen = nn.Linear(4, 4), nn.BatchNorm1d(4), []

    def forward(self, x):
        self.seen.append((self.training, self.bn.training, torch.is_inference_mode_enabled(), torch.get_num_threads()))
        return self.bn(self.lin(x))


def test_mode_threads_restored_and_set_during_run():
    m = Probe().train()
    m.bn.eval()                                   # mixed modes must come back exactly
    old = torch.get_num_threads()
    want = 1 if old != 1 else 2
    profile(m, torch.randn(3, 4), warmup=1, iters=2, threads=want)
    # Every forward in eval mode on `want` threads, under inference_mode but the FlopCounterMode cross-check's
    # one (no_grad: torch's counter fails on parametrized layers under inference_mode).
    assert set(m.seen) == {(False, False, True, want), (False, False, False, want)}
    assert sum(not inference for _, _, inference, _ in m.seen) == 1
    assert (m.training, m.lin.training, m.bn.training) == (True, True, False)
    assert torch.get_num_threads() == old
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        self.lin(x)
        raise RuntimeError("boom")


def test_state_restored_when_forward_raises():
    m = Broken().train()
    old = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        profile(m, torch.randn(2, 4), threads=1 if old != 1 else 2)
    assert m.training and m.lin.training and torch.get_num_threads() == old
    assert not m.lin._forward_hooks and not m.lin._forward_pre_hooks


def test_str_and_to_dict():
    rep = profile(SmallCNN(), torch.randn(1, 3, 16, 16), **FAST)
    assert isinstance(rep, ProfileReport)
    text = str(rep)
    lines = text.splitlines()
    for r in rep.rows:
        assert any(line.startswith(r.name + " ") for line in lines), r.name
    assert any(line.startswith("total ") for line in lines)
    assert "total latency" in text and "p90" in text
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["totals"]["macs"] == rep.totals.macs and d["rows"][0]["output_shape"] == [1, 8, 8, 8]


@pytest.mark.parametrize("args,kwargs,exc,arg", [
    (("not a model", torch.randn(1)), {}, TypeError, "model"),
    ((nn.ReLU(), [torch.randn(1)]), {}, TypeError, "example_inputs"),
    ((nn.ReLU(), (torch.randn(1), 3)), {}, TypeError, "example_inputs"),
    ((nn.ReLU(), ()), {}, ValueError, "example_inputs"),
    ((nn.ReLU(), "x"), {}, TypeError, "example_inputs"),
    ((nn.ReLU(), torch.randn(1)), {"iters": 0}, ValueError, "iters"),
    ((nn.ReLU(), torch.randn(1)), {"iters": 2.0}, TypeError, "iters"),
    ((nn.ReLU(), torch.randn(1)), {"iters": True}, TypeError, "iters"),
    ((nn.ReLU(), torch.randn(1)), {"warmup": -1}, ValueError, "warmup"),
    ((nn.ReLU(), torch.randn(1)), {"threads": 0}, ValueError, "threads"),
])
def test_bad_input(args, kwargs, exc, arg):
    with pytest.raises(exc, match=arg):
        profile(*args, **kwargs)


def test_compare_rejects_non_reports():
    rep = profile(nn.ReLU(), torch.randn(3), warmup=0, iters=1)
    with pytest.raises(TypeError, match="after"):
        compare_profiles(rep, {"totals": {}})
