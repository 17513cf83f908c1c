"""Structured pruning: dependency tracking (BN, residual add, concat, depthwise, flatten), exactness
when the removed channels were already dead, parameter counts, round_to, save/load, bad input."""
import pytest
import torch
from torch import nn

from fastinfer.pruning import PruningError, load_pruned, prune, save_pruned


def params(m):
    return sum(p.numel() for p in m.parameters())


def kill_channels(conv_or_linear, idx, bn=None):
    """Makes channels `idx` output exactly zero (weights, bias and the BN shift)."""
    with torch.no_grad():
        conv_or_linear.weight[idx] = 0
        if conv_or_linear.bias is not None:
            conv_or_linear.bias[idx] = 0
        if bn is not None:
            bn.bias[idx] = 0
            bn.running_mean[idx] = 0


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(64, 128), nn.Linear(128, 128), nn.Linear(128, 10)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2 * c * 4 * 4, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        return self.head(torch.relu(self.fc(x.flatten(1))))


class ResidualDepthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c1, self.bn1 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.expand = nn.Conv2d(16, 24, 1)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.project = nn.Conv2d(40, 32, 1)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        a = torch.relu(self.bn0(self.stem(x)))
        r = torch.relu(a + self.bn1(self.c1(a)))           # residual: stem and c1 channels coupled
        d = torch.relu(self.dw(torch.relu(self.expand(r))))  # depthwise follows expand's channels
        y = self.project(torch.cat([r, d], dim=1))           # concat: 16 + 24 channels
        return self.head(y.mean(dim=(2, 3)))


def test_mlp_dead_neurons_removed_exactly():
    m = MLP().eval()
    kill_channels(m.fc1, torch.arange(0, 128, 2))
    kill_channels(m.fc2, torch.arange(1, 128, 2))
    x = torch.randn(7, 64)
    before = m(x)
    rep = prune(m, amount=0.5, example_inputs=x)
    assert (m.fc1.out_features, m.fc2.in_features, m.fc2.out_features, m.head.in_features) == (64, 64, 64, 64)
    assert params(m) == 64 * 64 + 64 + 64 * 64 + 64 + 10 * 64 + 10 == rep.params_after
    torch.testing.assert_close(m(x), before, rtol=1e-6, atol=1e-6)


def test_cnn_with_batchnorm_and_flatten():
    m = CNN().eval()
    dead1, dead2 = torch.arange(16, 32), torch.arange(0, 64, 2)
    kill_channels(m.conv1, dead1, m.bn1)
    kill_channels(m.conv2, dead2, m.bn2)
    kill_channels(m.fc, torch.arange(32, 64))
    x = torch.randn(3, 1, 8, 8)
    before = m(x)
    prune(m, amount=0.5, example_inputs=x)
    assert (m.conv1.out_channels, m.bn1.num_features, m.conv2.in_channels, m.conv2.out_channels) == (16, 16, 16, 32)
    assert m.fc.in_features == 32 * 16 and m.fc.out_features == 32 and m.head.out_features == 10
    torch.testing.assert_close(m(x), before, rtol=1e-5, atol=1e-5)


def test_residual_concat_depthwise_shapes():
    m = ResidualDepthwise().eval()
    x = torch.randn(2, 3, 6, 6)
    before = m(x)
    rep = prune(m, amount=0.5, example_inputs=x)
    assert m.stem.out_channels == m.c1.out_channels == m.bn1.num_features == 8   # coupled by the add
    assert m.expand.out_channels == m.dw.out_channels == m.dw.groups == 12         # depthwise follows
    assert m.project.in_channels == 8 + 12                                         # concat of both
    assert m.project.out_channels == 16 and m.head.in_features == 16
    assert m(x).shape == before.shape
    assert {tuple(sorted(g.producers)) for g in rep.pruned} == {("c1", "stem"), ("expand",), ("project",)}


def test_residual_dead_channels_exact():
    m = ResidualDepthwise().eval()
    kill_channels(m.stem, torch.arange(8, 16), m.bn0)
    kill_channels(m.c1, torch.arange(8, 16), m.bn1)
    kill_channels(m.expand, torch.arange(12))
    with torch.no_grad():
        m.dw.bias[:12] = 0
    x = torch.randn(2, 3, 6, 6)
    before = m(x)
    prune(m, amount=0.5, example_inputs=x, exclude=["project"])
    assert m.project.out_channels == 32
    torch.testing.assert_close(m(x), before, rtol=1e-5, atol=1e-5)


def test_round_to_and_amount_zero():
    m = MLP()
    prune(m, amount=0.7, example_inputs=torch.randn(2, 64), round_to=16)
    assert m.fc1.out_features == 48  # keep 128 - 89 = 39 -> rounded up to 48
    m2 = MLP()
    before = params(m2)
    prune(m2, amount=0.0, example_inputs=torch.randn(2, 64))
    assert params(m2) == before


def test_unknown_op_and_grouped_conv_left_unpruned():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)
            self.g = nn.Conv2d(8, 8, 1, groups=2)
            self.c = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = torch.cumsum(self.a(x), dim=1)   # mixes channels: the pruner does not understand it
            return self.c(self.g(self.b(y)))

    m = Odd()
    rep = prune(m, amount=0.5, example_inputs=torch.randn(1, 3, 4, 4))
    reasons = {tuple(g.producers): g.reason for g in rep.skipped}
    assert m.a.out_channels == 8 and "cumsum" in reasons[("a",)]
    assert m.b.out_channels == 8 and "grouped conv g" in reasons[("b",)]
    assert "kept" in str(rep)


def test_save_and_load_pruned(tmp_path):
    m = CNN().eval()
    x = torch.randn(2, 1, 8, 8)
    prune(m, amount=0.5, example_inputs=x)
    prune(m, amount=0.25, example_inputs=x)  # pruned twice: both plans are stored
    path = tmp_path / "pruned.pt"
    save_pruned(m, path)
    fresh = load_pruned(path, CNN().eval())
    assert fresh.conv2.out_channels == m.conv2.out_channels
    torch.testing.assert_close(fresh(x), m(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="no channel pruning to save"):
        save_pruned(CNN(), tmp_path / "x.pt")


def test_taylor_importance():
    m = MLP()
    x = torch.randn(16, 64)
    with pytest.raises(ValueError, match="needs gradients"):
        prune(m, amount=0.5, importance="taylor", example_inputs=x)
    m.head(torch.relu(m.fc2(torch.relu(m.fc1(x))))).pow(2).mean().backward()
    prune(m, amount=0.5, importance="taylor", example_inputs=x)
    assert m.fc1.out_features == 64


def test_bad_arguments():
    for amount in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"amount must be a fraction in \[0, 1\)"):
            prune(MLP(), amount=amount, example_inputs=torch.randn(1, 64))
    with pytest.raises(ValueError, match="pattern must be"):
        prune(MLP(), pattern="diagonal", example_inputs=torch.randn(1, 64))
    with pytest.raises(ValueError, match="importance must be one of"):
        prune(MLP(), importance="random", example_inputs=torch.randn(1, 64))
    with pytest.raises(TypeError, match="example_inputs is required"):
        prune(MLP())
    with pytest.raises(ValueError, match="round_to must be a positive int"):
        prune(MLP(), example_inputs=torch.randn(1, 64), round_to=0)


def test_untraceable_model_names_construct_and_safe_parts():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = MLP()
            self.other = nn.Linear(10, 10)

        def forward(self, x):
            y = self.block(x)
            if y.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
                y = y * 2
            return self.other(y)

    with pytest.raises(PruningError, match=r"cannot trace Branchy.*can be pruned safely: block .*"
                                            r"fastinfer.prune\(model.get_submodule\('block'\), example_inputs="):
        prune(Branchy(), amount=0.5, example_inputs=torch.randn(2, 64))


def test_train_mode_batchnorm_statistics_untouched():
    """The shape pass runs in eval mode: in train mode it used to update BatchNorm's running statistics
    with the example input (a no-op prune changed the model's eval output)."""
    model = CNN().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune(model, amount=0.0, example_inputs=torch.randn(2, 1, 8, 8) * 5 + 3)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_parameters_used_outside_their_module_are_kept():
    """A layer whose weight forward also reads directly (F.linear(b, self.proj.weight, ...)) or that shares a
    weight with another layer keeps its channels (slicing broke the other use or untied the weight)."""
    import torch.nn.functional as F

    class Siamese(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.head_a, self.head_b = nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(16, 4)

        def forward(self, a, b):
            return self.head_a(F.relu(self.proj(a))) + self.head_b(F.linear(b, self.proj.weight, self.proj.bias))

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc1, self.enc2, self.head = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 4)
            self.enc2.weight = self.enc1.weight

        def forward(self, a, b):
            return self.head(F.relu(self.enc1(a))), self.enc2(b)

    a, b = torch.randn(2, 8), torch.randn(2, 8)
    siamese = Siamese().eval()
    report = prune(siamese, amount=0.5, example_inputs=(a, b))
    siamese(a, b)
    kept = {tuple(g.producers): g.reason for g in report.groups}
    assert "proj.weight is also used directly in forward" in kept[("proj",)]
    tied = Tied().eval()
    report = prune(tied, amount=0.5, example_inputs=(a, b))
    assert tied.enc1.weight is tied.enc2.weight and tied.enc1.weight.shape == (16, 8)
    assert "tied to enc1.weight and enc2.weight" in {tuple(g.producers): g.reason for g in report.groups}[("enc1",)]


def test_masked_model_and_wrong_example_inputs_refused_up_front():
    import fastinfer

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(2, 8)
    fastinfer.prune(model, pattern="unstructured", sparsity=0.5)
    with pytest.raises(PruningError, match=r"layers '0', '2' carry parametrizations.* call fastinfer.remove_masks"):
        prune(model, amount=0.5, example_inputs=x)
    assert model[0].weight.shape == (16, 8) and model[0].bias.shape == (16,)
    model(x)  # untouched, still runs
    with pytest.raises(PruningError, match=r"model\(\*example_inputs\) failed \(RuntimeError: .*\); example_inputs "
                                           r"must be inputs the model accepts"):
        prune(CNN(), amount=0.5, example_inputs=torch.randn(1, 5, 8, 8))


def test_fused_model_prunes_like_the_float_one():
    # fastinfer.fuse's ConvAct2d / LinearAct are layers to the pruner (not traced into bare torch.conv2d calls).
    import fastinfer
    from fastinfer.nn import ConvAct2d, LinearAct
    m = CNN().eval()
    kill_channels(m.conv1, torch.arange(16, 32), m.bn1)
    kill_channels(m.conv2, torch.arange(0, 64, 2), m.bn2)
    kill_channels(m.fc, torch.arange(32, 64))
    x = torch.randn(3, 1, 8, 8)
    fused = fastinfer.fuse(m, example_inputs=x)
    assert type(fused.conv1) is ConvAct2d and type(fused.fc) is LinearAct
    before = fused(x)
    rep = prune(fused, amount=0.5, example_inputs=x)
    assert (fused.conv1.out_channels, fused.conv2.in_channels, fused.conv2.out_channels) == (16, 16, 32)
    assert fused.fc.in_features == 32 * 16 and fused.fc.out_features == 32
    assert type(fused.conv1) is ConvAct2d and fused.conv1.activation == "relu"
    assert len(rep.pruned) == 3
    torch.testing.assert_close(fused(x), before, rtol=1e-5, atol=1e-5)


class Bottleneck(nn.Module):
    """torchvision's ResNet habit: one ReLU module called three times."""

    def __init__(self, c=16, mid=32):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, mid, 1), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, padding=1), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, c, 1), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + x)


def test_shared_activation_module_does_not_block_pruning():
    m = Bottleneck().eval()
    kill_channels(m.conv1, torch.arange(16, 32), m.bn1)
    kill_channels(m.conv2, torch.arange(0, 32, 2), m.bn2)
    x = torch.randn(2, 16, 6, 6)
    before = m(x)
    prune(m, amount=0.5, example_inputs=x)
    assert (m.conv1.out_channels, m.conv2.in_channels, m.conv2.out_channels, m.conv3.in_channels) == (16, 16, 16, 16)
    assert m.conv3.out_channels == 16  # the residual stream reaches the output: kept
    torch.testing.assert_close(m(x), before, rtol=1e-5, atol=1e-5)


def test_quantized_layers_are_kept_with_the_reason():
    import fastinfer
    m = fastinfer.quantize(MLP().eval(), "w8a8_dynamic", exclude="head")
    rep = prune(m, amount=0.5, example_inputs=torch.randn(2, 64))
    assert not rep.pruned
    assert any("already quantized or sparse" in g.reason for g in rep.groups)


def test_layers_with_weight_hooks_or_foreign_parametrizations():
    import fastinfer

    # torch.nn.utils.weight_norm (the hook version) computes the weight in forward: such a layer keeps its
    # channels (slicing weight alone would leave weight_g / weight_v whole). The parametrize version is refused
    # with a message that names it, not pruning masks.
    import warnings

    class Net(nn.Module):
        def __init__(self, wn):
            super().__init__()
            self.c1, self.c2, self.fc = wn(nn.Conv1d(1, 16, 5)), wn(nn.Conv1d(16, 16, 3)), nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean(-1))

    x = torch.randn(2, 1, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weight_norm's deprecation
        model = Net(nn.utils.weight_norm).eval()
    with torch.no_grad():
        want = model(x)
    fastinfer.prune(model, amount=0.5, example_inputs=x)
    assert model.c1.out_channels == model.c2.out_channels == 16
    with torch.no_grad():
        torch.testing.assert_close(model(x), want)
    with pytest.raises(fastinfer.PruningError, match="parametrizations.weight_norm; remove them first"):
        fastinfer.prune(Net(nn.utils.parametrizations.weight_norm).eval(), amount=0.5, example_inputs=x)


def test_a_fixed_size_flatten_keeps_the_channels_before_it():
    # LeNet's x.view(-1, 16 * 5 * 5): the literal feature size would no longer match a pruned conv, so the conv
    # feeding it keeps its channels; x.view(x.size(0), -1) follows them.
    import torch.nn.functional as F

    import fastinfer

    class LeNet(nn.Module):
        def __init__(self, fixed):
            super().__init__()
            self.fixed = fixed
            self.c1, self.c2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
            self.fc1, self.fc2 = nn.Linear(16 * 5 * 5, 32), nn.Linear(32, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.c2(F.max_pool2d(F.relu(self.c1(x)), 2))), 2)
            x = x.view(-1, 16 * 5 * 5) if self.fixed else x.view(x.size(0), -1)
            return self.fc2(F.relu(self.fc1(x)))

    x = torch.randn(2, 1, 32, 32)
    for fixed in (True, False):
        model = LeNet(fixed).eval()
        fastinfer.prune(model, amount=0.5, example_inputs=x)
        assert (model.c2.out_channels == 16) == fixed and model.fc1.out_features == 16
        with torch.no_grad():
            assert model(x).shape == (2, 10)


def test_save_pruned_refuses_what_load_pruned_cannot_rebuild(tmp_path):
    # Masks or int8 / sparse layers on a channel-pruned model: refused with the way that works, which is then
    # followed here (save the float model, convert, save the state_dict; deploy: load_pruned + load_quantized).
    import fastinfer

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()

    x = torch.randn(4, 32)
    model = make()
    fastinfer.prune(model, amount=0.5, example_inputs=x)
    fastinfer.save_pruned(model, tmp_path / "float.pt")
    masked = fastinfer.load_pruned(tmp_path / "float.pt", make())
    fastinfer.prune(masked, pattern="unstructured", sparsity=0.5)
    with pytest.raises(ValueError, match=r"carry weight masks.*remove_masks"):
        fastinfer.save_pruned(masked, tmp_path / "x.pt")
    fastinfer.quantize(model)
    with pytest.raises(ValueError, match=r"are quantized or sparse.*load_quantized\(path, model\)"):
        fastinfer.save_pruned(model, tmp_path / "x.pt")
    torch.save(model.state_dict(), tmp_path / "q.pt")
    deployed = fastinfer.load_quantized(tmp_path / "q.pt", fastinfer.load_pruned(tmp_path / "float.pt", make()))
    with torch.inference_mode():
        assert torch.equal(deployed(x), model(x))
    with pytest.raises(ValueError, match="no channel pruning to save"):
        fastinfer.save_pruned(make(), tmp_path / "x.pt")


def test_load_pruned_refuses_an_already_pruned_model(tmp_path):
    import fastinfer

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    fastinfer.prune(model, amount=0.5, example_inputs=torch.randn(2, 8))
    fastinfer.save_pruned(model, tmp_path / "p.pt")
    with pytest.raises(ValueError, match="already channel-pruned; pass a fresh instance"):
        fastinfer.load_pruned(tmp_path / "p.pt", model)
    # another architecture (the plans name modules it lacks), and a file that is no save_pruned checkpoint
    with pytest.raises(ValueError, match="pruning plans do not fit this model"):
        fastinfer.load_pruned(tmp_path / "p.pt", nn.Sequential(nn.Conv2d(3, 4, 3)))
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(ValueError, match=r"as tensors saved by fastinfer.save_pruned"):
        fastinfer.load_pruned(tmp_path / "whole.pt", nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
