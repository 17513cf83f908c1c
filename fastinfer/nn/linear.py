"""Int8Linear: an nn.Linear replacement whose weight is int8, packed once for our kernels."""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor, nn

from .. import _C, ops
from ..reference import check_weight_bits, quantize_weight_per_channel
from . import _common
from ._common import ComputedWeight, LinearKernels, check_float_layer, check_scale, fast_or_dispatch
from .fused import apply_activation

SCHEMES = ("w8a8_dynamic", "w8a8_static", "w8_only")
ACTIVATIONS = ("none", "relu", "relu6", "gelu", "hardswish", "silu")


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    return scheme


def check_bits_for_scheme(weight_bits: int, scheme: str) -> int:
    """weight_bits 7 is for the int8-activation schemes: it exists to speed up their int8 GEMM on AVX2, and
    w8_only computes in float, where it would only lose accuracy."""
    bits = check_weight_bits(weight_bits)
    if bits == 7 and scheme == "w8_only":
        raise ValueError("weight_bits=7 is for the w8a8 schemes (it speeds up their int8 GEMM on AVX2); "
                         "w8_only computes in float: use weight_bits=8")
    return bits


def cuda_weight_only_layout() -> str:
    """The layout a w8_only layer packs its weight in on CUDA: 'rows' (``ops.pack_int8_weight``, the default)
    or 'tiles' (``ops.pack_weight_only_tiles``, a candidate for the tensor-core weight-only kernel's weight
    traffic at 9-64 rows), from the environment variable FASTINFER_WEIGHT_ONLY_LAYOUT, read when a layer
    packs (from_float on a GPU, a move to one, a load). Both give the same results, bit for bit."""
    v = os.environ.get("FASTINFER_WEIGHT_ONLY_LAYOUT") or "rows"
    if v not in ("rows", "tiles"):
        raise ValueError(f"the environment variable FASTINFER_WEIGHT_ONLY_LAYOUT must be 'rows' or 'tiles' "
                         f"(or unset: rows), got {v!r}")
    return v


def weight_layout(packed: Tensor) -> str:
    """Which packed layout a packed_weight holds: 'cpu' (the CPU's header-checked buffer), 'rows' (CUDA int8
    [N, round_up(K, 16)]) or 'tiles' (CUDA int8 [ceil(N / 8), ceil(K / 64), 8, 64], w8_only)."""
    if packed.dtype == torch.int8 and packed.dim() == 4:
        return "tiles"
    return "rows" if ops.is_cuda_packed(packed) else "cpu"


class Int8Linear(LinearKernels, ComputedWeight):
    """y = x W^T + b with W stored as per-channel int8 in fastinfer's packed layout.

    Accepts x of any leading shape [..., in_features], dtype float32 or bfloat16 (float16 too on CUDA);
    the output has x's dtype. Buffers (all in state_dict): ``packed_weight`` (the packed weight of the
    layer's device: a header-checked uint8 buffer on the CPU, int8 [out, round_up(in, 16)] on CUDA),
    ``weight_scale`` (fp32 [out_features]) and ``bias`` (fp32 or None); a w8_only layer on CUDA packs in
    the layout :func:`cuda_weight_only_layout` names. Moving the layer between the
    CPU and a GPU (``.to()``, ``.cuda()``, ``.cpu()``) repacks the weight for the new device; dtype
    casts (``.half()``) leave the fp32 scales and bias as they are. Build one with :meth:`from_float`;
    inference only (no autograd).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, scheme: str = "w8a8_dynamic",
                 activation: str = "none", x_scale: Optional[float] = None, out_scale: Optional[float] = None,
                 weight_bits: int = 8):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features}, {out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.scheme = check_scheme(scheme)
        self.weight_bits = check_bits_for_scheme(weight_bits, scheme)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if (scheme == "w8a8_static") != (x_scale is not None):
            raise ValueError("x_scale (the calibrated activation scale) is required by, and only by, scheme "
                             f"'w8a8_static'; got scheme={scheme!r}, x_scale={x_scale!r}")
        check_scale("x_scale", x_scale)
        check_scale("out_scale", out_scale)
        if out_scale is not None and scheme != "w8a8_static":
            raise ValueError("out_scale (int8 output) is supported with scheme 'w8a8_static' only")
        self.activation, self.x_scale, self.out_scale = activation, x_scale, out_scale
        # Placeholder of the right size (all-zero weight) until from_float or load_state_dict fills it.
        self.register_buffer("packed_weight", ops.pack_int8_weight(torch.zeros(out_features, in_features, dtype=torch.int8)))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        # SmoothQuant: x's channels are multiplied by this before quantization (1 / s, with s folded
        # into the weight's columns). None when the layer is not smoothed.
        self.register_buffer("input_smooth", None)

    @classmethod
    def from_float(cls, linear: nn.Linear, scheme: str = "w8a8_dynamic", activation: Optional[str] = None,
                   x_scale: Optional[float] = None, out_scale: Optional[float] = None,
                   smooth: Optional[Tensor] = None, weight_bits: int = 8) -> "Int8Linear":
        """Quantizes a float nn.Linear (per output channel, symmetric) and packs its weight once.
        weight_bits=7 rounds the weight to [-63, 63] (half the levels): on CPUs with AVX2 but no VNNI
        (AMD Zen 2/3, Intel before Ice Lake) the int8 GEMM then needs no sign step and runs about 1.4x
        faster; other CPUs and GPUs compute the same values at the usual speed.
        A fastinfer.nn.LinearAct's activation is taken over (fused into the kernel's epilogue).
        smooth: SmoothQuant factors s [in_features] > 0: the weight's columns are multiplied by s
        before quantization and x by 1 / s at run time (in the quantization pass), so x W^T is unchanged
        while activation outliers move into the weights. A w8a8_static x_scale must then be the
        scale of x / s."""
        check_float_layer(linear, nn.Linear, "linear", ops.LINEAR_DEVICES)
        act = activation or getattr(linear, "activation", None) or "none"
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, scheme, act, x_scale, out_scale,
                  weight_bits)
        weight = linear.weight.detach().float()
        if smooth is not None:
            if scheme == "w8_only":
                raise ValueError("smooth (SmoothQuant) needs an int8-activation scheme, not w8_only")
            smooth = smooth.detach().float().reshape(-1)
            if smooth.numel() != linear.in_features or not bool((smooth > 0).all()) or \
                    not bool(torch.isfinite(smooth).all()):
                raise ValueError(f"smooth must hold {linear.in_features} positive finite factors")
            weight = weight * smooth[None, :]
            mod.input_smooth = (1.0 / smooth).contiguous()
        w_q, w_scale = quantize_weight_per_channel(weight, mod.weight_bits)
        mod.packed_weight = mod._pack(w_q)
        mod.weight_scale = w_scale.contiguous()
        if linear.bias is not None:
            mod.bias = linear.bias.detach().float().clone()
        return mod

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (torch's name: layer(input=x) works)
        # The usual eager call first, as Int8Conv2d's: the direct call answers NotImplemented for what the op
        # does not take as it is (float16 and float64 inputs, which the long way converts; other devices, modes).
        if self.scheme != "w8_only" and not _common._is_compiling():
            fast = _C.int8_linear_dynamic if self.scheme == "w8a8_dynamic" else _C.int8_linear_static
            y = fast(*self._op_args(input, self._buffers["bias"]))
            if y is not NotImplemented:
                return y
        return self._linear(input, self._buffers["bias"])  # the long way (LinearKernels)

    def _functional_linear(self, x: Tensor, bias: Optional[Tensor]):
        """F.linear(x, self.weight, bias) on this layer's kernels, or NotImplemented where the layer computes more
        than x W^T + b (a fused activation, an int8 output): the weight is then dequantized for torch's F.linear."""
        if self.activation != "none" or self.out_scale is not None:
            return NotImplemented
        return super()._functional_linear(x, bias)

    def _op_args(self, x: Tensor, bias: Optional[Tensor]) -> tuple:
        """The w8a8 scheme's op arguments for input x (int8_linear_dynamic's or int8_linear_static's)."""
        # The buffers from the dict that holds them: reading one as an attribute goes through nn.Module.__getattr__
        # after a failed lookup (0.6-0.7 us each, measured on Python 3.11: 3.3 us a call for the five, a third of a
        # small layer's whole call).
        b = self._buffers
        if self.scheme == "w8a8_dynamic":
            return x, b["packed_weight"], b["weight_scale"], bias, self.activation, b["input_smooth"]
        return (x, self.x_scale, b["packed_weight"], b["weight_scale"], bias, self.activation, self.out_scale,
                b["input_smooth"])

    def _forward(self, x: Tensor, bias: Optional[Tensor]) -> Tensor:
        if self.scheme == "w8a8_dynamic":
            return fast_or_dispatch(_C.int8_linear_dynamic, torch.ops.fastinfer.int8_linear_dynamic,
                                    *self._op_args(x, bias))
        if self.scheme == "w8a8_static":
            return fast_or_dispatch(_C.int8_linear_static, torch.ops.fastinfer.int8_linear_static,
                                    *self._op_args(x, bias))
        # The weight-only kernels have no activation epilogue: a fused layer's runs after them, in torch.
        b = self._buffers
        y = torch.ops.fastinfer.int8_linear_weight_only(x, b["packed_weight"], b["weight_scale"], bias)
        return apply_activation(y, None if self.activation == "none" else self.activation)

    def _float_weight_shape(self):
        return self.out_features, self.in_features

    def _weight_value(self) -> Tensor:
        return self.dequantized_weight()

    def int8_weight(self) -> Tensor:
        """The int8 weight [out_features, in_features], unpacked (on the layer's device)."""
        return self._unpack(self.packed_weight)

    def _unpack(self, packed: Tensor) -> Tensor:
        """int8 [out_features, in_features] from a packed weight of any layout (weight_layout), on its device."""
        if weight_layout(packed) == "tiles":
            return ops.unpack_weight_only_tiles(packed, self.out_features, self.in_features)
        return ops.unpack_int8_weight(packed)[:, :self.in_features]

    def _pack(self, w: Tensor, layout: Optional[str] = None) -> Tensor:
        """int8 [out_features, in_features] -> the packed weight on w's device, in ``layout`` (weight_layout's
        names; None: the device's, for a w8_only layer on CUDA cuda_weight_only_layout())."""
        if layout is None and w.device.type == "cuda" and self.scheme == "w8_only":
            layout = cuda_weight_only_layout()
        return ops.pack_weight_only_tiles(w) if layout == "tiles" else ops.pack_int8_weight(w)

    def _apply(self, fn, recurse=True):
        # fn is applied to the int8 weight only: where it sends an empty int8 tensor is where the layer
        # goes. The packed layouts differ by device, so a move between the CPU and a GPU unpacks the
        # weight there and packs it again on the new device (a dtype cast unpacks nothing). The scales,
        # bias and smoothing factors stay the fp32 tensors they are, only moved: a cast of fn's would
        # round them (bf16 keeps 8 bits) and the kernels read fp32.
        here = self.packed_weight.device
        target = fn(torch.empty(0, dtype=torch.int8, device=here)).device
        w = self.int8_weight() if target.type != here.type else None
        fp32 = {name: getattr(self, name) for name in ("weight_scale", "bias", "input_smooth")}
        packed = self.packed_weight
        out = super()._apply(fn, recurse)
        if w is not None:
            self.packed_weight = self._pack(fn(w).contiguous())
        elif self.packed_weight.dtype != packed.dtype:  # model.type(torch.float16) casts every tensor
            self.packed_weight = packed
        for name, t in fp32.items():
            if t is not None:
                setattr(self, name, t.to(target))
        return out

    def dequantized_weight(self) -> Tensor:
        """The fp32 weight this layer computes with (int8 * per-channel scale, smoothing undone)."""
        w = self.int8_weight().float() * self.weight_scale[:, None]
        return w * self.input_smooth[None, :] if self.input_smooth is not None else w

    def extra_repr(self) -> str:
        s = (f"in_features={self.in_features}, out_features={self.out_features}, "
             f"bias={self.bias is not None}, scheme={self.scheme}, "
             f"weight=int8 per-channel{' (7-bit)' if self.weight_bits == 7 else ''}")
        if self.activation != "none":
            s += f", activation={self.activation}"
        if self.x_scale is not None:
            s += f", x_scale={self.x_scale:.4g}"
        if self.out_scale is not None:
            s += f", int8 out (scale {self.out_scale:.4g})"
        if self.input_smooth is not None:
            s += ", smoothed"
        if self.packed_weight.device.type != "cpu":
            return s + f", device={self.packed_weight.device}"
        return s + f", isa={ops.cpu_capabilities()['active']}"

    def get_extra_state(self):
        return {"scheme": self.scheme, "activation": self.activation, "x_scale": self.x_scale,
                "out_scale": self.out_scale, "weight_bits": self.weight_bits}

    def set_extra_state(self, state):
        self.scheme, self.activation = state["scheme"], state["activation"]
        self.x_scale, self.out_scale = state["x_scale"], state["out_scale"]
        # files from before weight_bits hold 8-bit weights; 7 bits with w8_only is refused, as by the constructor
        self.weight_bits = check_bits_for_scheme(state.get("weight_bits", 8), self.scheme)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        smooth_key = prefix + "input_smooth"
        if smooth_key in state_dict and self.input_smooth is None:
            self.input_smooth = torch.empty_like(state_dict[smooth_key])  # a smoothed layer's buffer
        key = prefix + "packed_weight"
        repacked = False  # packed here from the file's int8 values (column sums and flags computed anew)
        if key in state_dict:
            # Refuse a buffer for another shape or a corrupt one now, not at the first forward
            # (header only: the kernels check the header on every call).
            stored = state_dict[key]
            stored_layout = weight_layout(stored)
            if stored_layout == "tiles":
                want = ops.weight_only_tiles_shape(self.out_features, self.in_features)
                if tuple(stored.shape) != want:
                    raise ValueError(f"{key}: CUDA tiles weight is {tuple(stored.shape)}, expected {want}")
            elif stored_layout == "rows":
                k_pad = -(-self.in_features // ops.CUDA_K_ALIGN) * ops.CUDA_K_ALIGN
                if tuple(stored.shape) != (self.out_features, k_pad):
                    raise ValueError(f"{key}: CUDA packed weight is {tuple(stored.shape)}, expected "
                                     f"({self.out_features}, {k_pad})")
            else:
                # The CPU layout is read and unpacked on the CPU, also when map_location put it on a GPU.
                stored = stored.cpu()
                shape = ops.packed_shape(stored)
                if shape != (self.out_features, self.in_features):
                    raise ValueError(f"{key}: packed weight is {shape}, expected "
                                     f"({self.out_features}, {self.in_features})")
            # The layer keeps its own layout: a file from the other kind of device, or a w8_only file written
            # under the other CUDA layout, is repacked into it.
            own = weight_layout(self.packed_weight)
            if own != stored_layout:
                state_dict = dict(state_dict)  # the caller's dict stays as it was
                w = self._unpack(stored)
                state_dict[key] = self._pack(w.to(self.packed_weight.device).contiguous(), own)
                repacked = True
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if key in state_dict and not repacked and weight_layout(self.packed_weight) == "cpu":
            # The column sums and the header's flags (which choose the kernels' steps and correct their sums)
            # computed again from the loaded int8 values, not taken from the file.
            with torch.no_grad():
                self.packed_weight.copy_(ops.pack_int8_weight(ops.unpack_int8_weight(self.packed_weight)))
