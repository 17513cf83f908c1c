"""Tests for fastinfer.distill: kd_loss against explicit formulas (the oracle), distill()'s training
loop (gradients, hints, frozen teacher, best checkpoint, callbacks, seeds), a 2-process DDP run
against a single-process one, and bad arguments."""
import copy
import math
import os
import socket
from collections import OrderedDict
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from fastinfer.distillation import DistillResult, HintProjection, distill, kd_loss


def _mlp(sizes, seed):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _batches(n, features, classes, batch, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _explicit_soft_kl(s, t, temperature):
    """T^2 * mean over rows of sum_c p_c (log p_c - log q_c), p = softmax(t/T), q = softmax(s/T),
    written out with exp/log rather than F.kl_div (the oracle must not share kd_loss's code)."""
    def log_softmax(z):
        z = z / temperature
        return z - torch.log(torch.exp(z - z.max(1, keepdim=True).values).sum(1, keepdim=True)) \
            - z.max(1, keepdim=True).values
    log_p, log_q = log_softmax(t), log_softmax(s)
    return temperature ** 2 * (log_p.exp() * (log_p - log_q)).sum(1).mean()


# --- kd_loss ------------------------------------------------------------------------------------

def test_kd_loss_matches_hand_computed_value():
    # Oracle: the formula evaluated with Python floats, one sample and class at a time.
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    y = [1, 2]
    T, alpha = 2.0, 0.3

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    kl = 0.0
    for srow, trow in zip(s, t):
        p, q = softmax([v / T for v in trow]), softmax([v / T for v in srow])
        kl += sum(pc * math.log(pc / qc) for pc, qc in zip(p, q))
    kl /= len(s)
    ce = sum(-math.log(softmax(row)[c]) for row, c in zip(s, y)) / len(s)
    expected = alpha * T * T * kl + (1 - alpha) * ce

    got = kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), temperature=T, alpha=alpha)
    assert got.shape == ()
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_alpha_extremes():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    y = torch.randint(0, 7, (5,), generator=g)
    # alpha=0 is plain cross-entropy, exactly (the KD term is left out, not multiplied by 0).
    assert torch.equal(kd_loss(s, t, y, temperature=3.0, alpha=0.0), F.cross_entropy(s, y))
    # alpha=1 is pure distillation: targets are not needed and do not matter.
    pure = kd_loss(s, t, None, temperature=3.0, alpha=1.0)
    torch.testing.assert_close(pure, _explicit_soft_kl(s, t, 3.0), rtol=1e-5, atol=1e-6)
    assert torch.equal(pure, kd_loss(s, t, y, temperature=3.0, alpha=1.0))
    # A student that already matches the teacher has nothing left to learn from it.
    assert kd_loss(t, t, None, temperature=3.0, alpha=1.0).abs().item() < 1e-6


def test_kd_loss_dense_logits_count_each_position():
    # [N, C, H, W] logits: every pixel is a sample, like cross_entropy's mean.
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    flat = lambda z: z.permute(0, 2, 3, 1).reshape(-1, 4)  # noqa: E731
    torch.testing.assert_close(kd_loss(s, t, None, temperature=2.0, alpha=1.0),
                               _explicit_soft_kl(flat(s), flat(t), 2.0), rtol=1e-5, atol=1e-6)


def test_kd_loss_classes_the_teacher_masks_add_nothing():
    # A teacher logit of -inf (masked classes, vocabulary padding) is probability 0: its class adds 0 to the KL
    # (0 log 0 = 0; F.kl_div made it NaN); the loss and gradients equal those over the unmasked classes alone.
    T, ni = 2.0, float("-inf")
    teacher = torch.tensor([[0.3, 2.0, ni, -1.0], [ni, 0.5, 0.1, ni]])
    student = torch.randn(2, 4, requires_grad=True)
    loss = kd_loss(student, teacher, None, temperature=T, alpha=1.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(student.grad).all()
    p_t = F.softmax(teacher / T, dim=-1)
    log_s = F.log_softmax(student.detach() / T, dim=-1)
    expect = sum(float(p * (torch.log(p) - ls)) for row_p, row_s in zip(p_t, log_s) for p, ls in zip(row_p, row_s)
                 if p > 0) / 2 * T * T
    assert math.isclose(float(loss), expect, rel_tol=1e-5)
    # the student masked where the teacher is too: still finite (both -inf there)
    both = kd_loss(torch.tensor([[1.0, 0.5, ni]]), torch.tensor([[0.3, 2.0, ni]]), None, alpha=1.0)
    assert torch.isfinite(both)


def test_kd_term_reaches_gradients():
    # alpha=1: the student's gradients are the explicit KL formula's, and nonzero.
    # Oracle 1: the closed form d/ds [T^2 KL] = T (softmax(s/T) - softmax(t/T)) / N.
    # Oracle 2: autograd through the written-out formula, for the student's parameters.
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(6, 5, generator=g), torch.randn(6, 4, generator=g)
    T = 2.5
    student = _mlp([5, 4], seed=4)
    s = student(x)
    s.retain_grad()
    kd_loss(s, t, None, temperature=T, alpha=1.0).backward()
    closed_form = T * (torch.softmax(s.detach() / T, 1) - torch.softmax(t / T, 1)) / len(x)
    torch.testing.assert_close(s.grad, closed_form, rtol=1e-5, atol=1e-7)

    twin = copy.deepcopy(student)
    twin.zero_grad()
    _explicit_soft_kl(twin(x), t, T).backward()
    for p, q in zip(student.parameters(), twin.parameters()):
        assert p.grad.abs().sum() > 0
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)


def test_kd_loss_bad_arguments():
    s, t, y = torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, y, temperature=0.0, alpha=0.5)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, y, temperature=float("nan"), alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(s, t, y, temperature=1.0, alpha=1.5)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(s, t, y, temperature=1.0, alpha=-0.1)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        kd_loss(s, torch.zeros(2, 4), y, temperature=1.0, alpha=0.5)
    with pytest.raises(ValueError, match="targets"):
        kd_loss(s, t, None, temperature=1.0, alpha=0.5)


# --- distill(): the training step -----------------------------------------------------------------

def _sgd(lr):
    return lambda params: torch.optim.SGD(params, lr=lr)


def test_pure_kd_step_follows_explicit_kl_gradient():
    # One distill step with SGD(lr=1) moves each student parameter by minus the explicit KL
    # formula's gradient: with alpha=1 the KD term is what trains the student.
    data = _batches(8, 6, 3, batch=8, seed=5)
    teacher, student = _mlp([6, 16, 3], seed=6), _mlp([6, 4, 3], seed=7)
    before = copy.deepcopy(student)
    x, _ = data[0]
    _explicit_soft_kl(before(x), teacher(x).detach(), 3.0).backward()
    distill(teacher, student, data, epochs=1, temperature=3.0, alpha=1.0, optimizer=_sgd(1.0), progress=False)
    for p_new, p_old in zip(student.parameters(), before.parameters()):
        assert p_old.grad.abs().sum() > 0
        torch.testing.assert_close(p_old.detach() - p_new.detach(), p_old.grad, rtol=1e-5, atol=1e-7)


def test_alpha_zero_is_plain_cross_entropy_training():
    data = _batches(32, 6, 3, batch=8, seed=8)
    teacher, student = _mlp([6, 16, 3], seed=9), _mlp([6, 4, 3], seed=10)
    plain = copy.deepcopy(student)
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    for _ in range(2):
        for x, y in data:
            opt.zero_grad()
            F.cross_entropy(plain(x), y).backward()
            opt.step()
    result = distill(teacher, student, data, epochs=2, alpha=0.0, optimizer=_sgd(0.1), progress=False)
    for p, q in zip(student.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert result.history[-1]["kd_loss"] > 0  # still reported, though it did not train


@pytest.fixture(scope="module")
def digits():
    """sklearn digits split 1200 / 597, and a teacher MLP trained on the 1200 (~97% test accuracy)."""
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x, y = torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1200], perm[1200:]
    teacher = _mlp([64, 128, 10], seed=0)
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(teacher(x[tr]), y[tr]).backward()
        opt.step()
    with torch.no_grad():
        assert (teacher(x[te]).argmax(1) == y[te]).float().mean() > 0.93
    return teacher, x[tr], y[tr], x[te], y[te]


def test_distillation_beats_training_without_teacher(digits):
    # The low-data regime where soft targets are known to help: a 64-16-10 student sees only 100
    # labelled digits. Baseline: the same student, data, seed and epochs with alpha=0 (pure
    # cross-entropy, which the test above shows is plain training: the teacher plays no part).
    # Over seeds 0..9 distillation won by 3.0 to 7.4 points (mean 5.3); a 1-point margin per seed
    # leaves room for other CPUs' float rounding without letting a no-op pass.
    teacher, xtr, ytr, xte, yte = digits
    for seed in range(3):
        sub = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed))[:100]
        train = [(xtr[sub[i:i + 20]], ytr[sub[i:i + 20]]) for i in range(0, 100, 20)]
        acc = {}
        for alpha in (1.0, 0.0):
            student = _mlp([64, 16, 10], seed=seed)
            r = distill(teacher, student, train, epochs=80, alpha=alpha, temperature=4.0, lr=1e-2,
                        eval_data=[(xte, yte)], seed=seed, progress=False)
            acc[alpha] = r.best_metric
        assert acc[1.0] > acc[0.0] + 1.0, f"seed {seed}: distilled {acc[1.0]:.1f}% vs plain {acc[0.0]:.1f}%"


def test_kd_alone_teaches_despite_wrong_labels(digits):
    # With alpha=1 the labels are ignored: even every label shifted to a wrong class, the student
    # learns the teacher's function (chance is 10%, the copied labels would give ~0%).
    teacher, xtr, ytr, xte, yte = digits
    wrong = (ytr + 1) % 10
    train = [(xtr[i:i + 100], wrong[i:i + 100]) for i in range(0, 1200, 100)]
    r = distill(teacher, _mlp([64, 16, 10], seed=0), train, epochs=15, alpha=1.0, lr=1e-2,
                eval_data=[(xte, yte)], progress=False)
    assert r.best_metric > 80.0
    assert r.history[-1]["ce_loss"] > r.history[0]["ce_loss"]  # it did not follow the wrong labels


def test_pure_distillation_without_labels():
    """alpha=1 ignores the labels: (x, None) batches and non-class targets train (ce_loss is None); they used
    to crash in the cross-entropy computed for the history. With alpha < 1, (x, None) is a clear error."""
    teacher, student = _mlp([8, 32, 4], seed=1), _mlp([8, 8, 4], seed=0)
    x = torch.randn(16, 8)
    for y in (None, torch.randn(16)):
        r = distill(teacher, student, [(x, y)] * 3, epochs=2, alpha=1.0, progress=False)
        assert r.history[-1]["ce_loss"] is None and r.history[-1]["kd_loss"] < r.history[0]["kd_loss"]
    with pytest.raises(ValueError, match=r"train_data yielded \(x, None\) batches: labels are needed unless alpha == 1"):
        distill(teacher, student, [(x, None)], epochs=1, alpha=0.5, progress=False)


# --- feature hints ------------------------------------------------------------------------------

def _convnets():
    torch.manual_seed(11)
    # The teacher downsamples to 4x4 where the student stays at 8x8: the hint is pooled to 4x4.
    teacher = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(1, 8, 3, stride=2, padding=1), act=nn.ReLU(), flat=nn.Flatten(),
        fc=nn.Linear(8 * 4 * 4, 32), act2=nn.ReLU(), head=nn.Linear(32, 5)))
    student = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(1, 4, 3, padding=1), act=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(2), flat=nn.Flatten(),
        fc=nn.Linear(4 * 2 * 2, 16), act2=nn.ReLU(), head=nn.Linear(16, 5)))
    g = torch.Generator().manual_seed(12)
    x, y = torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 5, (64,), generator=g)
    return teacher, student, [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]


def test_feature_hints_learn_and_projections_are_returned():
    teacher, student, data = _convnets()
    modules_before = [n for n, _ in student.named_modules()]
    r = distill(teacher, student, data, epochs=8, lr=1e-2, feature_pairs={"act": "act", "act2": "act2"},
                hint_weight=2.0, progress=False)
    hints = [h["hint_loss"] for h in r.history]
    assert hints[-1] < 0.5 * hints[0], hints
    assert set(r.projections) == {"act", "act2"}
    conv, lin = r.projections["act"], r.projections["act2"]
    assert isinstance(conv, HintProjection) and isinstance(lin, HintProjection)
    assert isinstance(conv.proj, nn.Conv2d) and conv.proj.kernel_size == (1, 1)
    assert (conv.proj.in_channels, conv.proj.out_channels, conv.spatial) == (4, 8, (4, 4))
    assert isinstance(lin.proj, nn.Linear) and (lin.proj.in_features, lin.proj.out_features) == (16, 32)
    # The projection maps the student's feature onto the teacher's shape.
    x = data[0][0]
    assert conv(student.act(student.conv(x))).shape == teacher.act(teacher.conv(x)).shape
    # Nothing left behind in either model: no new submodules, no hooks.
    assert [n for n, _ in student.named_modules()] == modules_before
    assert all(not m._forward_hooks for m in [*student.modules(), *teacher.modules()])
    # Without hints the result says so.
    r2 = distill(teacher, _convnets()[1], data, epochs=1, progress=False)
    assert r2.projections == {} and r2.history[0]["hint_loss"] is None
    # Two student modules may take hints from the same teacher module.
    r3 = distill(teacher, _convnets()[1], data, epochs=1, feature_pairs={"fc": "act2", "act2": "act2"},
                 progress=False)
    assert sorted(r3.projections) == ["act2", "fc"] and r3.history[0]["hint_loss"] > 0


def test_feature_pairs_unknown_names():
    teacher, student, data = _convnets()
    with pytest.raises(ValueError, match=r"unknown student module name\(s\) \['nope'\].*'conv'"):
        distill(teacher, student, data, epochs=1, feature_pairs={"nope": "act"}, progress=False)
    with pytest.raises(ValueError, match=r"unknown teacher module name\(s\) \['bad'\].*'head'"):
        distill(teacher, student, data, epochs=1, feature_pairs={"act": "bad"}, progress=False)
    with pytest.raises(ValueError, match=r"both be \[N, C\] or both \[N, C, H, W\]"):
        distill(teacher, student, data, epochs=1, feature_pairs={"act": "act2"}, progress=False)


# --- teacher, checkpoints, callbacks, seeds --------------------------------------------------------

def test_teacher_is_frozen_and_restored():
    torch.manual_seed(13)
    teacher = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    teacher.train()
    teacher[1].eval()  # a mixed-mode model: each module's own mode must come back
    teacher[0].bias.requires_grad_(False)
    modes = [m.training for m in teacher.modules()]
    flags = [p.requires_grad for p in teacher.parameters()]
    state = copy.deepcopy(teacher.state_dict())
    seen = []
    teacher.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))

    distill(teacher, _mlp([6, 4, 3], seed=14), _batches(32, 6, 3, batch=8, seed=15), epochs=2,
            feature_pairs={"2": "2"}, progress=False)
    assert seen and all(s == (False, False) for s in seen)  # eval mode, no autograd
    assert [m.training for m in teacher.modules()] == modes
    assert [p.requires_grad for p in teacher.parameters()] == flags
    after = teacher.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # weights and BatchNorm stats


@pytest.mark.parametrize("with_eval", [True, False])
def test_best_epoch_is_loaded_and_callbacks_stop(with_eval):
    teacher, student = _mlp([6, 16, 3], seed=17), _mlp([6, 8, 3], seed=18)
    with torch.no_grad():  # labels the student can learn: the teacher's own predictions
        data = [(x, teacher(x).argmax(1)) for x, _ in _batches(64, 6, 3, batch=16, seed=16)]
    opts, states, calls = [], [], []

    def make_opt(params):
        opts.append(torch.optim.SGD(params, lr=0.5))
        return opts[-1]

    def record(epoch, metrics, model):
        calls.append((epoch, metrics))
        states.append(copy.deepcopy(model.state_dict()))
        if epoch == 1:
            # Sabotage that cannot recover: flip the head (argmax becomes argmin) and stop learning,
            # so epochs 2.. are worse and the best checkpoint must come from epoch 0 or 1.
            with torch.no_grad():
                model[-1].weight.neg_()
                model[-1].bias.neg_()
            opts[0].param_groups[0]["lr"] = 0.0

    r = distill(teacher, student, data, epochs=10, optimizer=make_opt, eval_data=data if with_eval else None,
                callbacks=[record, lambda epoch, m, s: epoch == 3], progress=False)
    assert isinstance(r, DistillResult)
    assert [h["epoch"] for h in r.history] == [0, 1, 2, 3]  # stopped by the second callback
    assert [c[1] for c in calls] == r.history
    key = "eval_acc" if with_eval else "train_loss"
    assert r.monitor == key
    values = [h[key] for h in r.history]
    best = values.index(max(values) if with_eval else min(values))
    assert r.best_epoch == best <= 1 and r.best_metric == values[best]
    final = student.state_dict()
    assert all(torch.equal(final[k], states[best][k]) for k in final)
    assert not torch.equal(final["2.weight"], states[-1]["2.weight"])
    for h in r.history:
        assert set(h) == {"epoch", "train_loss", "kd_loss", "ce_loss", "hint_loss", "eval_acc", "eval_loss", "seconds"}
        assert (h["eval_acc"] is None) == (not with_eval) and h["seconds"] >= 0


def test_dict_batches_soft_eval_targets_and_one_callback():
    torch.manual_seed(0)
    teacher, student = nn.Linear(5, 3), nn.Linear(5, 3)
    with pytest.raises(ValueError, match=r"must yield \(x, y\) batches, got dict; .*model\(\*\*inputs\)"):
        distill(teacher, student, [{"input_ids": torch.randn(4, 5), "labels": torch.zeros(4)}], epochs=1,
                          progress=False)
    # probabilities as targets: eval scores their top class, once per sample (it once compared every
    # probability with the argmax, N * C "samples", or raised when N != C)
    x = torch.randn(4, 5)
    soft = torch.softmax(torch.randn(4, 3), 1)
    seen = []
    r = distill(teacher, student, [(x, soft)], epochs=1, progress=False, eval_data=[(x, soft)],
                          callbacks=lambda epoch, metrics, model: seen.append(epoch))
    with torch.no_grad():
        want = 100.0 * float((student(x).argmax(1) == soft.argmax(1)).float().mean())
    assert r.history[0]["eval_acc"] == pytest.approx(want) and seen == [0]


def test_seeded_runs_are_identical():
    # The seed covers the shuffling DataLoader and the student's dropout.
    x, y = torch.randn(48, 6), torch.randint(0, 3, (48,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
    teacher = _mlp([6, 16, 3], seed=19)
    runs = []
    for _ in range(2):
        student = nn.Sequential(_mlp([6, 8, 3], seed=20), nn.Dropout(0.3))
        r = distill(teacher, student, loader, epochs=2, feature_pairs={"0.1": "1"}, seed=7, progress=False)
        runs.append((student, r))
    (s1, r1), (s2, r2) = runs
    assert all(torch.equal(p, q) for p, q in zip(s1.parameters(), s2.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(r1.projections["0.1"].parameters(),
                                                  r2.projections["0.1"].parameters()))
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(r1.history) == strip(r2.history)


def test_sampler_set_epoch_is_called():
    class Recorder(torch.utils.data.SequentialSampler):
        epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    ds = torch.utils.data.TensorDataset(torch.randn(16, 6), torch.randint(0, 3, (16,)))
    loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=Recorder(ds))
    distill(_mlp([6, 3], seed=0), _mlp([6, 3], seed=1), loader, epochs=3, progress=False)
    assert Recorder.epochs == [0, 1, 2]


# --- bad arguments ------------------------------------------------------------------------------

def _gen(data):
    yield from data


@pytest.mark.parametrize("change, error, match", [
    ({"epochs": 0}, ValueError, "epochs"),
    ({"epochs": 1.5}, ValueError, "epochs"),
    ({"train_data": []}, ValueError, "train_data is empty"),
    ({"train_data": "gen", "epochs": 2}, ValueError, "one-shot iterator"),
    ({"train_data": [torch.zeros(4, 6)]}, ValueError, r"\(x, y\) batches"),
    # labels outside the student's classes (on a GPU cross_entropy's check is a device-side assert)
    ({"train_data": [(torch.zeros(2, 6), torch.tensor([1, 3]))]}, ValueError, r"label 3, outside the student's 3"),
    ({"train_data": [(torch.zeros(2, 6), torch.tensor([-1, 0]))]}, ValueError, r"label -1, outside"),
    ({"teacher": "five_classes"}, ValueError, r"teacher output shape \(8, 5\).*student output shape \(8, 3\)"),
    ({"teacher": "student"}, ValueError, "different modules"),
    ({"temperature": 0}, ValueError, "temperature"),
    ({"alpha": 1.2}, ValueError, "alpha"),
    ({"alpha": True}, ValueError, "alpha"),
    ({"hint_weight": -1.0}, ValueError, "hint_weight"),
    ({"lr": 0.0}, ValueError, "lr"),
    ({"optimizer": "instance"}, TypeError, "optimizer must be a callable"),
    ({"optimizer": lambda params: None}, TypeError, r"optimizer\(params\) must return"),
    ({"callbacks": [42]}, TypeError, "callbacks"),
    ({"feature_pairs": ["0"]}, TypeError, "feature_pairs"),
])
def test_distill_bad_arguments(change, error, match):
    student = _mlp([6, 4, 3], seed=0)
    args = {"teacher": _mlp([6, 3], seed=1), "student": student, "train_data": _batches(16, 6, 3, 8, seed=2),
            "epochs": 1}
    args.update(change)
    if args["teacher"] == "five_classes":
        args["teacher"] = _mlp([6, 5], seed=1)
    elif args["teacher"] == "student":
        args["teacher"] = student
    if args["train_data"] == "gen":
        args["train_data"] = _gen(_batches(16, 6, 3, 8, seed=2))
    if args.get("optimizer") == "instance":
        args["optimizer"] = torch.optim.SGD(student.parameters(), lr=0.1)
    with pytest.raises(error, match=match):
        distill(progress=False, **args)


# --- torch.distributed ----------------------------------------------------------------------------

_DDP_WORLD, _DDP_BATCH = 2, 16


def _ddp_problem():
    """Same models and full batches in every process (seeded); the hints exercise the projections."""
    teacher, student = _mlp([12, 32, 4], seed=21), _mlp([12, 8, 4], seed=22)
    return teacher, student, _batches(64, 12, 4, _DDP_BATCH, seed=23), _batches(32, 12, 4, _DDP_BATCH, seed=24)


def _ddp_distill(teacher, student, train, evals):
    return distill(teacher, student, train, epochs=2, alpha=0.7, temperature=3.0, feature_pairs={"1": "1"},
                   optimizer=_sgd(0.2), eval_data=evals, seed=3, progress=False)


def _half(batches, rank):
    h = _DDP_BATCH // _DDP_WORLD  # equal halves: DDP's gradient average is then the full batch's mean
    return [(x[rank * h:(rank + 1) * h], y[rank * h:(rank + 1) * h]) for x, y in batches]


def _ddp_worker(rank, port, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=_DDP_WORLD, timeout=timedelta(seconds=60))
    try:
        teacher, student, train, evals = _ddp_problem()
        r = _ddp_distill(teacher, student, _half(train, rank), _half(evals, rank))
        torch.save({"student": student.state_dict(), "proj": r.projections["1"].state_dict(),
                    "history": r.history, "best_epoch": r.best_epoch, "type": type(r.student).__name__},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_two_ranks_match_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=_DDP_WORLD, join=True)
    teacher, student, train, evals = _ddp_problem()
    single = _ddp_distill(teacher, student, train, evals)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(_DDP_WORLD)]
    for res in ranks:
        assert res["type"] == "Sequential"  # the unwrapped student, not the DDP wrapper
        assert res["best_epoch"] == single.best_epoch
        for k, v in student.state_dict().items():
            torch.testing.assert_close(res["student"][k], v, rtol=0, atol=1e-5)
        for k, v in single.projections["1"].state_dict().items():
            torch.testing.assert_close(res["proj"][k], v, rtol=0, atol=1e-5)
        # All-reduced metrics: the full data's numbers, the same on every rank.
        for got, want in zip(res["history"], single.history):
            for key in ("train_loss", "kd_loss", "ce_loss", "hint_loss", "eval_acc", "eval_loss"):
                assert got[key] == pytest.approx(want[key], rel=1e-5), key
    assert ranks[0]["history"] == ranks[1]["history"]


def test_distill_a_masked_student_keeps_its_masks():
    # A student carrying pruning masks (fine-tuning sparse with KD): the best-epoch snapshot copies the masks'
    # extra state (a dict, not a tensor) and the 2:4 zeros hold through training.
    import fastinfer

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    student = copy.deepcopy(teacher)
    fastinfer.prune(student, pattern="2:4")
    data = [(torch.randn(16, 32), torch.randint(0, 10, (16,))) for _ in range(4)]
    distill(teacher, student, data, epochs=2, progress=False)
    for layer in (student[0], student[2]):
        w = layer.weight.detach().reshape(layer.out_features, -1, 4)
        assert bool(((w != 0).sum(-1) <= 2).all())


def test_eval_metrics_skip_positions_labelled_minus_100():
    # Per-position logits [N, C, L] with padded labels (-100, cross_entropy's ignore_index): eval accuracy and
    # loss are over the labelled positions only.
    torch.manual_seed(0)
    teacher = nn.Conv1d(8, 5, 1)
    student = copy.deepcopy(teacher)
    x = torch.randn(4, 8, 10)
    with torch.no_grad():
        y = teacher(x).argmax(1)
    y[:, 5:] = -100
    h = distill(teacher, student, [(x, y)], epochs=1, lr=1e-12, eval_data=[(x, y)], progress=False).history[0]
    with torch.no_grad():
        ce = F.cross_entropy(student(x), y).item()
    assert h["eval_acc"] == 100.0 and math.isclose(h["eval_loss"], ce, rel_tol=1e-5)
