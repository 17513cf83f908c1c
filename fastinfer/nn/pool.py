"""Int8MaxPool2d, Int8AvgPool2d, Int8Upsample and int8_interpolate: an nn.MaxPool2d and an nn.AvgPool2d that also
pool int8 activations, an nn.Upsample (nearest) and an F.interpolate that also upsample them (an int8 hand-off
between two static Int8Conv2d layers passes through them; fastinfer.quantize swaps them in). Float inputs take
torch's own pooling and upsampling."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ._common import fx_leaf, unbatched


class Int8MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d whose int8 inputs run fastinfer.ops.int8_max_pool2d (channels_last int8 out).

    torch's own max_pool2d fails on channels_last int8 tensors of realistic sizes (torch 2.13:
    "Expected input_depth * input_height * input_width <= std::numeric_limits<integer_t>::max()"),
    and an int8 hand-off must not round-trip through fp32.
    """

    @classmethod
    def from_float(cls, pool: nn.MaxPool2d) -> "Int8MaxPool2d":
        if pool.return_indices:
            raise ValueError("Int8MaxPool2d does not return indices (return_indices=True)")
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, False, pool.ceil_mode)

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (torch's name: layer(input=x) works)
        x = input
        if x.dtype != torch.int8:
            return super().forward(x)
        return unbatched(x, lambda x4: ops.int8_max_pool2d(x4, self.kernel_size, self.stride, self.padding,
                                                           self.dilation, self.ceil_mode))


class Int8AvgPool2d(nn.AvgPool2d):
    """nn.AvgPool2d whose int8 inputs run fastinfer.ops.int8_avg_pool2d: the average of the int8 values at the
    input's scale, rounded half to even (within half an int8 step of the fp32 pooling), channels_last int8 out.
    torch has no int8 average pooling; a DenseNet transition's (or a ResNet-D shortcut's) pooling between an int8
    conv and int8 consumers is one. Float inputs take torch's own pooling."""

    @classmethod
    def from_float(cls, pool: nn.AvgPool2d) -> "Int8AvgPool2d":
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, pool.count_include_pad,
                   pool.divisor_override)

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (torch's name: layer(input=x) works)
        x = input
        if x.dtype != torch.int8:
            return super().forward(x)
        return unbatched(x, lambda x4: ops.int8_avg_pool2d(x4, self.kernel_size, self.stride, self.padding,
                                                           self.ceil_mode, self.count_include_pad,
                                                           self.divisor_override))


class Int8Upsample(nn.Upsample):
    """nn.Upsample in a nearest mode whose int8 inputs are upsampled as the same bytes read as uint8: torch's
    nearest upsampling takes uint8 in channels_last but not int8 (torch 2.13: "upsample_nearest2d_channels_last"
    not implemented for 'Char'), and as it copies values, not combines them, the result is the int8 image of
    the fp32 upsampling, bit for bit. Other modes (bilinear, bicubic) compute new values and are refused."""

    MODES = ("nearest", "nearest-exact")

    @classmethod
    def from_float(cls, up: nn.Upsample) -> "Int8Upsample":
        if up.mode not in cls.MODES:
            raise ValueError(f"Int8Upsample upsamples in modes {cls.MODES} (which copy values), got mode={up.mode!r}")
        return cls(up.size, up.scale_factor, up.mode, up.align_corners, up.recompute_scale_factor)

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (torch's name: layer(input=x) works)
        if input.dtype != torch.int8:
            return super().forward(input)
        return int8_interpolate(input, self.size, self.scale_factor, self.mode, self.align_corners,
                                self.recompute_scale_factor)



INTERPOLATE_MODES = (*Int8Upsample.MODES, "bilinear")


@fx_leaf
def int8_interpolate(input: Tensor, size=None, scale_factor=None, mode: str = "nearest",  # noqa: A002
                     align_corners: Optional[bool] = None, recompute_scale_factor: Optional[bool] = None) -> Tensor:
    """F.interpolate(input, size, scale_factor, mode, align_corners, recompute_scale_factor), which also upsamples
    int8 inputs (fastinfer.quantize calls it in place of each such F.interpolate call of a forward: DeepLabV3's
    pooled ASPP branch upsamples a 1 x 1 map to the feature map's size). Float inputs take F.interpolate. An int8
    input (channels_last int8 out) is upsampled
    - in the nearest modes as Int8Upsample does: the same bytes, the int8 image of the float upsampling;
    - bilinearly from a 1 x 1 map as the broadcast it is: every weight reads the one pixel, so the result is the
      int8 image of the float upsampling here too (the float sum of weights that add to 1 is within a rounding of
      the value, far from the half step that would change a rounded int8);
    - bilinearly from a larger map as the float interpolation of the int8 values, rounded half to even: within
      half an int8 step of the float upsampling (as Int8AvgPool2d's average). fastinfer.quantize passes an int8
      hand-off through the broadcast only.
    Other modes (bicubic, area, trilinear) are refused for int8 inputs. A leaf for torch.fx (one call_function
    node)."""
    x = input
    if not isinstance(x, Tensor) or x.dtype != torch.int8:
        return F.interpolate(x, size, scale_factor, mode, align_corners, recompute_scale_factor)
    if mode not in INTERPOLATE_MODES:
        raise ValueError(f"int8_interpolate upsamples int8 inputs in modes {INTERPOLATE_MODES}, got mode={mode!r}")
    if mode != "bilinear":  # torch's nearest upsampling refuses int8 in channels_last, not uint8: the same bytes
        if torch.jit.is_tracing():  # the tracer cannot record view(dtype); a cast wraps to the same bytes (a copy)
            return F.interpolate(x.to(torch.uint8), size, scale_factor, mode, align_corners,
                                 recompute_scale_factor).to(torch.int8)
        return F.interpolate(x.view(torch.uint8), size, scale_factor, mode, align_corners,
                             recompute_scale_factor).view(torch.int8)
    if x.dim() == 4 and x.shape[-2:] == (1, 1):
        oh, ow = _output_size(x, size, scale_factor)
        return x.expand(x.shape[0], x.shape[1], oh, ow).contiguous(memory_format=torch.channels_last)
    y = F.interpolate(x.float(), size, scale_factor, mode, align_corners, recompute_scale_factor)
    return torch.round(y).to(torch.int8)


def _output_size(x: Tensor, size, scale_factor):
    """F.interpolate's output height and width for a 4-D x: ``size`` (an int or two), else each input size times
    its scale factor (one, or one a dimension), rounded down."""
    if (size is None) == (scale_factor is None):
        raise ValueError("int8_interpolate: give one of size and scale_factor")
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
    else:
        sf = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
        hw = tuple(math.floor(float(n) * float(f)) for n, f in zip(x.shape[-2:], sf))
    if len(hw) != 2:
        raise ValueError(f"int8_interpolate: size must be an int or 2 ints for a 4-D input, got {size!r}")
    return hw
