"""Int8MaxPool2d, Int8AvgPool2d and Int8Upsample: an nn.MaxPool2d and an nn.AvgPool2d that also pool int8
activations, and an nn.Upsample (nearest) that also upsamples them (an int8 hand-off between two static
Int8Conv2d layers passes through them; fastinfer.quantize swaps them in). Float inputs take torch's own pooling
and upsampling."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops
from ._common import unbatched


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
        if torch.jit.is_tracing():  # the tracer cannot record view(dtype); a cast wraps to the same bytes (a copy)
            return super().forward(input.to(torch.uint8)).to(torch.int8)
        return super().forward(input.view(torch.uint8)).view(torch.int8)
