"""End-to-end demo: train an fp32 MLP on scikit-learn's digits, quantize it with each fastinfer
scheme, and compare test accuracy, batch-1 / batch-64 latency and model size in one table.

    python -m fastinfer demo [--epochs 30] [--hidden 1024] [--threads 2] [--json out.json] [--quick]
                             [--device cuda]

With --device cuda the models are trained on the CPU as usual, then run on the GPU: the MLP is moved there
and quantized there (quantize() on a GPU model), the CNN is quantized on the CPU and then moved
(Int8Linear/Int8Conv2d repack for the GPU). Sparse rows on a GPU: 2:4 with int8 values (Hopper).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import fastinfer
from fastinfer import demo_cnn, ops

# Quantized rows: fastinfer.quantize's arguments. "w7": 7-bit weights (weight_bits=7), faster on AVX2-only CPUs.
QUANTIZED = {"w8a8_dynamic": {"scheme": "w8a8_dynamic"},
             "w8a8_dynamic w7": {"scheme": "w8a8_dynamic", "weight_bits": 7},
             "w8_only": {"scheme": "w8_only"}}
SCHEMES = tuple(QUANTIZED)
# Which kernel family serves each row, so the demo can show the fast path really ran.
_SCHEME_FAMILY = {"w8a8_dynamic": "int8_gemm", "w8_only": "w8_gemm"}
# Weight-sparsity rows: fastinfer.prune with masks, a short masked fine-tune, then fastinfer.sparsify (on the
# CPU each also as "<name> int8": int8 values).
SPARSE = {"sparse 2:4": {"pattern": "2:4"}, "sparse 90%": {"pattern": "unstructured", "sparsity": 0.9}}
_KERNEL_FAMILY = {**{name: _SCHEME_FAMILY[how["scheme"]] for name, how in QUANTIZED.items()},
                  **{row: "sparse" for name in SPARSE for row in (name, f"{name} int8")}}

# Timing budgets: (warm-up calls, timed calls) per batch size. The full run takes enough samples
# for a stable median and a meaningful p99; --quick only checks that everything runs.
_TIMING = {
    "full": {1: (50, 1000), 64: (10, 200)},
    "quick": {1: (5, 60), 64: (2, 15)},
}
# Timed calls are spread over this many rounds that alternate between the models, so background
# load (a shared machine) hits every model alike instead of skewing whichever ran during it.
_ROUNDS = 5


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fastinfer demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: 30, or 10 with --quick)")
    p.add_argument("--hidden", type=int, default=1024, help="width of the two hidden layers (default: 1024)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads, training and inference (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, the init and the shuffling (default: 0)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the results here as JSON")
    p.add_argument("--quick", action="store_true", help="few epochs and timing calls (for tests, smoke runs)")
    p.add_argument("--cnn-epochs", type=int, default=None,
                   help="epochs of the CNN teacher, and of distilling the pruned student (default: 15, or 3 with --quick)")
    p.add_argument("--no-cnn", action="store_true", help="skip the CNN prune -> distill -> quantize part")
    p.add_argument("--device", default="cpu",
                   help="where the trained models run and are timed: cpu (default) or cuda[:i] (a CUDA build of "
                        "fastinfer and a GPU; `fastinfer info` shows both)")
    args = p.parse_args(argv)
    if args.json:  # checked before the minutes of training, not after them
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK) or os.path.isdir(args.json):
            p.error(f"--json {args.json}: cannot write a file there (the folder must exist and be writable)")
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device must be cpu or cuda[:index], got {args.device!r}")
    if args.device.type not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda[:index], got {args.device}")
    if args.device.type == "cuda":
        if not ops.cuda_available():
            p.error("--device cuda needs fastinfer built with its CUDA kernels and a visible GPU; this build has CUDA "
                    f"kernels: {bool(ops.BUILD['cuda'])}, GPUs torch sees: {torch.cuda.device_count()}")
        if (args.device.index or 0) >= torch.cuda.device_count():
            p.error(f"--device {args.device}: torch sees {torch.cuda.device_count()} GPU(s)")
    if args.cnn_epochs is None:
        args.cnn_epochs = 3 if args.quick else 15
    if args.epochs is None:
        args.epochs = 10 if args.quick else 30
    if args.epochs < 1 or args.hidden < 1 or args.threads < 1 or args.cnn_epochs < 1:
        p.error("--epochs, --cnn-epochs, --hidden and --threads must be >= 1")
    return args


def load_digits_split(seed: int):
    """Digits (1797 8x8 images, 10 classes) as standardized fp32 tensors: x_train, y_train, x_test, y_test."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.preprocessing import StandardScaler
    except ImportError as e:  # scikit-learn is an optional dependency (the 'demo' extra)
        raise ImportError("the demo needs scikit-learn: pip install 'fastinfer[demo]'") from e
    x, y = load_digits(return_X_y=True)
    # Stratified so every class keeps its share in the small (450-image) test split.
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    # Fit the scaler on the training split only: the test split must not leak into preprocessing.
    scaler = StandardScaler().fit(x_tr)
    as_x = lambda a: torch.from_numpy(scaler.transform(a)).float()  # noqa: E731
    as_y = lambda a: torch.from_numpy(a).long()  # noqa: E731
    return as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te)


def make_mlp(in_features: int, hidden: int, classes: int) -> nn.Sequential:
    # Named layers so the quantization report reads "fc1, fc2, head" rather than "0, 2, 4".
    return nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(in_features, hidden)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(hidden, hidden)), ("relu2", nn.ReLU()),
        ("head", nn.Linear(hidden, classes)),
    ]))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int,
          batch_size: int = 64) -> Dict[str, float]:
    """Adam with a cosine-decayed learning rate: the decay lets the last epochs settle into a
    well-fit minimum, which is what makes int8 rounding of the weights cost next to nothing."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    t0 = time.perf_counter()
    stats = {}
    with tqdm(range(epochs), desc="training fp32", unit="epoch") as bar:
        for _ in bar:
            perm = torch.randperm(len(x), generator=gen)
            total_loss, correct = 0.0, 0
            for i in range(0, len(x), batch_size):
                idx = perm[i:i + batch_size]
                logits = model(x[idx])
                loss = loss_fn(logits, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total_loss += loss.item() * len(idx)
                correct += (logits.argmax(1) == y[idx]).sum().item()
            stats = {"loss": total_loss / len(x), "train_accuracy": 100.0 * correct / len(x)}
            bar.set_postfix(loss=f"{stats['loss']:.4f}", train_acc=f"{stats['train_accuracy']:.1f}%")
    model.eval()
    stats["seconds"] = time.perf_counter() - t0
    return stats


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             ref_logits: Optional[torch.Tensor] = None) -> Tuple[dict, torch.Tensor]:
    """Top-1 accuracy in percent on the whole split in one batch (450 x 64 is tiny). Against the fp32
    logits it also gives the fidelity of the quantized model: a 450-image split moves accuracy in
    0.22-point steps, so SQNR and prediction agreement show the error that accuracy rounds away."""
    logits = model(x)
    pred = logits.argmax(1)
    r = {"accuracy": 100.0 * (pred == y).sum().item() / len(y)}
    if ref_logits is not None:
        err = (logits - ref_logits).pow(2).sum().clamp_min(1e-30)
        r["logit_sqnr_db"] = 10.0 * torch.log10(ref_logits.pow(2).sum() / err).item()
        r["agreement"] = 100.0 * (pred == ref_logits.argmax(1)).sum().item() / len(y)
    return r, logits


def model_nbytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers: what the model costs to store and to stream from memory.
    For Int8Linear this counts the packed int8 weight (with its header), the scales and the bias."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


@torch.inference_mode()
def time_models(models: Dict[str, nn.Module], x: torch.Tensor, warmup: int, iters: int) -> Dict[str, List[float]]:
    """Per-call latencies in ms for each model on input x, timed call by call with perf_counter
    (so the spread, not only the mean, is visible) and interleaved across models in rounds. On a GPU
    each call is timed to the end of its kernels (the stream is synchronized before the clock stops)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for m in models.values():
        for _ in range(warmup):  # first calls pay for allocations, page faults and cold caches
            m(x)
    sync()
    samples = {name: [] for name in models}
    per_round = max(1, iters // _ROUNDS)
    for _ in range(_ROUNDS):
        for name, m in models.items():
            out = samples[name]
            for _ in range(per_round):
                t0 = time.perf_counter()
                m(x)
                sync()
                out.append((time.perf_counter() - t0) * 1e3)
    return samples


def _fmt_table(results: Dict[str, dict], names: Sequence[str]) -> str:
    cols = [("model", "{}", 15), ("acc %", "{:.2f}", 7), ("d pts", "{:+.2f}", 7),
            ("b1 p50 ms", "{:.3f}", 10), ("b1 p99 ms", "{:.3f}", 10),
            ("b64 p50 ms", "{:.3f}", 11), ("b64 p99 ms", "{:.3f}", 11),
            ("size KiB", "{:.1f}", 9), ("size ratio", "{:.3f}x", 11)]
    keys = ["accuracy", "delta_points", "b1_p50_ms", "b1_p99_ms", "b64_p50_ms", "b64_p99_ms",
            "size_kib", "size_ratio"]
    head = "  ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, _, w) in enumerate(cols))
    lines = [head, "-" * len(head)]
    for name in names:
        r = results[name]
        cells = [f"{name:<{cols[0][2]}}"]
        cells += [f"{fmt.format(r[k]):>{w}}" for (_, fmt, w), k in zip(cols[1:], keys)]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    x_tr, y_tr, x_te, y_te = load_digits_split(args.seed)
    fp32 = make_mlp(x_tr.shape[1], args.hidden, int(y_tr.max()) + 1)
    train_stats = train(fp32, x_tr, y_tr, args.epochs, args.seed)

    dev = args.device
    on_gpu = dev.type == "cuda"
    models: Dict[str, nn.Module] = {"fp32": copy.deepcopy(fp32).to(dev)}
    swapped: List[str] = []
    for name, how in QUANTIZED.items():
        # Deep copies: quantize() swaps layers in place, and the fp32 model must stay the baseline.
        # On a GPU the copy moves first and is quantized there, as a user's model.cuda() would be.
        q = fastinfer.quantize(copy.deepcopy(fp32).to(dev), **how)
        swapped = swapped or list(q.fastinfer_report.swapped)
        models[name] = q
    skipped: Dict[str, str] = {}
    for name, how in SPARSE.items():
        why = _gpu_sparse_unsupported(name, dev) if on_gpu else None
        if why:
            skipped[name] = why
            continue
        sparse = copy.deepcopy(fp32)
        fastinfer.prune(sparse, **how)
        # Masked fine-tuning: pruned weights stay zero while the rest adapt (a third of the epochs).
        train(sparse, x_tr, y_tr, max(2, args.epochs // 3), args.seed + 1)
        # A GPU runs 2:4 weights as int8 on the sparse tensor cores (SparseLinear 'sparse24'). On the CPU, the
        # same pruned weights twice: fp32 values, and int8 values with int8 activations (sparsity and W8A8
        # composed: the slot128 layout).
        if on_gpu:
            models[name] = fastinfer.sparsify(sparse.eval().to(dev), value_dtype=torch.int8)
        else:
            as_int8 = fastinfer.sparsify(copy.deepcopy(sparse.eval()), value_dtype=torch.int8)
            models[name] = fastinfer.sparsify(sparse)
            models[f"{name} int8"] = as_int8
    x_te_dev, y_te_dev = x_te.to(dev), y_te.to(dev)

    caps = fastinfer.cpu_capabilities()
    results: dict = {
        "machine": {"isa_active": caps.get("active"), "isa_detected": caps.get("detected"),
                    "vendor": caps.get("vendor"), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "fastinfer": fastinfer.__version__,
                    "python": platform.python_version(), "device": str(dev),
                    "gpu": torch.cuda.get_device_name(dev) if on_gpu else None},
        "config": {"epochs": args.epochs, "hidden": args.hidden, "seed": args.seed, "quick": args.quick,
                   "train_size": len(x_tr), "test_size": len(x_te)},
        "train": train_stats,
        "swapped": swapped,
        "skipped": skipped,
    }
    ref_logits = None
    for name, m in models.items():  # fp32 first: its logits are the reference for the others
        r, logits = evaluate(m, x_te_dev, y_te_dev, ref_logits)
        ref_logits = logits if ref_logits is None else ref_logits
        r["size_bytes"] = model_nbytes(m)
        if name in _KERNEL_FAMILY:
            # Read right after this model's forward: which ISA (CPU) or kernel (GPU) served its GEMMs.
            family = _KERNEL_FAMILY[name]
            r["kernel_isa"] = ops.cuda_last_kernel() if on_gpu else ops.last_kernel(family)
            step = "" if on_gpu or family != "int8_gemm" else ops.last_kernel("int8_gemm_step")
            if step:  # AVX2's GEMM step, chosen by the weights' range
                r["kernel_isa"] += f" ({step})"
        results[name] = r

    # Real test images as inputs, so activation quantization sees realistic ranges.
    budget = _TIMING["quick" if args.quick else "full"]
    for batch in (1, 64):
        warmup, iters = budget[batch]
        lat = time_models(models, x_te_dev[:batch].contiguous(), warmup, iters)
        for name, ms in lat.items():
            results[name][f"b{batch}_p50_ms"] = float(np.percentile(ms, 50))
            results[name][f"b{batch}_p99_ms"] = float(np.percentile(ms, 99))
            results[name][f"b{batch}_iters"] = len(ms)

    base = results["fp32"]
    for name in models:
        r = results[name]
        r["delta_points"] = r["accuracy"] - base["accuracy"]
        r["size_kib"] = r["size_bytes"] / 1024
        r["size_ratio"] = r["size_bytes"] / base["size_bytes"]

    mach = results["machine"]
    print(f"\nfastinfer {mach['fastinfer']} demo: MLP 64 -> {args.hidden} -> {args.hidden} -> 10 on sklearn digits "
          f"({len(x_tr)} train / {len(x_te)} test), {args.epochs} epochs in {train_stats['seconds']:.1f} s, "
          f"train acc {train_stats['train_accuracy']:.1f}%")
    if on_gpu:
        print(f"GPU: {mach['gpu']} ({dev}), torch {mach['torch']}; trained on the CPU ({mach['threads']} threads)")
    else:
        print(f"CPU: ISA {mach['isa_active']} (detected {mach['isa_detected']}), vendor {mach['vendor']}, "
              f"threads {mach['threads']}, torch {mach['torch']}")
    print(f"swapped to Int8Linear ({len(swapped)}): {', '.join(swapped)}")
    print("kernels: " + ", ".join(f"{s} -> {results[s]['kernel_isa']}" for s in _KERNEL_FAMILY if s in models))
    for name, why in skipped.items():
        print(f"{name}: not run on {dev}: {why}")
    print("sparse rows: fastinfer.prune (masks) + fine-tune + fastinfer.sparsify (fp32 values; 'int8': "
          "value_dtype=torch.int8, int8 activations too); targets: 2:4 loses <= 1 point, 90% unstructured <= 2 points")
    print(f"latency: per call, {base['b1_iters']} calls at batch 1, {base['b64_iters']} at batch 64; "
          f"d pts = accuracy minus fp32's, size ratio = size / fp32's\n")
    print(_fmt_table(results, list(models)))
    print("\nfidelity vs fp32 on the test split: " + "; ".join(
        f"{s} logit SQNR {results[s]['logit_sqnr_db']:.1f} dB, same prediction {results[s]['agreement']:.1f}%"
        for s in SCHEMES))

    if not args.no_cnn:
        results["cnn"] = _run_cnn(args, x_tr, y_tr, x_te, y_te)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.json}")
    return results


def _gpu_sparse_unsupported(name: str, dev: torch.device) -> Optional[str]:
    """Why a sparse row cannot run on this GPU, or None: the GPU sparse layout is 2:4 int8 on Hopper."""
    if SPARSE[name]["pattern"] != "2:4":
        return "the GPU sparse kernels are 2:4 only (unstructured sparsity runs on the CPU)"
    if not ops.BUILD.get("sparse24"):
        return "this build has no 2:4 sparse CUDA kernels (they need the CUTLASS headers)"
    major, minor = torch.cuda.get_device_capability(dev)
    if major != 9:
        return f"the 2:4 kernels need a Hopper GPU (compute capability 9.x), this one is {major}.{minor}"
    return None


def _run_cnn(args, x_tr, y_tr, x_te, y_te) -> dict:
    """Part 2: digits CNN -> 50% channels pruned -> distilled from the unpruned teacher -> int8 Linear."""
    iters = (30, 10) if args.quick else (500, 60)
    cnn = demo_cnn.run(x_tr, y_tr, x_te, y_te, train_fn=train, time_fn=time_models, teacher_epochs=args.cnn_epochs,
                       distill_epochs=args.cnn_epochs, seed=args.seed, iters=iters, threads=args.threads,
                       device=args.device)
    rows = cnn["rows"]
    print(f"\npart 2: digits CNN (conv 96-192-384, fc 256), {args.cnn_epochs} epochs; 'int8' rows: fastinfer.fuse "
          f"(BN folded, ReLU fused) + fastinfer.quantize w8a8_static (8 calibration batches), every conv and "
          f"Linear int8; fastinfer.prune removes {demo_cnn.PRUNE_AMOUNT:.0%} of the channels, fastinfer.distill "
          f"trains the pruned student from the teacher ({args.cnn_epochs} epochs)")
    print(f"params and FLOPs: fastinfer.profile; latency on {args.device}: median per call, models interleaved; "
          "x = speedup over the teacher; "
          "FLOPs / = teacher FLOPs over this step's\n")
    print(demo_cnn.format_table(rows))
    t = demo_cnn.latency_targets(rows)
    cnn["targets"] = t
    print(f"\npruned + distilled: {rows['+ distilled']['delta_points']:+.2f} accuracy points vs the teacher, "
          f"FLOPs {rows['+ distilled']['flop_ratio']:.2f}x lower ({t['flop_reduction']:.0%} fewer); latency "
          f"{t['b1_latency_reduction']:.0%} lower at batch 1 and {t['b64_latency_reduction']:.0%} at batch 64 "
          f"(70% of the FLOP cut = {t['needed']:.0%})")
    return cnn


if __name__ == "__main__":
    main()
