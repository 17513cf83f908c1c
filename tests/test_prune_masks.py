"""Magnitude pruning with masks (fastinfer/pruning/masks.py): exact counts per layer and globally, 2:4 and
block patterns, masks that hold through fine-tuning, remove_masks, state_dict round trip, reports, bad input.
Oracle: the original weights (which entries are smallest, by sorting them here)."""
import copy
import io

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import fastinfer
from fastinfer.nn import LinearAct
from fastinfer.pruning.masks import Mask, prune_weights, remove_masks, sparsity_report


class MLP(nn.Module):
    def __init__(self, k=32, h=48, out=12):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(k, h), nn.Linear(h, h), nn.Linear(h, out)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def zeros(t):
    return int((t == 0).sum())


def weights(model):
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 1 / 3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (48, 32)])
def test_unstructured_layer_scope_is_exact(shape, sparsity):
    lin = nn.Linear(shape[1], shape[0])
    before = lin.weight.detach().clone()
    report = prune_weights(nn.Sequential(lin), sparsity)
    w = lin.weight.detach()
    k = round(sparsity * w.numel())
    assert zeros(w) == k and report.layers["0"].nnz == w.numel() - k
    assert torch.equal(w[w != 0], before[w != 0])            # kept entries untouched
    if 0 < k < w.numel():                                     # the pruned are the smallest |w|
        assert before[w == 0].abs().max() <= before[w != 0].abs().min()
    if sparsity == 0:
        assert torch.equal(w, before)
    assert report.layers["0"].empty == (k == w.numel())       # e.g. 1x1 at 0.9 rounds to empty
    assert ("empty" in str(report)) == (k == w.numel())


def test_ties_are_broken_by_index_and_bf16_works():
    lin = nn.Linear(8, 4).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.fill_(0.5)                                 # every entry ties
    prune_weights(nn.Sequential(lin), 0.25)
    flat = lin.weight.detach().reshape(-1)
    assert flat.dtype == torch.bfloat16
    assert zeros(flat) == 8 and bool((flat[:8] == 0).all())   # the lowest indices go first


def test_global_scope_one_threshold_over_all_layers():
    model = MLP()
    with torch.no_grad():
        model.fc1.weight.mul_(0.1)                            # small weights: pruned harder globally
        model.head.weight.mul_(10)
    before = weights(model)
    with pytest.warns(UserWarning, match=r"\['fc1'\] lost every weight"):  # its weights are all below the threshold
        report = prune_weights(model, 0.6, scope="global")
    after = weights(model)
    total = sum(w.numel() for w in after.values())
    assert sum(zeros(w) for w in after.values()) == round(0.6 * total)
    assert report.nnz == total - round(0.6 * total)
    s = {n: report.layers[n].sparsity for n in after}
    assert s["fc1"] > s["fc2"] > s["head"]                    # different per layer...
    pruned = torch.cat([before[n][after[n] == 0].abs() for n in after])
    kept = torch.cat([before[n][after[n] != 0].abs() for n in after])
    assert pruned.max() <= kept.min()                         # ...under one threshold


def test_2_4_keeps_the_two_largest_of_every_group():
    model = nn.Sequential(nn.Linear(32, 16), LinearAct(64, 8, activation="relu"))
    before = weights(model)
    report = prune_weights(model, None, pattern="2:4")
    for name, w in weights(model).items():
        groups, orig = w.reshape(-1, 4), before[name].reshape(-1, 4)
        assert bool(((groups != 0).sum(dim=1) == 2).all())   # random weights: exactly 2 nonzeros
        top2 = orig.abs().topk(2, dim=1).indices
        assert bool((groups.gather(1, top2) != 0).all())
        assert report.layers[name].sparsity == 0.5 and report.layers[name].pattern == "2:4"
    assert parametrize.type_before_parametrizations(model[1]) is LinearAct


def test_2_4_on_top_of_a_sparser_mask_keeps_at_least_two_zeros():
    lin = nn.Linear(16, 8)
    prune_weights(nn.Sequential(lin), 0.7)
    prune_weights(nn.Sequential(lin), 0.5, pattern="2:4")
    groups = lin.weight.detach().reshape(-1, 4)
    assert bool(((groups == 0).sum(dim=1) >= 2).all())
    assert zeros(lin.weight) >= round(0.7 * lin.weight.numel())


@pytest.mark.parametrize("block", [(1, 16), (2, 8), (4, 4)])
def test_block_pattern_zeros_whole_blocks(block):
    lin = nn.Linear(32, 16)
    before = lin.weight.detach().clone()
    prune_weights(nn.Sequential(lin), 0.4, pattern="block", block=block)
    r, c = block
    blocks = lin.weight.detach().reshape(16 // r, r, 32 // c, c).permute(0, 2, 1, 3).reshape(-1, r * c)
    zero_blocks = (blocks == 0).all(dim=1)
    assert bool(((blocks != 0).all(dim=1) | zero_blocks).all())  # all or nothing in each block
    assert int(zero_blocks.sum()) == round(0.4 * blocks.shape[0])
    norms = before.reshape(16 // r, r, 32 // c, c).permute(0, 2, 1, 3).reshape(-1, r * c).norm(dim=1)
    assert norms[zero_blocks].max() <= norms[~zero_blocks].min()


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_masks_hold_through_fine_tuning(opt):
    model = MLP()
    prune_weights(model, 0.5)
    pruned = {n: w == 0 for n, w in weights(model).items()}
    start = weights(model)
    optim = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3) if opt == "sgd"
             else torch.optim.Adam(model.parameters(), lr=1e-2))
    x, y = torch.randn(64, 32), torch.randint(0, 12, (64,))
    for _ in range(5):
        optim.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optim.step()
    for name, w in weights(model).items():
        assert bool((w[pruned[name]] == 0).all())              # pruned stay exactly zero
        assert bool((w[~pruned[name]] != start[name][~pruned[name]]).any())  # the rest trained


def test_reprune_combines_masks():
    lin = nn.Linear(20, 10)
    prune_weights(nn.Sequential(lin), 0.5)
    first = lin.weight.detach() == 0
    report = prune_weights(nn.Sequential(lin), 0.75)
    assert bool((lin.weight.detach()[first] == 0).all()) and zeros(lin.weight) == 150
    assert len(lin.parametrizations.weight) == 1               # one mask, updated in place
    prune_weights(nn.Sequential(lin), 0.25)                    # pruning never restores weights
    assert zeros(lin.weight) == 150 and report.layers["0"].pattern == "unstructured"


def test_remove_masks_gives_plain_linear_with_same_outputs():
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), LinearAct(48, 8, activation="relu6"))
    prune_weights(model, 0.6)
    param = model[0].parametrizations.weight.original
    x = torch.randn(5, 32)
    with torch.no_grad():
        y = model(x)
    masked = fastinfer.quantize(copy.deepcopy(model))  # masked layers stay float, and the report says what to do
    assert [r for _, r in masked.fastinfer_report.skipped] == ["its weight holds fastinfer's pruning mask (call "
                                                               "fastinfer.remove_masks(model) first, or fastinfer.sparsify)"] * 2
    assert remove_masks(model) == ["0", "2"]
    assert type(model[0]) is nn.Linear and type(model[2]) is LinearAct
    assert not parametrize.is_parametrized(model[0]) and model[0].weight is param  # optimizers keep their tensor
    assert zeros(model[0].weight) == round(0.6 * 32 * 48)
    with torch.no_grad():
        assert torch.equal(model(x), y)
    assert remove_masks(model) == []


def test_state_dict_round_trip_into_a_fresh_model_pruned_at_zero():
    # The documented recipe: attach all-ones masks to a fresh model (prune_weights(fresh, 0.0), same
    # include/exclude), then load: the saved masks, weights and pattern replace them.
    model = MLP()
    prune_weights(model, 0.5, pattern="2:4", exclude="head")
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 32)).sum().backward()
    optim.step()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = MLP()
    prune_weights(fresh, 0.0, exclude="head")
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert torch.equal(fresh.fc1.parametrizations.weight[0].mask, model.fc1.parametrizations.weight[0].mask)
    assert sparsity_report(fresh).layers["fc2"].pattern == "2:4"
    # Deployment path: baked weights load into the plain architecture.
    remove_masks(model)
    plain = MLP()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))


@pytest.mark.parametrize("kwargs, match", [
    (dict(sparsity=1.5), "sparsity"),
    (dict(sparsity=-0.1), "sparsity"),
    (dict(sparsity=float("nan")), "sparsity"),
    (dict(sparsity=None), "sparsity"),
    (dict(sparsity=0.7, pattern="2:4"), "sparsity must be 0.5"),
    (dict(sparsity=0.5, pattern="2:4", scope="global"), "scope"),
    (dict(sparsity=0.5, pattern="4:8"), "pattern"),
    (dict(sparsity=0.5, pattern="channels"), "fastinfer.prune"),
    (dict(sparsity=0.5, scope="model"), "scope"),
    (dict(sparsity=0.5, pattern="block", block=(0, 4)), "block"),
])
def test_bad_arguments_raise_naming_them(kwargs, match):
    model = MLP()
    before = weights(model)
    with pytest.raises(ValueError, match=match):
        prune_weights(model, **kwargs)
    assert all(torch.equal(before[n], w) for n, w in weights(model).items())  # nothing changed


def test_bad_types_raise():
    with pytest.raises(TypeError, match="sparsity"):
        prune_weights(MLP(), "0.5")
    with pytest.raises(TypeError, match="include"):
        prune_weights(MLP(), 0.5, include=[1, 2])
    with pytest.raises(TypeError, match="model"):
        prune_weights(torch.zeros(3), 0.5)


class MyLinear(nn.Linear):
    pass


def test_skipped_layers_are_reported_with_reasons():
    model = nn.ModuleDict({"odd": nn.Linear(10, 8), "ok": nn.Linear(16, 8), "sub": MyLinear(16, 8),
                           "emb": nn.Embedding(8, 16), "tied": nn.Linear(16, 8), "other": nn.Linear(16, 8)})
    model["tied"].weight = model["emb"].weight
    report = prune_weights(model, None, pattern="2:4", exclude=lambda name, m: name == "other")
    reasons = dict(report.skipped)
    assert "not a multiple of 4" in reasons["odd"] and "subclass MyLinear" in reasons["sub"]
    assert "tied to emb.weight" in reasons["tied"] and reasons["other"] == "matched by exclude"
    assert list(report.layers) == ["ok"]
    assert not parametrize.is_parametrized(model["odd"]) and not parametrize.is_parametrized(model["tied"])
    assert "odd: in_features=10" in str(report)
    report = prune_weights(nn.Sequential(nn.Linear(16, 6)), 0.5, pattern="block", block=(4, 4))
    assert "not divisible into 4x4 blocks" in report.skipped[0][1]
    report = prune_weights(MLP(), 0.5, include="fc*")
    assert list(report.layers) == ["fc1", "fc2"] and report.skipped == [("head", "not matched by include")]


def test_sparsity_report_on_a_plain_model():
    model = MLP()
    with torch.no_grad():
        model.fc2.weight[:3] = 0
    report = sparsity_report(model)
    assert list(report.layers) == ["fc1", "fc2", "head"] and report.pattern is None
    assert report.layers["fc1"].sparsity == 0.0 and report.layers["fc1"].dense_bytes == 48 * 32 * 4
    assert report.layers["fc2"].nnz == 48 * 48 - 3 * 48 and report.layers["fc2"].pattern == ""
    assert report.numel == 32 * 48 + 48 * 48 + 48 * 12 and "fc2" in str(report)

    lin = nn.Linear(64, 32)
    with torch.no_grad():
        lin.weight[:, ::2] = 0
    sparse = fastinfer.nn.SparseLinear.from_float(lin, pattern="2:4")
    layer = sparsity_report(nn.Sequential(sparse)).layers["0"]
    assert (layer.shape, layer.nnz, layer.sparsity, layer.pattern) == ((32, 64), 1024, 0.5, "2:4")
    assert (layer.format, layer.nbytes) == ("csr8 float32", sparse.nbytes)
    report = prune_weights(nn.Sequential(sparse, nn.Linear(4, 4)), 0.5)
    assert "already a SparseLinear" in dict(report.skipped)["0"]


def test_mask_parametrization_alone():
    lin = nn.Linear(4, 2)
    parametrize.register_parametrization(lin, "weight", Mask(torch.tensor([[1., 0, 1, 0], [0, 1, 0, 1]])))
    with torch.no_grad():
        lin.parametrizations.weight.original.fill_(float("inf"))
    assert lin.weight.tolist() == [[float("inf"), 0, float("inf"), 0], [0, float("inf"), 0, float("inf")]]


def test_masks_take_the_layer_mode():
    # prune() on an eval model leaves it all eval (fastinfer.fuse refuses a model in training mode)
    import fastinfer

    model = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10)).eval()
    fastinfer.prune(model, pattern="unstructured", sparsity=0.8)
    assert not any(m.training for m in model.modules())
    fastinfer.fuse(model, example_inputs=torch.randn(4, 32))
    train = nn.Sequential(nn.Linear(8, 8))
    fastinfer.prune(train, pattern="unstructured", sparsity=0.5)
    assert all(m.training for m in train.modules())


def test_prune_pattern_follows_the_argument_given():
    # prune(model, sparsity=s) with no pattern is unstructured weight pruning (as the README's first example
    # reads); amount= alone (or nothing) is channel pruning; both at once is refused
    import fastinfer

    model = MLP()
    report = fastinfer.prune(model, sparsity=0.75)
    assert type(report).__name__ == "SparsityReport"
    w = model.fc1.weight
    assert abs((w == 0).float().mean().item() - 0.75) < 0.01 and parametrize.is_parametrized(model.fc1)
    with pytest.raises(ValueError, match="amount"):
        fastinfer.prune(MLP(), "unstructured", amount=0.5)
    with pytest.raises(ValueError, match="not sparsity"):
        fastinfer.prune(MLP(), "channels", sparsity=0.5)


def test_weight_norm_hook_layer_is_skipped_with_a_reason():
    import warnings

    import fastinfer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nn.Sequential(nn.utils.weight_norm(nn.Linear(16, 32)), nn.ReLU(), nn.Linear(32, 4))
    report = fastinfer.prune(model, pattern="unstructured", sparsity=0.5)
    assert "forward hooks" in dict(report.skipped)["0"] and parametrize.is_parametrized(model[2])


def test_numpy_arguments_and_non_modules():
    import numpy as np

    import fastinfer

    model = nn.Sequential(nn.Linear(16, 16))
    fastinfer.prune(model, pattern="block", sparsity=np.float32(0.5), block=(np.int64(1), 16))
    assert zeros(model[0].weight) == 8 * 16
    for fn in (fastinfer.sparsify, remove_masks):
        with pytest.raises(TypeError, match="model must be a torch.nn.Module, got NoneType"):
            fn(None)


def test_global_scope_warns_when_it_empties_a_layer_and_convs_are_reported():
    import warnings

    import fastinfer

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 96), nn.ReLU(), nn.Linear(96, 10))
    with torch.no_grad():
        net[2].weight.mul_(10)
    with pytest.warns(UserWarning, match=r"layers \['0', '4'\] lost every weight"):
        fastinfer.prune(net, pattern="unstructured", sparsity=0.6, scope="global")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastinfer.prune(nn.Sequential(nn.Linear(8, 8)), pattern="unstructured", sparsity=0.6, scope="global")
    report = fastinfer.prune(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 4)), pattern="unstructured",
                             sparsity=0.5)
    assert "a convolution" in dict(report.skipped)["0"] and list(report.layers) == ["2"]
