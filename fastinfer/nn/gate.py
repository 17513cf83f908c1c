"""Squeeze-excitation on int8 activations: the global average pool and the gate's channel multiply of a gated
block (MobileNetV3, EfficientNet), which fastinfer.quantize puts in place of the block's own calls when it
rewrites the block's forward (fastinfer/quantization/chain.py), so that the block's activation reaches the
pool and the multiply as int8 and leaves the multiply as int8 for the next convolution. With float inputs
they compute what the block did."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _C
from ._common import HALF_DTYPES, applied_half_dtype, check_scale, fast_or_dispatch, requantize


def _f32(v: float) -> Tensor:
    return torch.tensor(v, dtype=torch.float32)


def _requantize(v: Tensor, out_scale: float) -> Tensor:
    """The kernels' requantization (_common.requantize), in channels_last memory as the op's output."""
    return requantize(v, out_scale).contiguous(memory_format=torch.channels_last)


class _GateOp(nn.Module):
    """x_scale (the scale of an int8 x, set by quantize) and the model's 16-bit float dtype, as Int8Add."""

    float_dtype = None  # the model's 16-bit float dtype after model.half() / .to(torch.bfloat16) (_apply)

    def _apply(self, fn, recurse=True):
        self.float_dtype = applied_half_dtype(fn, self.float_dtype, "cpu")
        return super()._apply(fn, recurse)

    def _check_int8(self, x: Tensor) -> None:
        if self.x_scale is None:
            raise RuntimeError(f"{type(self).__name__} got an int8 x but has no x_scale: quantize sets it together "
                               "with the out_scale of the layer that writes x")
        if x.dim() not in (3, 4):
            raise ValueError(f"{type(self).__name__}: an int8 x must be [N, C, H, W] or unbatched [C, H, W], got shape "
                             f"{tuple(x.shape)}")

    def _float_out(self, y: Tensor, like: Optional[Tensor] = None) -> Tensor:
        want = like.dtype if like is not None and like.dtype in HALF_DTYPES else self.float_dtype
        return y.to(want) if want is not None else y


class Int8GlobalAvgPool(_GateOp):
    """The global average pool before a squeeze-excitation gate. An int8 x (value = q * x_scale) is pooled by
    fastinfer's kernel: (float(sum of q) * x_scale) / (H * W), the sum exact. A float x is pooled as the block did:
    ``F.adaptive_avg_pool2d(x, 1)`` (nn.AdaptiveAvgPool2d(1)), or ``x.mean(mean_dims, keepdim=True)`` when the
    block called that (mean_dims, set by the rewrite: not state)."""

    def __init__(self, x_scale: Optional[float] = None, mean_dims: Optional[Tuple[int, ...]] = None):
        super().__init__()
        check_scale("x_scale", x_scale)
        self.x_scale, self.mean_dims = x_scale, mean_dims

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.int8:
            return F.adaptive_avg_pool2d(x, 1) if self.mean_dims is None else x.mean(self.mean_dims, keepdim=True)
        self._check_int8(x)
        if x.dim() == 3:  # unbatched, as the convs take it
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if x.device.type == "cpu":
            y = fast_or_dispatch(_C.int8_channel_mean, torch.ops.fastinfer.int8_channel_mean, x, self.x_scale)
        else:  # the same arithmetic with torch ops (no kernel of ours on this device)
            y = x.to(torch.int32).sum((2, 3), keepdim=True).float() * self.x_scale / float(x.shape[2] * x.shape[3])
        return self._float_out(y)

    def extra_repr(self) -> str:
        return f"x_scale={self.x_scale:.4g}" if self.x_scale is not None else ""

    def get_extra_state(self):
        return {"gate_pool": True, "x_scale": self.x_scale}

    def set_extra_state(self, state):
        self.x_scale = state["x_scale"]


class Int8AdaptiveAvgPool2d(Int8GlobalAvgPool):
    """An ``nn.AdaptiveAvgPool2d`` of output size 1 that reads an int8 hand-off: fastinfer.quantize swaps it in
    where a producer's output goes to static convs and to this pooling (DeepLabV3's ASPP pools the backbone's
    output beside its convolutions), so that the producer writes int8 for all of them. An int8 x is pooled as
    Int8GlobalAvgPool pools it, float out; a float x as before. Its own state key tells this swap from a
    squeeze-excitation rewrite's pool in a saved file (load_quantized replays each its own way)."""

    @classmethod
    def from_float(cls, mod: nn.Module) -> "Int8AdaptiveAvgPool2d":
        if not is_global_avg_pool(mod):
            raise TypeError(f"Int8AdaptiveAvgPool2d.from_float needs an nn.AdaptiveAvgPool2d of output size 1, got "
                            f"{mod!r}")
        return cls()

    def get_extra_state(self):
        return {"adaptive_avg_pool": True, "x_scale": self.x_scale}


def is_global_avg_pool(mod: nn.Module) -> bool:
    """Whether mod is a plain nn.AdaptiveAvgPool2d of output size 1 (or (1, 1))."""
    return type(mod) is nn.AdaptiveAvgPool2d and mod.output_size in (1, (1, 1), [1, 1])


class Int8ChannelScale(_GateOp):
    """``gate * x`` of a squeeze-excitation block, the gate [N, C, 1, 1] from the block's small layers. An int8 x
    (value = q * x_scale) is scaled by fastinfer's kernel: float(q) * fl(x_scale * gate); with out_scale the result
    is requantized to int8 for the convolution it feeds (quantize sets both scales). A float x: torch's multiply
    (and the requantization when out_scale is set)."""

    def __init__(self, x_scale: Optional[float] = None, out_scale: Optional[float] = None):
        super().__init__()
        check_scale("x_scale", x_scale)
        check_scale("out_scale", out_scale)
        self.x_scale, self.out_scale = x_scale, out_scale

    def forward(self, gate: Tensor, x: Tensor) -> Tensor:
        if not (isinstance(gate, Tensor) and isinstance(x, Tensor)):
            raise TypeError(f"Int8ChannelScale (a squeeze-excitation multiply that fastinfer.quantize rewrote) needs "
                            f"two tensors, got {type(gate).__name__} and {type(x).__name__}")
        if x.dtype != torch.int8:
            y = gate * x
            return y if self.out_scale is None else _requantize(y, self.out_scale)
        self._check_int8(x)
        if x.dim() == 3:  # unbatched: gate [C, 1, 1]
            return self.forward(gate.unsqueeze(0), x.unsqueeze(0)).squeeze(0)
        g = gate.float().reshape(x.shape[0], x.shape[1])
        if x.device.type == "cpu":
            y = fast_or_dispatch(_C.int8_channel_scale, torch.ops.fastinfer.int8_channel_scale, x, self.x_scale, g,
                                 self.out_scale)
        else:  # the same arithmetic with torch ops
            v = x.float() * (g * _f32(self.x_scale).to(g.device)).reshape(*g.shape, 1, 1)
            y = v.contiguous(memory_format=torch.channels_last) if self.out_scale is None else \
                _requantize(v, self.out_scale)
        return y if y.dtype == torch.int8 else self._float_out(y, gate)

    def extra_repr(self) -> str:
        scales = (n for n in ("x_scale", "out_scale") if getattr(self, n) is not None)
        return ", ".join(f"{n}={getattr(self, n):.4g}" for n in scales)

    def get_extra_state(self):
        return {"gate_scale": True, "x_scale": self.x_scale, "out_scale": self.out_scale}

    def set_extra_state(self, state):
        self.x_scale, self.out_scale = state["x_scale"], state["out_scale"]
