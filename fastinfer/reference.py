"""Pure-PyTorch reference of every fastinfer op: the tests' oracle (slow, obviously correct).

Integer products are computed in int64 and are exact. Float epilogues follow the kernels'
order of operations (float(acc) * a_scale * b_scale + bias, fp32), see EPILOGUE.md.
"""
from __future__ import annotations

import operator
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
    scale = torch.where(ok, amax / torch.full_like(amax, 127.0), torch.zeros_like(amax))  # true division on any device
    scale = torch.where(finite, scale, torch.full_like(scale, float("nan")))
    return q, scale


WEIGHT_BITS = (8, 7)


def check_weight_bits(bits) -> int:
    """bits for the int8 weights: 8 ([-127, 127]) or 7 ([-63, 63]; AVX2's int8 GEMM runs without its sign step)."""
    try:
        value = operator.index(bits)  # ints, numpy ints; not floats, strings or None
    except TypeError:
        value = None
    if isinstance(bits, bool) or value not in WEIGHT_BITS:
        raise ValueError(f"weight_bits must be 8 or 7, got {bits!r}")
    return value


def quantize_weight_per_channel(w: Tensor, bits: int = 8) -> Tuple[Tensor, Tensor]:
    """Per-output-channel (dim 0) symmetric int8 for a Linear [N, K] or conv [N, C, KH, KW] weight;
    all-zero channels get scale 1. bits=7 rounds to [-63, 63] instead of [-127, 127] (scale amax / 63).
    A NaN or infinite weight has no int8 value and no finite scale: ValueError
    (it would have zeroed its channel, or made it NaN, without a word)."""
    qmax = float(2 ** (check_weight_bits(bits) - 1) - 1)
    wf = w.detach().float()
    amax = wf.abs().reshape(wf.shape[0], -1).amax(dim=1)
    bad = ~torch.isfinite(amax)
    if bool(bad.any()):
        channels = bad.nonzero().flatten().tolist()
        raise ValueError(f"the weight holds NaN or infinite values (output channel(s) {channels[:8]}"
                         f"{' ...' if len(channels) > 8 else ''}): int8 cannot represent them; fix or drop the "
                         f"layer before quantizing it")
    # amax / qmax as a true division on every device: on a GPU, a tensor divided by a Python number is
    # multiplied by its reciprocal, which differs in the last bit for some amax (a layer quantized on the
    # GPU must get the CPU's scales).
    scale = torch.where(amax > 0, amax / torch.full_like(amax, qmax), torch.ones_like(amax))
    q = torch.round(wf / scale.reshape(-1, *([1] * (wf.dim() - 1)))).clamp(-qmax, qmax).to(torch.int8)
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


def int8_linear_dynamic(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Optional[Tensor] = None,
                        x_channel_scale: Optional[Tensor] = None) -> Tensor:
    """Dynamic W8A8: (x * x_channel_scale), quantized per token, int8 GEMM, dequantize, add bias; x's dtype out."""
    x2 = x.reshape(-1, x.shape[-1])
    if x_channel_scale is not None:
        x2 = x2.float() * x_channel_scale.float()
    q, s = quantize_per_token(x2)
    y = int8_scaled_mm(q, s, w_q, w_scale, bias, out_dtype=x.dtype)
    return y.reshape(*x.shape[:-1], w_q.shape[0])


def int8_linear_weight_only(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Weight-only int8: x (as fp32) times w_q, each output channel scaled, bias added."""
    y = (x.float() @ w_q.float().t()) * w_scale.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def _f32(v) -> Tensor:
    return torch.tensor(v, dtype=torch.float32)


def apply_activation(y: Tensor, activation: str) -> Tensor:
    """'none' | 'relu' | 'relu6' | 'gelu' | 'hardswish' | 'silu', NaN kept (the kernels' rule: y < 0 -> 0,
    y > 6 -> 6; gelu is the erf form and silu y / (1 + exp(-y)), whose erf and exp the kernels approximate to
    ~1e-6: compare gelu and silu outputs with a tolerance; hardswish is y * clamp(y + 3, 0, 6) / 6, one fp32
    rounding an operation, as the kernels: exact)."""
    if activation == "none":
        return y
    if activation == "gelu":
        return torch.nn.functional.gelu(y)
    if activation == "hardswish":
        return y * torch.clamp(y + 3, 0, 6) / 6
    if activation == "silu":
        return torch.nn.functional.silu(y)
    y = torch.where(y < 0, torch.zeros_like(y), y)
    return torch.where(y > 6, torch.full_like(y, 6.0), y) if activation == "relu6" else y


def quantize_static(x: Tensor, scale: float) -> Tensor:
    """Per-tensor static int8: clamp(round_half_even(x * (1 / scale)), -127, 127); NaN -> 0."""
    q = torch.round(x.float() * (_f32(1.0) / _f32(scale))).clamp(-127, 127)
    return torch.nan_to_num(q, nan=0.0).to(torch.int8)


def requantize(y: Tensor, out_scale: float) -> Tensor:
    return quantize_static(y, out_scale)


def _epilogue(acc: Tensor, a_scale, w_scale: Tensor, bias: Optional[Tensor], activation: str,
              out_scale: Optional[float], out_dtype: torch.dtype, channel_dim: int) -> Tensor:
    shape = [1] * acc.dim()
    shape[channel_dim] = -1
    y = acc.float() * a_scale * w_scale.float().reshape(shape)
    if bias is not None:
        y = y + bias.float().reshape(shape)
    y = apply_activation(y, activation)
    return requantize(y, out_scale) if out_scale is not None else y.to(out_dtype)


def int8_linear_static(x: Tensor, x_scale: float, w_q: Tensor, w_scale: Tensor, bias: Optional[Tensor] = None,
                       activation: str = "none", out_scale: Optional[float] = None,
                       x_channel_scale: Optional[Tensor] = None) -> Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    if x_channel_scale is not None:
        x2 = x2.float() * x_channel_scale.float()
    q = quantize_static(x2, x_scale)
    acc = int8_mm(q, w_q)
    y = _epilogue(acc, _f32(x_scale), w_scale, bias, activation, out_scale, x.dtype, 1)
    return y.reshape(*x.shape[:-1], w_q.shape[0])


def conv_input_scale(x: Tensor) -> Tensor:
    """Dynamic per-tensor activation scale of int8_conv2d: amax / 127 (true division), NaN if non-finite."""
    amax = x.float().abs().max() if x.numel() else torch.zeros(())
    return torch.where(torch.isfinite(amax), amax / torch.full_like(amax, 127.0), torch.full_like(amax, float("nan")))


def int8_conv2d(x: Tensor, w_q: Tensor, w_scale: Tensor, bias: Optional[Tensor], stride=(1, 1), padding=(0, 0),
                dilation=(1, 1), groups: int = 1, x_scale: Optional[float] = None, out_scale: Optional[float] = None,
                activation: str = "none") -> Tensor:
    """int8 conv: x quantized per tensor (static x_scale or amax/127), exact integer accumulation (float64
    conv of int8 values is exact at these sizes), the kernels' fp32 epilogue, optional requantization."""
    if x.dtype == torch.int8:
        q, a_scale = x, _f32(x_scale)
    else:
        a_scale = _f32(x_scale) if x_scale is not None else conv_input_scale(x)
        if bool(torch.isfinite(a_scale)) and float(a_scale) > 0:
            q = quantize_static(x, float(a_scale)) if x_scale is not None else \
                torch.round(x.float() * (_f32(1.0) / a_scale)).clamp(-127, 127).nan_to_num(0.0).to(torch.int8)
        else:
            q = torch.zeros_like(x, dtype=torch.int8)
    acc = torch.nn.functional.conv2d(q.double(), w_q.double(), None, stride, padding, dilation, groups)
    return _conv_epilogue(acc, a_scale, w_scale, bias, activation, out_scale)


def int8_max_pool2d(x: Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool = False) -> Tensor:
    """Max pooling of int8 values: torch's float max_pool2d of them (exact), cast back."""
    return torch.nn.functional.max_pool2d(x.float(), kernel_size, stride, padding, dilation, ceil_mode).to(torch.int8)


def int8_add(a: Tensor, b: Tensor, a_scale: Optional[float] = None, b_scale: Optional[float] = None,
             relu: bool = False, out_scale: Optional[float] = None) -> Tensor:
    """(a * a_scale) + (b * b_scale) in fp32 (an fp32 operand as is), ReLU, optional requantization."""
    def value(t, scale):
        return t.float() * _f32(scale) if t.dtype == torch.int8 else t
    y = value(a, a_scale) + value(b, b_scale)
    if relu:
        y = apply_activation(y, "relu")
    return requantize(y, out_scale) if out_scale is not None else y


def _conv_epilogue(acc: Tensor, a_scale: Tensor, w_scale: Tensor, bias: Optional[Tensor], activation: str,
                   out_scale: Optional[float]) -> Tensor:
    """The convolution's folded epilogue (EPILOGUE.md, "Convolutions"): s = a_scale * w_scale, and for an
    int8 output with activation none/relu also s * out_inv and bias * out_inv; y = act(acc * s + b)."""
    s = a_scale * w_scale.float()
    b = bias.float() if bias is not None else None
    fold_inv = out_scale is not None and activation in ("none", "relu")
    if fold_inv:
        inv = _f32(1.0) / _f32(out_scale)
        s = s * inv
        b = b * inv if b is not None else None
    y = acc.float() * s.reshape(1, -1, 1, 1)
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    y = apply_activation(y, activation)
    if out_scale is None:
        return y
    return requantize(y, 1.0 if fold_inv else out_scale)


# ------------------------------------------------------------------ sparse layouts (csrc/kernels/sparse/sparse.h)

def csr_dense(row_ptr: Tensor, cols: Tensor, values: Tensor, in_features: int,
              group_base: Optional[Tensor] = None) -> Tensor:
    """The dense fp32 [N, K] weight of a csr16 layout, or of a csr8 one when group_base is given."""
    n = row_ptr.numel() - 1
    rows = torch.repeat_interleave(torch.arange(n), (row_ptr[1:] - row_ptr[:-1]).long())
    if group_base is None:
        col = cols.long() % 65536  # uint16 stored in int16
    else:
        col = (group_base.long() % 65536).repeat_interleave(16) + (cols.long() & 63)
    w = torch.zeros(n, in_features, dtype=torch.float64)
    w.index_put_((rows, col), values.double(), accumulate=True)  # padding entries add 0
    return w.float()


def slot128_dense(grp_ptr: Tensor, idx: Tensor, values: Tensor, out_features: int, in_features: int) -> Tensor:
    """The dense int8 [N, K] weight of a slot128 layout."""
    segs = -(-in_features // 128)
    groups = values.numel() // 64
    cell = torch.repeat_interleave(torch.arange(grp_ptr.numel() - 1), (grp_ptr[1:] - grp_ptr[:-1]).long())
    block, seg = (cell // segs).repeat_interleave(64), (cell % segs).repeat_interleave(64)
    lane = torch.arange(64).repeat(groups) // 4
    rows, cols = block * 16 + lane, seg * 128 + (idx.long() & 127)
    keep = (values != 0) & (rows < out_features)
    w = torch.zeros(out_features, segs * 128, dtype=torch.int64)
    w.index_put_((rows[keep], cols[keep]), values[keep].long(), accumulate=True)
    return w[:, :in_features].to(torch.int8)


def slot128_row_sums(grp_ptr: Tensor, values: Tensor, out_features: int, in_features: int) -> Optional[Tensor]:
    """Per output channel, the int32 sum of its stored slot values, whatever their columns: the w_sum that
    pack_slot128 writes (the +128 correction of the kernels that multiply q + 128). None for a layout whose
    offsets do not fit the shape (the op refuses it with a clear error)."""
    blocks, segs = -(-out_features // 16), -(-in_features // 128)
    if grp_ptr.dim() != 1 or grp_ptr.numel() != blocks * segs + 1 or values.numel() % 64:
        return None
    counts = (grp_ptr[1:] - grp_ptr[:-1]).long()
    if int(grp_ptr[0]) != 0 or int(grp_ptr[-1]) * 64 != values.numel() or bool((counts < 0).any()):
        return None
    block = torch.repeat_interleave(torch.arange(blocks * segs, device=values.device) // segs, counts)
    per_group = values.reshape(-1, 16, 4).sum(dim=-1, dtype=torch.int32)  # [groups, 16 rows]
    sums = torch.zeros(blocks, 16, dtype=torch.int32, device=values.device).index_add_(0, block, per_group)
    return sums.reshape(-1)[:out_features].clone()


def sparse_linear(x: Tensor, row_ptr: Tensor, cols: Tensor, values: Tensor, bias: Optional[Tensor], in_features: int,
                  group_base: Optional[Tensor] = None) -> Tensor:
    """x times the csr16/csr8 weight, in float64 (the kernels sum in fp32 in another order: compare
    with a tolerance)."""
    w = csr_dense(row_ptr, cols, values, in_features, group_base).double()
    y = x.reshape(-1, in_features).double() @ w.t()
    if bias is not None:
        y = y + bias.double()
    return y.float().reshape(*x.shape[:-1], w.shape[0]).to(x.dtype)


def sparse_linear_int8(x: Tensor, grp_ptr: Tensor, idx: Tensor, values: Tensor, w_sum: Tensor, w_scale: Tensor,
                       bias: Optional[Tensor], in_features: int) -> Tensor:
    """Dynamic W8A8 on a slot128 weight: per-token quantization, exact int product, fp32 epilogue;
    bit-exact with the kernels."""
    w_q = slot128_dense(grp_ptr, idx, values, w_sum.numel(), in_features)
    return int8_linear_dynamic(x, w_q, w_scale, bias)


def int8_channel_mean(x: Tensor, x_scale: float) -> Tensor:
    """Global average pool of int8 x [N, C, H, W] (value = q * x_scale): (float(sum of q) * x_scale) / (H * W),
    the sum exact (int64 here; the kernel's int32 holds it for up to 2^24 pixels)."""
    s = x.to(torch.int64).sum((2, 3), keepdim=True).float()
    return s * _f32(x_scale) / _f32(float(x.shape[2] * x.shape[3]))


def int8_channel_scale(x: Tensor, x_scale: float, gate: Tensor, out_scale: Optional[float] = None) -> Tensor:
    """v = float(q) * fl(x_scale * gate[n, c]); fp32 out, or requantize(v, out_scale)."""
    f = gate.float().reshape(x.shape[0], x.shape[1], 1, 1) * _f32(x_scale)
    v = x.float() * f
    return v if out_scale is None else requantize(v, out_scale)


def quantize_channel_affine(x: Tensor, scale: Tensor, shift: Tensor, out_scale: float, relu: bool = False,
                            x_scale: Optional[float] = None) -> Tensor:
    """int8 [N, C, H, W] (channels_last) of an eval BatchNorm (+ ReLU) written for a static conv:
    quantize_static(act(x * s[c] + shift[c]), out_scale) with s = scale, or fl(x_scale * scale) for int8 x, each
    step one fp32 rounding; the ReLU maps NaN to 0."""
    c = (1, -1, 1, 1)
    s = scale.float() if x_scale is None else scale.float() * _f32(x_scale)
    y = x.float() * s.reshape(c)
    y = y + shift.float().reshape(c)
    if relu:
        y = torch.where(y > 0, y, torch.zeros_like(y))
    return quantize_static(y, out_scale).contiguous(memory_format=torch.channels_last)


def int8_avg_pool2d(x: Tensor, kernel_size, stride, padding, ceil_mode: bool = False, count_include_pad: bool = True,
                    divisor_override: Optional[int] = None) -> Tensor:
    """clamp(round_half_even(float32(window sum) / float32(divisor)), -127, 127) with torch's avg_pool2d divisor:
    the sums and the divisors taken from avg_pool2d itself in float64 (exact for these integers)."""
    F = torch.nn.functional
    args = (kernel_size, stride, padding, ceil_mode)
    sums = F.avg_pool2d(x.double(), *args, count_include_pad, divisor_override=1)
    if divisor_override is not None:
        div = torch.full_like(sums, float(divisor_override))
    else:
        ones = torch.ones_like(x[:1, :1], dtype=torch.float64)
        taps = F.avg_pool2d(ones, *args, count_include_pad, divisor_override=1)
        div = torch.round(taps / F.avg_pool2d(ones, *args, count_include_pad))
    q = torch.round(sums.float() / div.float()).clamp(-127, 127)
    return q.to(torch.int8).contiguous(memory_format=torch.channels_last)


def int8_cat_channels_into(out: Tensor, parts, channel_offset: int = 0) -> None:
    """out[:, channel_offset:channel_offset + sum of the parts' channels] = torch.cat(parts, 1), in place."""
    joined = torch.cat(list(parts), 1)
    out[:, channel_offset:channel_offset + joined.shape[1]] = joined
