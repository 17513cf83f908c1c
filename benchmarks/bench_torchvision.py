"""bench_torchvision.py: fastinfer across torchvision's classification models, side by side with torch.ao.

A user's first question is whether their model works and gets faster. For each model this builds torchvision's
definition (random weights: no download), quantizes copies with fastinfer (fuse + ``w8a8_static`` with
calibration, and fuse + ``w8a8_dynamic``) and with torch.ao (FX graph mode static int8, engine 'x86';
``quantize_dynamic`` of the Linear layers), checks each output against the fp32 model's and times them all in
alternation on one batch (eager mode, ``torch.inference_mode``). A library that cannot quantize or run a model
gets the first line of its error in the table instead of a time.

Random weights: each BatchNorm's running statistics are measured on random images first (train-mode forwards),
and zero-initialized Linear layers (ViT's head) get small random weights, so activations keep their scale through
the network and the logits are not a constant; the "err" columns (||y - y_fp32|| / ||y_fp32|| on the timed
batch) then measure quantization error on activations of a realistic range, not on vanishing ones.

torchvision is an optional dependency (not in requirements-dev.txt). Where its compiled detection ops were built
for another torch (``operator torchvision::nms does not exist`` at import), the classification models, which
are pure Python, are imported without those ops' fake-tensor registrations; the script says so.

    python benchmarks/bench_torchvision.py --threads 2 --batch 1 --json results.json
    python benchmarks/bench_torchvision.py --models swin_t,resnet50 --batch 8
    python benchmarks/bench_torchvision.py --models segmentation     # FCN, DeepLabV3, LR-ASPP at 256 x 256
    python benchmarks/bench_torchvision.py --models detection        # detection backbones (ResNet-50 FPN) at 512
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import sys
import types
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

import fastinfer

from common import machine_info, paired_ratio, time_calls_interleaved, torch_ao_static, write_json

MODELS = ("resnet18", "resnet50", "resnext50_32x4d", "regnet_y_400mf", "densenet121", "googlenet", "inception_v3",
          "mobilenet_v2", "mobilenet_v3_large", "mnasnet1_0", "shufflenet_v2_x1_0", "squeezenet1_1",
          "efficientnet_b0", "convnext_tiny", "swin_t", "swin_v2_t", "vit_b_16", "maxvit_t")
# Segmentation models (--models segmentation): torchvision.models.segmentation's, 21 classes, 256 x 256 images; the
# benchmark runs them through SegmentationOutput (their per-pixel logits, the dict's "out").
SEGMENTATION = ("fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
# Detection backbones (--models detection): what torchvision's Faster R-CNN, RetinaNet, Mask R-CNN and FCOS run
# before their heads (which need torchvision's compiled ops), its FPN levels flattened and joined as one output;
# with FrozenBatchNorm2d, as torchvision builds them, holding statistics measured as for the others.
DETECTION = ("resnet50_fpn_backbone",)
IMAGE_SIZE = {"inception_v3": 299, **{name: 256 for name in SEGMENTATION}, **{name: 512 for name in DETECTION}}
BUILD_ARGS = {"googlenet": {"aux_logits": False, "init_weights": True},
              "inception_v3": {"aux_logits": False, "init_weights": True},
              **{name: {"weights_backbone": None, "num_classes": 21} for name in SEGMENTATION}}
FP32, FI_STATIC, FI_DYNAMIC, AO_STATIC, AO_DYNAMIC = ("fp32", "fastinfer static", "fastinfer dynamic",
                                                      "torch.ao static", "torch.ao dynamic")


def import_models() -> Tuple[types.ModuleType, bool]:
    """torchvision.models, and whether torchvision's compiled ops loaded (see the module docstring)."""
    try:
        import torchvision.models as tvm
        return tvm, True
    except ImportError:
        sys.exit("bench_torchvision needs torchvision (pip install torchvision)")
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    import torchvision.models as tvm
    return tvm, False


class SegmentationOutput(nn.Module):
    """A torchvision segmentation model returning its per-pixel logits (the dict's "out") as one tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


class DetectionBackboneOutput(nn.Module):
    """A torchvision detection backbone (its FPN's levels, a dict) returning them flattened and joined."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.cat([t.flatten(1) for t in self.model(x).values()], 1)


def detection_backbone(name: str) -> nn.Module:
    """The named detection backbone, built with BatchNorm2d (its statistics are measured by build, then
    freeze_norms puts them in FrozenBatchNorm2d, as a checkpoint would)."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    return DetectionBackboneOutput(resnet_fpn_backbone(backbone_name=name.split("_")[0], weights=None,
                                                       trainable_layers=5, norm_layer=nn.BatchNorm2d))


def freeze_norms(model: nn.Module) -> nn.Module:
    """Every BatchNorm2d of model replaced by torchvision's FrozenBatchNorm2d holding its statistics."""
    from torchvision.ops.misc import FrozenBatchNorm2d
    for name, m in list(model.named_modules()):
        if type(m) is nn.BatchNorm2d:
            frozen = FrozenBatchNorm2d(m.num_features, m.eps)
            for b in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, b).copy_(getattr(m, b).detach())
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, frozen)
    return model


def build(tvm, name: str, seed: int = 0) -> nn.Module:
    """torchvision's model with random weights whose BatchNorm statistics are measured (module docstring)."""
    torch.manual_seed(seed)
    if name in DETECTION:
        model = detection_backbone(name)
    else:
        model = tvm.get_model(name, weights=None, **BUILD_ARGS.get(name, {}))
    if name in SEGMENTATION:
        model = SegmentationOutput(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) and not bool(m.weight.any()):
                nn.init.normal_(m.weight, std=0.02)
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if norms:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # the cumulative average of the batches below
            model.train()
            size = IMAGE_SIZE.get(name, 224)
            g = torch.Generator().manual_seed(seed + 100)
            for _ in range(4):
                model(torch.randn(4, 3, size, size, generator=g))
            for m in norms:
                m.momentum = 0.1
    if name in DETECTION:
        freeze_norms(model)
    return model.eval()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:90] if text else ''}"


def quietly(fn: Callable):
    """fn() with torch.ao's deprecation notices and tracer chatter kept off the table."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return fn()


def impls_for(fp32: nn.Module, calib, which) -> Dict[str, Tuple[Optional[Callable], str]]:
    """name -> (the model to call, or None, and a note: what fastinfer's report says, or why it failed)."""
    out: Dict[str, Tuple[Optional[Callable], str]] = {FP32: (fp32, "")}

    def fi(scheme):
        model = fastinfer.fuse(copy.deepcopy(fp32))
        fastinfer.quantize(model, scheme=scheme, calib_data=calib if scheme == "w8a8_static" else None)
        rep = model.fastinfer_report
        return model, f"{len(rep.swapped)} int8, {len(rep.skipped)} float"

    def ao_static():
        return torch_ao_static(fp32, calib), ""

    def ao_dynamic():
        torch.backends.quantized.engine = "x86"
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {nn.Linear}, dtype=torch.qint8), ""

    makers = {FI_STATIC: lambda: fi("w8a8_static"), FI_DYNAMIC: lambda: fi("w8a8_dynamic"),
              AO_STATIC: ao_static, AO_DYNAMIC: ao_dynamic}
    for name in which:
        try:
            out[name] = quietly(makers[name])
        except Exception as exc:  # noqa: BLE001 (a library that cannot quantize a model is a result)
            out[name] = (None, first_line(exc))
    return out


def bench_model(tvm, name: str, args) -> dict:
    size = IMAGE_SIZE.get(name, 224)
    fp32 = build(tvm, name)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(2, 3, size, size, generator=g) for _ in range(args.calib_batches)]
    x = torch.randn(args.batch, 3, size, size, generator=g)
    impls = impls_for(fp32, calib, args.impls)
    row = {"model": name, "image_size": size, "batch": args.batch, "impls": {}}
    with torch.inference_mode():
        want = fp32(x)
        runnable = {}
        for impl, (model, note) in impls.items():
            entry = {"note": note}
            if model is not None:
                try:
                    y = quietly(lambda: model(x))
                    entry["rel_err"] = float((y.float() - want).norm() / want.norm())
                    runnable[impl] = lambda model=model: model(x)
                except Exception as exc:  # noqa: BLE001
                    entry["note"] = first_line(exc)
            row["impls"][impl] = entry
        timed = quietly(lambda: time_calls_interleaved(runnable, min_time_s=args.min_time, rounds=args.rounds))
    for impl, t in timed.items():
        row["impls"][impl].update(t)
        row["impls"][impl]["speedup_vs_fp32"] = paired_ratio(timed[FP32], t)
    for ours, theirs in ((FI_STATIC, AO_STATIC), (FI_DYNAMIC, AO_DYNAMIC)):
        if ours in timed and theirs in timed:
            row[f"{ours} vs {theirs}"] = paired_ratio(timed[theirs], timed[ours])
    return row


def cell(entry: dict) -> str:
    if "median_ms" not in entry:
        return f"fails ({entry['note']})" if entry.get("note") else "-"
    return f"{entry['median_ms']:8.2f} ({entry['speedup_vs_fp32']:4.2f}x, err {entry['rel_err']:.3f})"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision model names, or "
                    f"'segmentation' for {', '.join(SEGMENTATION)} (256 x 256), or 'detection' for "
                    f"{', '.join(DETECTION)} (512 x 512)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-batches", type=int, default=4, help="calibration batches of 2 random images")
    ap.add_argument("--impls", default=",".join((FI_STATIC, FI_DYNAMIC, AO_STATIC, AO_DYNAMIC)),
                    help="which quantized models to time beside fp32")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds of timing per model, all impls together")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    args.impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    unknown = sorted(set(args.impls) - {FI_STATIC, FI_DYNAMIC, AO_STATIC, AO_DYNAMIC})
    if unknown:
        ap.error(f"--impls: unknown {unknown}")
    torch.set_num_threads(args.threads)
    tvm, with_ops = import_models()
    import torchvision
    info = machine_info(args.threads)
    ops_note = "" if with_ops else " (its compiled ops not loaded: built for another torch)"
    print(f"# torchvision {torchvision.__version__}{ops_note} | {info['cpu']} | fastinfer ISA {info['isa_active']} | "
          f"threads {args.threads} | batch {args.batch} | torch {info['torch']} | {info['date']}")
    print("# ms (speedup vs fp32, err = ||y - y_fp32|| / ||y_fp32||), eager, medians of paired rounds")
    rows = []
    groups = {"segmentation": SEGMENTATION, "detection": DETECTION}
    names = list(groups[args.models]) if args.models in groups else [m.strip() for m in args.models.split(",")
                                                                      if m.strip()]
    for name in names:
        row = bench_model(tvm, name, args)
        rows.append(row)
        fp = row["impls"][FP32]
        print(f"{name:20s} fp32 {fp['median_ms']:8.2f}" + "".join(
            f" | {impl}: {cell(row['impls'][impl])}" for impl in args.impls), flush=True)
    print()
    print(f"{'model':20s} {'fp32 ms':>9s} {'fi static':>10s} {'vs ao static':>13s} {'fi dynamic':>11s} "
          f"{'vs ao dynamic':>14s}")
    for row in rows:
        imp = row["impls"]

        def speed(impl):
            e = imp.get(impl, {})
            return f"{e['speedup_vs_fp32']:.2f}x" if "speedup_vs_fp32" in e else "fails" if e.get("note") else "-"

        def versus(key, theirs):
            if key in row:
                return f"{row[key]:.2f}x"
            return "ao fails" if imp.get(theirs, {}).get("note") and "median_ms" not in imp.get(theirs, {}) else "-"
        print(f"{row['model']:20s} {imp[FP32]['median_ms']:9.2f} {speed(FI_STATIC):>10s} "
              f"{versus(f'{FI_STATIC} vs {AO_STATIC}', AO_STATIC):>13s} {speed(FI_DYNAMIC):>11s} "
              f"{versus(f'{FI_DYNAMIC} vs {AO_DYNAMIC}', AO_DYNAMIC):>14s}")
    result = {"machine": info, "torchvision": torchvision.__version__, "torchvision_ops": with_ops,
              "settings": {k: v for k, v in vars(args).items() if k != "json"}, "rows": rows}
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
