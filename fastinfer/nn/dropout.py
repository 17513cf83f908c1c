"""Int8Dropout and Int8DropPath: the nn.Dropout, and the stochastic depth (torchvision's StochasticDepth, timm's
DropPath), on an int8 hand-off between two static Int8Conv2d layers (fastinfer.quantize swaps them in). In eval mode
they pass int8 values on unchanged, as the originals do; in training mode they would scale the kept values by
1 / (1 - p), which int8 values on a fixed scale cannot hold, so they say so instead of failing inside torch."""
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


def is_drop_path(mod: nn.Module) -> bool:
    """Whether mod is a residual branch's stochastic depth whose eval mode is the identity: torchvision's
    StochasticDepth (torchvision.ops: EfficientNet, ConvNeXt, Swin, MaxViT) or timm's DropPath (known by class and
    package: fastinfer depends on neither)."""
    t = type(mod)
    return (t.__name__, t.__module__.split(".")[0]) in (("StochasticDepth", "torchvision"), ("DropPath", "timm"))


class Int8DropPath(nn.Module):
    """A stochastic depth module (is_drop_path) that refuses an int8 input in training mode with a clear message;
    otherwise it runs the module it holds (``inner``), the identity in eval mode."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    @classmethod
    def from_float(cls, mod: nn.Module) -> "Int8DropPath":
        if not is_drop_path(mod):
            raise TypeError(f"Int8DropPath.from_float needs torchvision's StochasticDepth or timm's DropPath, got "
                            f"{type(mod).__name__}")
        return cls(mod).train(mod.training)

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        if input.dtype == torch.int8 and self.training:
            raise RuntimeError("Int8DropPath: this stochastic depth sits between two int8 layers of a w8a8_static "
                               "model, and the module is in training mode, where it would rescale int8 values; call "
                               "model.eval() before running the quantized model")
        return self.inner(input)
