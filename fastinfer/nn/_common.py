"""Checks shared by the quantized layers' constructors."""
from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from .. import ops


def check_float_layer(layer: nn.Module, expected: type, arg: str, devices: Optional[Sequence[str]] = None) -> None:
    """`layer` must be a float `expected` on a device this build has kernels for (default: every op's)."""
    devices = devices or ops.SUPPORTED_DEVICES
    if not isinstance(layer, expected):
        raise TypeError(f"{arg} must be a torch.nn.{expected.__name__}, got {type(layer).__name__}")
    if layer.weight.device.type not in devices:
        raise ValueError(f"{arg} is on device '{layer.weight.device}'; this build of fastinfer supports "
                         f"{', '.join(devices)} only for it (move the model with .cpu() first)")


def check_scale(name: str, value: Optional[float]) -> None:
    if value is not None and not (0 < value < float("inf")):
        raise ValueError(f"{name} must be a positive finite float or None, got {value!r}")
