"""Int8MaxPool2d: an nn.MaxPool2d that also pools int8 activations (an int8 hand-off between two static
Int8Conv2d layers passes through it; fastinfer.quantize swaps it in). Float inputs take torch's own pooling."""
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
