"""distill(): trains a student to match a frozen teacher (Hinton KD + optional FitNets-style feature
hints), with per-epoch evaluation, best-checkpoint selection, callbacks, and torch.distributed (DDP)."""
from __future__ import annotations

import copy
import itertools
import math
import random
import time
from dataclasses import dataclass, field
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .._args import is_integer
from .hints import FeatureCapture, HintProjection, check_feature_pairs
from .loss import check_alpha, check_logits, check_temperature, combine, kd_terms, _check_real

OptimizerFactory = Callable[[List[nn.Parameter]], torch.optim.Optimizer]
Callback = Callable[[int, Dict[str, Any], nn.Module], Optional[bool]]

_END = object()  # marks an exhausted iterator (a batch itself could be anything)

# Per-epoch sums that every rank all-reduces, in this order (a sample-weighted mean comes out).
_SUMS = ("loss", "kd", "ce", "hint", "n", "correct", "eval_loss", "eval_n")


@dataclass
class DistillResult:
    """What distill() returns.

    student: the student (trained in place, unwrapped from DDP) holding the best epoch's weights.
    best_epoch: 0-based index of that epoch; best_metric: its eval accuracy in % (with eval_data)
    or its mean train loss (without); monitor says which ('eval_acc' or 'train_loss').
    history: one dict per epoch run: epoch, train_loss, kd_loss, ce_loss, hint_loss, eval_acc,
    eval_loss, seconds. projections: {student_module_name: HintProjection}, best epoch's weights.
    """
    student: nn.Module
    best_epoch: int
    best_metric: float
    history: List[Dict[str, Any]]
    projections: Dict[str, HintProjection] = field(default_factory=dict)
    monitor: str = "eval_acc"


class _StudentWithHints(nn.Module):
    """The student and its hint projections as one module, so that DDP averages the projections'
    gradients along with the student's and one state_dict snapshots both for the best checkpoint."""

    def __init__(self, student: nn.Module, projections: nn.ModuleList, capture: FeatureCapture, names: List[str]):
        super().__init__()
        self.student = student
        self.projections = projections
        self._capture = capture
        self._names = names

    def forward(self, x):
        self._capture.clear()
        logits = self.student(x)
        return logits, [proj(self._capture.get(n)) for n, proj in zip(self._names, self.projections)]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _device_of(module: nn.Module) -> torch.device:
    p = next(itertools.chain(module.parameters(), module.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


def _to(x, device: torch.device):
    return x.to(device) if isinstance(x, torch.Tensor) else x


def _unpack(batch, what: str):
    if isinstance(batch, (Mapping, str)):  # a dict of two keys would unpack into its keys
        raise ValueError(f"{what} must yield (x, y) batches, got {type(batch).__name__}; for a model that takes a "
                         "dict (a Hugging Face model), yield (inputs, labels) and wrap the model so that it takes "
                         "the dict and returns logits, e.g. lambda inputs: model(**inputs).logits in an nn.Module")
    try:
        x, y = batch
    except (TypeError, ValueError):
        raise ValueError(f"{what} must yield (x, y) batches, got {type(batch).__name__}") from None
    return x, y


def _class_targets(y, logits: torch.Tensor) -> bool:
    """Whether y can be cross_entropy's target for logits: class indices, or class probabilities of their shape."""
    if not isinstance(y, torch.Tensor):
        return False
    if not y.is_floating_point():
        return y.dim() == logits.dim() - 1 and y.shape[:1] == logits.shape[:1]
    return y.shape == logits.shape


def _check_class_range(y, logits: torch.Tensor) -> None:
    """Class-index targets within [0, C) (or cross_entropy's ignore_index -100), else a ValueError naming one: on
    a GPU cross_entropy's own check is a device-side assert that leaves the CUDA context unusable. One host
    sync per batch, as the loss's .item() below has anyway."""
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.numel() == 0:
        return
    classes = logits.shape[1]
    bad = ((y < 0) & (y != -100)) | (y >= classes)
    if bool(bad.any()):
        raise ValueError(f"train_data yielded the label {int(y[bad][0])}, outside the student's {classes} classes "
                         f"[0, {classes}) (-100 marks a position to ignore)")


def _set_epoch(data, epoch: int) -> None:
    # DistributedSampler reshuffles per epoch only when told the epoch; same call on every rank.
    set_epoch = getattr(getattr(data, "sampler", None), "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)


def _batch_len(y, x) -> int:
    t = y if isinstance(y, torch.Tensor) and y.dim() > 0 else x
    return int(t.shape[0]) if isinstance(t, torch.Tensor) else len(t)


def _build_optimizer(optimizer: Optional[OptimizerFactory], params: List[nn.Parameter], lr: float):
    if optimizer is None:
        return torch.optim.Adam(params, lr=lr)
    if isinstance(optimizer, torch.optim.Optimizer):
        # A ready optimizer cannot hold the hint projections: they only exist after the first batch.
        raise TypeError("optimizer must be a callable params -> torch.optim.Optimizer (e.g. "
                        "lambda params: torch.optim.SGD(params, lr=0.1)), not an optimizer instance: "
                        "distill() passes it the student's trainable parameters plus the hint projections")
    if not callable(optimizer):
        raise TypeError(f"optimizer must be None or a callable params -> torch.optim.Optimizer, "
                        f"got {type(optimizer).__name__}")
    opt = optimizer(params)
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"optimizer(params) must return a torch.optim.Optimizer, got {type(opt).__name__}")
    return opt


def _check_args(teacher, student, epochs, hint_weight, lr, callbacks, seed, progress) -> List[Callback]:
    for name, m in (("teacher", teacher), ("student", student)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{name} must be a torch.nn.Module, got {type(m).__name__}")
    if teacher is student:
        raise ValueError("teacher and student must be different modules (the teacher is frozen)")
    if not is_integer(epochs) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if _check_real("hint_weight", hint_weight) < 0:
        raise ValueError(f"hint_weight must be >= 0, got {hint_weight!r}")
    if _check_real("lr", lr) <= 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not is_integer(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
    if callable(callbacks):  # one callback
        callbacks = [callbacks]
    if callbacks is not None and not isinstance(callbacks, Iterable):
        raise TypeError(f"callbacks must be a callable or a list of them, got {type(callbacks).__name__}")
    callbacks = [] if callbacks is None else list(callbacks)
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"callbacks must be callables (epoch, metrics, student) -> bool | None, got {cb!r}")
    return callbacks


def _check_data(data, name: str, epochs: int) -> None:
    if not isinstance(data, Iterable):
        raise TypeError(f"{name} must be an iterable of (x, y) batches, got {type(data).__name__}")
    # A generator would be exhausted after the first epoch and the later ones would silently be empty.
    if isinstance(data, Iterator) and epochs > 1:
        raise ValueError(f"{name} is a one-shot iterator (e.g. a generator) but epochs > 1; "
                         "pass a re-iterable such as a DataLoader or a list of batches")


def _len_or_none(data) -> Optional[int]:
    try:
        return len(data)
    except TypeError:  # e.g. a DataLoader over an IterableDataset
        return None


def _probe(teacher, student, batch, pairs, s_cap, t_cap, s_dev, t_dev) -> nn.ModuleList:
    """One forward of both models on the first batch: checks the output shapes before any training
    and sizes the hint projections. The student runs in eval mode so BatchNorm statistics are untouched."""
    x, _ = _unpack(batch, "train_data")
    modes = [(m, m.training) for m in student.modules()]
    student.eval()
    try:
        with torch.no_grad():
            t_out = teacher(_to(x, t_dev))
            s_out = student(_to(x, s_dev))
    finally:
        for m, mode in modes:
            m.training = mode
    if not (isinstance(t_out, torch.Tensor) and isinstance(s_out, torch.Tensor)):
        raise TypeError(f"teacher and student must return a logits tensor, got {type(t_out).__name__} "
                        f"and {type(s_out).__name__}")
    if t_out.shape != s_out.shape:
        raise ValueError(f"teacher output shape {tuple(t_out.shape)} does not match student output shape "
                         f"{tuple(s_out.shape)}; both must be logits over the same classes")
    check_logits(s_out, t_out)
    projections = nn.ModuleList(HintProjection.between(s_cap.get(s), t_cap.get(t), s, t) for s, t in pairs)
    s_cap.clear()
    t_cap.clear()
    return projections.to(s_dev)


def _evaluate(student: nn.Module, eval_data: Iterable, device: torch.device, cap: FeatureCapture):
    """Sums over eval_data of (hard-label cross-entropy, correct predictions, positions scored)."""
    student.eval()
    loss = correct = count = 0.0
    with torch.no_grad():
        for batch in eval_data:
            x, y = _unpack(batch, "eval_data")
            x, y = _to(x, device), _to(y, device)
            logits = student(x)
            cap.clear()  # the hint hooks fire here too; their outputs are not needed
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            labels = y.argmax(dim=1) if y.is_floating_point() else y  # class probabilities: their top class
            # positions labelled -100 (cross_entropy's ignore_index: padding) are not scored, as the loss skips them
            scored = labels != -100 if not y.is_floating_point() else torch.ones_like(labels, dtype=torch.bool)
            correct += float(((logits.argmax(dim=1) == labels) & scored).sum())
            count += float(scored.sum())
    return loss, correct, count


def distill(teacher: nn.Module, student: nn.Module, train_data: Iterable, *, epochs: int,
            temperature: float = 4.0, alpha: float = 0.5, feature_pairs: Optional[Mapping[str, str]] = None,
            hint_weight: float = 1.0, optimizer: Optional[OptimizerFactory] = None, lr: float = 1e-3,
            eval_data: Optional[Iterable] = None, callbacks: Optional[Sequence[Callback]] = None,
            seed: int = 0, progress: bool = True) -> DistillResult:
    """Trains ``student`` (in place) to imitate the frozen ``teacher``; returns a DistillResult.

    Per batch: ``alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE(student, y)``
    (see kd_loss) ``+ hint_weight * sum of MSE(projection(student feature), teacher feature)``
    over ``feature_pairs`` ({student_module_name: teacher_module_name}).

    train_data / eval_data: re-iterables of (x, y) batches (a DataLoader, a list). Each epoch
    the student is scored on eval_data (accuracy %, cross-entropy); the best epoch (highest
    accuracy, or lowest train loss without eval_data) is loaded back at the end.
    optimizer: None (Adam with ``lr``) or a callable ``params -> torch.optim.Optimizer``, called
    once with the student's trainable parameters plus the hint projections' (``lr`` is then unused).
    callbacks: ``cb(epoch, metrics, student)`` after each epoch; a truthy return stops training.
    Under torch.distributed the student trains wrapped in DistributedDataParallel; every rank
    must pass its own shard of the data, with the same number of batches.
    """
    callbacks = _check_args(teacher, student, epochs, hint_weight, lr, callbacks, seed, progress)
    temperature, alpha = check_temperature(temperature), check_alpha(alpha)
    hint_weight = float(hint_weight)
    _check_data(train_data, "train_data", epochs)
    if eval_data is not None:
        _check_data(eval_data, "eval_data", epochs)
    pairs = check_feature_pairs(feature_pairs, student, teacher)
    s_names, t_names = [s for s, _ in pairs], [t for _, t in pairs]

    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    _seed_everything(int(seed))
    s_dev, t_dev = _device_of(student), _device_of(teacher)

    # Freeze the teacher, remembering every module's mode and every parameter's flag to restore.
    t_modes = [(m, m.training) for m in teacher.modules()]
    t_flags = [(p, p.requires_grad) for p in teacher.parameters()]
    s_modes = [(m, m.training) for m in student.modules()]
    teacher.eval().requires_grad_(False)
    s_cap, t_cap = FeatureCapture(student, s_names), FeatureCapture(teacher, t_names)
    try:
        _set_epoch(train_data, 0)
        batches = iter(train_data)
        first = next(batches, _END)
        if first is _END:
            raise ValueError("train_data is empty: it yielded no batches")
        projections = _probe(teacher, student, first, pairs, s_cap, t_cap, s_dev, t_dev)
        model = _StudentWithHints(student, projections, s_cap, s_names)
        # DDP's constructor broadcasts rank 0's weights, projections included: all ranks start equal.
        train_model = nn.parallel.DistributedDataParallel(model) if distributed else model
        params = [p for p in student.parameters() if p.requires_grad] + list(projections.parameters())
        if not params:
            raise ValueError("student has no trainable parameters (all have requires_grad=False)")
        opt = _build_optimizer(optimizer, params, lr)

        monitor = "eval_acc" if eval_data is not None else "train_loss"
        history: List[Dict[str, Any]] = []
        best_epoch, best_metric, best_state = -1, None, None
        for epoch in range(epochs):
            start = time.perf_counter()
            if epoch > 0:
                _set_epoch(train_data, epoch)
                batches = iter(train_data)
            else:
                batches = itertools.chain([first], batches)
            sums = dict.fromkeys(_SUMS, 0.0)
            student.train()
            projections.train()
            # Updated by hand: a bar that wraps the iterable closes itself at the end of the batches,
            # before the epoch's eval accuracy can be shown on it.
            bar = tqdm(total=_len_or_none(train_data), desc=f"distill {epoch + 1}/{epochs}", unit="batch",
                       disable=not progress or rank != 0)
            for batch in batches:
                x, y = _unpack(batch, "train_data")
                with torch.no_grad():
                    t_cap.clear()
                    t_logits = _to(teacher(_to(x, t_dev)), s_dev)
                    t_feats = [_to(t_cap.get(n), s_dev) for n in t_names]
                x, y = _to(x, s_dev), _to(y, s_dev)
                s_logits, s_feats = train_model(x)
                check_logits(s_logits, t_logits)
                if alpha == 1.0 and not _class_targets(y, s_logits):
                    # Pure distillation ignores the labels: unlabeled (x, None) or non-class targets.
                    kd, ce = kd_terms(s_logits, t_logits, None, temperature)
                elif y is None:
                    raise ValueError(f"train_data yielded (x, None) batches: labels are needed unless alpha == 1 "
                                     f"(pure distillation); alpha={alpha}")
                else:
                    _check_class_range(y, s_logits)
                    kd, ce = kd_terms(s_logits, t_logits, y, temperature)
                loss = combine(kd, ce, alpha)  # alpha == 1: the KL term alone
                hint = None
                if pairs:
                    hint = sum(F.mse_loss(s, t) for s, t in zip(s_feats, t_feats))
                    # Added even with hint_weight=0, so the projections stay in the graph (DDP
                    # requires every parameter it wraps to receive a gradient).
                    loss = loss + hint_weight * hint
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

                n = _batch_len(y, x)
                sums["n"] += n
                sums["loss"] += loss.item() * n
                sums["kd"] += kd.item() * n
                sums["ce"] += (ce.item() if ce is not None else math.nan) * n
                sums["hint"] += (hint.item() if hint is not None else 0.0) * n
                bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.4f}", refresh=False)
                bar.update(1)
            if sums["n"] == 0:
                raise ValueError(f"train_data yielded no batches in epoch {epoch}; pass a re-iterable "
                                 "(a DataLoader or a list of batches), not a one-shot iterator")
            s_cap.clear()

            if distributed:
                # DDP syncs buffers (BatchNorm statistics) at the start of each forward, so after
                # the last one they differ by rank; take rank 0's so evaluation agrees everywhere.
                for b in student.buffers():
                    dist.broadcast(b, src=0)
            if eval_data is not None:
                sums["eval_loss"], sums["correct"], sums["eval_n"] = _evaluate(student, eval_data, s_dev, s_cap)
                if sums["eval_n"] == 0 and not distributed:
                    raise ValueError("eval_data is empty: it yielded no batches (or only labels of -100, which are not scored)")
            else:
                student.eval()
            seconds = time.perf_counter() - start
            if distributed:
                # Sums, not per-rank means, so ranks with unequal shares still give the global mean.
                packed = torch.tensor([sums[k] for k in _SUMS], dtype=torch.float64)
                dist.all_reduce(packed)
                sums = dict(zip(_SUMS, packed.tolist()))
                wall = torch.tensor([seconds], dtype=torch.float64)
                dist.all_reduce(wall, op=dist.ReduceOp.MAX)
                seconds = float(wall)
                if eval_data is not None and sums["eval_n"] == 0:
                    raise ValueError("eval_data is empty on every rank: it yielded no batches (or only labels of -100)")

            n = sums["n"]
            metrics = {
                "epoch": epoch,
                "train_loss": sums["loss"] / n,
                "kd_loss": sums["kd"] / n,
                "ce_loss": None if math.isnan(sums["ce"]) else sums["ce"] / n,
                "hint_loss": sums["hint"] / n if pairs else None,
                "eval_acc": 100.0 * sums["correct"] / sums["eval_n"] if eval_data is not None else None,
                "eval_loss": sums["eval_loss"] / sums["eval_n"] if eval_data is not None else None,
                "seconds": seconds,
            }
            history.append(metrics)
            shown = {"loss": f"{metrics['train_loss']:.4f}"}
            if eval_data is not None:
                shown["eval_acc"] = f"{metrics['eval_acc']:.2f}"
            bar.set_postfix(shown)
            bar.close()

            # Same all-reduced numbers on every rank, so every rank keeps the same epoch.
            metric = metrics[monitor]
            if best_metric is None or math.isnan(best_metric):  # a NaN epoch never stays best
                better = True
            else:
                better = metric > best_metric if monitor == "eval_acc" else metric < best_metric
            if better:
                best_epoch, best_metric = epoch, metric
                # a module's extra state (a pruning mask's, an int8 layer's) is not a tensor: copied as it is
                best_state = {k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)
                              for k, v in model.state_dict().items()}

            # Every callback runs (each may log or save); any truthy answer stops training.
            answers = [cb(epoch, dict(metrics), student) for cb in callbacks]
            stop = any(bool(a) for a in answers)
            if distributed:
                # One rank stopping alone would leave the others waiting in DDP's all-reduce.
                flag = torch.tensor([1.0 if stop else 0.0])
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
            if stop:
                break

        model.load_state_dict(best_state)
        del train_model  # drops DDP's reducer and its hooks on the student's parameters
        return DistillResult(student=student, best_epoch=best_epoch, best_metric=best_metric, history=history,
                             projections=dict(zip(s_names, projections)), monitor=monitor)
    finally:
        s_cap.remove()
        t_cap.remove()
        for m, mode in t_modes:
            m.training = mode
        for p, flag in t_flags:
            p.requires_grad_(flag)
        for m, mode in s_modes:
            m.training = mode
