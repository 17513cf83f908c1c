"""Channel dependency graph of a model traced with torch.fx: which weight rows/columns must be
removed together when an output channel (or neuron) goes away.

Every tensor that flows through the graph carries a *layout* of its channel dimension: a list
of segments (space, length, repeat). A space is one set of channels created by a producer (the
output channels of a conv or linear layer, or a model input); `repeat` > 1 appears after a
flatten, where each channel becomes `repeat` consecutive features. Additions merge spaces
(both sides must keep the same channels), concatenation joins layouts, and anything the
analysis does not understand *blocks* the spaces that reach it, so they are never pruned.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import fx, nn
import torch.nn.functional as F

# Modules and functions that act on every channel independently (the layout passes through).
ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                       nn.Hardsigmoid, nn.ELU, nn.Mish, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity,
                       nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                       nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
ELEMENTWISE_FUNCTIONS = {F.relu, F.relu6, F.gelu, F.silu, F.leaky_relu, F.elu, F.hardswish, F.dropout,
                         torch.relu, torch.sigmoid, torch.tanh, torch.sigmoid, F.sigmoid, F.tanh,
                         F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
                         F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.nn.functional.mish}
ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "relu_"}
MERGING_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.iadd, torch.add, torch.sub, torch.mul}
MERGING_METHODS = {"add", "sub", "mul", "add_", "mul_"}


@dataclass
class Space:
    """A set of channels created by one producer; merged spaces share one root (union-find)."""
    id: int
    size: int
    origin: str
    producers: List[str] = field(default_factory=list)      # modules whose weight rows are these channels
    passthrough: List[str] = field(default_factory=list)    # BN / depthwise conv: sliced along the channels
    blocked: List[str] = field(default_factory=list)        # reasons these channels must stay


@dataclass(frozen=True)
class Segment:
    space: int
    length: int
    repeat: int = 1


Layout = Tuple[Segment, ...]


@dataclass
class Consumer:
    """A module whose input features follow `layout` (its weight columns are sliced)."""
    name: str
    layout: Layout


class ChannelGraph:
    def __init__(self):
        self.spaces: List[Space] = []
        self.parent: List[int] = []
        self.consumers: List[Consumer] = []

    # -- union-find over spaces
    def new_space(self, size: int, origin: str, producer: Optional[str] = None, blocked: Optional[str] = None) -> Layout:
        sid = len(self.spaces)
        sp = Space(sid, size, origin)
        if producer:
            sp.producers.append(producer)
        if blocked:
            sp.blocked.append(blocked)
        self.spaces.append(sp)
        self.parent.append(sid)
        return (Segment(sid, size),)

    def root(self, sid: int) -> int:
        while self.parent[sid] != sid:
            self.parent[sid] = self.parent[self.parent[sid]]
            sid = self.parent[sid]
        return sid

    def merge(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            self.parent[rb] = ra

    def block(self, layout: Optional[Layout], reason: str) -> None:
        for seg in layout or ():
            self.spaces[self.root(seg.space)].blocked.append(reason)

    def groups(self) -> Dict[int, List[Space]]:
        out: Dict[int, List[Space]] = {}
        for sp in self.spaces:
            out.setdefault(self.root(sp.id), []).append(sp)
        return out


def _layout_size(layout: Layout) -> int:
    return sum(s.length * s.repeat for s in layout)


@dataclass
class _Value:
    layout: Layout
    dim: int          # the channel dimension of the tensor (negative not used: absolute index)
    shape: Tuple[int, ...]


def _shape(node) -> Optional[Tuple[int, ...]]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(meta.shape)


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def analyze(gm: fx.GraphModule) -> ChannelGraph:
    """Walks the traced graph (with shapes from ShapeProp) and records every channel dependency."""
    g = ChannelGraph()
    values: Dict[fx.Node, _Value] = {}
    modules = dict(gm.named_modules())
    calls: Dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    # Modules whose parameters are also read another way: by forward itself (a get_attr, as in
    # F.linear(x, self.proj.weight)) or through another module (a tied weight). Slicing such a module
    # would break that use (or untie the weight), so it is treated as opaque: its channels stay.
    shared: Dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            owner = node.target.rpartition(".")[0]
            shared.setdefault(owner, f"{node.target} is also used directly in forward")
    owners: Dict[int, List[str]] = {}
    for pname, param in gm.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(pname)
    for names in owners.values():
        if len(names) > 1:
            for pname in names:
                shared.setdefault(pname.rpartition(".")[0], f"its parameter is tied to {' and '.join(names)}")

    def inputs_of(node) -> List[_Value]:
        found = []
        for a in node.all_input_nodes:
            if a in values:
                found.append(values[a])
        return found

    def opaque(node, reason: str, producer: Optional[str] = None):
        """Unknown op: every channel reaching it stays; its output starts a blocked space (whose producer, a
        layer left whole, the report then lists with the reason)."""
        for v in inputs_of(node):
            g.block(v.layout, reason)
        shp = _shape(node)
        if shp is not None and len(shp) >= 2:
            values[node] = _Value(g.new_space(shp[1], reason, producer=producer, blocked=reason), 1, shp)

    for node in gm.graph.nodes:
        shp = _shape(node)
        if node.op == "placeholder":
            if shp is not None and len(shp) >= 2:
                values[node] = _Value(g.new_space(shp[1], "model input", blocked="model input"), 1, shp)
            continue
        if node.op == "output":
            for v in inputs_of(node):
                g.block(v.layout, "reaches the model output")
            continue
        if node.op == "get_attr":
            continue
        ins = inputs_of(node)
        if shp is None:  # not a tensor (a size, a tuple): channels reaching it are not touched by it
            if node.op == "call_function" and node.target is getattr:
                continue
            if node.op == "call_method" and node.target in ("size", "dim"):
                continue
            for v in ins:
                g.block(v.layout, f"used by non-tensor op {node.format_node()}")
            continue
        ndim = len(shp)

        if node.op == "call_module":
            mod = modules[node.target]
            name = node.target
            layer = name if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)) else None
            if isinstance(mod, ELEMENTWISE_MODULES):  # stateless: a shared one (ResNet's self.relu) is fine
                if ins:
                    values[node] = _Value(ins[0].layout, ins[0].dim, shp)
                continue
            if calls[name] > 1:
                opaque(node, f"module {name} is called more than once", layer)
                continue
            if name in shared:
                opaque(node, f"module {name}: {shared[name]}", layer)
                continue
            if mod._forward_pre_hooks or mod._forward_hooks:  # torch.nn.utils.weight_norm's computes the weight
                opaque(node, f"module {name} has forward hooks (which may compute its weight)", layer)
                continue
            x = ins[0] if ins else None
            if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
                if x is None or x.dim != 1 or _layout_size(x.layout) != mod.in_channels or \
                        any(s.repeat != 1 for s in x.layout):
                    opaque(node, f"input of {name} has an untracked channel layout")
                    continue
                if mod.groups == 1:
                    g.consumers.append(Consumer(name, x.layout))
                    values[node] = _Value(g.new_space(mod.out_channels, name, producer=name), 1, shp)
                elif mod.groups == mod.in_channels == mod.out_channels:
                    # Depthwise: channel c in -> channel c out; prune both together.
                    for seg in x.layout:
                        g.spaces[g.root(seg.space)].passthrough.append(name)
                    g.consumers.append(Consumer(name, x.layout))  # records the layout for slicing
                    values[node] = _Value(x.layout, 1, shp)
                else:
                    reason = f"grouped conv {name} (groups={mod.groups}) is left unpruned"
                    g.block(x.layout, reason)
                    values[node] = _Value(g.new_space(mod.out_channels, name, blocked=reason), 1, shp)
            elif isinstance(mod, nn.Linear):
                if x is None or x.dim != len(x.shape) - 1 or _layout_size(x.layout) != mod.in_features:
                    if x is not None:
                        g.block(x.layout, f"{name} is applied to a non-channel dimension")
                    values[node] = _Value(g.new_space(mod.out_features, name, producer=name), ndim - 1, shp)
                    continue
                g.consumers.append(Consumer(name, x.layout))
                values[node] = _Value(g.new_space(mod.out_features, name, producer=name), ndim - 1, shp)
            elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                if x is None or x.dim != 1 or _layout_size(x.layout) != mod.num_features:
                    opaque(node, f"input of {name} has an untracked channel layout")
                    continue
                for seg in x.layout:
                    g.spaces[g.root(seg.space)].passthrough.append(name)
                g.consumers.append(Consumer(name, x.layout))
                values[node] = _Value(x.layout, 1, shp)
            elif isinstance(mod, nn.Flatten):
                _flatten(g, values, node, x, _norm_dim(mod.start_dim, len(x.shape)) if x else 1,
                         _norm_dim(mod.end_dim, len(x.shape)) if x else -1)
            elif type(mod).__module__.startswith("fastinfer.nn"):
                opaque(node, f"{name} ({type(mod).__name__}) is already quantized or sparse: prune the float "
                             "model, then quantize or sparsify it", name)
            else:
                opaque(node, f"{name} ({type(mod).__name__}) is not understood by the pruner")
            continue

        target = node.target
        method = node.op == "call_method"
        if (not method and target in ELEMENTWISE_FUNCTIONS) or (method and target in ELEMENTWISE_METHODS):
            if ins and ins[0].shape == shp:
                values[node] = _Value(ins[0].layout, ins[0].dim, shp)
            elif ins and len(ins[0].shape) == ndim and ins[0].shape[1] == shp[1] and ins[0].dim == 1:
                values[node] = _Value(ins[0].layout, 1, shp)  # pooling: spatial size changes only
            else:
                opaque(node, f"{node.format_node()} changes the channel dimension")
        elif (not method and target in MERGING_FUNCTIONS) or (method and target in MERGING_METHODS):
            feats = [v for v in ins]
            if len(feats) == 1 and len(node.all_input_nodes) == 1:
                values[node] = _Value(feats[0].layout, feats[0].dim, shp)  # tensor op scalar
            elif len(feats) == 2 and _same_segmentation(feats[0].layout, feats[1].layout) and \
                    feats[0].dim == feats[1].dim and feats[0].shape[feats[0].dim] == shp[feats[0].dim]:
                for sa, sb in zip(feats[0].layout, feats[1].layout):
                    g.merge(sa.space, sb.space)
                values[node] = _Value(feats[0].layout, feats[0].dim, shp)
            else:
                opaque(node, f"{node.format_node()} combines tensors whose channels cannot be matched")
        elif not method and target in (torch.cat, torch.concat):
            tensors = node.args[0] if node.args else node.kwargs.get("tensors")
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            parts = [values.get(t) for t in tensors]
            if all(p is not None for p in parts) and len({p.dim for p in parts}) == 1 and \
                    _norm_dim(dim, ndim) == parts[0].dim:
                layout = tuple(s for p in parts for s in p.layout)
                values[node] = _Value(layout, parts[0].dim, shp)
            else:
                opaque(node, f"{node.format_node()} concatenates along a dimension the pruner does not track")
        elif (not method and target is torch.flatten) or (method and target == "flatten"):
            x = ins[0] if ins else None
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            _flatten(g, values, node, x, _norm_dim(start, len(x.shape)) if x else 0,
                     _norm_dim(end, len(x.shape)) if x else -1)
        elif method and target in ("view", "reshape") or (not method and target is torch.reshape):
            x = ins[0] if ins else None
            sizes = node.args[1:]
            sizes = tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else tuple(sizes)
            # x.view(x.size(0), -1) follows the channel count; x.view(-1, 400) (LeNet) fixes it: a literal
            # feature size would no longer match a pruned input.
            fixed = bool(sizes) and isinstance(sizes[-1], int) and sizes[-1] != -1
            if fixed:
                opaque(node, f"{node.format_node()} reshapes to a fixed size ({sizes[-1]} last)")
            elif x is not None and len(shp) == 2 and len(x.shape) >= 2 and x.dim == 1 and shp[0] == x.shape[0]:
                _flatten(g, values, node, x, 1, len(x.shape) - 1)
            elif x is not None and shp == x.shape:
                values[node] = _Value(x.layout, x.dim, shp)
            else:
                opaque(node, f"{node.format_node()} reshapes the channel dimension")
        elif (method and target == "mean") or (not method and target is torch.mean):
            x = ins[0] if ins else None
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
            if x is not None and dims and all(_norm_dim(d, len(x.shape)) > x.dim for d in dims):
                # Reducing only dims after the channel dim (global pooling) keeps the channel index.
                values[node] = _Value(x.layout, x.dim, shp)
            else:
                opaque(node, f"{node.format_node()} reduces over channels")
        else:
            opaque(node, f"{node.format_node()} is not understood by the pruner")

        v = values.get(node)
        if v is not None and (v.dim >= len(shp) or _layout_size(v.layout) != shp[v.dim]):
            # Safety net: the tracked layout must describe the real tensor.
            g.block(v.layout, f"layout mismatch at {node.name}")
            values[node] = _Value(g.new_space(shp[1] if len(shp) > 1 else 1, node.name,
                                              blocked=f"layout mismatch at {node.name}"), 1 if len(shp) > 1 else 0, shp)
    return g


def _same_segmentation(a: Layout, b: Layout) -> bool:
    return len(a) == len(b) and all(x.length == y.length and x.repeat == y.repeat for x, y in zip(a, b))


def _flatten(g: ChannelGraph, values, node, x: Optional[_Value], start: int, end: int) -> None:
    shp = _shape(node)
    if x is None:
        return
    if start == x.dim and end == len(x.shape) - 1:
        inner = 1
        for d in x.shape[x.dim + 1:]:
            inner *= d
        values[node] = _Value(tuple(Segment(s.space, s.length, s.repeat * inner) for s in x.layout), start, shp)
    elif end < x.dim:  # flattening leading (batch) dims only
        values[node] = _Value(x.layout, x.dim - (end - start), shp)
    else:
        g.block(x.layout, f"{node.format_node()} flattens the channel dimension with others before it")
        values[node] = _Value(g.new_space(shp[-1], node.name, blocked="flatten"), len(shp) - 1, shp)
