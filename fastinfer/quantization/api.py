"""fastinfer.quantize: swap a model's nn.Linear layers for Int8Linear, in place."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple, Union

from torch import nn

from .. import ops
from ..nn.linear import SCHEMES, Int8Linear, check_scheme

Patterns = Optional[Union[str, Sequence[str], Callable[[str, nn.Module], bool]]]


def _matcher(patterns: Patterns, arg: str) -> Optional[Callable[[str, nn.Module], bool]]:
    if patterns is None:
        return None
    if callable(patterns):
        return patterns
    if isinstance(patterns, str):
        patterns = [patterns]
    pats = list(patterns)
    if not all(isinstance(p, str) for p in pats):
        raise TypeError(f"{arg} must be a glob pattern, a list of them, or a callable(name, module) -> bool")
    return lambda name, _m: any(fnmatch.fnmatchcase(name, p) for p in pats)


@dataclass
class QuantConfig:
    """What to quantize and how.

    scheme: 'w8a8_dynamic' (int8 weights and per-token int8 activations) or 'w8_only'.
    include / exclude: glob patterns on module names (as in model.named_modules()), or a
    callable(name, module) -> bool. A layer is swapped if it matches include (default: all)
    and does not match exclude.
    """
    scheme: str = "w8a8_dynamic"
    include: Patterns = None
    exclude: Patterns = None

    def __post_init__(self):
        check_scheme(self.scheme)
        _matcher(self.include, "include")
        _matcher(self.exclude, "exclude")


@dataclass
class QuantizationReport:
    scheme: str
    swapped: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (name, reason)

    def __str__(self) -> str:
        lines = [f"fastinfer.quantize ({self.scheme}): swapped {len(self.swapped)} Linear layer(s), "
                 f"skipped {len(self.skipped)}"]
        lines += [f"  swapped  {n}" for n in self.swapped]
        lines += [f"  skipped  {n}: {r}" for n, r in self.skipped]
        return "\n".join(lines)


def quantize(model: nn.Module, scheme: str = "w8a8_dynamic", include: Patterns = None, exclude: Patterns = None,
             *, config: Optional[QuantConfig] = None, verbose: bool = False) -> nn.Module:
    """Replaces the nn.Linear layers of ``model`` with :class:`fastinfer.nn.Int8Linear`, in place.

    Layers that cannot be quantized (on an unsupported device, excluded, or not included) are
    left unchanged. Returns the model; ``model.fastinfer_report`` lists what was swapped and
    what was skipped and why (printed when ``verbose``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    cfg = config or QuantConfig(scheme=scheme, include=include, exclude=exclude)
    inc, exc = _matcher(cfg.include, "include"), _matcher(cfg.exclude, "exclude")
    report = QuantizationReport(cfg.scheme)

    if isinstance(model, nn.Linear) and not isinstance(model, Int8Linear):
        raise TypeError("model is itself an nn.Linear; use fastinfer.nn.Int8Linear.from_float(layer) instead")
    targets = []
    for name, mod in model.named_modules():
        if type(mod) is not nn.Linear:
            if isinstance(mod, nn.Linear):
                report.skipped.append((name, f"subclass {type(mod).__name__} of nn.Linear (may change forward)"))
            continue
        if inc is not None and not inc(name, mod):
            report.skipped.append((name, "not matched by include"))
        elif exc is not None and exc(name, mod):
            report.skipped.append((name, "matched by exclude"))
        elif mod.weight.device.type not in ops.SUPPORTED_DEVICES:
            report.skipped.append((name, f"on device {mod.weight.device}, unsupported by this build"))
        else:
            targets.append(name)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear.from_float(getattr(parent, child), cfg.scheme))
        report.swapped.append(name)
    model.fastinfer_report = report
    if verbose:
        print(report)
    return model


__all__ = ["QuantConfig", "QuantizationReport", "quantize", "SCHEMES"]
