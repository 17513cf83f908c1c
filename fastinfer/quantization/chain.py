"""int8 hand-offs between static Int8Conv2d layers (part of quantize(scheme='w8a8_static')).

A static conv whose output only reaches other static convs, through ops that keep int8 values exact,
requantizes its output with their calibrated x_scale (its out_scale) in its epilogue: no fp32 tensor is
written and no quantization pass reads it back. The consumers get what they would have computed from the
producer's fp32 output with the same scale, up to the float rounding of the folded epilogue (1 / out_scale
is multiplied into the per-channel scale): rarely 1 in the last int8 place. An nn.MaxPool2d on the way becomes an Int8MaxPool2d, which pools int8 with our kernel.

The data flow comes from torch.fx (fastinfer's layers are leaves, so a model's own Python forward, a
ResNet bottleneck for instance, is seen as a graph). A module fx cannot trace falls back to the order
of a plain nn.Sequential's children, and its children are tried on their own.
"""
from __future__ import annotations

from collections import Counter
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..nn.conv import Int8Conv2d
from ..nn.pool import Int8MaxPool2d
from .fuse import _join, walk_traced

# Between two static int8 convs these keep int8 values exact: max pooling and ReLU commute with the
# (monotonic, zero-preserving) requantization, dropout is the identity in eval mode. ReLU6 does not:
# its bound 6 is a float value, not an int8 one.
# Functional max pooling is not among them: torch's kernel fails on channels_last int8, and a call in a
# forward cannot be swapped for ours.
INT8_TRANSPARENT_MODULES = (nn.Identity, nn.MaxPool2d, Int8MaxPool2d, nn.ReLU, nn.Dropout)
_TRANSPARENT_FUNCTIONS = (F.relu, torch.relu, F.relu_, torch.relu_)
_TRANSPARENT_METHODS = ("relu", "relu_")


def _static_conv(mod) -> bool:
    return isinstance(mod, Int8Conv2d) and mod.x_scale is not None


def chain_int8_convs(model: nn.Module) -> List[str]:
    """Sets out_scale on every static Int8Conv2d of ``model`` that can hand int8 to its consumers;
    returns "producer -> consumer" lines (one per consumer)."""
    chained: List[str] = []
    if any(_static_conv(m) for m in model.modules()):  # no tracing for models without static convs
        walk_traced("", model, lambda p, m, g: _chain_graph(p, m, g, chained),
                    lambda p, m, _exc: _chain_sequential(p, m, chained) if type(m) is nn.Sequential else None)
    return chained


def _chain_graph(prefix: str, module: nn.Module, graph: fx.Graph, chained: List[str]) -> None:
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        producer = module.get_submodule(node.target)
        # A module called twice has one out_scale for both calls: leave it (and any with out_scale set).
        if not _static_conv(producer) or producer.out_scale is not None or calls[node.target] != 1:
            continue
        found = _int8_consumers(module, node)
        if found is None:
            continue
        consumers, passed = found
        if len({module.get_submodule(c.target).x_scale for c in consumers}) != 1:
            continue
        for p in passed:
            _int8_pool(module, p.target)
        producer.out_scale = module.get_submodule(consumers[0].target).x_scale
        chained += [f"{_join(prefix, node.target)} -> {_join(prefix, c.target)}" for c in consumers]


def _transparent(module: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        return type(module.get_submodule(node.target)) in INT8_TRANSPARENT_MODULES
    if node.op == "call_function":
        return node.target in _TRANSPARENT_FUNCTIONS
    return node.op == "call_method" and node.target in _TRANSPARENT_METHODS


def _int8_pool(root: nn.Module, name: str) -> None:
    """Swaps the nn.MaxPool2d called as ``name`` for an Int8MaxPool2d (float inputs behave as before)."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    mod = getattr(parent, child)
    if type(mod) is nn.MaxPool2d:
        setattr(parent, child, Int8MaxPool2d.from_float(mod))


def _int8_consumers(module: nn.Module, start: fx.Node) -> Optional[Tuple[List[fx.Node], List[fx.Node]]]:
    """(the static Int8Conv2d calls that ``start``'s output reaches through int8-transparent ops, the module
    calls passed on the way), or None when it also reaches anything else (the model's output, an add, a
    shape op, a float layer), when a transparent op takes it as anything but its first argument, or when a
    max pooling returns indices."""
    consumers, passed, stack, seen = [], [], [start], set()
    while stack:
        node = stack.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            if not user.args or user.args[0] is not node or node in user.args[1:] or node in user.kwargs.values():
                return None
            if user.op == "call_module" and _static_conv(module.get_submodule(user.target)):
                consumers.append(user)
            elif _transparent(module, user):
                if user.op == "call_module":
                    pool = module.get_submodule(user.target)
                    if isinstance(pool, nn.MaxPool2d) and pool.return_indices:
                        return None
                    passed.append(user)
                stack.append(user)
            else:
                return None
    return (consumers, passed) if consumers else None


def _chain_sequential(prefix: str, seq: nn.Sequential, chained: List[str]) -> None:
    """Module-order fallback for an untraceable nn.Sequential: each child feeds only the next one."""
    kids = list(seq.named_children())
    for i, (name, mod) in enumerate(kids):
        if not _static_conv(mod) or mod.out_scale is not None:
            continue
        j = i + 1
        while j < len(kids) and type(kids[j][1]) in INT8_TRANSPARENT_MODULES:
            j += 1
        if j < len(kids) and _static_conv(kids[j][1]):
            if any(isinstance(m, nn.MaxPool2d) and m.return_indices for _, m in kids[i + 1:j]):
                continue
            for k in range(i + 1, j):
                _int8_pool(seq, kids[k][0])
            mod.out_scale = kids[j][1].x_scale
            chained.append(f"{_join(prefix, name)} -> {_join(prefix, kids[j][0])}")
