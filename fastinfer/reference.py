"""Pure-PyTorch reference of every fastinfer op: the tests' oracle (slow, obviously correct).

Integer products are computed in int64 and are exact. Float epilogues follow the kernels'
order of operations (float(acc) * a_scale * b_scale + bias, fp32), see EPILOGUE.md.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def quantize_per_token(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-row symmetric int8: amax/127 scales, round half to even, clamp to [-127, 127].

    Rows that contain NaN or Inf get scale NaN and q = 0; all-zero rows (or rows whose amax is so
    small that 127 / amax overflows) get scale 0 and q = 0.
    """
    xf = x.float()
    amax = xf.abs().amax(dim=1) if x.shape[1] > 0 else xf.new_zeros(x.shape[0])
    finite = torch.isfinite(xf).all(dim=1)
    inv = torch.full_like(amax, 127.0) / amax  # true division (127.0 / t is reciprocal * 127)
    ok = finite & (amax > 0) & torch.isfinite(inv)
    inv = torch.where(ok, inv, torch.zeros_like(inv))
    q = torch.round(xf * inv[:, None]).clamp(-127, 127)
    q = torch.where(ok[:, None], q, torch.zeros_like(q)).to(torch.int8)
    scale = torch.where(ok, amax / 127.0, torch.zeros_like(amax))
    scale = torch.where(finite, scale, torch.full_like(scale, float("nan")))
    return q, scale


def quantize_weight_per_channel(w: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-output-channel symmetric int8 for a [N, K] weight; all-zero rows get scale 1."""
    wf = w.detach().float()
    amax = wf.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(wf / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def int8_mm(a: Tensor, b: Tensor) -> Tensor:
    """a [M, K] int8 times b [N, K] int8 transposed -> int32 [M, N], exact."""
    return (a.long() @ b.long().t()).to(torch.int32)


def int8_scaled_mm(a: Tensor, a_scale: Tensor, b: Tensor, b_scale: Tensor, bias: Optional[Tensor] = None,
                   out_dtype: Optional[torch.dtype] = None) -> Tensor:
    acc = int8_mm(a, b).float()
    y = acc * a_scale.float()[:, None] * b_scale.float()[None, :]
    if bias is not None:
        y = y + bias.float()[None, :]
    return y.to(out_dtype or torch.float32)


def int8_linear_dynamic(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Dynamic W8A8: quantize x per token, int8 GEMM, dequantize, add bias; x's dtype out."""
    x2 = x.reshape(-1, x.shape[-1])
    q, s = quantize_per_token(x2)
    y = int8_scaled_mm(q, s, w_q, w_scale, bias, out_dtype=x.dtype)
    return y.reshape(*x.shape[:-1], w_q.shape[0])


def int8_linear_weight_only(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Weight-only int8: x (as fp32) times w_q, each output channel scaled, bias added."""
    y = (x.float() @ w_q.float().t()) * w_scale.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
