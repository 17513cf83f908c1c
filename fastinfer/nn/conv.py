"""Int8Conv2d: an nn.Conv2d replacement with int8 weights packed once and our int8 conv kernels
(implicit GEMM on the int8 GEMM micro-kernels or AMX tiles; a separate depthwise kernel; on CUDA the
Hopper implicit GEMM, a gathered fallback and a depthwise kernel)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .. import _C, ops
from ..reference import check_weight_bits, quantize_weight_per_channel
from . import _common
from ._common import (ComputedWeight, check_float_layer, check_scale, fast_or_dispatch, float_out, needs_float32,
                      unbatched, via_float32)

ACTIVATIONS = ("none", "relu", "relu6", "gelu", "hardswish", "silu")
CONV_SCHEMES = ("w8a8_dynamic", "w8a8_static")


def conv_padding(conv: nn.Module) -> Tuple[int, ...]:
    """Explicit zero padding of a conv (resolving 'valid' / 'same'); refuses what we cannot run exactly."""
    if conv.padding_mode != "zeros":
        raise ValueError(f"conv has padding_mode={conv.padding_mode!r}; fastinfer's int8 convolutions support zero "
                         "padding only")
    if conv.padding == "valid":
        return (0,) * len(conv.kernel_size)
    if conv.padding == "same":
        pads = []
        for k, d, s in zip(conv.kernel_size, conv.dilation, conv.stride):
            total = d * (k - 1)
            if s != 1 or total % 2:
                raise ValueError("conv has padding='same' with an even effective kernel or stride > 1 (asymmetric "
                                 "padding); fastinfer's int8 convolutions support symmetric zero padding only")
            pads.append(total // 2)
        return tuple(pads)
    return tuple(int(p) for p in conv.padding) if isinstance(conv, nn.Conv1d) else ops.pair(conv.padding)


class Int8Conv2d(ComputedWeight):
    """2-D convolution with per-channel int8 weights and int8 activations (one scale per tensor).

    x: [N, C, H, W] (or unbatched [C, H, W]) float32 (NCHW or channels_last; converted to channels_last once
    per call) or int8 (channels_last, from a layer with out_scale). Output: [N, Cout, OH, OW] in channels_last
    memory, float32 (a 16-bit input's dtype, or the model's after model.half()), or int8 when out_scale is
    set. The activation ('relu', 'relu6', 'hardswish', 'silu'; 'gelu' on the CPU) is fused in the epilogue.
    x_scale None: dynamic (amax / 127 of each input); a float: static (calibrated).
    Runs on the CPU and on a CUDA GPU, any groups (bf16/fp16 x accepted there):
    `.cuda()` / `.cpu()` repack the weight for the device, and a state_dict saved on either loads on either.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, activation: str = "none", x_scale: Optional[float] = None,
                 out_scale: Optional[float] = None, weight_bits: int = 8):
        super().__init__()
        self.weight_bits = check_weight_bits(weight_bits)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        check_scale("x_scale", x_scale)
        check_scale("out_scale", out_scale)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = ops.pair(kernel_size, "kernel_size"), ops.pair(stride, "stride")
        self.padding, self.dilation = ops.pair(padding, "padding"), ops.pair(dilation, "dilation")
        self.activation, self.x_scale, self.out_scale = activation, x_scale, out_scale
        zeros = torch.zeros(out_channels, in_channels // groups, *self.kernel_size, dtype=torch.int8)
        self.register_buffer("packed_weight", ops.pack_conv_weight(zeros, groups))
        self.register_buffer("weight_scale", torch.ones(out_channels))
        self.register_buffer("bias", torch.zeros(out_channels) if bias else None)

    _float_type = nn.Conv2d  # what from_float quantizes (Int8Conv1d: nn.Conv1d)

    @classmethod
    def from_float(cls, conv: nn.Module, activation: Optional[str] = None, x_scale: Optional[float] = None,
                   out_scale: Optional[float] = None, weight_bits: int = 8) -> "Int8Conv2d":
        """Quantizes a float Conv2d (or fastinfer.nn.ConvAct2d, whose activation is taken over); Int8Conv1d's
        a Conv1d (per output channel, symmetric). weight_bits=7: weights in [-63, 63], which AVX2-only CPUs
        multiply without their sign step, depthwise convolutions excepted (as Int8Linear.from_float)."""
        check_float_layer(conv, cls._float_type, "conv", ops.LINEAR_DEVICES)
        act = activation or getattr(conv, "activation", None) or "none"
        mod = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv_padding(conv),
                  conv.dilation, conv.groups, conv.bias is not None, act, x_scale, out_scale, weight_bits)
        w_q, w_scale = quantize_weight_per_channel(conv.weight, mod.weight_bits)
        kh_kw = mod._geometry()[0]  # a Conv1d's [Cout, Cin/groups, K] packs as [Cout, Cin/groups, 1, K]
        mod.packed_weight = ops.pack_conv_weight(w_q.reshape(*w_q.shape[:2], *kh_kw), conv.groups)
        mod.weight_scale = w_scale.contiguous()
        if conv.bias is not None:
            mod.bias = conv.bias.detach().float().clone()
        return mod

    def _geometry(self) -> Tuple[Tuple[int, int], ...]:
        """kernel_size, stride, padding, dilation as the op's pairs."""
        return self.kernel_size, self.stride, self.padding, self.dilation

    def _depthwise(self) -> bool:
        return 1 < self.groups == self.in_channels == self.out_channels

    def _unpack(self, packed: Tensor) -> Tensor:
        """int8 [Cout, Cin/groups, KH, KW] from a packed weight of either device's layout."""
        kh, kw = self._geometry()[0]
        cout, cin_g = self.out_channels, self.in_channels // self.groups
        if self._depthwise():  # [KH*KW, C] on both devices
            return packed.t().reshape(cout, 1, kh, kw).contiguous()
        k = kh * kw * cin_g
        if ops.is_cuda_packed(packed):  # the GPU layout [Cout, round_up(K, 16)], rows (kh, kw, c)
            rows = packed[:, :k]
        else:  # one packed GEMM weight per group, rows ordered (kh, kw, c); unpacked on the CPU, where its
            # layout's op runs (a checkpoint loaded with map_location='cuda' has it on a GPU)
            packed = packed.cpu()
            rows = torch.cat([ops.unpack_int8_weight(packed[g]) for g in range(self.groups)])
        return rows.reshape(cout, kh, kw, cin_g).permute(0, 3, 1, 2).contiguous()

    def int8_weight(self) -> Tensor:
        """The int8 weight [Cout, Cin/groups, KH, KW] this layer computes with."""
        return self._unpack(self.packed_weight)

    def dequantized_weight(self) -> Tensor:
        """The fp32 weight this layer computes with (int8 times the per-channel scale), the float conv's shape."""
        w = self.int8_weight().float()
        return w * self.weight_scale.reshape(-1, *([1] * (w.dim() - 1))).to(w.device)

    def _float_weight_shape(self):
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def _weight_value(self) -> Tensor:
        return self.dequantized_weight()

    def _apply(self, fn, recurse=True):
        # As Int8Linear: the packed layouts differ by device, so a move between the CPU and a GPU unpacks
        # the weight and packs it again there; scales and bias stay fp32 (a dtype cast leaves them alone).
        here = self.packed_weight.device
        target = fn(torch.empty(0, dtype=torch.int8, device=here)).device
        w = self._unpack(self.packed_weight) if target.type != here.type else None
        fp32 = {name: getattr(self, name) for name in ("weight_scale", "bias")}
        packed = self.packed_weight
        out = super()._apply(fn, recurse)
        if w is not None:
            self.packed_weight = ops.pack_conv_weight(fn(w).contiguous(), self.groups)
        elif self.packed_weight.dtype != packed.dtype:  # model.type(torch.float16) casts every tensor
            self.packed_weight = packed
        for name, t in fp32.items():
            if t is not None:
                setattr(self, name, t.to(target))
        return out

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (torch's name: layer(input=x) works)
        # The usual eager call first: the direct call takes a 4-D float32 or int8 CPU batch as it is and answers
        # NotImplemented for anything else (other inputs, devices, modes, errors), which takes the long way with
        # its checks and conversions. So does a half-precision model's layer (float_dtype), for its output's dtype.
        if self.float_dtype is None and not _common._is_compiling():
            y = _C.int8_conv2d(*self._args(input))
            if y is not NotImplemented:
                return y
        return unbatched(input, self._forward_batched)

    def _forward_batched(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}({self.in_channels}, {self.out_channels}, ...) expected an input "
                             f"with {self.in_channels} channels (dim 1), got shape {list(x.shape)}")
        if needs_float32(x, ()):
            return via_float32(x, self._forward)
        # The op's float output is fp32 (a GPU takes 16-bit inputs as they are): it goes back to x's 16-bit
        # dtype, or for an int8 hand-off to the half-precision model's (float_dtype), for the next layer.
        return float_out(self._forward(x), x.dtype, self.float_dtype)

    def _forward(self, x: Tensor) -> Tensor:
        return fast_or_dispatch(_C.int8_conv2d, torch.ops.fastinfer.int8_conv2d, *self._args(x))

    def _args(self, x: Tensor) -> tuple:
        """int8_conv2d's arguments for input x."""
        k, s, p, d = self._geometry()
        b = self._buffers  # not the attributes: each costs a failed lookup and nn.Module.__getattr__ (Int8Linear)
        return (x, b["packed_weight"], b["weight_scale"], b["bias"], k, s, p, d, self.groups, self.x_scale,
                self.out_scale, self.activation)

    def extra_repr(self) -> str:
        mode = "dynamic" if self.x_scale is None else f"static x_scale={self.x_scale:.4g}"
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        s += f", bias={self.bias is not None}, activation={self.activation}, activations={mode}"
        if self.out_scale is not None:
            s += f", int8 out (scale {self.out_scale:.4g})"
        if self.weight_bits == 7:
            s += ", 7-bit weights"
        return s

    def get_extra_state(self):
        # "weight_shape": a packed weight records [Cout, KH * KW * Cin / groups] only, so a checkpoint of
        # another kernel shape with the same K (3x3 x 4 channels vs 1x9, or 1x1 x 36) would load and compute
        # nonsense; this entry lets load_state_dict refuse it (checkpoints written before it: not checked).
        return {"activation": self.activation, "x_scale": self.x_scale, "out_scale": self.out_scale,
                "weight_shape": self._weight_shape(), "weight_bits": self.weight_bits}

    def _weight_shape(self):
        return [self.out_channels, self.in_channels // self.groups, *self._geometry()[0]]

    def set_extra_state(self, state):
        self.activation, self.x_scale, self.out_scale = state["activation"], state["x_scale"], state["out_scale"]
        self.weight_bits = check_weight_bits(state.get("weight_bits", 8))  # files from before it: 8-bit weights

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        extra = state_dict.get(prefix + "_extra_state")
        shape = extra.get("weight_shape") if isinstance(extra, dict) else None
        if shape is not None and list(shape) != self._weight_shape():
            raise ValueError(f"{prefix}packed_weight: the checkpoint's conv weight is [Cout, Cin/groups, KH, KW] = "
                             f"{list(shape)}, this layer's is {self._weight_shape()}")
        key = prefix + "packed_weight"
        packs = key in state_dict and not self._depthwise()  # depthwise: one plain [KH * KW, C] layout
        if packs and not ops.is_cuda_packed(state_dict[key]):
            # Each group's header must hold this layer's [Cout / groups, K]: the repacks below read the weights
            # by it (a rewritten header of the same size would otherwise load scrambled weights).
            stored = state_dict[key].cpu()
            if stored.dim() == 2 and stored.shape[0] == self.groups:
                cout, cin_g, kh, kw = self._weight_shape()
                want = (cout // self.groups, cin_g * kh * kw)
                for g in range(self.groups):
                    if ops.packed_shape(stored[g]) != want:
                        raise ValueError(f"{key}: group {g}'s packed weight is {ops.packed_shape(stored[g])}, expected "
                                         f"{want} ([Cout / groups, Cin / groups * KH * KW])")
        repacked = False
        if packs and ops.is_cuda_packed(state_dict[key]) != ops.is_cuda_packed(self.packed_weight):
            # packed for the other kind of device (as Int8Linear: by layout, wherever the tensor now is)
            w = self._unpack(state_dict[key])
            state_dict = {**state_dict, key: ops.pack_conv_weight(w.to(self.packed_weight.device), self.groups)}
            repacked = True
        if key in state_dict and tuple(state_dict[key].shape) != tuple(self.packed_weight.shape):
            raise ValueError(f"{key}: packed conv weight of shape {tuple(state_dict[key].shape)} does not fit this "
                             f"layer (expected {tuple(self.packed_weight.shape)})")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if packs and not repacked and not ops.is_cuda_packed(self.packed_weight):
            # as Int8Linear: column sums and header flags computed again from the loaded int8 values
            with torch.no_grad():
                self.packed_weight.copy_(ops.pack_conv_weight(self._unpack(self.packed_weight), self.groups))


class Int8Conv1d(Int8Conv2d):
    """1-D convolution (an nn.Conv1d replacement: audio front ends, temporal convolutions) on the 2-D int8
    kernels: x [N, C, L] runs as [N, C, 1, L] with a 1 x K kernel. Everything else is Int8Conv2d's (scales,
    activations, groups and depthwise, devices, state_dict); kernel_size / stride / padding / dilation are
    1-tuples, as nn.Conv1d's (models compute lengths from them). The output is [N, Cout, L_out] with the
    channels innermost in memory (channels_last), which the next Int8Conv1d reads as it is.
    Not part of the int8 hand-offs or residual rewrites of w8a8_static (its output is float)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, activation: str = "none", x_scale: Optional[float] = None,
                 out_scale: Optional[float] = None, weight_bits: int = 8):
        def one(v, name):
            v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
            if len(v) != 1 or not isinstance(v[0], int):
                raise ValueError(f"{name} must be an int or a 1-tuple for a 1-D convolution, got {v!r}")
            return v[0]
        k, st, p, d = (one(v, n) for v, n in ((kernel_size, "kernel_size"), (stride, "stride"), (padding, "padding"),
                                               (dilation, "dilation")))
        super().__init__(in_channels, out_channels, (1, k), (1, st), (0, p), (1, d), groups, bias, activation, x_scale,
                         out_scale, weight_bits)
        self.kernel_size, self.stride, self.padding, self.dilation = (k,), (st,), (p,), (d,)

    _float_type = nn.Conv1d

    def _geometry(self) -> Tuple[Tuple[int, int], ...]:
        return (1, self.kernel_size[0]), (1, self.stride[0]), (0, self.padding[0]), (1, self.dilation[0])

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (torch's name: layer(input=x) works)
        x = input
        if x.dim() == 2:  # unbatched [C, L], as nn.Conv1d takes
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if x.dim() != 3:
            raise ValueError(f"input must be 3-D [N, C, L] or unbatched 2-D [C, L], got shape {list(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Int8Conv1d({self.in_channels}, {self.out_channels}, ...) expected an input with "
                             f"{self.in_channels} channels (dim 1), got shape {list(x.shape)}")
        return self._forward_batched(x.unsqueeze(2)).squeeze(2)

    def int8_weight(self) -> Tensor:
        """The int8 weight [Cout, Cin/groups, K] this layer computes with."""
        return self._unpack(self.packed_weight).squeeze(2)
