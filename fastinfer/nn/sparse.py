"""SparseLinear: an nn.Linear whose weight is stored sparse and multiplied by our sparse kernels.

Three layouts (csrc/kernels/sparse/sparse.h; why three: csrc/kernels/sparse/LAYOUTS.md):
  csr16    fp32 values + uint16 column per value (very sparse layers: >= 75% zeros by default)
  csr8     fp32 values + one byte per value (groups of 16 within 64 columns; moderately sparse and 2:4)
  slot128  int8 values, W8A8: activations quantized per token, exact int8 products (value_dtype=torch.int8)
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import ops, reference
from ._common import check_float_layer

FORMATS = ("csr16", "csr8", "slot128")
# fp32 layers with fewer zeros than this take csr8: at batch 1 its windows of x in registers run at
# memory speed, while csr16's gathers cap the rate (4096^2, 2 threads: 50% zeros 0.77 vs 1.04 ms,
# 70% 0.48 vs 0.60 ms); from ~80% on csr16 is as fast at batch 1, faster batched, and smaller.
CSR8_BELOW = 0.75
_MAX_K = 65536


def _buffer_specs(fmt: str, n: int, k: int) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    """The buffers of a layout (bias apart): name -> (empty shape, dtype). Sizes that depend on the
    nonzeros start at 0 and take the loaded or packed size."""
    if fmt == "slot128":
        return {"row_ptr": ((-(-n // 16) * -(-k // 128) + 1,), torch.int32),  # grp_ptr of the kernels
                "cols": ((0,), torch.uint8), "values": ((0,), torch.int8),
                "weight_sum": ((n,), torch.int32), "weight_scale": ((n,), torch.float32)}
    specs = {"row_ptr": ((n + 1,), torch.int32), "cols": ((0,), torch.int16 if fmt == "csr16" else torch.uint8),
             "values": ((0,), torch.float32)}
    if fmt == "csr8":
        specs["group_base"] = ((0,), torch.int16)
    return specs


class SparseLinear(nn.Module):
    """y = x W^T + b with W stored sparse: only the nonzeros and their positions (any pattern:
    unstructured, 2:4 and block masks from fastinfer.prune alike). Inference only.

    value_dtype=torch.float32 (csr16 or csr8, exact fp32 weights) or torch.int8 (slot128: weights per
    output channel and activations per token in int8, like Int8Linear's w8a8_dynamic).
    Accepts x of any leading shape [..., in_features], fp32 or bf16 (output in x's dtype).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, value_dtype=torch.float32,
                 format: Optional[str] = None):
        super().__init__()
        if value_dtype not in (torch.float32, torch.int8):
            raise ValueError(f"value_dtype must be torch.float32 or torch.int8, got {value_dtype}")
        fmt = format or ("slot128" if value_dtype == torch.int8 else "csr16")
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS} or None, got {format!r}")
        if (fmt == "slot128") != (value_dtype == torch.int8):
            raise ValueError(f"format {fmt!r} does not hold {value_dtype} values (slot128 is the int8 layout; "
                             "csr16 and csr8 hold float32)")
        if not (1 <= in_features <= _MAX_K) or out_features < 1:
            raise ValueError(f"in_features must be in [1, {_MAX_K}] and out_features >= 1, got {in_features} "
                             f"and {out_features}")
        self.in_features, self.out_features, self.value_dtype = in_features, out_features, value_dtype
        self.pattern = "unstructured"
        self.nnz = 0
        self._set_format(fmt)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    def _set_format(self, fmt: str) -> None:
        for name in ("row_ptr", "cols", "values", "group_base", "weight_sum", "weight_scale"):
            self._buffers.pop(name, None)
        for name, (shape, dtype) in _buffer_specs(fmt, self.out_features, self.in_features).items():
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))
        self.format = fmt
        self.value_dtype = torch.int8 if fmt == "slot128" else torch.float32

    @classmethod
    def from_float(cls, linear: nn.Module, value_dtype=torch.float32, pattern: str = "unstructured",
                   format: Optional[str] = None) -> "SparseLinear":
        """Packs the nonzeros of linear.weight (a masked weight from fastinfer.prune counts as its
        effective, masked value). value_dtype=torch.int8 quantizes the weight per output channel
        (slot128); for float32 the layout is csr8 below CSR8_BELOW zeros and csr16 above, unless
        `format` says which."""
        check_float_layer(linear, nn.Linear, "linear")
        n, k = linear.out_features, linear.in_features
        w = linear.weight.detach().float()
        if value_dtype == torch.float32 and format is None:
            zeros = float((w == 0).sum()) / w.numel()
            format = "csr8" if zeros < CSR8_BELOW else "csr16"
        mod = cls(k, n, linear.bias is not None, value_dtype, format)
        mod.pattern = pattern
        with torch.no_grad():
            if mod.format == "slot128":
                w_q, scale = reference.quantize_weight_per_channel(w)
                mod.row_ptr, mod.cols, mod.values, mod.weight_sum = ops.pack_slot128(w_q)
                mod.weight_scale = scale
                mod.nnz = int((w_q != 0).sum())
            else:
                packed = ops.pack_csr16(w) if mod.format == "csr16" else ops.pack_csr8(w)
                if mod.format == "csr16":
                    mod.row_ptr, mod.cols, mod.values = packed
                else:
                    mod.row_ptr, mod.cols, mod.group_base, mod.values = packed
                mod.nnz = int((w != 0).sum())
            if linear.bias is not None:
                mod.bias = linear.bias.detach().float().clone()
        return mod

    def forward(self, x: Tensor) -> Tensor:
        if self.format == "slot128":
            return torch.ops.fastinfer.sparse_linear_int8(x, self.row_ptr, self.cols, self.values, self.weight_sum,
                                                          self.weight_scale, self.bias, self.in_features)
        return torch.ops.fastinfer.sparse_linear(x, self.row_ptr, self.cols, self.values, self.bias,
                                                 self.in_features, self._buffers.get("group_base"))

    def dense_weight(self) -> Tensor:
        """The dense fp32 weight this layer computes with (int8 values times their scale)."""
        if self.format == "slot128":
            w_q = reference.slot128_dense(self.row_ptr, self.cols, self.values, self.out_features, self.in_features)
            return w_q.float() * self.weight_scale[:, None]
        return reference.csr_dense(self.row_ptr, self.cols, self.values, self.in_features,
                                   self._buffers.get("group_base"))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers())

    def get_extra_state(self):
        return {"nnz": self.nnz, "pattern": self.pattern, "format": self.format}

    def set_extra_state(self, state):
        self.nnz, self.pattern = state["nnz"], state["pattern"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The layout and the sizes that depend on the nonzeros come from the file: take them first.
        extra = state_dict.get(prefix + "_extra_state")
        fmt = extra.get("format", "csr16") if isinstance(extra, dict) else self.format
        if fmt in FORMATS and fmt != self.format:
            self._set_format(fmt)
        for name in ("cols", "values", "group_base"):
            key = prefix + name
            if key in state_dict and name in self._buffers:
                self._buffers[name] = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        density = self.nnz / max(1, self.in_features * self.out_features)
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"format={self.format} {str(self.value_dtype).replace('torch.', '')}, pattern={self.pattern}, "
                f"sparsity={1 - density:.1%}, nbytes={self.nbytes:,}")
