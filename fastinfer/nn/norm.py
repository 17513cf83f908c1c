"""BatchNormQuant2d: an eval-mode nn.BatchNorm2d (+ ReLU) that writes the int8 input of the static Int8Conv2d
behind it. A BatchNorm that follows a concatenation or an add instead of a conv (DenseNet's dense layers and
transitions, pre-activation ResNets) cannot be folded into a weight; in front of a static conv its output was an
fp32 tensor that the conv read back only to quantize it. fastinfer.quantize(scheme='w8a8_static') swaps such a
BatchNorm for this module, which normalizes, applies the ReLU and quantizes in one pass over its input."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_scale  # (its import of fastinfer.ops registers torch.ops.fastinfer)

ACTIVATIONS = ("none", "relu")


class BatchNormQuant2d(nn.BatchNorm2d):
    """nn.BatchNorm2d in eval mode (running statistics, whatever .train() says: a quantized model is for inference)
    followed by an optional ReLU, whose output is int8 at ``out_scale`` (channels_last): the static conv behind it
    takes it as its int8 input (x_scale = out_scale). Per channel, y = x * scale[c] + shift[c] with
    scale = weight / sqrt(running_var + eps) and shift = bias - running_mean * scale (computed once, in float64,
    and again after a state_dict load or a device move), then ReLU, then
    clamp(round_half_even(y / out_scale), -127, 127): fastinfer.ops.quantize_channel_affine, our quantizer's
    kernels. It keeps nn.BatchNorm2d's parameters, buffers and state_dict keys. With out_scale None it computes
    the float BatchNorm (+ ReLU) in x's dtype. x: [N, C, H, W] (or unbatched [C, H, W]) float, CPU or CUDA; or
    int8 with ``x_scale`` set (value = x * x_scale: the int8 features a DenseNet's concatenation joins), whose
    float output (out_scale None: a norm no static conv follows) is act(float(x) * fl(x_scale * scale[c]) +
    shift[c]) in the dtype of the norm's running statistics, with torch ops."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True, activation: str = "none",
                 out_scale: Optional[float] = None, x_scale: Optional[float] = None, device=None, dtype=None):
        super().__init__(num_features, eps, affine=affine, track_running_stats=True, device=device, dtype=dtype)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        check_scale("out_scale", out_scale)
        check_scale("x_scale", x_scale)
        self.activation, self.out_scale, self.x_scale = activation, out_scale, x_scale
        self.register_buffer("affine_scale", torch.ones(num_features, device=device), persistent=False)
        self.register_buffer("affine_shift", torch.zeros(num_features, device=device), persistent=False)
        self._refresh()

    @classmethod
    def from_float(cls, bn: nn.BatchNorm2d, activation: str = "none",
                   out_scale: Optional[float] = None) -> "BatchNormQuant2d":
        """A copy of ``bn`` (its parameters and running statistics, same device) that applies ``activation`` and
        writes int8 at ``out_scale``. bn must keep running statistics (track_running_stats=True)."""
        if not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"bn must be a torch.nn.BatchNorm2d, got {type(bn).__name__}")
        if not bn.track_running_stats or bn.running_mean is None:
            raise ValueError("bn has no running statistics (track_running_stats=False): it normalizes with each "
                             "batch's own, which no fixed scale and shift reproduce")
        mod = cls(bn.num_features, bn.eps, bn.affine, activation, out_scale, device=bn.running_mean.device)
        with torch.no_grad():
            for name in ("weight", "bias"):
                if getattr(bn, name) is not None:
                    getattr(mod, name).copy_(getattr(bn, name))
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                getattr(mod, name).copy_(getattr(bn, name))
        mod._refresh()
        return mod

    def _refresh(self) -> None:
        """scale and shift from the parameters and running statistics (float64, rounded once to float32)."""
        with torch.no_grad():
            inv_std = torch.rsqrt(self.running_var.double() + self.eps)
            scale = inv_std * self.weight.double() if self.weight is not None else inv_std
            shift = -self.running_mean.double() * scale
            if self.bias is not None:
                shift = shift + self.bias.double()
            self.affine_scale = scale.float().contiguous()
            self.affine_shift = shift.float().contiguous()

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh()

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._refresh()  # fp32 again after a dtype cast, on the new device after a move
        return out

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (torch's name: layer(input=x) works)
        x = input
        if x.dim() == 3:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if x.dim() != 4:
            raise ValueError(f"BatchNormQuant2d expected a 4-D input [N, C, H, W] (or unbatched [C, H, W]), got "
                             f"shape {list(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNormQuant2d({self.num_features}) expected an input with {self.num_features} "
                             f"channels (dim 1), got shape {list(x.shape)}")
        if x.dtype == torch.int8:
            if self.x_scale is None:
                raise ValueError("BatchNormQuant2d got an int8 input, which needs x_scale (its scale) set")
            if self.out_scale is None:  # float out, in the dtype of the norm's own tensors (a model.half()'s fp16)
                s = self.affine_scale * torch.tensor(self.x_scale, dtype=torch.float32, device=x.device)
                y = x.float() * s.reshape(1, -1, 1, 1) + self.affine_shift.reshape(1, -1, 1, 1)
                return (F.relu(y) if self.activation == "relu" else y).to(self.running_mean.dtype)
            return torch.ops.fastinfer.quantize_channel_affine(x, self.affine_scale, self.affine_shift, self.out_scale,
                                                               self.activation == "relu", self.x_scale)
        if self.out_scale is None:
            y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
            return F.relu(y) if self.activation == "relu" else y
        if x.dtype not in (torch.float32, torch.bfloat16) and not (x.is_cuda and x.dtype == torch.float16):
            x = x.float()  # float64, or float16 on the CPU (a model cast with .half())
        return torch.ops.fastinfer.quantize_channel_affine(x, self.affine_scale, self.affine_shift, self.out_scale,
                                                           self.activation == "relu")

    def get_extra_state(self):
        # the file is authoritative for the scales, as Int8Conv2d's is (load_quantized swaps the norm in first)
        return {"batch_norm_quant": True, "activation": self.activation, "x_scale": self.x_scale,
                "out_scale": self.out_scale}

    def set_extra_state(self, state):
        self.activation, self.x_scale, self.out_scale = state["activation"], state["x_scale"], state["out_scale"]

    def scale_shift(self) -> Tuple[Tensor, Tensor]:
        """(scale, shift) float32 [C]: the per-channel map this layer applies before its ReLU."""
        return self.affine_scale, self.affine_shift

    def extra_repr(self) -> str:
        s = f"{self.num_features}, eps={self.eps}, affine={self.affine}, activation={self.activation}"
        if self.x_scale is not None:
            s += f", int8 in (scale {self.x_scale:.4g})"
        if self.out_scale is not None:
            s += f", int8 out (scale {self.out_scale:.4g})"
        return s
