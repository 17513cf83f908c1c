"""Typed wrappers for torch.ops.fastinfer.* with their fake (meta) implementations.

The wrappers add one check the C++ entry cannot phrase well (a tensor on a device this build
has no kernels for); every other check lives in csrc/cpu and raises a RuntimeError naming the
argument. Modules call torch.ops.fastinfer directly so torch.compile / torch.export see the op.
"""
from __future__ import annotations

import json
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _ext  # noqa: F401
from ._args import is_integer

_ops = torch.ops.fastinfer
BUILD = json.loads(_ops.build_info())  # {"cuda": kernels for CUDA built in, "cutlass_sm90": ..., "max_k": ...}
SUPPORTED_DEVICES = ("cpu",)  # devices with kernels for every op
# The int8 linear family (quantize_per_token, pack/unpack, int8_mm, int8_scaled_mm, the linear ops) and
# the int8 convolution (any groups) also have CUDA kernels in builds made with a CUDA torch;
# the csr/slot128 sparse ops are CPU only, the 2:4 sparse ops (pack_sparse24, sparse24_linear_int8) CUDA
# only (Hopper).
LINEAR_DEVICES = ("cpu", "cuda") if BUILD["cuda"] else ("cpu",)
_LINEAR_OPS = {"quantize_per_token", "pack_int8_weight", "unpack_int8_weight", "int8_mm", "int8_scaled_mm",
               "int8_linear_dynamic", "int8_linear_static", "int8_linear_weight_only", "pack_conv_weight",
               "int8_conv2d", "int8_max_pool2d", "int8_avg_pool2d", "int8_add",
               "quantize_channel_affine"}
_PACK_NB, _PACK_KB, _HEADER_BYTES = 16, 4, 64
MAX_K = BUILD["max_k"]  # the int8 kernels' K limit (op_args.h kMaxK: exact int32 accumulation)
CUDA_K_ALIGN = 16  # a CUDA packed weight is int8 [N, round_up(K, 16)] (PACKING.md)


def _check_devices(op: str, **tensors: Optional[Tensor]) -> None:
    # Every tensor on the CPU, the common case, is settled first: Tensor.is_cpu costs a fifth of .device.type,
    # and these wrappers run per call (measured: this check 2.1 -> 0.6 us with four tensors).
    if all(t is None or t.is_cpu for t in tensors.values()):
        return
    devices = LINEAR_DEVICES if op in _LINEAR_OPS else SUPPORTED_DEVICES
    for name, t in tensors.items():
        if t is not None and t.device.type not in devices:
            raise ValueError(
                f"fastinfer.{op}: {name} is on device '{t.device}', but this build of fastinfer has "
                f"kernels for {', '.join(devices)} only"
            )


def cuda_available() -> bool:
    """True when this build has the CUDA kernels and torch sees a GPU."""
    return bool(BUILD["cuda"]) and torch.cuda.is_available()


def cuda_last_kernel(family: str = "gemm") -> str:
    """The CUDA kernel that served this thread's latest call of a family on a GPU; '' before any.

    'gemm' (the int8 GEMM family): 'sm90_cutlass' (Hopper, CUTLASS TMA + wgmma, cooperative composition;
    'sm90_cutlass_pingpong', the default for bf16 outputs, and 'sm90_cutlass_wide': FASTINFER_SM90_VARIANT
    picks among the three), 'sm80_mma' (mma.sync, sm_80 and later), 'weight_only' (the few-row kernel of
    w8_only), 'weight_only_mma' (w8_only on tensor cores, 9-64 rows of bf16/fp16 x; 'weight_only_mma_k256' in
    its 256-k rounds, FASTINFER_WEIGHT_ONLY_ROUND_K=256), 'weight_only_cublas'
    (w8_only with more rows: widened weight + cuBLAS); 'sm90_sparse24' (the Hopper 2:4 GEMM; '_pingpong' /
    '_wide' as for sm90_cutlass, '_wide' the default for bf16 outputs); for int8_conv2d 'sm90_conv' (Hopper
    implicit GEMM, CUTLASS TMA im2col + wgmma; 'sm90_conv_narrow' in its 128 x 64 tile composition,
    'sm90_conv_small' in its 64 x 64 one: FASTINFER_SM90_CONV_VARIANT=small, a candidate),
    'conv_gathered' (rows gathered on the GPU, then the int8 GEMM), 'conv_grouped' (the same one group at a
    time), 'conv_grouped_direct' (narrow groups, at most 32 channels in and out: a direct kernel), 'dwconv'
    (depthwise; 'dwconv_strip' / 'dwconv_strip4', strips of 8 or 4 outputs a thread, with
    FASTINFER_DWCONV_KERNEL=strip / strip4 where they apply).
    'quantize' (the activation quantization of the w8a8 ops and of int8_conv2d's static float input):
    'quantize_vec' (rows of aligned 16-byte pieces up to 32768 bf16/fp16 or 16384 fp32 values: 16-byte loads,
    the row held in registers) or 'quantize_rows' (any other row)."""
    return _ops.cuda_last_kernel(family)


def is_cuda_packed(packed: Tensor) -> bool:
    """A CUDA packed weight (int8 [N, round_up(K, 16)]) rather than the CPU's header + n16k4 buffer."""
    return packed.dtype == torch.int8 and packed.dim() == 2


def packed_nbytes(n: int, k: int) -> int:
    """Bytes of a packed [n, k] int8 weight: header + int32 column sums + n16k4 blocks."""
    n_pad = -(-n // _PACK_NB) * _PACK_NB
    k_pad = -(-k // _PACK_KB) * _PACK_KB
    return _HEADER_BYTES + 4 * n_pad + n_pad * k_pad


def packed_shape(packed: Tensor) -> Tuple[int, int]:
    """(N, K) from a packed weight's header without touching its data; ValueError if it is not one."""
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() < _HEADER_BYTES:
        raise ValueError("not a packed weight: expected a 1-D uint8 tensor of at least 64 bytes")
    head = packed[:_HEADER_BYTES].contiguous()
    if bytes(head[:8].tolist()) != b"FIPACK8\0":
        raise ValueError("not a packed weight: bad magic")
    n, k = (int(v) for v in head[16:32].view(torch.int64))
    if n < 1 or k < 1 or packed.numel() != packed_nbytes(n, k):
        raise ValueError("packed weight: header shape does not match the buffer size")
    return n, k


def quantize_per_token(x: Tensor) -> Tuple[Tensor, Tensor]:
    """x [M, K] fp32/bf16 -> (int8 [M, K], fp32 scale [M]), symmetric, round half to even."""
    _check_devices("quantize_per_token", x=x)
    return _ops.quantize_per_token(x)


def pack_int8_weight(weight: Tensor) -> Tensor:
    """int8 [N, K] -> packed weight for the tensor's device (csrc/kernels/int8_gemm/PACKING.md): on the CPU a
    uint8 buffer (header, column sums, n16k4 blocks); on CUDA int8 [N, round_up(K, 16)], zero-padded."""
    _check_devices("pack_int8_weight", weight=weight)
    return _ops.pack_int8_weight(weight)


def unpack_int8_weight(packed: Tensor) -> Tensor:
    """The int8 weight of a packed buffer: [N, K] from a CPU buffer; from a CUDA one its padded
    [N, round_up(K, 16)] rows (K is not stored there: slice [:, :K])."""
    _check_devices("unpack_int8_weight", packed=packed)
    return _ops.unpack_int8_weight(packed)


def weight_only_tiles_shape(n: int, k: int) -> Tuple[int, int, int, int]:
    """The shape of pack_weight_only_tiles' layout for an [n, k] weight: [ceil(n / 8), ceil(k / 64), 8, 64]."""
    return -(-n // 8), -(-k // 64), 8, 64


def pack_weight_only_tiles(weight: Tensor) -> Tensor:
    """int8 [N, K] -> the weight-only kernels' Tiles8x64 layout (csrc/kernels/cuda/params.h, WeightLayout), on
    the weight's device: int8 [ceil(N / 8), ceil(K / 64), 8, 64], zero-padded, where
    ``tiles[a, b, r, c] == weight[8 a + r, 64 b + c]``: each tile of 8 rows x 64 columns is 512 contiguous bytes,
    and a group of 8 rows is one contiguous run. ``int8_linear_weight_only`` on CUDA takes it in place of
    ``pack_int8_weight``'s rows (N is then w_scale's length). A candidate layout: the tensor-core weight-only
    kernel copies 8 rows x 64 bytes per warp instruction, one 512-byte run from tiles instead of 8 pieces of
    rows far apart (benchmarks/bench_linear.py --device cuda times both); a w8_only Int8Linear on CUDA packs it
    under FASTINFER_WEIGHT_ONLY_LAYOUT=tiles (fastinfer.nn.linear.cuda_weight_only_layout)."""
    if not isinstance(weight, Tensor) or weight.dtype != torch.int8 or weight.dim() != 2 or min(weight.shape) < 1:
        got = f"{weight.dtype} of shape {list(weight.shape)}" if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"pack_weight_only_tiles: weight must be int8 [N, K] with N, K >= 1, got {got}")
    n, k = weight.shape
    n8, k64, _, _ = weight_only_tiles_shape(n, k)
    padded = weight.new_zeros((n8 * 8, k64 * 64))
    padded[:n, :k] = weight
    return padded.view(n8, 8, k64, 64).permute(0, 2, 1, 3).contiguous()


def unpack_weight_only_tiles(tiles: Tensor, n: int, k: int) -> Tensor:
    """The int8 [n, k] weight of pack_weight_only_tiles' layout."""
    want = weight_only_tiles_shape(n, k)
    if not isinstance(tiles, Tensor) or tiles.dtype != torch.int8 or tuple(tiles.shape) != want:
        got = f"{tiles.dtype} of shape {list(tiles.shape)}" if isinstance(tiles, Tensor) else type(tiles).__name__
        raise ValueError(f"unpack_weight_only_tiles: tiles must be int8 {list(want)} for n={n}, k={k}, got {got}")
    return tiles.permute(0, 2, 1, 3).reshape(tiles.shape[0] * 8, tiles.shape[1] * 64)[:n, :k].contiguous()


def int8_mm(a: Tensor, packed_b: Tensor, n: int) -> Tensor:
    """Raw int8 x int8 -> int32: a [M, K] times B^T, B the packed [n, K] weight."""
    _check_devices("int8_mm", a=a, packed_b=packed_b)
    return _ops.int8_mm(a, packed_b, n)


def int8_scaled_mm(a: Tensor, a_scale: Tensor, packed_b: Tensor, b_scale: Tensor, bias: Optional[Tensor] = None,
                   out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """(a . B^T) * a_scale[:, None] * b_scale[None, :] + bias, fp32 (default) or bf16 out."""
    _check_devices("int8_scaled_mm", a=a, a_scale=a_scale, packed_b=packed_b, b_scale=b_scale, bias=bias)
    return _ops.int8_scaled_mm(a, a_scale, packed_b, b_scale, bias, out_dtype)


def int8_linear_dynamic(x: Tensor, packed_w: Tensor, w_scale: Tensor, bias: Optional[Tensor] = None,
                        activation: str = "none", x_channel_scale: Optional[Tensor] = None) -> Tensor:
    """x [..., K] fp32/bf16, quantized per token on the fly, times the packed int8 weight;
    activation 'none' | 'relu' | 'relu6' | 'gelu' | 'hardswish' | 'silu' fused into the epilogue; x_channel_scale [K]
    multiplies x's channels before quantization (SmoothQuant)."""
    _check_devices("int8_linear_dynamic", x=x, packed_w=packed_w, w_scale=w_scale, bias=bias,
                   x_channel_scale=x_channel_scale)
    return _ops.int8_linear_dynamic(x, packed_w, w_scale, bias, activation, x_channel_scale)


def int8_linear_static(x: Tensor, x_scale: float, packed_w: Tensor, w_scale: Tensor, bias: Optional[Tensor] = None,
                       activation: str = "none", out_scale: Optional[float] = None,
                       x_channel_scale: Optional[Tensor] = None) -> Tensor:
    """Static W8A8: x quantized with the calibrated per-tensor x_scale; int8 output when out_scale is given."""
    _check_devices("int8_linear_static", x=x, packed_w=packed_w, w_scale=w_scale, bias=bias,
                   x_channel_scale=x_channel_scale)
    return _ops.int8_linear_static(x, x_scale, packed_w, w_scale, bias, activation, out_scale, x_channel_scale)


def pack_conv_weight(weight: Tensor, groups: int = 1) -> Tensor:
    """int8 [Cout, Cin/groups, KH, KW] -> the conv kernels' layout: on the CPU packed GEMM blocks per
    group, on a GPU int8 [Cout, round_up(KH*KW*Cin, 16)] rows ordered (kh, kw, c) (groups 1 only);
    depthwise [KH*KW, C] int8 on both."""
    _check_devices("pack_conv_weight", weight=weight)
    return _ops.pack_conv_weight(weight, groups)


def int8_conv2d(x: Tensor, packed_w: Tensor, w_scale: Tensor, bias: Optional[Tensor], kernel_size, stride=(1, 1),
                padding=(0, 0), dilation=(1, 1), groups: int = 1, x_scale: Optional[float] = None,
                out_scale: Optional[float] = None, activation: str = "none") -> Tensor:
    """int8 convolution, NHWC inside: x [N, C, H, W] fp32 (quantized per tensor: x_scale, or amax/127)
    or int8 (with x_scale); output [N, Cout, OH, OW] in channels_last memory, fp32 or int8 (out_scale).
    kernel_size, stride, padding, dilation: pairs, or an int for both dimensions (as for F.conv2d)."""
    _check_devices("int8_conv2d", x=x, packed_w=packed_w, w_scale=w_scale, bias=bias)
    return _ops.int8_conv2d(x, packed_w, w_scale, bias, list(pair(kernel_size, "kernel_size")),
                            list(pair(stride, "stride")), list(pair(padding, "padding")),
                            list(pair(dilation, "dilation")), groups, x_scale, out_scale, activation)


def int8_conv2d_into(out: Tensor, x: Tensor, packed_w: Tensor, w_scale: Tensor, bias: Optional[Tensor], kernel_size,
                     stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups: int = 1, x_scale: Optional[float] = None,
                     out_scale: Optional[float] = None, activation: str = "none") -> None:
    """int8_conv2d written into ``out`` (CPU), in place: out [N, Cout, OH, OW] of the output's dtype (int8 with
    out_scale, else float32), its channels contiguous and its pixels evenly spaced: channels_last, or a channel
    slice of a wider channels_last tensor (``buf[:, c0:c0 + Cout]``), whose other channels stay as they are. A
    concatenation's part written in its place (fastinfer.nn.concat). The same values as int8_conv2d."""
    _check_devices("int8_conv2d_into", out=out, x=x, packed_w=packed_w, w_scale=w_scale, bias=bias)
    _ops.int8_conv2d_into(out, x, packed_w, w_scale, bias, list(pair(kernel_size, "kernel_size")),
                          list(pair(stride, "stride")), list(pair(padding, "padding")),
                          list(pair(dilation, "dilation")), groups, x_scale, out_scale, activation)


def int8_max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """Max pooling of int8 activations [N, C, H, W] (any layout); out int8 [N, C, OH, OW] in channels_last
    memory. The arguments mean what they mean for torch.nn.functional.max_pool2d (stride None = kernel_size;
    an int stands for both dimensions); the result equals max_pool2d of x as floats, cast back."""
    _check_devices("int8_max_pool2d", x=x)
    k = list(pair(kernel_size, "kernel_size"))
    return _ops.int8_max_pool2d(x, k, k if stride is None else list(pair(stride, "stride")),
                                list(pair(padding, "padding")), list(pair(dilation, "dilation")), ceil_mode)


def int8_avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                    count_include_pad: bool = True, divisor_override: Optional[int] = None) -> Tensor:
    """Average pooling of int8 activations [N, C, H, W] (any layout) at one scale; out int8 [N, C, OH, OW] in
    channels_last memory: clamp(round_half_even(float(window sum) / float(divisor)), -127, 127), the divisor
    torch's avg_pool2d's. The arguments mean what they mean for torch.nn.functional.avg_pool2d (stride None =
    kernel_size). Within half an int8 step of avg_pool2d of x as floats."""
    _check_devices("int8_avg_pool2d", x=x)
    k = list(pair(kernel_size, "kernel_size"))
    return _ops.int8_avg_pool2d(x, k, k if stride is None else list(pair(stride, "stride")),
                                list(pair(padding, "padding")), ceil_mode, count_include_pad, divisor_override)


def int8_add(a: Tensor, b: Tensor, a_scale: Optional[float] = None, b_scale: Optional[float] = None,
             relu: bool = False, out_scale: Optional[float] = None) -> Tensor:
    """Residual add: a + b with each operand int8 (value = q * its scale) or float32 (no scale), the same
    shape; ReLU when asked; float32 out, or int8 requantized with out_scale. 4-D operands run and come out
    channels_last. fp32 arithmetic: (a * a_scale) + (b * b_scale), then the requantization rule."""
    _check_devices("int8_add", a=a, b=b)
    return _ops.int8_add(a, b, a_scale, b_scale, relu, out_scale)


def int8_channel_mean(x: Tensor, x_scale: float) -> Tensor:
    """Global average pool of an int8 activation x [N, C, H, W] (value = q * x_scale; CPU): float32 [N, C, 1, 1],
    (float(sum of x[n, c]) * x_scale) / (H * W), the sum exact (int32). Squeeze-excitation's pool on int8."""
    _check_devices("int8_channel_mean", x=x)
    return _ops.int8_channel_mean(x, x_scale)


def int8_channel_scale(x: Tensor, x_scale: float, gate: Tensor, out_scale: Optional[float] = None) -> Tensor:
    """Squeeze-excitation's multiply on an int8 activation x [N, C, H, W] (CPU): v = float(x) * fl(x_scale *
    gate[n, c]) with gate float32 [N, C] or [N, C, 1, 1]; float32 out, or int8 requantized with out_scale
    (clamp(round_half_even(v * (1 / out_scale)), -127, 127), NaN -> 0). Out in channels_last memory."""
    _check_devices("int8_channel_scale", x=x, gate=gate)
    return _ops.int8_channel_scale(x, x_scale, gate, out_scale)


def quantize_channel_affine(x: Tensor, scale: Tensor, shift: Tensor, out_scale: float, relu: bool = False,
                            x_scale: Optional[float] = None) -> Tensor:
    """An eval BatchNorm (+ ReLU) written as the int8 input of a static conv: x [N, C, H, W] float32 (bfloat16;
    float16 too on CUDA) or int8 with x_scale (value = x * x_scale), any memory format -> int8 [N, C, H, W] in
    channels_last memory, clamp(round_half_even(act(x * s[c] + shift[c]) * fl(1 / out_scale)), -127, 127) with
    s = scale (int8 x: s = fl(x_scale * scale[c])), each step one fp32 rounding, NaN -> 0. scale, shift: float32
    [C]."""
    _check_devices("quantize_channel_affine", x=x, scale=scale, shift=shift)
    return _ops.quantize_channel_affine(x, scale, shift, out_scale, relu, x_scale)


def int8_cat_channels_into(out: Tensor, parts, channel_offset: int = 0) -> None:
    """Writes ``parts`` (int8 [N, C_i, H, W] each, any layout, out's N, H and W) one after another into ``out``'s
    channels from ``channel_offset`` on: out[:, channel_offset:channel_offset + sum(C_i)] = torch.cat(parts, 1),
    in place (CPU). out: int8 [N, C, H, W] in channels_last memory, or a channel slice of a channels_last tensor
    (contiguous channels, evenly spaced pixels). No part may share memory with out."""
    _check_devices("int8_cat_channels_into", out=out, **{f"parts[{i}]": p for i, p in enumerate(parts)})
    _ops.int8_cat_channels_into(out, list(parts), channel_offset)


def pair(v, name: str = "a size") -> Tuple[int, int]:
    """An int or a 2-sequence of ints (kernel_size, stride, ...) as a pair of ints; anything else (a bool, a
    float, another length) is refused naming `name`."""
    t = type(v)  # plain ints first: isinstance against numbers.Integral costs ~0.5 us a test, per call
    if t is int:
        return v, v
    if (t is tuple or t is list) and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
        return v[0], v[1]
    if is_integer(v):
        return int(v), int(v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(is_integer(e) for e in v):
        return int(v[0]), int(v[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")


def int8_linear_weight_only(x: Tensor, packed_w: Tensor, w_scale: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """x [..., K] fp32/bf16 times the int8 weight dequantized on the fly (fp32 accumulation)."""
    _check_devices("int8_linear_weight_only", x=x, packed_w=packed_w, w_scale=w_scale, bias=bias)
    return _ops.int8_linear_weight_only(x, packed_w, w_scale, bias)


def pack_csr16(weight: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Dense fp32 [N, K] -> csr16 (row_ptr int32 [N + 1], cols int16 [entries], values fp32 [entries]):
    the nonzeros of each row in column order, padded to multiples of 16 (csrc/kernels/sparse/sparse.h)."""
    _check_devices("pack_csr16", weight=weight)
    return _ops.pack_csr16(weight)


def pack_csr8(weight: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Dense fp32 [N, K] -> csr8 (row_ptr, offsets uint8 [entries], group_base int16 [entries / 16], values):
    groups of 16 nonzeros that lie within 64 columns of their group_base."""
    _check_devices("pack_csr8", weight=weight)
    return _ops.pack_csr8(weight)


def pack_slot128(weight: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """int8 [N, K] -> slot128 (grp_ptr int32, idx uint8, values int8, w_sum int32 [N]): 64-byte groups per
    block of 16 rows x 128 columns, for sparse_linear_int8."""
    _check_devices("pack_slot128", weight=weight)
    return _ops.pack_slot128(weight)


def sparse_linear(x: Tensor, row_ptr: Tensor, cols: Tensor, values: Tensor, bias: Optional[Tensor],
                  in_features: int, group_base: Optional[Tensor] = None) -> Tensor:
    """x [..., K] times a csr16 sparse fp32 weight, or csr8 when group_base is given (cols then holds the
    uint8 offsets); fp32 accumulation, output in x's dtype."""
    _check_devices("sparse_linear", x=x, row_ptr=row_ptr, cols=cols, values=values, bias=bias, group_base=group_base)
    return _ops.sparse_linear(x, row_ptr, cols, values, bias, in_features, group_base)


def sparse_linear_int8(x: Tensor, grp_ptr: Tensor, idx: Tensor, values: Tensor, w_sum: Tensor, w_scale: Tensor,
                       bias: Optional[Tensor], in_features: int) -> Tensor:
    """Dynamic W8A8 on a slot128 weight: x [..., K] quantized per token, the sparse int8 product (exact),
    then float(acc) * x_scale * w_scale + bias like the dense int8 ops; output in x's dtype."""
    _check_devices("sparse_linear_int8", x=x, grp_ptr=grp_ptr, idx=idx, values=values, w_sum=w_sum,
                   w_scale=w_scale, bias=bias)
    return _ops.sparse_linear_int8(x, grp_ptr, idx, values, w_sum, w_scale, bias, in_features)


def _check_sparse24(op: str, arg: str, t: Tensor) -> None:
    if not BUILD.get("sparse24"):
        raise ValueError(f"fastinfer.{op}: this build has no 2:4 sparse CUDA kernels (they need a CUDA build with "
                         "the CUTLASS headers of the nvidia-cutlass package)")
    if t.device.type != "cuda":
        raise ValueError(f"fastinfer.{op}: {arg} is on device '{t.device}'; the 2:4 sparse kernels run on Hopper "
                         "GPUs only (on the CPU, SparseLinear's slot128 layout serves int8 sparse weights)")


def sparse24_available() -> bool:
    """True when this build has the Hopper 2:4 sparse kernels and the current GPU is a Hopper (9.x)."""
    return bool(BUILD.get("sparse24")) and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


def pack_sparse24(weight: Tensor) -> Tuple[Tensor, Tensor]:
    """A 2:4 sparse int8 [N, K] weight on a Hopper GPU -> (values int8, metadata uint8) in CUTLASS's
    compressed layout (zero-padded to N % 8 == 0, K % 128 == 0); refuses a weight that is not 2:4."""
    _check_sparse24("pack_sparse24", "weight", weight)
    return _ops.pack_sparse24(weight)


def sparse24_linear_int8(x: Tensor, values: Tensor, meta: Tensor, w_scale: Tensor, bias: Optional[Tensor],
                         in_features: int) -> Tensor:
    """Dynamic W8A8 on a pack_sparse24 weight (Hopper): x [..., K] quantized per token, the 2:4 sparse
    tensor-core GEMM with the dense path's fused epilogue; output in x's dtype."""
    _check_sparse24("sparse24_linear_int8", "x", x)
    return _ops.sparse24_linear_int8(x, values, meta, w_scale, bias, in_features)


def cpu_capabilities() -> dict:
    """What the CPU offers (CPUID + OS), the best path built, and the path in use now."""
    return json.loads(_ops.cpu_capabilities())


def set_isa_cap(isa: str) -> str:
    """Caps the CPU ISA at run time for the calls made on this thread (fastinfer.use_isa is the scoped
    form); returns the ISA now active (may be lower than asked)."""
    return _ops.set_isa_cap(isa)


def isa_cap() -> str:
    """This thread's run-time cap (set_isa_cap / use_isa; "amx", no cap, until one is set)."""
    return _ops.isa_cap()


def last_kernel(family: str) -> str:
    """Which ISA served the latest call on this thread of a kernel family: int8_gemm, w8_gemm, quantize, dwconv, sparse,
    conv_direct (the AMX or AVX-512 VNNI convolution that reads its padded input directly; "" when
    the latest non-depthwise convolution gathered rows for the int8 GEMM instead), gconv (the narrow-group
    convolution, every vector tier: groups of fewer than 64 output channels and a multiple of 4 input
    channels; "" when the latest convolution took another path), add (int8_add; 'ref' is the portable kernel),
    gate (int8_channel_mean / int8_channel_scale; 'ref' is the portable kernel), avg_pool (int8_avg_pool2d; 'ref'
    is the portable kernel) or quantize_planes (the tier that
    quantized the latest convolution's NCHW fp32 input straight into NHWC int8; "" when its input was not
    NCHW fp32).
    "dwconv_path" names the way the latest depthwise convolution took inside
    its kernel: "row_quads_paired", "row_quads" or "tap_groups" (AVX-512 VNNI, AMX), "row_quads_paired",
    "row_quads" or "tap_pairs" (AVX-VNNI), "" (AVX2 and the scalar kernel have one way). "conv_store" says
    whether the latest convolution asked for non-temporal fp32 stores ("stream": an fp32 output of 2 MiB or
    more, honoured by the AVX-512 VNNI direct and narrow-group kernels) or not ("cached"). "int8_gemm_step"
    names the step the latest int8 GEMM (int8_mm, int8_scaled_mm, the w8a8 linear ops, a one-group
    convolution on the GEMM kernels: direct or gathered rows; a narrow-group one, gconv) took on AVX2, chosen
    by its packed weight: "shifted" (every weight in [-64, 63], e.g. weight_bits=7), "sign" (no -128) or
    "widen"; "" on the other tiers, which have one step, and after a depthwise convolution or a grouped one
    on gathered rows. "w8_gemm_step" names how the latest int8_linear_weight_only on the CPU multiplied:
    "bf16_dot" (bf16 x on a CPU with AVX512_BF16, AVX-512 tiers: vdpbf16ps) or "fp32" (x, widened to fp32 if
    bf16, by fp32 FMAs). "add_path" names the way the latest int8_add took on the AVX-512 tiers: "int8_lines"
    (int8 + int8 -> int8 with every |y / out_scale| below 2^30: 64 elements at a time, the clamp by saturating
    packs) or "lanes" (16 at a time); "" on the other tiers and the portable kernel, which have one way.
    "conv_direct_mode" names how the latest convolution's direct kernel (conv_direct) read its padded input:
    "padded_width" (stride 1: tiles over the padded width), "rows" (tiles or register tiles within an output row),
    "stride_planes" (AMX, stride s > 1 with 12 <= OW < 16: the input split into s * s planes by row and column
    phase, each tap a stride-1 window of one), "row_segments" (fewer than 16 channels: a kernel row's taps as
    one K segment), "one_row_images" (AVX-512 VNNI, a plain 1x1 convolution with OW < 10: each image's pixels as
    one output row of register tiles), "rows_in_place" (register tiles within an output row reading a padded
    layer's int8 input in place: every tap they run lies inside the image, so no padded copy is written);
    "" when no direct kernel served. "conv_padded_rows" says whether the latest one-group convolution skipped
    the taps that read the zero padding: "skipped" (kernel rows above and below the image: the direct
    convolution of the VNNI and AVX2 tiers and the gathered-rows GEMM of AVX-512 VNNI), "skipped_taps" (kernel
    columns left and right of it too, and maybe rows: the direct convolution of the VNNI and AVX2 tiers), or
    "computed" (set_conv_padded_rows); "" after a depthwise or grouped convolution, or a plain 1x1 one run as a
    GEMM."""
    return _ops.last_kernel(family)


def output_cache_bytes() -> int:
    """The bytes fastinfer's CPU output cache holds: freed outputs of 256 KiB or more, kept by size for the next
    output of that size (README, "Large outputs and glibc")."""
    return _ops.output_cache_bytes()


def set_output_cache_limit(nbytes: int) -> int:
    """Sets the most bytes the CPU output cache may hold (default 512 MiB; 0: it keeps nothing, and every
    output is allocated and freed as torch's are); cached blocks over the new limit are freed at once, so
    ``set_output_cache_limit(0)`` followed by the old limit empties it. Returns the old limit."""
    if not is_integer(nbytes) or nbytes < 0:
        raise ValueError(f"nbytes must be an integer >= 0, got {nbytes!r}")
    return _ops.set_output_cache_limit(int(nbytes))


_PADDED_ROWS_MODES = ("auto", "always", "never")


def set_conv_padded_rows(mode: str) -> str:
    """When one-group convolutions skip the taps that read an output pixel's zero padding (kernel rows: the
    direct convolution of the VNNI and AVX2 tiers, the gathered-rows GEMM of AVX-512 VNNI; kernel columns: that
    direct convolution; README, "Taps in the padding"): "auto" (the default: where the saved products outweigh
    the column sums made per call), "always" or "never". The results are the same bits either way. Returns the previous mode; last_kernel("conv_padded_rows")
    says what the latest convolution did."""
    if mode not in _PADDED_ROWS_MODES:
        raise ValueError(f"set_conv_padded_rows: mode must be one of {', '.join(_PADDED_ROWS_MODES)}, got {mode!r}")
    return _PADDED_ROWS_MODES[_ops.set_conv_padded_rows(_PADDED_ROWS_MODES.index(mode))]


def set_amx_min_rows(rows: int) -> int:
    """Sets the int8 GEMM's shape bucket: on AMX, GEMMs with fewer rows run on the VNNI kernels.

    Default 9 (or FASTINFER_AMX_MIN_ROWS); 1 sends every shape through the tile kernel. Returns
    the previous value; the current one is in cpu_capabilities()["amx_min_rows"].
    """
    if not is_integer(rows) or rows < 1:
        raise ValueError(f"set_amx_min_rows: rows must be an int >= 1, got {rows!r}")
    return _ops.set_amx_min_rows(int(rows))


# ------------------------------------------------------------------ fake (meta) implementations

@torch.library.register_fake("fastinfer::quantize_per_token")
def _quantize_per_token_fake(x):
    torch._check(x.dim() == 2, lambda: "quantize_per_token: x must be 2-D")
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((x.shape[0],), dtype=torch.float32)


@torch.library.register_fake("fastinfer::pack_int8_weight")
def _pack_fake(weight):
    torch._check(weight.dim() == 2, lambda: "pack_int8_weight: weight must be 2-D")
    if weight.device.type == "cuda":
        k_pad = -(-weight.shape[1] // CUDA_K_ALIGN) * CUDA_K_ALIGN
        return weight.new_empty((weight.shape[0], k_pad), dtype=torch.int8)
    return weight.new_empty((packed_nbytes(weight.shape[0], weight.shape[1]),), dtype=torch.uint8)


@torch.library.register_fake("fastinfer::unpack_int8_weight")
def _unpack_fake(packed):
    if packed.device.type == "cuda":
        return packed.new_empty(packed.shape, dtype=torch.int8)
    ctx = torch.library.get_ctx()
    return packed.new_empty((ctx.new_dynamic_size(), ctx.new_dynamic_size()), dtype=torch.int8)


@torch.library.register_fake("fastinfer::int8_mm")
def _int8_mm_fake(a, packed_b, n):
    torch._check(a.dim() == 2, lambda: "int8_mm: a must be 2-D")
    return a.new_empty((a.shape[0], n), dtype=torch.int32)


@torch.library.register_fake("fastinfer::int8_scaled_mm")
def _int8_scaled_mm_fake(a, a_scale, packed_b, b_scale, bias=None, out_dtype=None):
    torch._check(a.dim() == 2, lambda: "int8_scaled_mm: a must be 2-D")
    return a.new_empty((a.shape[0], b_scale.shape[0]), dtype=out_dtype or torch.float32)


def _linear_fake(x, packed_w, w_scale, bias=None, activation="none", x_channel_scale=None):
    torch._check(x.dim() >= 1, lambda: "x must have at least 1 dimension")
    return x.new_empty((*x.shape[:-1], w_scale.shape[0]))


torch.library.register_fake("fastinfer::int8_linear_dynamic")(_linear_fake)
torch.library.register_fake("fastinfer::int8_linear_weight_only")(_linear_fake)


@torch.library.register_fake("fastinfer::int8_linear_static")
def _linear_static_fake(x, x_scale, packed_w, w_scale, bias=None, activation="none", out_scale=None,
                        x_channel_scale=None):
    torch._check(x.dim() >= 1, lambda: "x must have at least 1 dimension")
    return x.new_empty((*x.shape[:-1], w_scale.shape[0]), dtype=torch.int8 if out_scale is not None else x.dtype)


def conv_output_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@torch.library.register_fake("fastinfer::pack_conv_weight")
def _pack_conv_fake(weight, groups):
    cout, cin_g, kh, kw = weight.shape
    if groups > 1 and cin_g == 1 and cout == groups:
        return weight.new_empty((kh * kw, cout), dtype=torch.int8)
    if weight.device.type == "cuda":
        k = kh * kw * cin_g
        return weight.new_empty((cout, (k + CUDA_K_ALIGN - 1) // CUDA_K_ALIGN * CUDA_K_ALIGN), dtype=torch.int8)
    return weight.new_empty((groups, packed_nbytes(cout // groups, kh * kw * cin_g)), dtype=torch.uint8)


@torch.library.register_fake("fastinfer::int8_conv2d")
def _int8_conv2d_fake(x, packed_w, w_scale, bias, kernel_size, stride, padding, dilation, groups, x_scale=None,
                      out_scale=None, activation="none"):
    n, _, h, w = x.shape
    oh = conv_output_size(h, kernel_size[0], stride[0], padding[0], dilation[0])
    ow = conv_output_size(w, kernel_size[1], stride[1], padding[1], dilation[1])
    out = x.new_empty((n, w_scale.shape[0], oh, ow), dtype=torch.int8 if out_scale is not None else torch.float32)
    return out.contiguous(memory_format=torch.channels_last)


@torch.library.register_fake("fastinfer::int8_conv2d_into")
def _int8_conv2d_into_fake(out, x, packed_w, w_scale, bias, kernel_size, stride, padding, dilation, groups,
                           x_scale=None, out_scale=None, activation="none"):
    return None


def pool_output_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's max_pool2d output size (csrc/op_args.h window_out_size)."""
    out = conv_output_size(size + (s - 1 if ceil_mode else 0), k, s, p, d)  # s - 1 more: rounds up
    return out - 1 if ceil_mode and (out - 1) * s >= size + p else out


@torch.library.register_fake("fastinfer::int8_max_pool2d")
def _int8_max_pool2d_fake(x, kernel_size, stride, padding, dilation, ceil_mode=False):
    n, c, h, w = x.shape
    oh = pool_output_size(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = pool_output_size(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    return x.new_empty((n, c, oh, ow)).contiguous(memory_format=torch.channels_last)


@torch.library.register_fake("fastinfer::int8_avg_pool2d")
def _int8_avg_pool2d_fake(x, kernel_size, stride=(), padding=(0, 0), ceil_mode=False, count_include_pad=True,
                          divisor_override=None):
    n, c, h, w = x.shape
    stride = stride or kernel_size
    oh = pool_output_size(h, kernel_size[0], stride[0], padding[0], 1, ceil_mode)
    ow = pool_output_size(w, kernel_size[1], stride[1], padding[1], 1, ceil_mode)
    return x.new_empty((n, c, oh, ow)).contiguous(memory_format=torch.channels_last)


@torch.library.register_fake("fastinfer::int8_add")
def _int8_add_fake(a, b, a_scale=None, b_scale=None, relu=False, out_scale=None):
    out = a.new_empty(a.shape, dtype=torch.int8 if out_scale is not None else torch.float32)
    return out.contiguous(memory_format=torch.channels_last) if a.dim() == 4 else out


@torch.library.register_fake("fastinfer::int8_channel_mean")
def _int8_channel_mean_fake(x, x_scale):
    return x.new_empty((x.shape[0], x.shape[1], 1, 1), dtype=torch.float32)


@torch.library.register_fake("fastinfer::int8_channel_scale")
def _int8_channel_scale_fake(x, x_scale, gate, out_scale=None):
    out = x.new_empty(x.shape, dtype=torch.int8 if out_scale is not None else torch.float32)
    return out.contiguous(memory_format=torch.channels_last)


@torch.library.register_fake("fastinfer::quantize_channel_affine")
def _quantize_channel_affine_fake(x, scale, shift, out_scale, relu=False, x_scale=None):
    return x.new_empty(x.shape, dtype=torch.int8).contiguous(memory_format=torch.channels_last)


@torch.library.register_fake("fastinfer::int8_cat_channels_into")
def _int8_cat_channels_into_fake(out, parts, channel_offset=0):
    return None


def int8_peak_probe(iters: int) -> int:
    """Runs the active ISA's int8 multiply-accumulate on registers, on every thread; returns ops done.

    Time it to get the instruction's peak rate on this machine (benchmarks compare GEMMs to it).
    """
    return _ops.int8_peak_probe(iters)


@torch.library.register_fake("fastinfer::pack_csr16")
def _pack_csr16_fake(weight):
    torch._check(weight.dim() == 2, lambda: "pack_csr16: weight must be 2-D")
    entries = torch.library.get_ctx().new_dynamic_size()
    return (weight.new_empty((weight.shape[0] + 1,), dtype=torch.int32),
            weight.new_empty((entries,), dtype=torch.int16), weight.new_empty((entries,), dtype=torch.float32))


@torch.library.register_fake("fastinfer::pack_csr8")
def _pack_csr8_fake(weight):
    torch._check(weight.dim() == 2, lambda: "pack_csr8: weight must be 2-D")
    groups = torch.library.get_ctx().new_dynamic_size()
    return (weight.new_empty((weight.shape[0] + 1,), dtype=torch.int32),
            weight.new_empty((groups * 16,), dtype=torch.uint8), weight.new_empty((groups,), dtype=torch.int16),
            weight.new_empty((groups * 16,), dtype=torch.float32))


@torch.library.register_fake("fastinfer::pack_slot128")
def _pack_slot128_fake(weight):
    torch._check(weight.dim() == 2, lambda: "pack_slot128: weight must be 2-D")
    n, k = weight.shape
    groups = torch.library.get_ctx().new_dynamic_size()
    return (weight.new_empty((-(-n // 16) * -(-k // 128) + 1,), dtype=torch.int32),
            weight.new_empty((groups * 64,), dtype=torch.uint8), weight.new_empty((groups * 64,), dtype=torch.int8),
            weight.new_empty((n,), dtype=torch.int32))


@torch.library.register_fake("fastinfer::pack_sparse24")
def _pack_sparse24_fake(weight):
    torch._check(weight.dim() == 2, lambda: "pack_sparse24: weight must be 2-D")
    ctx = torch.library.get_ctx()
    return (weight.new_empty((ctx.new_dynamic_size(),), dtype=torch.int8),
            weight.new_empty((ctx.new_dynamic_size(),), dtype=torch.uint8))


@torch.library.register_fake("fastinfer::sparse24_linear_int8")
def _sparse24_linear_int8_fake(x, values, meta, w_scale, bias, in_features):
    return x.new_empty((*x.shape[:-1], w_scale.shape[0]))


@torch.library.register_fake("fastinfer::sparse_linear")
def _sparse_linear_fake(x, row_ptr, cols, values, bias, in_features, group_base=None):
    return x.new_empty((*x.shape[:-1], row_ptr.shape[0] - 1))


@torch.library.register_fake("fastinfer::sparse_linear_int8")
def _sparse_linear_int8_fake(x, grp_ptr, idx, values, w_sum, w_scale, bias, in_features):
    return x.new_empty((*x.shape[:-1], w_sum.shape[0]))
