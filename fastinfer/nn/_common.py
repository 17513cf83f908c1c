"""Checks shared by the quantized layers' constructors."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from .. import ops


def check_float_layer(layer: nn.Module, expected: type, arg: str, devices: Optional[Sequence[str]] = None) -> None:
    """`layer` must be a float `expected` on a device this build has kernels for (default: every op's)."""
    devices = devices or ops.SUPPORTED_DEVICES
    if not isinstance(layer, expected):
        raise TypeError(f"{arg} must be a torch.nn.{expected.__name__}, got {type(layer).__name__}")
    if layer.weight.device.type not in devices:
        raise ValueError(f"{arg} is on device '{layer.weight.device}'; this build of fastinfer supports "
                         f"{', '.join(devices)} only for it (move the model with .cpu() first)")


# The kernels take a static scale and its reciprocal as float32: both must be normal float32 numbers.
MIN_SCALE = 1.1754943508222875e-38  # torch.finfo(torch.float32).tiny
MAX_SCALE = 1.0 / MIN_SCALE


def check_scale(name: str, value: Optional[float]) -> None:
    if value is not None and not (MIN_SCALE <= value <= MAX_SCALE):
        raise ValueError(f"{name} must be a positive finite float within float32's normal range "
                         f"[1.2e-38, 8.5e37] or None, got {value!r}")


def in_cpu_float(x: Tensor, cpu_dtypes: Sequence[torch.dtype], run: Callable[[Tensor], Tensor]) -> Tensor:
    """run(x) where the CPU kernel takes x's dtype (or x is not a CPU float tensor); otherwise (float16 on the
    CPU, bfloat16 for a convolution) run(x in float32), its float output returned in x's dtype. A model cast
    to such a dtype then keeps working after quantize (it used to fail at its first forward)."""
    if x.device.type != "cpu" or not x.is_floating_point() or x.dtype in cpu_dtypes:
        return run(x)
    y = run(x.float())
    return y.to(x.dtype) if y.is_floating_point() else y
