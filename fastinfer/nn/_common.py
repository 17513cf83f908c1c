"""Checks shared by the quantized layers' constructors."""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, fx, nn
from torch.nn import functional as F
from torch.utils._pytree import tree_map

from .. import ops
from .._args import check_number


# The eager forwards' direct calls into the CPU ops (csrc/cpu/python_fast.cpp): about 8 us less per call than
# torch.ops. They answer NotImplemented where the dispatcher must decide (another device, a tensor subclass or
# mode, grad, the profiler, any error), and torch.compile / export trace the torch.ops call.
_is_compiling = torch.compiler.is_compiling


def fast_or_dispatch(fast: Callable, op: Callable, *args):
    """fast(*args) (fastinfer._C's direct call), or the torch.ops call `op` where that answers NotImplemented
    or a compiler is tracing."""
    if not _is_compiling():
        y = fast(*args)
        if y is not NotImplemented:
            return y
    return op(*args)


def fx_leaf(fn):
    """fn, recorded as one call_function node when an argument (or a tensor in a list argument) is a torch.fx Proxy
    (as torch.fx.wrap does for the tracers that know the function; this works for any tracer, a user's included).
    Checked by hand, not with pytree: such a function runs at every call in a forward (fastinfer.nn.concat's,
    int8_interpolate)."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        for a in (*args, *kwargs.values()) if kwargs else args:
            if isinstance(a, fx.Proxy) or (type(a) in (list, tuple) and any(isinstance(x, fx.Proxy) for x in a)):
                tracer = a.tracer if isinstance(a, fx.Proxy) else next(x for x in a if isinstance(x, fx.Proxy)).tracer
                return tracer.create_proxy("call_function", call, args, kwargs)
        return fn(*args, **kwargs)

    return call


def check_float_layer(layer: nn.Module, expected: type, arg: str, devices: Optional[Sequence[str]] = None) -> None:
    """`layer` must be a float `expected` on a device this build has kernels for (default: every op's)."""
    devices = devices or ops.SUPPORTED_DEVICES
    if not isinstance(layer, expected):
        raise TypeError(f"{arg} must be a torch.nn.{expected.__name__}, got {type(layer).__name__}")
    if layer.weight.device.type not in devices:
        raise ValueError(f"{arg} is on device '{layer.weight.device}'; this build of fastinfer supports "
                         f"{', '.join(devices)} only for it (move the model with .cpu() first)")


# The kernels take a static scale and its reciprocal as float32: both must be normal float32 numbers.
MIN_SCALE = 1.1754943508222875e-38  # torch.finfo(torch.float32).tiny
MAX_SCALE = 1.0 / MIN_SCALE


def check_scale(name: str, value: Optional[float]) -> None:
    if value is not None and not (MIN_SCALE <= check_number(name, value) <= MAX_SCALE):
        raise ValueError(f"{name} must be a positive finite float within float32's normal range "
                         f"[1.2e-38, 8.5e37] or None, got {value!r}")


HALF_DTYPES = (torch.float16, torch.bfloat16)


def requantize(y: Tensor, out_scale: float) -> Tensor:
    """The kernels' int8 requantization with torch ops (for the paths no kernel of ours serves):
    clamp(round_half_even(y * (1 / out_scale)), -127, 127), NaN -> 0, the reciprocal rounded to float32 once."""
    inv = torch.tensor(1.0, dtype=torch.float32, device=y.device) / torch.tensor(out_scale, dtype=torch.float32,
                                                                                device=y.device)
    return torch.nan_to_num(torch.round(y.float() * inv).clamp(-127, 127), nan=0.0).to(torch.int8)


def needs_float32(x: Tensor, cpu_dtypes: Sequence[torch.dtype]) -> bool:
    """Whether the layer runs on a float32 copy of x (via_float32) and returns its float output in x's dtype:
    float64 on any device (no kernel takes it: a model cast with .double(), or quantized in float64), and
    16-bit floats on the CPU that the CPU kernel does not take (float16; bfloat16 for a convolution), so a
    model cast to such a dtype keeps working after quantize (it used to fail at its first forward). float32
    inputs pay two comparisons. A non-tensor input is refused here, naming what the layer takes."""
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    return x.dtype == torch.float64 or (x.dtype in HALF_DTYPES and x.dtype not in cpu_dtypes and
                                        x.device.type == "cpu")


def via_float32(x: Tensor, run) -> Tensor:
    """run(x in float32), its float output returned in x's dtype (an int8 output as it is)."""
    y = run(x.float())
    return y.to(x.dtype) if y.is_floating_point() else y


def applied_half_dtype(fn, current: Optional[torch.dtype], device) -> Optional[torch.dtype]:
    """The 16-bit float dtype that Module._apply's `fn` leaves a model's float tensors in (``model.half()``,
    ``.to(torch.bfloat16)``; a move alone keeps `current`), or None (fp32 or wider). A layer that can get an
    int8 input (an int8 hand-off) returns its float output in this dtype: nothing else tells it the dtype of
    the model around it."""
    d = fn(torch.empty(0, dtype=current or torch.float32, device=device)).dtype
    return d if d in HALF_DTYPES else None


def float_out(y: Tensor, x_dtype: torch.dtype, model_dtype: Optional[torch.dtype]) -> Tensor:
    """A layer's fp32 output in the dtype the model runs in: a 16-bit input's, or for an int8 input the
    model's 16-bit dtype (applied_half_dtype). Anything else as it is."""
    if y.dtype != torch.float32:
        return y
    want = x_dtype if x_dtype in HALF_DTYPES else model_dtype if x_dtype == torch.int8 else None
    return y if want is None else y.to(want)


def unbatched(x: Tensor, run, arg: str = "input") -> Tensor:
    """run on a [C, H, W] input as a batch of one, the result without its batch dimension (nn.Conv2d and
    nn.MaxPool2d take unbatched inputs, so their replacements do too)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        return run(x.unsqueeze(0)).squeeze(0)
    if x.dim() != 4:
        raise ValueError(f"{arg} must be 4-D [N, C, H, W] or unbatched 3-D [C, H, W], got shape {list(x.shape)}")
    return run(x)


def half_dtype_of(layer: nn.Module) -> Optional[torch.dtype]:
    """The 16-bit float dtype of a float layer's weight (a model cast with .half() before quantizing), or None."""
    w = getattr(layer, "weight", None)
    return w.dtype if isinstance(w, Tensor) and w.dtype in HALF_DTYPES else None


_READ_ONLY = ("the weight of a fastinfer layer is read-only (computed from its packed int8 weight); change the "
              "float model's weight and quantize it again")


class LazyWeight(Tensor):
    """What ``layer.weight`` is for fastinfer's int8 and sparse layers (they keep packed int8 buffers, not a
    float weight): a tensor with the float layer's shape, dtype (float32, or the model's 16-bit dtype) and
    device, whose values, the weight the layer computes with (dequantized), are only computed when an op
    reads them. Model code that reads ``self.fc.weight.dtype`` or ``.device`` (Hugging Face's T5 and ViT
    do, in their forward) pays nothing, and code that computes with it gets the right values."""

    @staticmethod
    def __new__(cls, materialize: Callable[[], Tensor], shape, dtype: torch.dtype, device: torch.device,
                linear: Optional[Callable] = None):
        if torch.compiler.is_compiling():
            # torch.compile cannot trace a wrapper subclass being made; the weight itself traces, and a graph
            # that only reads its dtype or device drops the computation as dead code.
            return materialize().to(dtype)
        t = Tensor._make_wrapper_subclass(cls, tuple(shape), dtype=dtype, device=device, requires_grad=False)
        t._materialize = materialize
        t._linear = linear  # the layer's F.linear(x, weight, bias) on its own kernels, if it has one
        return t

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # Model code that applies a layer's weight itself, F.linear(x, self.qkv.weight, self.qkv.bias) (torchvision's
        # Swin attention does; so does code written for tied weights), runs on the layer's kernels, as a call of
        # the layer would. Everything else, dtype and shape reads included, goes on to __torch_dispatch__ as
        # without this method.
        if func is F.linear:
            y = _layer_linear(*args, **(kwargs or {}))
            if y is not NotImplemented:
                return y
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    def value(self) -> Tensor:
        """The weight as a plain tensor."""
        return self._materialize().to(self.dtype)

    @property
    def data(self) -> Tensor:
        return LazyWeight(self._materialize, self.shape, self.dtype, self.device, self._linear)

    @data.setter
    def data(self, _value):
        raise RuntimeError(_READ_ONLY)

    def share_memory_(self):
        raise RuntimeError("a fastinfer layer's weight has no storage to share (it is computed from the packed "
                           "int8 weight); model.share_memory() shares the layer's buffers")

    def untyped_storage(self):
        raise RuntimeError("a fastinfer layer's weight has no storage (it is computed from the packed int8 weight "
                           "when read); use layer.weight.value() for a plain tensor")

    storage = untyped_storage

    def __deepcopy__(self, memo) -> Tensor:
        return self.value().clone()

    def numpy(self, *args, **kwargs):
        return self.value().numpy(*args, **kwargs)

    def tolist(self):
        return self.value().tolist()

    def __repr__(self, *, tensor_contents=None) -> str:
        return (f"LazyWeight(shape={list(self.shape)}, dtype={self.dtype}, device={self.device}: a fastinfer "
                "layer's dequantized weight, computed when read)")

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten.detach.default, torch.ops.aten.alias.default) and isinstance(args[0], LazyWeight):
            t = args[0]  # .data / .detach(): still the layer's weight, still read-only
            return LazyWeight(t._materialize, t.shape, t.dtype, t.device, t._linear)
        for i, arg in enumerate(func._schema.arguments):  # an op writing into it would change a copy only
            written = arg.alias_info is not None and arg.alias_info.is_write
            if written and isinstance(args[i] if i < len(args) else kwargs.get(arg.name), LazyWeight):
                raise RuntimeError(f"{func}: {_READ_ONLY}")

        def value(t):
            return t.value() if isinstance(t, LazyWeight) else t

        def run():
            return func(*tree_map(value, args), **tree_map(value, kwargs))

        returns = func._schema.returns
        lazy = [a for a in args if isinstance(a, LazyWeight)]
        if len(returns) == 1 and returns[0].alias_info is not None and lazy:
            # A view of it (w[0], w.T, w.view(-1)) is read-only too, or a write to it would change a copy. Its
            # shape comes from running the view on meta tensors: the weight is computed once, when read.
            def meta(t):
                return torch.empty(t.shape, dtype=t.dtype, device="meta") if isinstance(t, Tensor) else t
            shape_of = func(*tree_map(meta, args), **tree_map(meta, kwargs))
            if isinstance(shape_of, Tensor):
                return LazyWeight(run, shape_of.shape, shape_of.dtype, lazy[0].device)
        return run()


def kernel_bias(layer: nn.Module, bias: Optional[Tensor]) -> Optional[Tensor]:
    """F.linear's bias as `layer`'s kernels take it: None or the layer's own as they are, another float one (a
    bias of the model's own making: torchvision's Swin V2 zeroes a third of a copy) as contiguous fp32. The ops
    check its length and refuse other dtypes, naming the argument."""
    if bias is None or bias is layer._buffers["bias"] or not bias.is_floating_point():
        return bias
    return bias.float().contiguous()


class LinearKernels:
    """What Int8Linear and SparseLinear share (before ComputedWeight in their bases): ``_linear(x, bias)``, the
    layer's forward with a given bias over its ``_forward(x, bias)``, and ``_functional_linear``, which runs it
    for model code that applies the layer's weight itself (F.linear(x, layer.weight, bias): LazyWeight)."""

    def _linear(self, x: Tensor, bias: Optional[Tensor]) -> Tensor:
        # float16 on the CPU (a model cast with .half()) and float64: the kernels take float32 or bfloat16
        if needs_float32(x, (torch.bfloat16,)):
            return via_float32(x, lambda x32: self._forward(x32, bias))
        return self._forward(x, bias)

    def _functional_linear(self, x: Tensor, bias: Optional[Tensor]):
        return self._linear(x, kernel_bias(self, bias))


def _layer_linear(input, weight, bias=None):  # noqa: A002 (F.linear's argument names: it may be called by them)
    """F.linear(input, weight, bias) by the layer whose LazyWeight `weight` is, or NotImplemented where that layer
    has no such call or would compute something else (a non-float input)."""
    linear = getattr(weight, "_linear", None)
    if linear is None or not isinstance(input, Tensor) or isinstance(input, LazyWeight) or \
            not input.is_floating_point():
        return NotImplemented
    return linear(input, bias)


class ComputedWeight(nn.Module):
    """Base of fastinfer's int8 and sparse layers, which keep packed buffers instead of a float weight:
    ``weight`` is a LazyWeight of ``_weight_value()`` with the float layer's shape (``_float_weight_shape()``),
    in the model's dtype (float_dtype, set by _apply and adopt_half_dtype), on the layer's device; assigning
    ``weight`` raises (Hugging Face's tie_weights does; the packed weight would not change)."""

    float_dtype = None  # the model's 16-bit float dtype after model.half() / .to(torch.bfloat16) (_apply)
    # (x, bias) -> F.linear(x, weight, bias) on the layer's kernels, or NotImplemented (then computed with the
    # dequantized weight): what a functional use of ``weight`` runs (LazyWeight.__torch_function__). None: none.
    _functional_linear = None

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule first: one clear message instead of TorchScript's own,
        # which differs by layer (Python builtins, the weight property) and names neither the layer nor a way out
        raise RuntimeError(f"torch.jit.script does not support fastinfer's {type(self).__name__} (its forward is "
                           f"Python around custom ops): use torch.jit.trace, torch.compile or torch.export, which do")

    @property
    def weight(self) -> Tensor:
        """The float weight this layer computes with, as a LazyWeight: its dtype, device and shape cost nothing
        to read, its values are computed when used."""
        device = next(iter(self.buffers())).device
        return LazyWeight(self._weight_value, self._float_weight_shape(), self.float_dtype or torch.float32, device,
                          self._functional_linear)

    def _follow_dtype(self, fn) -> None:
        """The model's 16-bit dtype after Module._apply's fn (model.half(), .to(torch.bfloat16)), for weight."""
        self.float_dtype = applied_half_dtype(fn, self.float_dtype, next(iter(self.buffers())).device)

    def _apply(self, fn, recurse=True):
        # A subclass's _apply reaches this before its buffers move (and SparseLinear, which moves its own,
        # calls _follow_dtype itself).
        self._follow_dtype(fn)
        return super()._apply(fn, recurse)

    def __setattr__(self, name, value):
        if name == "weight":
            raise AttributeError(f"{type(self).__name__}.weight is computed from the layer's packed int8 weight and "
                                 "cannot be assigned; change the float model's weight and quantize it again")
        super().__setattr__(name, value)
