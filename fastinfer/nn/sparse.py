"""SparseLinear: an nn.Linear whose weight is stored sparse (csr16: values + uint16 column indices,
each row padded to 16 entries) and multiplied by our sparse kernels; fp32 or int8 values."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ._common import check_float_layer

FORMAT = "csr16"
_PAD = 16  # entries per row are padded to a multiple of this (the vector kernels' width)


def pack_csr16(weight: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Dense [N, K] -> (row_ptr int32 [N + 1], cols int16 [nnz_padded], values [nnz_padded]) of the
    nonzeros, in column order per row, each row padded with (col 0, value 0) to a multiple of 16."""
    n, k = weight.shape
    if k > 65536:
        raise ValueError(f"in_features must be <= 65536 for uint16 column indices, got {k}")
    mask = weight != 0
    counts = mask.sum(dim=1)
    padded = (counts + _PAD - 1) // _PAD * _PAD
    row_ptr = torch.zeros(n + 1, dtype=torch.int64)
    row_ptr[1:] = torch.cumsum(padded, 0)
    rows, cols = mask.nonzero(as_tuple=True)  # row-major: rows ascending, columns ascending within a row
    first = torch.zeros(n + 1, dtype=torch.int64)
    first[1:] = torch.cumsum(counts, 0)
    dest = row_ptr[rows] + (torch.arange(rows.numel()) - first[rows])
    total = int(row_ptr[-1])
    if total >= 2 ** 31:
        raise ValueError(f"weight has {total:,} stored entries; the csr16 layout indexes them with int32 (< 2^31)")
    out_cols = torch.zeros(total, dtype=torch.int32)
    out_vals = torch.zeros(total, dtype=weight.dtype)
    out_cols[dest] = cols.to(torch.int32)
    out_vals[dest] = weight[rows, cols]
    # uint16 stored in an int16 tensor (torch's uint16 has few ops): same bits.
    out_cols = torch.where(out_cols >= 32768, out_cols - 65536, out_cols).to(torch.int16)
    return row_ptr.to(torch.int32), out_cols, out_vals


class SparseLinear(nn.Module):
    """y = x W^T + b with W sparse (unstructured, 2:4 or block patterns alike: only nonzeros are stored).

    Buffers: row_ptr, cols, values (fp32, or int8 with per-row weight_scale), bias. Inference only.
    Accepts x of any leading shape [..., in_features], fp32 or bf16 (output in x's dtype).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, value_dtype=torch.float32):
        super().__init__()
        if value_dtype not in (torch.float32, torch.int8):
            raise ValueError(f"value_dtype must be torch.float32 or torch.int8, got {value_dtype}")
        self.in_features, self.out_features, self.value_dtype = in_features, out_features, value_dtype
        self.pattern = "unstructured"
        self.nnz = 0
        self.register_buffer("row_ptr", torch.zeros(out_features + 1, dtype=torch.int32))
        self.register_buffer("cols", torch.zeros(0, dtype=torch.int16))
        self.register_buffer("values", torch.zeros(0, dtype=value_dtype))
        self.register_buffer("weight_scale", torch.ones(out_features) if value_dtype == torch.int8 else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, value_dtype=torch.float32, pattern: str = "unstructured") -> "SparseLinear":
        """Packs the nonzeros of linear.weight (a masked weight from fastinfer.prune counts as its
        effective, masked value). value_dtype=torch.int8 quantizes the nonzeros per output channel."""
        check_float_layer(linear, nn.Linear, "linear")
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, value_dtype)
        w = linear.weight.detach().float()
        mod.nnz = int((w != 0).sum())
        mod.pattern = pattern
        if value_dtype == torch.int8:
            amax = w.abs().amax(dim=1)
            scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
            w = torch.round(w / scale[:, None]).clamp(-127, 127)
            mod.weight_scale = scale
        mod.row_ptr, mod.cols, values = pack_csr16(w)
        mod.values = values.to(value_dtype)
        if linear.bias is not None:
            mod.bias = linear.bias.detach().float().clone()
        return mod

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.fastinfer.sparse_linear(x, self.row_ptr, self.cols, self.values, self.weight_scale, self.bias,
                                                 self.in_features)

    def dense_weight(self) -> Tensor:
        """The dense fp32 weight this layer computes with (int8 values times their scale)."""
        w = torch.zeros(self.out_features, self.in_features)
        counts = (self.row_ptr[1:] - self.row_ptr[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(self.out_features), counts)
        cols = self.cols.long() % 65536
        vals = self.values.float()
        if self.weight_scale is not None:
            vals = vals * self.weight_scale[rows]
        w.index_put_((rows, cols), vals, accumulate=True)  # padding entries add 0
        return w

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers())

    @property
    def format(self) -> str:
        return f"{FORMAT} {str(self.value_dtype).replace('torch.', '')}"

    def get_extra_state(self):
        return {"nnz": self.nnz, "pattern": self.pattern}

    def set_extra_state(self, state):
        self.nnz, self.pattern = state["nnz"], state["pattern"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("cols", "values"):  # sizes depend on the weights' nonzeros: take the loaded ones
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        density = self.nnz / max(1, self.in_features * self.out_features)
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"format={self.format}, pattern={self.pattern}, sparsity={1 - density:.1%}, "
                f"nbytes={self.nbytes:,}")
