"""Int8Add: the residual add of a block that fastinfer.quantize rewrote (see fastinfer/quantization/chain.py),
with each operand int8 or fp32."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import _C
from ._common import HALF_DTYPES, applied_half_dtype, fast_or_dispatch, requantize


class Int8Add(nn.Module):
    """``relu(a + b)`` (or ``a + b``) of a block's residual add, which fastinfer.quantize puts in place of the add
    (and the ReLU after it) when it rewrites a block's forward. Each operand may arrive int8 (from a layer
    with out_scale): its scale is then a_scale / b_scale, set by quantize. With out_scale the sum is
    requantized to int8 for the int8 layers it feeds. Without int8 anywhere it is torch's own add (and ReLU).
    """

    float_dtype = None  # the model's 16-bit float dtype after model.half() / .to(torch.bfloat16) (_apply)

    def __init__(self, relu: bool = False, a_scale: Optional[float] = None, b_scale: Optional[float] = None,
                 out_scale: Optional[float] = None):
        super().__init__()
        self.relu, self.a_scale, self.b_scale, self.out_scale = relu, a_scale, b_scale, out_scale

    def _apply(self, fn, recurse=True):
        self.float_dtype = applied_half_dtype(fn, self.float_dtype, "cpu")
        return super()._apply(fn, recurse)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            raise TypeError(f"Int8Add (a residual add that fastinfer.quantize rewrote) needs two tensors, got "
                            f"{type(a).__name__} and {type(b).__name__}: the block's forward was traced with "
                            "tensors for every argument; quantize with int8_residuals=False to keep it as written")
        # In a half-precision model the op (fp32 or int8 operands) gets fp32 copies of 16-bit operands, and a
        # float result goes back to the model's dtype: a 16-bit operand's, else float_dtype (both int8).
        want = self.float_dtype
        if a.dtype in HALF_DTYPES or b.dtype in HALF_DTYPES:
            if torch.int8 not in (a.dtype, b.dtype) and self.out_scale is None:
                return self._add(a, b)  # nothing int8: torch's add in the model's dtype
            want = a.dtype if a.dtype in HALF_DTYPES else b.dtype
            a, b = (t.float() if t.dtype in HALF_DTYPES else t for t in (a, b))
        y = self._add(a, b)
        return y.to(want) if want is not None and y.dtype == torch.float32 else y

    def _add(self, a: Tensor, b: Tensor) -> Tensor:
        a_scale = self.a_scale if a.dtype == torch.int8 else None
        b_scale = self.b_scale if b.dtype == torch.int8 else None
        if a.shape == b.shape:
            if a_scale is None and b_scale is None and self.out_scale is None:
                y = a + b  # nothing int8: torch's add, as the model had it
                return torch.relu(y) if self.relu else y
            return fast_or_dispatch(_C.int8_add, torch.ops.fastinfer.int8_add, a, b, a_scale, b_scale, self.relu,
                                    self.out_scale)
        # broadcasting (the op does not): the same arithmetic with torch ops
        y = (a.float() * a_scale if a_scale is not None else a) + (b.float() * b_scale if b_scale is not None else b)
        y = torch.relu(y) if self.relu else y
        if self.out_scale is None:
            return y
        return requantize(y, self.out_scale)

    def extra_repr(self) -> str:
        s = f"relu={self.relu}"
        for name in ("a_scale", "b_scale", "out_scale"):
            v = getattr(self, name)
            if v is not None:
                s += f", {name}={v:.4g}"
        return s

    def get_extra_state(self):
        return {"relu": self.relu, "a_scale": self.a_scale, "b_scale": self.b_scale, "out_scale": self.out_scale}

    def set_extra_state(self, state):
        self.relu, self.a_scale, self.b_scale, self.out_scale = (state["relu"], state["a_scale"], state["b_scale"],
                                                                 state["out_scale"])
