"""Second half of `fastinfer demo`: a digits CNN taken through conv-bn folding and static int8
quantization (fastinfer.fuse + calibration), structured pruning (50% of its channels), knowledge
distillation from the unpruned teacher, and int8 again, with accuracy, parameters, FLOPs and
measured latency at every step."""
from __future__ import annotations

import copy
import statistics
from collections import OrderedDict
from typing import Dict, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fastinfer
from fastinfer.profiling import profile

PRUNE_AMOUNT = 0.5


def make_cnn(widths: Sequence[int] = (96, 192, 384), classes: int = 10) -> nn.Sequential:
    """LeNet-style CNN for 1x8x8 digits: conv-bn-relu x3 with two 2x2 pools, then two Linear layers.
    Wide enough that its convolutions, not Python dispatch, dominate batch-1 latency, so a FLOP
    reduction can show up in the measured time."""
    a, b, c = widths
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, a, 3, padding=1)), ("bn1", nn.BatchNorm2d(a)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(a, b, 3, padding=1)), ("bn2", nn.BatchNorm2d(b)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(b, c, 3, padding=1)), ("bn3", nn.BatchNorm2d(c)), ("relu3", nn.ReLU()),
        ("pool3", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(c * 2 * 2, 256)), ("relu4", nn.ReLU()),
        ("head", nn.Linear(256, classes)),
    ]))


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return 100.0 * (model(x).argmax(1) == y).sum().item() / len(y)


def _split_val(x: torch.Tensor, y: torch.Tensor, seed: int, frac: float = 0.15):
    # Distillation keeps its best epoch by validation accuracy: a slice of the training split,
    # so the test split stays untouched until the final table.
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1))
    n_val = int(len(x) * frac)
    return x[perm[n_val:]], y[perm[n_val:]], x[perm[:n_val]], y[perm[:n_val]]


def run(x_tr, y_tr, x_te, y_te, *, train_fn, time_fn, teacher_epochs: int, distill_epochs: int, seed: int,
        iters: Tuple[int, int], threads: int, device: torch.device = torch.device("cpu")) -> Dict[str, dict]:
    """Returns {"rows": {step: metrics}, "prune_report": str, ...}; prints nothing.

    Training, pruning, distillation and quantization run on the CPU; every step's model then moves to
    `device` for accuracy and latency (a quantized model repacks its int8 layers for a GPU there).
    Parameters and FLOPs come from fastinfer.profile (on the CPU); latency from time_fn, which interleaves
    the models call by call in rounds, so drift on a shared machine hits every step alike."""
    img = lambda t: t.reshape(-1, 1, 8, 8)  # noqa: E731  (the 64 digit pixels as an image)
    x_tr, x_te = img(x_tr), img(x_te)
    x_fit, y_fit, x_val, y_val = _split_val(x_tr, y_tr, seed)

    torch.manual_seed(seed)
    teacher = make_cnn()
    teacher_stats = train_fn(teacher, x_fit, y_fit, teacher_epochs, seed)

    student = copy.deepcopy(teacher)
    report = fastinfer.prune(student, pattern="channels", amount=PRUNE_AMOUNT, example_inputs=x_tr[:2])
    pruned_only = copy.deepcopy(student)

    gen = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(TensorDataset(x_fit, y_fit), batch_size=64, shuffle=True, generator=gen)
    val_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=256)
    result = fastinfer.distill(teacher, student, train_loader, epochs=distill_epochs, temperature=4.0, alpha=0.7,
                               lr=1e-3, eval_data=val_loader, seed=seed)
    distilled = result.student

    def int8_static(model: nn.Module) -> nn.Module:
        # Fold BN, fuse ReLU, calibrate activation scales on 8 training batches, swap in int8 layers.
        fused = fastinfer.fuse(copy.deepcopy(model).eval())
        calib = [x_fit[i:i + 64] for i in range(0, 8 * 64, 64)]
        return fastinfer.quantize(fused, scheme="w8a8_static", calib_data=calib)

    teacher_q, quantized = int8_static(teacher), int8_static(distilled)
    steps = OrderedDict([("teacher fp32", teacher), ("teacher int8", teacher_q), ("pruned 50%", pruned_only),
                         ("+ distilled", distilled), ("+ int8 static", quantized)])
    rows: Dict[str, dict] = {}
    for name, m in steps.items():
        p = profile(m, (x_te[:1].contiguous(),), warmup=1, iters=3, threads=threads)
        rows[name] = {"params": p.totals.params, "flops": p.totals.flops}
    steps = OrderedDict((name, m.to(device)) for name, m in steps.items())
    x_te, y_te = x_te.to(device), y_te.to(device)
    for name, m in steps.items():
        rows[name]["accuracy"] = accuracy(m, x_te, y_te)
    for batch, n in zip((1, 64), iters):
        lat = time_fn(steps, x_te[:batch].contiguous(), max(2, n // 10), n)
        for name, ms in lat.items():
            rows[name][f"b{batch}_ms"] = statistics.median(ms)
    base = rows["teacher fp32"]
    for r in rows.values():
        r["delta_points"] = r["accuracy"] - base["accuracy"]
        r["flop_ratio"] = base["flops"] / r["flops"]
        r["b1_speedup"] = base["b1_ms"] / r["b1_ms"]
        r["b64_speedup"] = base["b64_ms"] / r["b64_ms"]
    return {"rows": rows, "prune_report": str(report), "teacher_train": teacher_stats,
            "distill_best_epoch": result.best_epoch, "distill_epochs": distill_epochs,
            "swapped": list(quantized.fastinfer_report.swapped),
            "fused": list(getattr(quantized, "fastinfer_fuse_report", []))}


def format_table(rows: Dict[str, dict]) -> str:
    cols = [("step", 15), ("acc %", 7), ("d pts", 7), ("params", 10), ("MFLOPs", 8), ("FLOPs /", 8),
            ("b1 ms", 8), ("b1 x", 6), ("b64 ms", 8), ("b64 x", 6)]
    head = "  ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(cols))
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        cells = [f"{name:<15}", f"{r['accuracy']:>7.2f}", f"{r['delta_points']:>+7.2f}", f"{r['params']:>10,}",
                 f"{r['flops'] / 1e6:>8.2f}", f"{r['flop_ratio']:>7.2f}x", f"{r['b1_ms']:>8.3f}",
                 f"{r['b1_speedup']:>5.2f}x", f"{r['b64_ms']:>8.3f}", f"{r['b64_speedup']:>5.2f}x"]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def latency_targets(rows: Dict[str, dict], step: str = "+ distilled") -> Dict[str, float]:
    """Issue #7's latency target, read as: the latency reduction (1 - t/t_teacher) is at least 70%
    of the FLOP reduction (1 - F/F_teacher), at batch 1 and at batch 64."""
    r = rows[step]
    flop_cut = 1.0 - 1.0 / r["flop_ratio"]
    return {"flop_reduction": flop_cut,
            "b1_latency_reduction": 1.0 - 1.0 / r["b1_speedup"],
            "b64_latency_reduction": 1.0 - 1.0 / r["b64_speedup"],
            "needed": 0.7 * flop_cut}
