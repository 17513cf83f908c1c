"""Int8Linear: an nn.Linear replacement whose weight is int8, packed once for our kernels."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import ops
from ..reference import quantize_weight_per_channel

SCHEMES = ("w8a8_dynamic", "w8_only")
_SCHEME_HELP = {
    "w8a8_dynamic": "int8 weights (per channel), int8 activations quantized per token at run time",
    "w8_only": "int8 weights (per channel), fp32/bf16 activations, weights dequantized in the kernel",
}


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    return scheme


class Int8Linear(nn.Module):
    """y = x W^T + b with W stored as per-channel int8 in fastinfer's packed layout.

    Accepts x of any leading shape [..., in_features], dtype float32 or bfloat16; the output has
    x's dtype. Buffers (all in state_dict): ``packed_weight`` (uint8, header-checked by the
    kernel), ``weight_scale`` (fp32 [out_features]) and ``bias`` (fp32 or None).
    Build one with :meth:`from_float`; inference only (no autograd).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, scheme: str = "w8a8_dynamic"):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features}, {out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.scheme = check_scheme(scheme)
        # Placeholder of the right size (all-zero weight) until from_float or load_state_dict fills it.
        self.register_buffer("packed_weight", ops.pack_int8_weight(torch.zeros(out_features, in_features, dtype=torch.int8)))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, scheme: str = "w8a8_dynamic") -> "Int8Linear":
        """Quantizes a float nn.Linear (per output channel, symmetric) and packs its weight once."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        if linear.weight.device.type not in ops.SUPPORTED_DEVICES:
            raise ValueError(f"linear is on device '{linear.weight.device}'; this build of fastinfer supports "
                             f"{', '.join(ops.SUPPORTED_DEVICES)} only (move the model with .cpu() first)")
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, scheme)
        w_q, w_scale = quantize_weight_per_channel(linear.weight)
        mod.packed_weight = ops.pack_int8_weight(w_q)
        mod.weight_scale = w_scale.contiguous()
        if linear.bias is not None:
            mod.bias = linear.bias.detach().float().clone()
        return mod

    def forward(self, x: Tensor) -> Tensor:
        if self.scheme == "w8a8_dynamic":
            return torch.ops.fastinfer.int8_linear_dynamic(x, self.packed_weight, self.weight_scale, self.bias)
        return torch.ops.fastinfer.int8_linear_weight_only(x, self.packed_weight, self.weight_scale, self.bias)

    def int8_weight(self) -> Tensor:
        """The int8 weight [out_features, in_features], unpacked."""
        return ops.unpack_int8_weight(self.packed_weight)

    def dequantized_weight(self) -> Tensor:
        """The fp32 weight this layer computes with (int8 * per-channel scale)."""
        return self.int8_weight().float() * self.weight_scale[:, None]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scheme={self.scheme}, weight=int8 per-channel, "
                f"isa={ops.cpu_capabilities()['active']}")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "packed_weight"
        if key in state_dict:
            # Refuse a buffer for another shape or a corrupt one now, not at the first forward.
            w = ops.unpack_int8_weight(state_dict[key])
            if tuple(w.shape) != (self.out_features, self.in_features):
                raise ValueError(f"{key}: packed weight is {tuple(w.shape)}, expected "
                                 f"({self.out_features}, {self.in_features})")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
