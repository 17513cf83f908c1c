"""fastinfer.quantize: swap a model's nn.Linear / nn.Conv2d layers for Int8Linear / Int8Conv2d, in place."""
from __future__ import annotations

import fnmatch
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .. import ops
from .._args import check_fraction, is_integer
from .._swap import (fused_path_flags, is_hf_conv1d, linear_from_conv1d, replace_module, restore_fused_paths,
                     swap_problem)
from ..nn._common import half_dtype_of
from ..nn.attention import PROJECTIONS, SplitMultiheadAttention
from ..nn.conv import Int8Conv1d, Int8Conv2d
from ..nn.fused import ConvAct2d, LinearAct
from ..nn.linear import SCHEMES, Int8Linear, check_bits_for_scheme, check_scheme
from .calibrate import calibrate
from .chain import adopt_half_dtype, chain_int8_convs, convs_into_concatenations, rewrite_residual_adds
from .observers import DEFAULT_OBSERVER, OBSERVERS
from .smooth import smooth_factors

LINEAR_TYPES = (nn.Linear, LinearAct)     # exact types: a subclass may change forward
CONV_TYPES = (nn.Conv2d, ConvAct2d, nn.Conv1d)


def layer_kind(mod: nn.Module) -> Optional[str]:
    """'linear' or 'conv' for a layer quantize swaps, else None: a Linear / LinearAct, transformers' Conv1D (a
    Linear), a Conv2d / ConvAct2d / Conv1d, and a Conv2d or Conv1d subclass that computes as its base
    (forward and _conv_forward its base's: EfficientNet's depthwise conv class, a weight-norm parametrized
    conv). A Linear subclass is left alone: nn.MultiheadAttention reads its out_proj's weight, never
    calling it, so a swap would only slow it down; except torch's class for a Linear whose weight is
    parametrized (weight_norm, spectral_norm: the swap reads the weight they compute), unless the
    parametrization is fastinfer's pruning mask (kept for fine-tuning: fastinfer.remove_masks first)."""
    t = type(mod)
    if t in LINEAR_TYPES or is_hf_conv1d(mod):
        return "linear"
    if parametrize.is_parametrized(mod, "weight") and t.__bases__[0] in LINEAR_TYPES and not _pruning_masked(mod):
        return "linear"
    if t in CONV_TYPES:
        return "conv"
    for base in (nn.Conv2d, nn.Conv1d):
        if isinstance(mod, base) and t.forward is base.forward and t._conv_forward is base._conv_forward:
            return "conv"
    return None


def _pruning_masked(mod: nn.Module) -> bool:
    """Whether mod's weight holds one of fastinfer.prune's masks (among its parametrizations)."""
    from ..pruning.masks import Mask  # (masks imports this module)

    return parametrize.is_parametrized(mod, "weight") and any(isinstance(p, Mask) for p in mod.parametrizations.weight)


Patterns = Optional[Union[str, Sequence[str], Callable[[str, nn.Module], bool]]]


def _matcher(patterns: Patterns, arg: str) -> Optional[Callable[[str, nn.Module], bool]]:
    if patterns is None:
        return None
    if callable(patterns):
        return patterns
    if isinstance(patterns, str):
        patterns = [patterns]
    pats = list(patterns) if isinstance(patterns, (list, tuple, set, frozenset)) else None
    if pats is None or not all(isinstance(p, str) for p in pats):
        raise TypeError(f"{arg} must be a glob pattern, a list of them, or a callable(name, module) -> bool, "
                        f"got {patterns!r}")
    return lambda name, _m: any(fnmatch.fnmatchcase(name, p) for p in pats)


@dataclass
class QuantConfig:
    """What to quantize and how.

    scheme: 'w8a8_dynamic' (int8 weights; activations quantized at run time: per token for Linear,
      per tensor for Conv2d), 'w8a8_static' (activation scales calibrated once from calib_data) or
      'w8_only' (int8 weights, float activations; Linear only).
    include / exclude: glob patterns on module names (as in model.named_modules()), or a
    callable(name, module) -> bool. A layer is swapped if it matches include (default: all)
    and does not match exclude.
    observer: how w8a8_static picks activation scales: 'minmax', 'percentile' or 'mse' (None, the default:
      'mse', the threshold with the least int8 rounding-and-clipping error, as torch.ao's histogram observer).
    weight_bits: 8, or 7 for weights rounded to [-63, 63] (w8a8 schemes): on CPUs with AVX2 but no VNNI
      (AMD Zen 2/3, Intel before Ice Lake) the int8 GEMM of Linear layers and convolutions then runs about
      1.4x faster, at some accuracy; elsewhere (and in depthwise convolutions) it computes the same values
      at the same speed as 8-bit weights would.
    """
    scheme: str = "w8a8_dynamic"
    include: Patterns = None
    exclude: Patterns = None
    observer: Optional[str] = None
    weight_bits: int = 8

    def __post_init__(self):
        check_scheme(self.scheme)
        check_bits_for_scheme(self.weight_bits, self.scheme)
        if self.observer is not None and self.observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {tuple(OBSERVERS)}, got {self.observer!r}")
        _matcher(self.include, "include")
        _matcher(self.exclude, "exclude")


@dataclass
class QuantizationReport:
    scheme: str
    swapped: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (name, reason)
    chained: List[str] = field(default_factory=list)  # static int8 convs passing int8 to the next one
    rewritten: List[str] = field(default_factory=list)  # submodules whose residual adds / gates were rewritten
    kept_adds: List[Tuple[str, str]] = field(default_factory=list)  # (submodule, why its adds stay fp32)
    notes: List[Tuple[str, str]] = field(default_factory=list)  # (swapped layer, what else the swap changed)

    def __str__(self) -> str:
        lines = [f"fastinfer.quantize ({self.scheme}): swapped {len(self.swapped)} layer(s), "
                 f"skipped {len(self.skipped)}"]
        lines += [f"  swapped  {n}" for n in self.swapped]
        lines += [f"  skipped  {n}: {r}" for n, r in self.skipped]
        lines += [f"  rewrote  {n}: residual add -> Int8Add, or gate -> Int8GlobalAvgPool + Int8ChannelScale "
                  "(now a torch.fx.GraphModule)" for n in self.rewritten]
        lines += [f"  kept     {n}: residual add not rewritten: {r}" for n, r in self.kept_adds]
        lines += [f"  int8 out {c}" for c in self.chained]
        lines += [f"  note     {n}: {r}" for n, r in self.notes]
        return "\n".join(lines)


def quantize(model: nn.Module, scheme: str = "w8a8_dynamic", include: Patterns = None, exclude: Patterns = None,
             *, config: Optional[QuantConfig] = None, calib_data=None, observer: Optional[str] = None,
             smooth_alpha: Optional[float] = None, int8_residuals: bool = True, weight_bits: int = 8,
             calib_batches: Optional[int] = None, verbose: bool = False) -> nn.Module:
    """Replaces the nn.Linear / nn.Conv2d layers of ``model`` (and fastinfer.nn.LinearAct / ConvAct2d
    from fastinfer.fuse) with :class:`fastinfer.nn.Int8Linear` / :class:`fastinfer.nn.Int8Conv2d`, in place.

    scheme 'w8a8_static' needs ``calib_data`` (an iterable of input batches, or of (x, y) tuples):
    the model runs over it once (fastinfer.calibrate with ``observer``) to fix every layer's
    activation scale. Run fastinfer.fuse(model) first to fold BatchNorm and fuse ReLU/ReLU6/GELU/Hardswish/SiLU.
    calib_batches: read at most this many batches of calib_data (a whole DataLoader is otherwise read, and
    held in memory: smoothing and calibration both go over it).

    smooth_alpha (with calib_data, w8a8_* schemes): SmoothQuant for the Linear layers: per input
    channel s = max|x|^alpha / max|w|^(1 - alpha) from the calibration batches; s is folded into the
    weights and 1 / s applied inside the activation quantization (0.5 is the usual choice). For
    models whose activations have outlier channels (transformers).

    weight_bits: 8, or 7 (w8a8 schemes; see QuantConfig): weights in [-63, 63], which AVX2-only CPUs multiply
    about 1.4x faster (Linear layers, convolutions but depthwise ones).

    int8_residuals (w8a8_static): a residual add of a static conv's output (a ResNet block's
    ``relu(conv3(...) + identity)``) becomes an Int8Add in the forward of the submodule that holds it
    (which becomes a torch.fx.GraphModule under its name, children and state_dict keys unchanged), so that
    the block's output can be int8 for the int8 convs it feeds; likewise a squeeze-excitation gate
    ``x * g(avgpool(x))`` (MobileNetV3, EfficientNet) becomes an Int8GlobalAvgPool and an Int8ChannelScale,
    so that x reaches them int8 and the gated output leaves int8; functional poolings, a DenseNet block's
    concatenations and the convs whose outputs a concatenation joins are rewritten too (README, "A dense block's
    concatenations", "Convs that write into the concatenation"). False keeps every forward as written.

    Layers that cannot be quantized (on an unsupported device, excluded, not included, a conv
    padding mode other than zeros, a conv under w8_only) are left unchanged. Returns the model;
    ``model.fastinfer_report`` lists what was swapped and what was skipped and why (printed when
    ``verbose``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if config is not None:
        if not isinstance(config, QuantConfig):
            raise TypeError(f"config must be a fastinfer.QuantConfig (QuantConfig(scheme=..., ...)), got "
                            f"{type(config).__name__}")
        # config holds these five: an argument given beside it would be ignored without a word
        given = [name for name, value, default in (("scheme", scheme, "w8a8_dynamic"), ("include", include, None),
                                                   ("exclude", exclude, None), ("observer", observer, None),
                                                   ("weight_bits", weight_bits, 8))
                 if value is not default and value != default]
        if given:
            raise ValueError(f"pass {', '.join(given)} in config (QuantConfig), not beside it: config sets them")
    cfg = config or QuantConfig(scheme=scheme, include=include, exclude=exclude, observer=observer,
                                weight_bits=weight_bits)
    inc, exc = _matcher(cfg.include, "include"), _matcher(cfg.exclude, "exclude")
    report = QuantizationReport(cfg.scheme)

    if layer_kind(model) is not None:
        raise TypeError("model is itself a layer; use fastinfer.nn.Int8Linear.from_float(layer) or "
                        "fastinfer.nn.Int8Conv2d.from_float(layer) instead")
    if isinstance(model, nn.MultiheadAttention):
        raise TypeError("model is itself an nn.MultiheadAttention: quantize "
                        "fastinfer.nn.SplitMultiheadAttention.from_float(model) instead (the same layer, its "
                        "projections as child Linears)")
    if isinstance(calib_data, Tensor):
        raise TypeError("calib_data must be an iterable of batches, not one tensor (iterating a tensor yields its "
                        "rows); pass [x] for a single batch")
    if cfg.observer is not None and cfg.scheme != "w8a8_static":
        raise ValueError(f"observer={cfg.observer!r} chooses the activation scales that scheme 'w8a8_static' "
                         f"calibrates; scheme {cfg.scheme!r} has none (it would be ignored)")
    if smooth_alpha is not None:
        smooth_alpha = check_fraction("smooth_alpha", smooth_alpha)
        if cfg.scheme == "w8_only":
            raise ValueError("smooth_alpha (SmoothQuant) needs an int8-activation scheme (w8a8_dynamic or w8a8_static)")
        if calib_data is None:
            raise ValueError("smooth_alpha needs calib_data: a few batches of representative inputs")
    elif calib_data is not None and cfg.scheme != "w8a8_static":
        raise ValueError(f"calib_data is used by scheme 'w8a8_static' or with smooth_alpha, not by {cfg.scheme!r} alone")
    if cfg.scheme == "w8a8_static" and calib_data is None:
        raise ValueError("scheme 'w8a8_static' needs calib_data: a few batches of representative inputs")
    if calib_batches is not None:
        if not is_integer(calib_batches) or calib_batches < 1:
            raise ValueError(f"calib_batches must be None or an int >= 1, got {calib_batches!r}")
        if calib_data is None:
            raise ValueError("calib_batches limits calib_data, which is not given")
        calib_data = list(itertools.islice(calib_data, calib_batches))
    if calib_data is not None and not isinstance(calib_data, (list, tuple)):
        calib_data = list(calib_data)  # read twice (smoothing, then calibration): materialize once
    # Everything from here to the swaps is undone where it does not end in an int8 layer (finally: _put_back):
    # attention split for nothing, transformers' Conv1D layers made Linear, torch's fused transformer paths
    # turned off; also when quantize raises (a bad calibration batch, an include callable that raises).
    fused_flags = fused_path_flags(model)
    split_originals, conv1d_originals, targets = {}, {}, []
    try:
        kept_attention = _split_attention(model, cfg.scheme, inc, exc, report, split_originals)
        for name, mod in model.named_modules():
            kind = layer_kind(mod)
            if kind is None:
                if isinstance(mod, (Int8Linear, Int8Conv2d)):
                    report.skipped.append((name, "already quantized"))
                elif isinstance(mod, (nn.Linear, nn.Conv2d, nn.Conv1d)) and name not in kept_attention:
                    if _pruning_masked(mod):
                        report.skipped.append((name, "its weight holds fastinfer's pruning mask (call "
                                                     "fastinfer.remove_masks(model) first, or fastinfer.sparsify)"))
                    else:
                        report.skipped.append((name, f"subclass {type(mod).__name__} of "
                                                     f"{type(mod).__mro__[1].__name__} (may change forward)"))
                continue
            if problem := _target_problem(name, mod, kind, cfg.scheme, inc, exc):
                report.skipped.append((name, problem))
            else:
                targets.append((name, kind))
                if is_hf_conv1d(mod):
                    conv1d_originals[name] = mod
        if not targets:  # nothing to swap (e.g. quantized already): no smoothing or calibration pass either
            model.fastinfer_report = report
            if verbose:
                print(report)
            return model
        # transformers' Conv1D layers become the Linear they are, so that smoothing, calibration and the swap see
        # one; one not swapped in the end (skipped, or quantize raised) is put back as it was.
        for name, conv1d in conv1d_originals.items():
            replace_module(model, name, linear_from_conv1d(conv1d))
        smooth = {}
        if smooth_alpha is not None:
            linears = [n for n, k in targets if k == "linear"]
            smooth = smooth_factors(model, calib_data, linears, smooth_alpha, progress=verbose)
        scales = calib = None
        if cfg.scheme == "w8a8_static":
            # Calibrate what the int8 layers will see: the smoothed input x / s of each smoothed Linear.
            calib = _calibrate(model, calib_data, cfg.observer or DEFAULT_OBSERVER, smooth, verbose,
                               [n for n, _ in targets])
            scales = calib.input_scale
        # A model cast to fp16/bf16 before quantizing: its int8 hand-offs return that dtype (adopt_half_dtype).
        half_dtype = next((d for d in (half_dtype_of(model.get_submodule(n)) for n, _ in targets) if d is not None),
                          None)
        holders = _parameter_holders(model)
        for name, kind in targets:
            if scales is not None and name not in scales:
                report.skipped.append((name, "no activation scale from calibration (layer not called)"))
                continue
            layer = model.get_submodule(name)
            x_scale = scales[name] if scales is not None else None
            try:
                if kind == "linear":
                    new = Int8Linear.from_float(layer, cfg.scheme, x_scale=x_scale, smooth=smooth.get(name),
                                                weight_bits=cfg.weight_bits)
                else:
                    conv_type = Int8Conv1d if isinstance(layer, nn.Conv1d) else Int8Conv2d
                    new = conv_type.from_float(layer, x_scale=x_scale, weight_bits=cfg.weight_bits)
            except ValueError as e:  # e.g. padding_mode='reflect'
                report.skipped.append((name, str(e)))
                continue
            report.swapped.extend(replace_module(model, name, new))
            if tied := _tied_elsewhere(layer, holders):  # e.g. a language model's head and its embedding
                report.notes.append((name, f"its weight was tied to {', '.join(tied)}: the int8 layer holds its own "
                                           f"quantized copy, and those keep the float weight (the tie is gone)"))
    finally:
        _put_back(model, split_originals, conv1d_originals, fused_flags)
    if cfg.scheme == "w8a8_static":
        if int8_residuals:
            report.rewritten = rewrite_residual_adds(model, report.kept_adds)
        report.chained = chain_int8_convs(model, calib.output_scale)
        if int8_residuals:  # False keeps every forward as written
            report.rewritten += [n for n in convs_into_concatenations(model) if n not in report.rewritten]
    adopt_half_dtype(model, half_dtype)
    model.fastinfer_report = report
    if verbose:
        print(report)
    return model


def _parameter_holders(model: nn.Module) -> dict:
    """{id(parameter): {id(module): "module.param"}}: every module holding each Parameter (a module reachable
    under two names is one holder)."""
    holders: dict = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        for pname, p in m._parameters.items():
            if p is not None:
                holders.setdefault(id(p), {}).setdefault(id(m), f"{mname}.{pname}" if mname else pname)
    return holders


def _tied_elsewhere(layer: nn.Module, holders: dict) -> List[str]:
    """The other holders of layer's stored weight (its parametrization's original, if any)."""
    owner = layer.parametrizations.weight if parametrize.is_parametrized(layer, "weight") else layer
    w = owner._parameters.get("original" if owner is not layer else "weight")
    return [] if w is None else [h for mid, h in holders.get(id(w), {}).items() if mid != id(owner)]


def _target_problem(name: str, mod: nn.Module, kind: str, scheme: str, inc, exc) -> Optional[str]:
    """Why quantize leaves layer `mod` (of kind 'linear' or 'conv') at `name` as it is, or None."""
    if problem := swap_problem(mod):
        return problem
    if inc is not None and not inc(name, mod):
        return "not matched by include"
    if exc is not None and exc(name, mod):
        return "matched by exclude"
    if mod.weight.device.type not in ops.LINEAR_DEVICES:
        return f"on device {mod.weight.device}, unsupported by this build for a {kind}"
    if kind == "conv" and scheme == "w8_only":
        return "w8_only has no conv kernel (use w8a8_dynamic or w8a8_static)"
    if kind == "conv":
        k, what = mod.in_channels // mod.groups * math.prod(mod.kernel_size), "kernel taps x input channels a group"
    else:
        k, what = mod.weight.shape[0 if is_hf_conv1d(mod) else 1], "in_features"
    if k > ops.MAX_K:
        return f"its K ({what}) is {k}, past the int8 kernels' limit of {ops.MAX_K} (exact int32 sums): left float"
    return None


def _split_attention(model: nn.Module, scheme: str, inc, exc, report: QuantizationReport, split_originals):
    """nn.MultiheadAttention applies its projections inside one functional forward: one whose projections
    would be quantized becomes a SplitMultiheadAttention (the same function, the projections as child
    Linears), which quantize's scan then finds; the others are reported here, once, with the reason. Adds
    {name: original} of the split layers to split_originals; returns the names of the out_proj layers of
    attention left as it is, which the scan does not report again."""
    kept = set()
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.MultiheadAttention):
            continue
        problem = None
        if type(mod) is not nn.MultiheadAttention:
            problem = f"subclass {type(mod).__name__} of nn.MultiheadAttention (may change forward): left float"
        elif problem := swap_problem(mod):
            problem = f"nn.MultiheadAttention {problem}"
        else:
            split = SplitMultiheadAttention.from_float(mod)
            reasons = [_target_problem(f"{name}.{c}", getattr(split, c), "linear", scheme, inc, exc)
                       for c in PROJECTIONS]
            if any(r is None for r in reasons):
                replace_module(model, name, split)
                split_originals[name] = mod
                continue
            problem = f"nn.MultiheadAttention left as it is: its projections {reasons[0]}"
        report.skipped.append((name, problem))
        kept.add(f"{name}.out_proj")
    return kept


def _put_back(model: nn.Module, split_originals, conv1d_originals, fused_flags) -> None:
    """Restores the nn.MultiheadAttention layers none of whose projections became int8, the transformers
    Conv1D layers that were not swapped (skipped, or quantize raised), and torch's fused transformer paths
    where no layer is swapped after all."""
    for name, original in conv1d_originals.items():
        if not isinstance(model.get_submodule(name), Int8Linear):
            replace_module(model, name, original)
    for name, original in split_originals.items():
        split = model.get_submodule(name)
        if not any(isinstance(getattr(split, c), Int8Linear) for c in PROJECTIONS):
            replace_module(model, name, original)
    restore_fused_paths(fused_flags)


def _calibrate(model: nn.Module, calib_data, observer: str, smooth, verbose: bool, layers):
    """Per-layer input and output scales; for smoothed layers, of the smoothed input x / s. While
    calibrating, a smoothed layer computes as its int8 version will: input x / s (a pre-hook), weight
    columns times s, so its output, and every layer after it, sees the float model's values. (Dividing the
    input alone once fed the later layers wrong activations: 0.22 relative error on a 3-layer MLP.)"""
    hooks, saved = [], {}
    modules = dict(model.named_modules())

    def smoothed_input(inv):
        def pre_hook(_m, args, kwargs):  # the input, positional or as torch's keyword `input`
            if args:
                return (args[0] * inv.to(args[0].dtype),) + tuple(args[1:]), kwargs
            return args, {**kwargs, "input": kwargs["input"] * inv.to(kwargs["input"].dtype)}
        return pre_hook

    try:
        for name, s in smooth.items():
            layer = modules[name]
            # A new Parameter for the while, not the old one scaled in place: a weight tied to another module
            # (an lm_head sharing the embedding's) would scale that module's too.
            saved[name] = layer.weight
            layer.weight = nn.Parameter(layer.weight.detach() * s.to(layer.weight.device, layer.weight.dtype),
                                        requires_grad=False)
            hooks.append(layer.register_forward_pre_hook(smoothed_input(1.0 / s), with_kwargs=True))
        return calibrate(model, calib_data, observer=observer, progress=verbose, layers=layers)
    finally:
        for h in hooks:
            h.remove()
        for name, w in saved.items():
            modules[name].weight = w


__all__ = ["QuantConfig", "QuantizationReport", "quantize", "SCHEMES"]
