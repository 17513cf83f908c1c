"""Int8Dropout: the nn.Dropout on an int8 hand-off between two static Int8Conv2d layers (fastinfer.quantize
swaps it in). In eval mode it passes int8 values on unchanged, as nn.Dropout does; in training mode dropout
would scale the kept values by 1 / (1 - p), which int8 values on a fixed scale cannot hold, so it says so
instead of failing inside torch."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Int8Dropout(nn.Dropout):
    """nn.Dropout that refuses an int8 input in training mode with a clear message (float inputs: torch's own)."""

    @classmethod
    def from_float(cls, dropout: nn.Dropout) -> "Int8Dropout":
        return cls(dropout.p, dropout.inplace).train(dropout.training)

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (torch's name: layer(input=x) works)
        if input.dtype == torch.int8 and self.training and self.p > 0:
            raise RuntimeError("Int8Dropout: this dropout sits between two int8 layers of a w8a8_static model, and "
                               "the module is in training mode, where dropout would rescale int8 values; call "
                               "model.eval() before running the quantized model")
        return super().forward(input)
