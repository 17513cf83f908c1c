"""SparseLinear: an nn.Linear whose weight is stored sparse and multiplied by our sparse kernels.

CPU layouts (csrc/kernels/sparse/sparse.h; why three: csrc/kernels/sparse/LAYOUTS.md):
  csr16     fp32 values + uint16 column per value (very sparse layers: >= 75% zeros by default)
  csr8      fp32 values + one byte per value (groups of 16 within 64 columns; moderately sparse and 2:4)
  slot128   int8 values, W8A8: activations quantized per token, exact int8 products (value_dtype=torch.int8)
GPU layout (Hopper, csrc/kernels/cuda/sm90_sparse_gemm.cuh):
  sparse24  int8 2:4 weights compressed for the sparse tensor cores (CUTLASS), W8A8 like slot128
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import ops, reference
from ._common import ComputedWeight, LinearKernels, check_float_layer

FORMATS = ("csr16", "csr8", "slot128", "sparse24")
PATTERNS = ("unstructured", "2:4", "block")  # SparseLinear.pattern: how the weight was pruned
INT8_FORMATS = ("slot128", "sparse24")
# fp32 layers with fewer zeros than this take csr8: at batch 1 its windows of x in registers run at
# memory speed, while csr16's gathers cap the rate (4096^2, 2 threads: 50% zeros 0.77 vs 1.04 ms,
# 70% 0.48 vs 0.60 ms); from ~80% on csr16 is as fast at batch 1, faster batched, and smaller.
CSR8_BELOW = 0.75
MAX_K = 65536  # in_features: csr16 stores 16-bit columns


def pattern_label_ok(label) -> bool:
    """A pattern name, or fastinfer.prune's label of a mask: 'block4x16' for a block size, names joined by '+'
    for a layer pruned more than once ('2:4+unstructured')."""
    return isinstance(label, str) and all(p in PATTERNS or re.fullmatch(r"block[1-9]\d*x[1-9]\d*", p)
                                          for p in label.split("+"))


def _buffer_specs(fmt: str, n: int, k: int) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    """The buffers of a layout (bias apart): name -> (empty shape, dtype). Sizes that depend on the
    nonzeros start at 0 and take the loaded or packed size."""
    if fmt == "sparse24":  # compressed values and metadata: sizes from pack_sparse24
        return {"values": ((0,), torch.int8), "meta": ((0,), torch.uint8), "weight_scale": ((n,), torch.float32)}
    if fmt == "slot128":
        return {"row_ptr": ((-(-n // 16) * -(-k // 128) + 1,), torch.int32),  # grp_ptr of the kernels
                "cols": ((0,), torch.uint8), "values": ((0,), torch.int8),
                "weight_sum": ((n,), torch.int32), "weight_scale": ((n,), torch.float32)}
    specs = {"row_ptr": ((n + 1,), torch.int32), "cols": ((0,), torch.int16 if fmt == "csr16" else torch.uint8),
             "values": ((0,), torch.float32)}
    if fmt == "csr8":
        specs["group_base"] = ((0,), torch.int16)
    return specs


class SparseLinear(LinearKernels, ComputedWeight):
    """y = x W^T + b with W stored sparse: only the nonzeros and their positions (any pattern:
    unstructured, 2:4 and block masks from fastinfer.prune alike). Inference only.

    value_dtype=torch.float32 (csr16 or csr8, exact fp32 weights) or torch.int8 (slot128 on the CPU,
    sparse24 on a Hopper GPU for 2:4 weights: weights per output channel and activations per token in
    int8, like Int8Linear's w8a8_dynamic). A move between the CPU and the GPU repacks int8 layers
    (slot128 <-> sparse24; the GPU takes only 2:4 weights); the fp32 layouts run on the CPU only.
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
        if (fmt in INT8_FORMATS) != (value_dtype == torch.int8):
            raise ValueError(f"format {fmt!r} does not hold {value_dtype} values (slot128 and sparse24 are the "
                             "int8 layouts; csr16 and csr8 hold float32)")
        if not (1 <= in_features <= MAX_K) or out_features < 1:
            raise ValueError(f"in_features must be in [1, {MAX_K}] and out_features >= 1, got {in_features} "
                             f"and {out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.pattern = "unstructured"
        self.nnz = 0
        self._set_format(fmt)  # sets format and value_dtype (the layout's value type)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    def _set_format(self, fmt: str) -> None:
        for name in ("row_ptr", "cols", "values", "group_base", "weight_sum", "weight_scale", "meta"):
            self._buffers.pop(name, None)
        for name, (shape, dtype) in _buffer_specs(fmt, self.out_features, self.in_features).items():
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))
        self.format = fmt
        self.value_dtype = torch.int8 if fmt in INT8_FORMATS else torch.float32

    @classmethod
    def from_float(cls, linear: nn.Module, value_dtype=torch.float32, pattern: str = "unstructured",
                   format: Optional[str] = None) -> "SparseLinear":
        """Packs the nonzeros of linear.weight (a masked weight from fastinfer.prune counts as its
        effective, masked value). value_dtype=torch.int8 quantizes the weight per output channel
        (slot128 on the CPU; sparse24 for a layer on a Hopper GPU, whose weight must be 2:4); for
        float32 the layout is csr8 below CSR8_BELOW zeros and csr16 above, unless `format` says which."""
        on_gpu = isinstance(linear, nn.Linear) and linear.weight.device.type == "cuda"
        check_float_layer(linear, nn.Linear, "linear", ("cpu", "cuda") if on_gpu else None)
        if not pattern_label_ok(pattern):  # what the weight was pruned to (reports show it; the kernels take any)
            raise ValueError(f"pattern must be one of {PATTERNS}, 'block<rows>x<cols>', or such names joined by '+' "
                             f"(a layer pruned twice, as fastinfer.prune labels it), got {pattern!r}")
        if on_gpu and (value_dtype != torch.int8 or format not in (None, "sparse24")):
            raise ValueError("a SparseLinear on a GPU holds int8 2:4 weights (format 'sparse24', Hopper): pass "
                             "value_dtype=torch.int8, or convert the layer on the CPU for the fp32 layouts")
        n, k = linear.out_features, linear.in_features
        w = linear.weight.detach().float()
        if value_dtype == torch.float32 and format is None:
            zeros = float((w == 0).sum()) / w.numel()
            format = "csr8" if zeros < CSR8_BELOW else "csr16"
        if on_gpu:
            format = "sparse24"
        mod = cls(k, n, linear.bias is not None, value_dtype, format)
        mod.pattern = pattern
        with torch.no_grad():
            if mod.value_dtype == torch.int8:
                w_q, scale = reference.quantize_weight_per_channel(w)
                mod._pack_int8(w_q)
                mod.weight_scale = scale
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

    def _pack_int8(self, w_q: Tensor) -> None:
        """Packs an int8 [N, K] weight into this layer's int8 layout (slot128 on the CPU, sparse24 on a GPU)."""
        self.nnz = int((w_q != 0).sum())
        if self.format == "sparse24":
            self.values, self.meta = ops.pack_sparse24(w_q.contiguous())
        else:
            self.row_ptr, self.cols, self.values, self.weight_sum = ops.pack_slot128(w_q.contiguous())

    def int8_weight(self) -> Tensor:
        """The dense int8 [N, K] weight of an int8 layer (on the layer's device)."""
        if self.format == "slot128":
            return reference.slot128_dense(self.row_ptr, self.cols, self.values, self.out_features, self.in_features)
        if self.format != "sparse24":
            raise ValueError(f"layer holds {self.format} fp32 values, not int8 ones")
        # The compressed layout is CUTLASS's: read it back through the kernel itself. Row m of the
        # identity quantizes to 127 at column m (scale 1/127), so y[m, n] = float(127 w[n, m]) * (1/127)
        # with w_scale 1: within an ulp of the integer w[n, m], which rounding recovers exactly.
        eye = torch.eye(self.in_features, device=self.values.device)
        ones = torch.ones(self.out_features, device=self.values.device)
        y = ops.sparse24_linear_int8(eye, self.values, self.meta, ones, None, self.in_features)
        return torch.round(y).t().contiguous().to(torch.int8)

    def _apply(self, fn, recurse=True):
        # A layer's storage dtypes are fixed (fp32 values and scales, int8/int index bytes): fn may move
        # buffers or share their memory, but a dtype cast of fn's (model.half()) is not applied. Where fn
        # sends an empty int8 tensor is where the layer goes; a move between the CPU and a GPU repacks
        # an int8 layer for the kernels there (slot128 <-> sparse24; the fp32 layouts run on the CPU only).
        here = self.values.device
        target = fn(torch.empty(0, dtype=torch.int8, device=here)).device
        self._follow_dtype(fn)
        if target.type != here.type:
            if target.type not in ("cpu", "cuda"):
                raise ValueError(f"SparseLinear cannot move to '{target}': its kernels run on the CPU and on Hopper GPUs")
            if self.value_dtype != torch.int8:
                raise ValueError(f"SparseLinear: the {self.format} layout (fp32 values) runs on the CPU only; to run "
                                 "sparse on a GPU, convert the model there with value_dtype=torch.int8 (2:4 weights)")
            w_q = self.int8_weight().to(target)
            scale, bias = self.weight_scale.to(target), None if self.bias is None else self.bias.to(target)
            self._set_format("sparse24" if target.type == "cuda" else "slot128")
            self._pack_int8(w_q)
            self.weight_scale, self.bias = scale, bias
            for name, t in self._buffers.items():
                if t is not None and t.device != target:
                    self._buffers[name] = t.to(target)
            return self
        for name, t in self._buffers.items():
            if t is not None:
                moved = fn(t)
                self._buffers[name] = moved if moved.dtype == t.dtype else t.to(moved.device)
        return self

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (torch's name: layer(input=x) works)
        return self._linear(input, self._buffers["bias"])  # LinearKernels

    def _forward(self, x: Tensor, bias: Optional[Tensor]) -> Tensor:
        b = self._buffers  # not the attributes: each costs a failed lookup and nn.Module.__getattr__ (Int8Linear)
        if self.format == "sparse24":
            return torch.ops.fastinfer.sparse24_linear_int8(x, b["values"], b["meta"], b["weight_scale"], bias,
                                                            self.in_features)
        if self.format == "slot128":
            return torch.ops.fastinfer.sparse_linear_int8(x, b["row_ptr"], b["cols"], b["values"], b["weight_sum"],
                                                          b["weight_scale"], bias, self.in_features)
        return torch.ops.fastinfer.sparse_linear(x, b["row_ptr"], b["cols"], b["values"], bias,
                                                 self.in_features, b.get("group_base"))

    def _float_weight_shape(self):
        return self.out_features, self.in_features

    def _weight_value(self) -> Tensor:
        return self.dense_weight()

    def dense_weight(self) -> Tensor:
        """The dense fp32 weight this layer computes with (int8 values times their scale)."""
        if self.value_dtype == torch.int8:
            return self.int8_weight().float() * self.weight_scale[:, None]
        return reference.csr_dense(self.row_ptr, self.cols, self.values, self.in_features,
                                   self._buffers.get("group_base"))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers())

    def get_extra_state(self):
        # "shape": a layout's buffers do not always reveal in_features (csr row pointers depend on N only),
        # so a checkpoint of another shape is refused by this entry (checkpoints written before it: not checked).
        return {"nnz": self.nnz, "pattern": self.pattern, "format": self.format,
                "shape": [self.out_features, self.in_features]}

    def set_extra_state(self, state):
        self.nnz, self.pattern = state["nnz"], state["pattern"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The layout and the sizes that depend on the nonzeros come from the file: take them first.
        extra = state_dict.get(prefix + "_extra_state")
        shape = extra.get("shape") if isinstance(extra, dict) else None
        if shape is not None and list(shape) != [self.out_features, self.in_features]:
            error_msgs = args[4] if len(args) > 4 else kwargs["error_msgs"]
            error_msgs.append(f"size mismatch for {prefix}: the checkpoint holds a sparse [out_features, in_features] = "
                              f"{list(shape)} layer, this SparseLinear is [{self.out_features}, {self.in_features}]")
            return
        fmt = extra.get("format", "csr16") if isinstance(extra, dict) else self.format
        if fmt in FORMATS and fmt != self.format:
            self._set_format(fmt)
        for name in ("cols", "values", "group_base", "meta"):
            key = prefix + name
            if key in state_dict and name in self._buffers:
                self._buffers[name] = torch.empty_like(state_dict[key])
        error_msgs = args[4] if len(args) > 4 else kwargs["error_msgs"]
        errors = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.format == "slot128" and len(error_msgs) == errors and prefix + "values" in state_dict:
            # The row sums (the kernels' +128 correction) computed again from the loaded values, not taken
            # from the file: a forged sum would shift a whole output row on the kernels that use it. A new
            # tensor, so that a dict loaded with assign=True is left as it was.
            sums = reference.slot128_row_sums(self.row_ptr, self.values, self.out_features, self.in_features)
            if sums is not None:
                self.weight_sum = sums

    def extra_repr(self) -> str:
        density = self.nnz / max(1, self.in_features * self.out_features)
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"format={self.format} {str(self.value_dtype).replace('torch.', '')}, pattern={self.pattern}, "
                f"sparsity={1 - density:.1%}, nbytes={self.nbytes:,}")
