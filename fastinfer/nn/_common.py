"""Checks shared by the quantized layers' constructors."""
from __future__ import annotations

from typing import Optional, Sequence

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


def half_on_cpu(x: Tensor, cpu_dtypes: Sequence[torch.dtype]) -> bool:
    """Whether x is a 16-bit float CPU tensor the CPU kernel does not take (float16; bfloat16 for a
    convolution): the layer then runs on one float32 copy and returns its float output in x's dtype, so a
    model cast to that dtype keeps working after quantize (it used to fail at its first forward). The
    dtype test comes first: float32 inputs pay one comparison."""
    return x.dtype in (torch.float16, torch.bfloat16) and x.dtype not in cpu_dtypes and x.device.type == "cpu"


def via_float32(x: Tensor, run) -> Tensor:
    """run(x in float32), its float output returned in x's dtype (an int8 output as it is)."""
    y = run(x.float())
    return y.to(x.dtype) if y.is_floating_point() else y
