"""fastinfer.fuse and the fused float layers: fused vs unfused outputs (oracle: the unfused float model,
1e-5 relative), what is and is not fused, the module-pattern fallback, ConvAct2d/LinearAct."""
import copy
import io

import pytest
import torch
from torch import nn
import torch.nn.functional as F

import fastinfer  # noqa: F401  (loads the extension, as users do)
from fastinfer.nn.fused import ConvAct2d, Folded, LinearAct
from fastinfer.quantization.fuse import TRAINING_ERROR, fuse, identity


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding is really exercised."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.track_running_stats:
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.3, 3)
            if m.affine:
                m.weight.data.uniform_(0.5, 2)
                m.bias.data.uniform_(-1, 1)
    return model.eval()


def assert_same(fused: nn.Module, ref: nn.Module, *inputs):
    """Max abs difference within 1e-5 of the output's magnitude."""
    with torch.no_grad():
        want, got = ref(*inputs), fused(*inputs)
    err = (got - want).abs().max().item()
    assert err <= 1e-5 * want.abs().max().item(), f"max abs error {err} vs max |y| {want.abs().max().item()}"


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc, self.bn3, self.relu3 = nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU()
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool(self.relu2(self.bn2(self.conv2(x)))).flatten(1)
        return self.head(self.relu3(self.bn3(self.fc(x))))


def test_cnn_conv_bn_relu_and_linear_bn_relu():
    model = randomize_bn(CNN())
    x = torch.randn(4, 3, 12, 12)
    fused = fuse(model, example_inputs=x)
    assert_same(fused, model, x)
    assert fused.fastinfer_fuse_report == ["conv1 + bn1 + relu1", "conv2 + bn2 + relu2", "fc + bn3 + relu3"]
    assert not fused.fastinfer_fuse_report.skipped
    for name in ("conv1", "conv2"):
        assert type(getattr(fused, name)) is ConvAct2d and getattr(fused, name).activation == "relu"
    assert type(fused.fc) is LinearAct and fused.fc.activation == "relu"
    assert type(fused.head) is nn.Linear
    for name in ("bn1", "relu1", "bn2", "relu2", "bn3", "relu3"):
        assert type(getattr(fused, name)) is Folded, name
    # inplace=False: the original is untouched and still matches itself
    assert type(model.conv1) is nn.Conv2d and type(model.bn1) is nn.BatchNorm2d
    assert type(fused) is CNN
    assert not any(m.training for m in fused.modules())  # swapped-in modules are in eval mode too


def test_inplace_true_returns_the_same_object():
    model = randomize_bn(CNN())
    ref = copy.deepcopy(model)
    out = fuse(model, inplace=True)
    assert out is model and type(model.bn1) is Folded
    assert_same(model, ref, torch.randn(2, 3, 8, 8))


def test_folded_calls_skip_the_module_machinery_but_not_its_hooks():
    f = Folded()
    x = torch.randn(2, 3)
    assert f(x) is x and f(input=x) is x
    seen = []
    handle = f.register_forward_hook(lambda m, args, out: seen.append(out))
    assert f(x) is x and len(seen) == 1  # a hook of its own: called the usual way
    handle.remove()
    handle = nn.modules.module.register_module_forward_pre_hook(lambda m, args: seen.append(m))
    try:
        f(x)
        assert seen[-1] is f  # a global hook sees it too
    finally:
        handle.remove()
    f(x)
    assert len(seen) == 2
    # torch.fx records no node for it (the value passes through); the traced model computes the same
    model = nn.Sequential(nn.Conv2d(3, 4, 1), Folded(), nn.ReLU()).eval()
    gm = torch.fx.symbolic_trace(model)
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["0", "2"]
    y = torch.randn(1, 3, 5, 5)
    assert torch.equal(gm(y), model(y))
    assert list(model.state_dict()) == ["0.weight", "0.bias"]


def test_conv_without_bias_and_bn_without_affine():
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6, affine=False),
                                       nn.Conv2d(6, 4, 1, bias=False), nn.BatchNorm2d(4)))
    fused = fuse(model)
    assert fused.fastinfer_fuse_report == ["0 + 1", "2 + 3"]
    assert type(fused[0]) is nn.Conv2d and fused[0].bias is not None  # BN-only folds keep the type
    assert type(fused[1]) is Folded and type(fused[3]) is Folded
    assert_same(fused, model, torch.randn(3, 3, 9, 9))


def test_fold_math_matches_formula():
    conv, bn = nn.Conv2d(2, 3, 1), randomize_bn(nn.BatchNorm2d(3))
    fused = fuse(nn.Sequential(conv, bn).eval())[0]
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(fused.weight, conv.weight * s[:, None, None, None])
    torch.testing.assert_close(fused.bias, (conv.bias - bn.running_mean) * s + bn.bias)


class Residual(nn.Module):
    """conv1's output feeds bn1 *and* the addition: bn1 must stay."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu = nn.ReLU()  # shared: after bn2 and after the addition

    def forward(self, x):
        y = self.conv1(x)
        z = self.relu(self.bn2(self.conv2(self.bn1(y))))
        return self.relu(z + y)


def test_residual_branch_not_folded_and_shared_relu_kept():
    model = randomize_bn(Residual())
    fused = fuse(model)
    report = fused.fastinfer_fuse_report
    assert report == ["conv2 + bn2 + relu"]
    assert type(fused.bn1) is nn.BatchNorm2d and type(fused.conv1) is nn.Conv2d
    (name, reason), = report.skipped
    assert name == "bn1" and "conv1's output also feeds add" in reason
    # relu is also applied after the addition, so it stays (relu(relu(v)) == relu(v) after conv2)
    assert type(fused.relu) is nn.ReLU and type(fused.conv2) is ConvAct2d
    assert_same(fused, model, torch.randn(2, 4, 6, 6))


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 1) for _ in range(5))
        self.bns = nn.ModuleList(nn.BatchNorm2d(4) for _ in range(5))
        self.relu6 = nn.ReLU6()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        c, b = self.convs, self.bns
        x = F.relu(b[0](c[0](x)), inplace=True)
        x = torch.relu(b[1](c[1](x)))
        x = F.relu6(b[2](c[2](x)))
        x = F.hardtanh(c[3](x), 0.0, 6.0)
        x = self.relu6(b[4](c[4](x) * 2))   # the multiply sits between conv and BN: nothing folds
        return self.fc(x.mean((2, 3))).relu()


def test_functional_activations():
    model = randomize_bn(Functional())
    fused = fuse(model)
    assert fused.fastinfer_fuse_report == ["convs.0 + bns.0 + F.relu", "convs.1 + bns.1 + torch.relu",
                                           "convs.2 + bns.2 + F.relu6", "convs.3 + F.hardtanh(0, 6)", "fc + .relu()"]
    acts = [getattr(m, "activation", "-") for m in fused.convs]
    assert acts == ["relu", "relu", "relu6", "relu6", "-"]
    assert type(fused.fc) is LinearAct and type(fused.bns[4]) is nn.BatchNorm2d
    assert fused.fastinfer_fuse_report.skipped[0][0] == "bns.4"
    assert_same(fused, model, 3 * torch.randn(2, 4, 5, 5))


def test_hardtanh_other_range_not_fused_and_output_conv_not_fused():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)

        def forward(self, x):
            y = self.a(x)
            return F.hardtanh(y, -1.0, 1.0), F.relu(y), self.b(x)
    fused = fuse(M().eval())
    assert fused.fastinfer_fuse_report == [] and type(fused.a) is nn.Conv2d


class Untraceable(nn.Module):
    """A data-dependent `if` in forward: torch.fx cannot trace it, so fuse falls back to module patterns."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU6()),
                                      nn.Conv2d(8, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        y = self.features(x)
        if y.sum() > 0:
            y = y * 2
        return self.classifier(y)


def test_untraceable_model_uses_sequential_fallback():
    model = randomize_bn(Untraceable())
    fused = fuse(model, example_inputs=torch.randn(2, 3, 10, 10))
    report = fused.fastinfer_fuse_report
    assert report == ["features.0 + features.1 + features.2", "features.3.0 + features.3.1 + features.3.2",
                      "features.4 + features.5", "classifier.0 + classifier.1 + classifier.2"]
    assert "could not trace" in report.notes[0]
    assert [type(m).__name__ for m in fused.features[3]] == ["ConvAct2d", "Folded", "Folded"]
    assert fused.features[3][0].activation == "relu6"
    for sign in (1, -1):  # both sides of the data-dependent branch
        assert_same(fused, model, sign * torch.rand(2, 3, 10, 10))


def test_untraceable_root_with_traceable_child_uses_fx_there():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x))) + x

    class Root(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.block(x) if x.mean() > 0 else -x
    model = randomize_bn(Root())
    fused = fuse(model)
    assert fused.fastinfer_fuse_report == ["block.conv + block.bn + F.relu"]
    assert_same(fused, model, torch.rand(2, 3, 4, 4))


def test_training_mode_raises():
    model = CNN().train()
    with pytest.raises(ValueError, match="fuse needs model.eval"):
        fuse(model)
    assert TRAINING_ERROR.startswith("fuse needs model.eval()")
    model.eval()
    model.bn2.train()  # one submodule in training mode is enough to refuse
    with pytest.raises(ValueError, match="running statistics"):
        fuse(model)


def test_bn_without_running_stats_not_folded():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    fused = fuse(model)
    assert fused.fastinfer_fuse_report == []
    assert "batch statistics" in fused.fastinfer_fuse_report.skipped[0][1]


def test_linear_3d_output_with_bn1d_not_folded_given_example_inputs():
    # Linear on [N, 5, 4] -> [N, 5, 5]; BatchNorm1d(5) normalizes dim 1, not the Linear's features.
    model = randomize_bn(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5)))
    fused = fuse(model, example_inputs=torch.randn(2, 5, 4))
    assert fused.fastinfer_fuse_report == []
    assert "3-D" in fused.fastinfer_fuse_report.skipped[0][1]


def test_linear_bn1d_needs_example_inputs():
    # [N, 4, 4] through Linear(4, 4): BatchNorm1d(4) normalizes dim 1, and its sizes match the Linear's
    # features by coincidence; without shapes fuse cannot tell, so it does not fold (and says why).
    model = randomize_bn(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    fused = fuse(model)
    assert fused.fastinfer_fuse_report == []
    assert "pass example_inputs" in fused.fastinfer_fuse_report.skipped[0][1]
    assert_same(fused, model, torch.randn(3, 4, 4))
    assert fuse(model, example_inputs=torch.randn(3, 4)).fastinfer_fuse_report == ["0 + 1"]


class UntraceableSeq(nn.Module):
    """The fallback path (untraceable root, Sequential child) gets the ranks from the run too."""

    def __init__(self):
        super().__init__()
        self.tokens = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))     # [N, 4, 4]: must not fold
        self.head = nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU())  # [N, 16] -> folds

    def forward(self, x):
        y = self.tokens(x)
        if y.sum() > 0:
            y = -y
        return self.head(y.flatten(1))


def test_untraceable_model_checks_linear_ranks_in_the_fallback():
    model = randomize_bn(UntraceableSeq())
    fused = fuse(model, example_inputs=torch.randn(2, 4, 4))
    report = fused.fastinfer_fuse_report
    assert report == ["head.0 + head.1 + head.2"]
    assert dict(report.skipped)["tokens.1"].startswith("the Linear output is 3-D")
    for sign in (1, -1):
        assert_same(fused, model, sign * torch.rand(2, 4, 4))


def test_fuse_twice_is_a_no_op_and_result_deep_copies():
    model = randomize_bn(CNN())
    once = fuse(model)
    twice = fuse(once)
    assert twice.fastinfer_fuse_report == []
    assert_same(twice, model, torch.randn(2, 3, 8, 8))
    clone = copy.deepcopy(twice)
    assert_same(clone, model, torch.randn(2, 3, 8, 8))


def test_conv_then_relu_without_bn_and_bn_after_convact():
    # A ConvAct2d without an activation (from an earlier BN-less fold) still takes a following ReLU.
    model = randomize_bn(nn.Sequential(ConvAct2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1),
                                       nn.ReLU6()))
    fused = fuse(model)
    assert fused.fastinfer_fuse_report == ["0 + 1 + 2", "3 + 4"]
    assert [getattr(m, "activation", None) for m in fused] == ["relu", None, None, "relu6", None]
    assert_same(fused, model, torch.randn(2, 3, 7, 7))


# -- the fused layers themselves

@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
def test_convact_and_linearact_match_float_ops(activation):
    act = {None: lambda v: v, "relu": F.relu, "relu6": F.relu6}[activation]
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, groups=1, bias=False)
    ca = ConvAct2d.from_conv(conv, activation)
    x = 4 * torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(ca(x), act(conv(x)), rtol=0, atol=0)
    assert f"activation={activation}" in repr(ca) and ca.bias is None
    lin = nn.Linear(6, 7)
    la = LinearAct.from_linear(lin, activation)
    v = 4 * torch.randn(3, 2, 6)
    torch.testing.assert_close(la(v), act(lin(v)), rtol=0, atol=0)
    assert f"activation={activation}" in repr(la)
    assert set(ca.state_dict()) == {"weight"} and set(la.state_dict()) == {"weight", "bias"}


def test_fused_layers_trace_and_compile():
    model = nn.Sequential(ConvAct2d(3, 4, 3, activation="relu"), nn.Flatten(),
                          LinearAct(4 * 4 * 4, 5, activation="relu6"))
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        want = model(x)
        gm = torch.fx.symbolic_trace(model)
        torch.testing.assert_close(gm(x), want, rtol=0, atol=0)
        got = torch.compile(model, fullgraph=True, backend="eager")(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_bad_activation_and_bad_arguments():
    with pytest.raises(ValueError, match="activation must be one of"):
        ConvAct2d(3, 4, 1, activation="swish")
    with pytest.raises(TypeError, match="nn.Conv2d"):
        ConvAct2d.from_conv(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="nn.Linear"):
        LinearAct.from_linear(nn.Conv2d(2, 2, 1))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fuse("not a model")


class GELUActivation(nn.Module):
    """Shaped like Hugging Face transformers' GELUActivation (a module holding F.gelu)."""

    def __init__(self):
        super().__init__()
        self.act = F.gelu

    def forward(self, x):
        return self.act(x)


class FFN(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.dense, self.act, self.out = nn.Linear(24, 64), act, nn.Linear(64, 24)

    def forward(self, x):
        return self.out(self.act(self.dense(x)))


@pytest.mark.parametrize("act", [nn.GELU(), GELUActivation()], ids=["nn.GELU", "GELUActivation"])
def test_fuse_gelu_module(act):
    model = FFN(act).eval()
    x = torch.randn(5, 24)
    fused = fastinfer.fuse(model)
    assert isinstance(fused.dense, LinearAct) and fused.dense.activation == "gelu"
    assert isinstance(fused.act, nn.Identity)  # GELU is not idempotent: the module must go
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-6)
    q = fastinfer.quantize(fused)
    assert q.dense.activation == "gelu"


class ConvBnActBlock(nn.Module):
    """conv + BN + activation module (MobileNetV3's Hardswish, EfficientNet's SiLU), once in a Sequential and
    once in a traced forward."""

    def __init__(self, act):
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), act())
        self.conv, self.bn, self.hs = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), act()

    def forward(self, x):
        return self.hs(self.bn(self.conv(self.seq(x))))


@pytest.mark.parametrize("act, name", [(nn.Hardswish, "hardswish"), (nn.SiLU, "silu")], ids=["hardswish", "silu"])
def test_fuse_hardswish_silu_module(act, name):
    model = randomize_bn(ConvBnActBlock(act))
    fused = fuse(model)
    assert fused.fastinfer_fuse_report == ["seq.0 + seq.1 + seq.2", "conv + bn + hs"]
    assert fused.seq[0].activation == fused.conv.activation == name
    assert isinstance(fused.seq[2], nn.Identity) and isinstance(fused.hs, nn.Identity)  # not idempotent: gone
    x = torch.randn(2, 3, 9, 9) * 3  # values on both sides of -3 and 3
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    q = fastinfer.quantize(fused, scheme="w8a8_static", calib_data=[torch.randn(2, 3, 9, 9) * 3 for _ in range(2)])
    assert q.seq[0].activation == q.conv.activation == name
    assert "seq.0 -> conv" in q.fastinfer_report.chained  # an int8 hand-off after a hardswish conv
    with torch.inference_mode():
        assert F.cosine_similarity(q(x).flatten(), model(x).flatten(), dim=0) > 0.99


def test_shared_or_functional_non_idempotent_activations_are_not_fused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.act = nn.Linear(8, 8), nn.Linear(8, 8), nn.GELU()

        def forward(self, x):
            return self.act(self.b(self.act(self.a(x))))  # one GELU module called twice

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)

        def forward(self, x):
            return F.gelu(self.a(x))  # a call fuse cannot remove from forward

    class SharedHardswish(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.act = nn.Linear(8, 8), nn.Linear(8, 8), nn.Hardswish()

        def forward(self, x):
            return self.act(self.b(self.act(self.a(x))))

    class FunctionalSilu(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)

        def forward(self, x):
            return F.silu(F.hardswish(self.a(x)))

    for cls in (Shared, Functional, SharedHardswish, FunctionalSilu):
        model = cls().eval()
        fused = fastinfer.fuse(model)
        assert not any(isinstance(m, LinearAct) for m in fused.modules())
        x = torch.randn(3, 8)
        torch.testing.assert_close(fused(x), model(x), rtol=0, atol=0)


def test_conv1d_takes_its_batchnorm1d_but_no_activation():
    # On [N, C, L] BatchNorm1d normalizes the conv's channels; on an unbatched [C, L] output it would normalize
    # L, so the fold needs example_inputs that show a batched output. A 1-D layer has no fused-activation form:
    # the ReLU stays in the forward.
    model = randomize_bn(nn.Sequential(nn.Conv1d(4, 8, 3, padding=1, bias=False), nn.BatchNorm1d(8), nn.ReLU(),
                                       nn.Conv1d(8, 6, 3), nn.BatchNorm1d(6)))
    fused = fuse(model, example_inputs=torch.randn(2, 4, 17))
    assert fused.fastinfer_fuse_report == ["0 + 1", "3 + 4"]
    assert [type(m) for m in fused] == [nn.Conv1d, Folded, nn.ReLU, nn.Conv1d, Folded]
    assert_same(fused, model, torch.randn(3, 4, 17))
    without = fuse(model).fastinfer_fuse_report
    assert without == [] and "pass example_inputs" in without.skipped[0][1]
    unbatched = fuse(model, example_inputs=torch.randn(4, 8)).fastinfer_fuse_report  # [8, 8]: runs, wrongly
    assert unbatched == [] and unbatched.skipped[0][1].startswith("the Conv1d output is 2-D")


def _transformer(kind: str, act, norm_first: bool = False) -> nn.Module:
    """A 2-layer nn.TransformerEncoder, or one nn.TransformerDecoderLayer (called as model(tgt, memory))."""
    torch.manual_seed(0)
    if kind == "encoder":
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation=act, batch_first=True,
                                           norm_first=norm_first)
        return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    return nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, activation=act, batch_first=True,
                                      norm_first=norm_first).eval()


def _layers(model: nn.Module):
    return list(model.layers) if isinstance(model, nn.TransformerEncoder) else [model]


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("act, want", [("relu", "relu"), ("gelu", "gelu"), (nn.ReLU(), "relu"), (nn.GELU(), "gelu"),
                                       (GELUActivation(), "gelu")],
                         ids=["relu", "gelu", "nn.ReLU", "nn.GELU", "GELUActivation"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_layers_fuse_their_ffn_activation(kind, act, want, norm_first):
    # torch.fx cannot trace torch's transformer layers: linear1 takes the activation that _ff_block applies to
    # its output (the function activation="relu"/"gelu" gives, or a module), which becomes fuse's identity function.
    model = _transformer(kind, act, norm_first)
    inputs = (torch.randn(3, 7, 32),) if kind == "encoder" else (torch.randn(3, 7, 32), torch.randn(3, 5, 32))
    fused = fastinfer.fuse(model)
    for i, layer in enumerate(_layers(fused)):
        assert type(layer.linear1) is LinearAct and layer.linear1.activation == want
        assert layer.activation is identity
        assert getattr(layer, "activation_relu_or_gelu", 0) == 0  # the encoder's fused float path is off
        prefix = f"layers.{i}." if kind == "encoder" else ""
        label = f"{prefix}activation" + ("" if isinstance(act, nn.Module) else f" (F.{want})")
        assert f"{prefix}linear1 + {label}" in fused.fastinfer_fuse_report
    assert fused.state_dict().keys() == model.state_dict().keys()
    buf = io.BytesIO()
    torch.save(fused, buf)  # a TransformerDecoderLayer unpickled without "activation" in its dict gets F.relu
    buf.seek(0)
    for copied in (copy.deepcopy(fused), torch.load(buf, weights_only=False)):
        assert all(layer.activation is identity for layer in _layers(copied))
    with torch.inference_mode():  # the reference may take torch's fused float path (eval, inference mode)
        assert_same(fused, model, *inputs)
        q_fused = fastinfer.quantize(copy.deepcopy(fused))
        # A fresh model: a deep copy of a decoder with a module activation computes F.relu (torch's __setstate__)
        q_plain = fastinfer.quantize(_transformer(kind, act, norm_first))
        assert all(layer.linear1.activation == want for layer in _layers(q_fused))
        got, ref = q_fused(*inputs), q_plain(*inputs)
    # The same int8 layers; the epilogue's GELU differs from torch's erf by ~1e-7, which may move a rounding
    # of linear2's dynamic quantization by one step.
    assert F.cosine_similarity(got.flatten(), ref.flatten(), dim=0) > 0.99999


def test_transformer_layers_left_alone():
    class MyLayer(nn.TransformerEncoderLayer):  # a subclass may override _ff_block
        pass

    cases = [nn.TransformerEncoderLayer(16, 2, 32, activation=nn.GELU(approximate="tanh")),  # not the erf form
             # fuse's copy keeps a decoder's module activation (copy.deepcopy alone would make it F.relu)
             nn.TransformerDecoderLayer(16, 2, 32, activation=nn.GELU(approximate="tanh")),
             nn.TransformerEncoderLayer(16, 2, 32, activation=lambda t: t * torch.sigmoid(t)),  # SiLU: no epilogue
             MyLayer(16, 2, 32)]
    for layer in cases:
        model = layer.eval()
        fused = fastinfer.fuse(model)
        assert type(fused.linear1) is nn.Linear and len(fused.fastinfer_fuse_report) == 0
        assert getattr(fused, "activation_relu_or_gelu", 0) == getattr(model, "activation_relu_or_gelu", 0)
        inputs = (torch.randn(2, 3, 16),) * (1 if isinstance(layer, nn.TransformerEncoderLayer) else 2)
        with torch.inference_mode():
            assert_same(fused, model, *inputs)
    model = _transformer("encoder", "gelu")
    once = fastinfer.fuse(model)
    twice = fastinfer.fuse(once)
    assert len(twice.fastinfer_fuse_report) == 0 and twice.layers[0].linear1.activation == "gelu"
    x = torch.randn(2, 4, 32)
    with torch.inference_mode():
        assert_same(twice, model, x)


def test_fused_transformer_saves_and_loads():
    model = _transformer("encoder", "gelu")
    x = torch.randn(2, 6, 32)
    q = fastinfer.quantize(fastinfer.fuse(model))
    state = q.state_dict()
    with pytest.raises(ValueError, match="applies activation 'gelu' .it was fused.: call fastinfer.fuse"):
        fastinfer.load_quantized(state, _transformer("encoder", "gelu"))  # would apply GELU twice
    loaded = fastinfer.load_quantized(state, fastinfer.fuse(_transformer("encoder", "gelu")))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), q(x), rtol=0, atol=0)


class FrozenBatchNorm2d(nn.Module):
    """A stand-in for torchvision.ops.misc.FrozenBatchNorm2d (torchvision's detection backbones put it where
    BatchNorm2d would be): the statistics and affine parameters are buffers, and no num_features is kept."""

    def __init__(self, n, eps=1e-5):
        super().__init__()
        self.eps = eps
        for name, init in (("weight", torch.ones), ("bias", torch.zeros), ("running_mean", torch.zeros),
                           ("running_var", torch.ones)):
            self.register_buffer(name, init(n))

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)


FrozenBatchNorm2d.__module__ = "torchvision.ops.misc"  # known by class and package


def test_frozen_batchnorm_folds_like_batchnorm():
    torch.manual_seed(0)

    class Block(nn.Module):  # torchvision's Bottleneck with norm_layer=FrozenBatchNorm2d, in short
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), FrozenBatchNorm2d(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), FrozenBatchNorm2d(8)
            self.relu = nn.ReLU(inplace=True)
            self.tail = nn.Sequential(nn.Conv2d(8, 4, 1), FrozenBatchNorm2d(4), nn.ReLU())
            self.wrong = nn.Sequential(nn.Conv2d(8, 4, 1), FrozenBatchNorm2d(5))  # 5 features for 4 channels

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)) + y)
            return self.tail(y), y

    model = Block().eval()
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        want = model(x)
    fused = fuse(copy.deepcopy(model))
    assert type(fused.bn1) is Folded and type(fused.bn2) is Folded and type(fused.tail[1]) is Folded
    assert isinstance(fused.conv1, ConvAct2d) and fused.conv1.activation == "relu"
    assert type(fused.wrong[1]) is FrozenBatchNorm2d  # unused here: the module-pattern walk leaves it, reported
    with torch.no_grad():
        got = fused(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    # traced alone (a Sequential): the wrong one is reported, not folded
    seq = fuse(copy.deepcopy(model.wrong))
    assert type(seq[1]) is FrozenBatchNorm2d
    assert any("num_features=5" in why for _, why in seq.fastinfer_fuse_report.skipped)
