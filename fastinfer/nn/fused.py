"""Float layers with an activation folded in: ConvAct2d (Conv2d -> activation) and LinearAct
(Linear -> activation), the activation one of ACTIVATIONS. fastinfer.fuse produces them; int8 layers take
their activation from them. Folded: the nn.Identity fuse leaves where a module was folded away."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
import torch.nn.functional as F
from torch.nn.modules.module import (_global_backward_hooks, _global_backward_pre_hooks, _global_forward_hooks,
                                     _global_forward_pre_hooks)

ACTIVATIONS = (None, "relu", "relu6", "gelu", "hardswish", "silu")


def check_activation(activation: Optional[str]) -> Optional[str]:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def apply_activation(y: Tensor, activation: Optional[str]) -> Tensor:
    # `activation` is a plain Python string, so torch.fx and dynamo resolve this branch while
    # tracing (dynamo guards on the attribute) instead of seeing data-dependent control flow.
    if activation == "relu":
        return F.relu(y)
    if activation == "relu6":
        return F.relu6(y)
    if activation == "gelu":
        return F.gelu(y)
    if activation == "hardswish":
        return F.hardswish(y)
    if activation == "silu":
        return F.silu(y)
    return y


class ConvAct2d(nn.Conv2d):
    """``activation(conv2d(x))``: an nn.Conv2d (same parameters, same state_dict keys) whose
    forward applies ``activation`` (one of ACTIVATIONS) to its output.

    The activation is a constructor argument and an attribute, not state: it is not in the
    state_dict, so build the module with the right activation before loading weights into it.
    """

    def __init__(self, *args, activation: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.activation = check_activation(activation)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activation: Optional[str] = None) -> "ConvAct2d":
        """A ConvAct2d with a copy of ``conv``'s hyper-parameters, weight and bias (same device, dtype
        and requires_grad)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        mod = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype,
                  activation=activation)
        _copy_params(conv, mod)
        return mod

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (nn.Conv2d's name)
        return apply_activation(self._conv_forward(input, self.weight, self.bias), self.activation)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"


class LinearAct(nn.Linear):
    """``activation(linear(x))``: an nn.Linear (same parameters, same state_dict keys) whose forward
    applies ``activation`` (one of ACTIVATIONS) to its output. As for ConvAct2d, the activation
    is not in the state_dict."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 activation: Optional[str] = None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.activation = check_activation(activation)

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation: Optional[str] = None) -> "LinearAct":
        """A LinearAct with a copy of ``linear``'s weight and bias (same device, dtype, requires_grad)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        mod = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype, activation=activation)
        _copy_params(linear, mod)
        return mod

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (nn.Linear's name)
        return apply_activation(F.linear(input, self.weight, self.bias), self.activation)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"


def _copy_params(src: nn.Module, dst: nn.Module) -> None:
    for name in ("weight", "bias"):
        p = getattr(src, name)
        if p is not None:
            getattr(dst, name).data.copy_(p.detach())
            getattr(dst, name).requires_grad_(p.requires_grad)


class Folded(nn.Identity):
    """What fastinfer.fuse leaves in place of a module it folded into the layer before it (a BatchNorm, an
    activation): an nn.Identity under the module's name, so names, indices and state_dict keys stay as they
    were. Its call returns the input without nn.Module's call machinery while no hook could see the call:
    0.16 instead of 0.8 us (Python 3.11, AMD Zen 4), and MobileNetV2 calls 87 of them a forward, 3% of its
    batch-1 time at 224 x 224. With a hook of its own or a global one, or compiled on its own
    (module.compile()), it is called the usual way. torch.fx's tracer records no node for the fast call (the
    input passes through), nor did it need one."""

    def __call__(self, *args, **kwargs):
        if (len(args) == 1 and not kwargs and not (
                self._forward_hooks or self._forward_pre_hooks or self._backward_hooks or self._backward_pre_hooks
                or _global_forward_hooks or _global_forward_pre_hooks or _global_backward_hooks
                or _global_backward_pre_hooks) and self._compiled_call_impl is None):
            return args[0]
        return super().__call__(*args, **kwargs)


__all__ = ["ConvAct2d", "LinearAct", "Folded", "ACTIVATIONS", "check_activation"]
