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


HALF_DTYPES = (torch.float16, torch.bfloat16)


def half_on_cpu(x: Tensor, cpu_dtypes: Sequence[torch.dtype]) -> bool:
    """Whether x is a 16-bit float CPU tensor the CPU kernel does not take (float16; bfloat16 for a
    convolution): the layer then runs on one float32 copy and returns its float output in x's dtype, so a
    model cast to that dtype keeps working after quantize (it used to fail at its first forward). The
    dtype test comes first: float32 inputs pay one comparison."""
    return x.dtype in HALF_DTYPES and x.dtype not in cpu_dtypes and x.device.type == "cpu"


def via_float32(x: Tensor, run) -> Tensor:
    """run(x in float32), its float output returned in x's dtype (an int8 output as it is)."""
    y = run(x.float())
    return y.to(x.dtype) if y.is_floating_point() else y


def applied_half_dtype(fn, current: Optional[torch.dtype], device) -> Optional[torch.dtype]:
    """The 16-bit float dtype that Module._apply's `fn` leaves a model's float tensors in (``model.half()``,
    ``.to(torch.bfloat16)``; a move alone keeps `current`), or None (fp32 or wider). A layer that can get an
    int8 input (an int8 hand-off) returns its float output in this dtype: nothing else tells it the dtype of
    the model around it."""
    d = fn(torch.empty(0, dtype=current or torch.float32, device=device)).dtype
    return d if d in HALF_DTYPES else None


def float_out(y: Tensor, x_dtype: torch.dtype, model_dtype: Optional[torch.dtype]) -> Tensor:
    """A layer's fp32 output in the dtype the model runs in: a 16-bit input's, or for an int8 input the
    model's 16-bit dtype (applied_half_dtype). Anything else as it is."""
    if y.dtype != torch.float32:
        return y
    want = x_dtype if x_dtype in HALF_DTYPES else model_dtype if x_dtype == torch.int8 else None
    return y if want is None else y.to(want)


def unbatched(x: Tensor, run, arg: str = "input") -> Tensor:
    """run on a [C, H, W] input as a batch of one, the result without its batch dimension (nn.Conv2d and
    nn.MaxPool2d take unbatched inputs, so their replacements do too)."""
    if x.dim() == 3:
        return run(x.unsqueeze(0)).squeeze(0)
    if x.dim() != 4:
        raise ValueError(f"{arg} must be 4-D [N, C, H, W] or unbatched 3-D [C, H, W], got shape {list(x.shape)}")
    return run(x)


def half_dtype_of(layer: nn.Module) -> Optional[torch.dtype]:
    """The 16-bit float dtype of a float layer's weight (a model cast with .half() before quantizing), or None."""
    w = getattr(layer, "weight", None)
    return w.dtype if isinstance(w, Tensor) and w.dtype in HALF_DTYPES else None
