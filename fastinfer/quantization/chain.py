"""int8 hand-offs between static Int8Conv2d layers (part of quantize(scheme='w8a8_static')).

A static conv whose output only reaches other static convs, through ops that keep int8 values exact,
requantizes its output with their calibrated x_scale (its out_scale) in its epilogue: no fp32 tensor is
written and no quantization pass reads it back. The consumers get what they would have computed from the
producer's fp32 output with the same scale, up to the float rounding of the folded epilogue (1 / out_scale
is multiplied into the per-channel scale): rarely 1 in the last int8 place. An nn.MaxPool2d on the way
becomes an Int8MaxPool2d, which pools int8 with our kernel, a nearest nn.Upsample an Int8Upsample (a forward's
F.interpolate calls become fastinfer.nn.int8_interpolate calls, which a hand-off passes in the nearest modes, and
bilinearly only on a 1 x 1 map: DeepLabV3's pooled ASPP branch, where that is a broadcast), and a conv
that reads through more max poolings than the producer's other consumers takes their scale (a max pooling's
output lies in its input's range). Branches joined by torch.cat (Inception blocks, SqueezeNet's fire modules,
a U-Net's skip connections) hand off int8 when every input of the concatenation is a hand-off at one scale
(a DenseNet block's, which extend one another, rewrite_residual_adds turns into fastinfer.nn.concat's calls; then
convs_into_concatenations has each conv whose output only a concatenation reads write it there in place).
An nn.AvgPool2d becomes an Int8AvgPool2d (the average of the int8 values at their scale, rounded: within half a
step of the fp32 pooling). A BatchNorm fuse could not fold (after a concatenation or an add) whose output reaches
only static convs becomes a BatchNormQuant2d, which writes their int8 input and also reads an int8 one: the
producers in front of it (a DenseNet's convs, whose outputs every later layer's concatenation joins) then use
their own calibrated output scale, one for all the producers a group of concatenations joins (the largest).

The data flow comes from torch.fx (fastinfer's layers are leaves, so a model's own Python forward, a
ResNet bottleneck for instance, is seen as a graph). A module fx cannot trace falls back to the order
of a plain nn.Sequential's children, and its children are tried on their own.
"""
from __future__ import annotations

import inspect
import operator
import re
from collections import Counter
from typing import Dict, List, NamedTuple, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..nn.conv import Int8Conv1d, Int8Conv2d
from ..nn.linear import Int8Linear
from ..nn.sparse import SparseLinear
from ..nn.add import Int8Add
from ..nn.dropout import Int8Dropout, Int8DropPath, is_drop_path
from ..nn.fused import Folded
from ..nn.gate import Int8AdaptiveAvgPool2d, Int8ChannelScale, Int8GlobalAvgPool, is_global_avg_pool
from ..nn import concat
from ..nn.norm import BatchNormQuant2d
from ..nn.pool import INTERPOLATE_MODES, Int8AvgPool2d, Int8MaxPool2d, Int8Upsample, int8_interpolate
from .fuse import PiecesTracer, _arg, _join, pieces, walk_traced

# Between two static int8 convs these keep int8 values exact: max pooling and ReLU commute with the
# (monotonic, zero-preserving) requantization, dropout is the identity in eval mode. ReLU6 does not:
# its bound 6 is a float value, not an int8 one.
# Functional max pooling is not among them: torch's kernel fails on channels_last int8, and a call in a
# forward cannot be swapped for ours.
IDENTITIES = (nn.Identity, Folded)  # Folded: what fuse left where it folded a module away
INT8_TRANSPARENT_MODULES = (*IDENTITIES, nn.MaxPool2d, Int8MaxPool2d, nn.ReLU, nn.Dropout, Int8Dropout, Int8DropPath)
# Nearest upsampling copies values: exact on int8 too (Int8Upsample); the other modes compute new ones.
_UPSAMPLES = (nn.Upsample, nn.UpsamplingNearest2d, Int8Upsample)
_TRANSPARENT_FUNCTIONS = (F.relu, torch.relu, F.relu_, torch.relu_)
_TRANSPARENT_METHODS = ("relu", "relu_")


def _int8_exact(mod: nn.Module) -> bool:
    """Whether module ``mod`` keeps int8 values exact between two static convs."""
    if type(mod) in _UPSAMPLES:
        return mod.mode in Int8Upsample.MODES
    return type(mod) in INT8_TRANSPARENT_MODULES or (is_drop_path(mod) and not mod.training)


def _int8_passes(mod: nn.Module) -> bool:
    """Whether an int8 hand-off can pass module ``mod``: it keeps int8 values exact, or it is an average pooling,
    which Int8AvgPool2d computes at the input's scale within half an int8 step of the fp32 pooling. Only the graph
    walk passes an average pooling: the scale of what reads through one needs _handoff_scale's rule, which the
    nn.Sequential fallback does not have."""
    return _int8_exact(mod) or type(mod) in (nn.AvgPool2d, Int8AvgPool2d)


def adopt_half_dtype(model: nn.Module, dtype: Optional[torch.dtype]) -> None:
    """Tells fastinfer's layers the 16-bit float dtype of the model they were made for, as model.half() after
    quantizing would: the float outputs of those that can get an int8 hand-off (Int8Conv2d, the Int8Adds of
    rewritten blocks) take it, and so does every layer's ``weight`` (LazyWeight) dtype; None: nothing to do."""
    if dtype is None:
        return
    for m in model.modules():
        if (isinstance(m, (Int8Conv2d, Int8Add, Int8Linear, SparseLinear, Int8GlobalAvgPool, Int8ChannelScale))
                and m.float_dtype is None):
            m.float_dtype = dtype


def _static_conv(mod) -> bool:
    # Int8Conv1d's [N, C, L] outputs stay float: the hand-offs and pooling swaps are 2-D (NHWC) only.
    return isinstance(mod, Int8Conv2d) and not isinstance(mod, Int8Conv1d) and mod.x_scale is not None


def chain_int8_convs(model: nn.Module, output_scales: Optional[Dict[str, float]] = None) -> List[str]:
    """Sets out_scale on every static Int8Conv2d (and Int8Add) of ``model`` that can hand int8 to its
    consumers; returns "producer -> consumer" lines (one per consumer). output_scales: calibrated output
    scales by module name (fastinfer.calibrate's), for a conv whose only consumers are Int8Add operands."""
    chained: List[str] = []
    if any(_static_conv(m) for m in model.modules()):  # no tracing for models without static convs
        walk_traced("", model, lambda p, m, g: _chain_graph(p, m, g, chained, output_scales or {}),
                    lambda p, m, _exc: _chain_sequential(p, m, chained) if type(m) is nn.Sequential else None)
    return chained


class _OwnOpsTracer(PiecesTracer):
    """Traces a module's own forward: every submodule it calls stays one call (and keeps its own forward), except
    those in ``inline`` (id -> the parameters a call must pass as lists or tuples: _inlinable) called so: their
    forward is traced into the caller's. A trace sees a bare argument as a Proxy, which is neither a Tensor nor
    None, and a list as a list: the forward's tests of such an argument then take the branch the call takes when it
    runs (torchvision's _DenseLayer, called by its block with the list of features; on its own it would be traced as
    if its argument could only be a list), and its concatenation of it is one of known parts."""

    def __init__(self, inline: Optional[Dict[int, List[str]]] = None):
        super().__init__()
        self.inline = inline or {}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True

    def call_module(self, m: nn.Module, forward, args, kwargs):
        tested = self.inline.get(id(m))
        if tested is not None:
            try:
                bound = inspect.signature(m.forward).bind(*args, **kwargs).arguments
            except TypeError:
                bound = None
            if bound is not None and all(isinstance(bound.get(p), (list, tuple)) for p in tested):
                return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


_ADD_FUNCTIONS = (operator.add, torch.add)
_MUL_FUNCTIONS = (operator.mul, torch.mul)


def _fixed_signature(mod: nn.Module, graph: fx.Graph) -> Optional[str]:
    """Why mod's forward cannot be rewritten from its symbolic trace (None: it can). A trace sees every
    argument as a tensor: `if skip is not None:` on an optional argument is traced as taken (a call without
    it would reach the rewritten add with None), and `isinstance(skip, Tensor)` as not taken (the trace then
    drops skip, and the rewritten forward would ignore it)."""
    try:
        params = list(inspect.signature(mod.forward).parameters.values())
    except (TypeError, ValueError):
        return "its forward has no inspectable signature"
    loose = [p.name for p in params if p.default is not inspect.Parameter.empty
             or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.KEYWORD_ONLY)]
    if loose:
        return (f"its forward takes optional arguments ({', '.join(loose)}), whose branches a trace cannot "
                "follow; the add stays fp32")
    unused = [n.target for n in graph.nodes if n.op == "placeholder" and not n.users]
    if unused:
        return (f"its trace drops argument {', '.join(map(str, unused))} (a branch on it, which a trace cannot "
                "follow); the add stays fp32")
    tested = _tested_params(_class_source(mod), [p.name for p in params])
    if tested:
        return (f"its code tests {', '.join(tested)} (against None or a type), a branch a trace cannot follow; "
                "the add stays fp32")
    return None


def _class_source(mod: nn.Module) -> str:
    """The source of mod's class and its bases outside torch (helpers included); '' where there is none."""
    try:
        return "".join(inspect.getsource(c) for c in type(mod).__mro__
                       if c.__module__ not in ("builtins",) and not c.__module__.startswith("torch."))
    except (OSError, TypeError):
        return ""


def _tested_params(source: str, names: List[str]) -> List[str]:
    """The parameters among ``names`` that a module's code (``source``: _class_source) tests against None or a type
    (`forward(self, x, skip)`, skip=None)."""
    return [n for n in names if re.search(rf"\b{re.escape(n)}\s+is\s+(not\s+)?None\b"
                                          rf"|isinstance\(\s*{re.escape(n)}\b", source)]


def _inlinable(mod: nn.Module, graph: fx.Graph) -> Optional[List[str]]:
    """The parameters of mod's forward that a call must pass as lists (or tuples) for _OwnOpsTracer to trace the
    forward into its caller's: those its code tests, when every test is ``isinstance(p, Tensor)`` or ``p is (not)
    None`` on the parameter itself (so a call with a list takes the branch a trace of the call takes), and those
    it concatenates whole (``torch.cat(p, 1)`` in graph, the forward's own trace). None when it cannot be
    (optional arguments, other tests) or there is no such parameter."""
    try:
        params = list(inspect.signature(mod.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.KEYWORD_ONLY)
           for p in params):
        return None
    source = _class_source(mod)
    tested = _tested_params(source, [p.name for p in params])
    for name in tested:
        n = re.escape(name)
        calls = re.findall(rf"isinstance\(\s*{n}\b[^)]*\)", source)
        if any(not re.fullmatch(rf"isinstance\(\s*{n}\s*,\s*(torch\.)?Tensor\s*\)", c) for c in calls):
            return None
    joined = [n.args[0].target for n in graph.nodes if n.op == "call_function" and n.target in _CAT_FUNCTIONS
              and n.args and isinstance(n.args[0], fx.Node) and n.args[0].op == "placeholder"]
    listed = tested + [p for p in joined if p not in tested]
    return listed or None


class _GraphModuleDict(fx.GraphModule, nn.ModuleDict):
    """The GraphModule a rewritten nn.ModuleDict subclass (a DenseNet block) becomes: its children keep their
    dict methods (``block.items()``, ``block["denselayer1"]``, ``len(block)``); its forward is the graph's."""


class _GraphModuleSequential(fx.GraphModule, nn.Sequential):
    """The GraphModule a rewritten nn.Sequential subclass with a forward of its own (torchvision's ASPPPooling)
    becomes: its children keep their indices, ``len`` and iteration; its forward is the graph's."""


class _GraphModuleList(fx.GraphModule, nn.ModuleList):
    """The GraphModule a rewritten nn.ModuleList subclass becomes: its children keep their indices, ``len`` and
    iteration; its forward is the graph's."""


_GRAPH_MODULE_KINDS = ((nn.ModuleDict, _GraphModuleDict), (nn.Sequential, _GraphModuleSequential),
                       (nn.ModuleList, _GraphModuleList))


def rewrite_residual_adds(model: nn.Module, kept: Optional[List[Tuple[str, str]]] = None,
                          residuals: bool = True) -> List[str]:
    """Replaces, in the forward of every submodule of ``model`` (not the model itself), each add of two
    tensors one of which comes from a static Int8Conv2d (a residual add: ``out = conv3(...); out += identity``)
    and the ReLU that alone follows it, by a call to an Int8Add submodule (``residual_add``,
    ``residual_add_1``, ...); and each squeeze-excitation gate ``x * g(pool(x))`` (``_gate``: MobileNetV3's and
    EfficientNet's blocks) by calls to an Int8GlobalAvgPool (``gate_pool``) and an Int8ChannelScale
    (``gate_scale``), which take x as int8; and each functional ``F.avg_pool2d`` / ``F.max_pool2d`` with constant
    arguments (an Inception block's pooling branch) by a call to an Int8AvgPool2d (``avg_pool``) or Int8MaxPool2d
    (``max_pool``) submodule, which pools int8 too (torch's functional pooling refuses int8 in channels_last);
    and each ``F.interpolate`` in a nearest or the bilinear mode, its arguments but the size constant, by
    fastinfer.nn.int8_interpolate, which upsamples int8 too (DeepLabV3's pooled ASPP branch);
    and each chain of ``torch.cat(parts, 1)`` calls that extend one another (a DenseNet block's) by
    fastinfer.nn.concat's functions, which copy each feature once (_cat_chains); and drops each ReLU applied again
    to a conv's ReLU output (_repeated_relu). ``residuals=False`` rewrites the poolings, concatenations and ReLUs
    only (load_quantized, for a file without Int8Adds or gates). Such a submodule becomes a
    torch.fx.GraphModule under the same name, with the same children, parameters and buffers, its class name kept
    (an nn.ModuleDict's its dict methods too). A child whose forward concatenates an argument its caller passes as a
    list (torchvision's _DenseLayer) is traced into its caller's (_OwnOpsTracer's inline). Returns the names of the
    rewritten submodules.

    Until chain_int8_convs gives these int8 operands or an out_scale they compute what the forward did.
    A submodule whose forward takes optional arguments, or tests one against None, keeps its forward (its
    residual adds stay fp32); ``kept`` gets (name, why) for each such submodule that has a residual add.
    """
    rewritten = []
    inline: Dict[int, List[str]] = {}  # _OwnOpsTracer's: children whose concatenations their callers rewrite
    for name, mod in reversed(list(model.named_modules())):  # children before their parents
        if not name or isinstance(mod, fx.GraphModule) or type(mod).__module__.startswith(("torch.", "fastinfer.")):
            continue
        try:
            graph = _OwnOpsTracer(inline).trace(mod)
        except Exception:  # untraceable forward: left as it is
            continue
        adds = [n for n in graph.nodes if _residual_add(mod, n)] if residuals else []
        gates = [g for g in (_gate(mod, n) for n in graph.nodes) if g is not None] if residuals else []
        pools = [(n, p) for n, p in ((n, _functional_pool(n)) for n in graph.nodes) if p is not None]
        ups = [(n, u) for n, u in ((n, _functional_interpolate(n)) for n in graph.nodes) if u is not None]
        chains = _cat_chains(mod, graph)
        relus = [n for n in graph.nodes if _repeated_relu(mod, n)]
        work = bool(adds or gates or pools or ups or chains or relus)
        # a concatenation of a whole argument (torch.cat(features, 1) with features a list the caller makes)
        any_cat = any(n.op == "call_function" and n.target in _CAT_FUNCTIONS for n in graph.nodes)
        if not work and not any_cat:
            continue
        why = _fixed_signature(mod, graph)
        # A forward that concatenates an argument (torch.cat(features, 1), features a list its caller makes) is
        # traced into its caller's, where the list and what joins it are known.
        listed = _inlinable(mod, graph) if any_cat and (why is not None or not chains) else None
        if listed:
            inline[id(mod)] = listed
        if why is not None:
            if not listed and kept is not None and (adds or gates):
                kept.append((name, why))
            continue
        if not work:
            continue
        gm = _graph_module(mod, graph)
        for add in adds:
            _replace_add(gm, add)
        for gate in gates:
            _replace_gate(gm, *gate)
        for node, pool in pools:
            _replace_call(gm, node, "avg_pool" if isinstance(pool, Int8AvgPool2d) else "max_pool", pool)
        for node, args in ups:
            node.target, node.args, node.kwargs = int8_interpolate, args, {}
        _replace_cat_chains(gm, chains)
        _drop_repeated_relus(gm)
        _install(model, name, mod, gm)
        rewritten.append(name)
    return rewritten


def _graph_module(mod: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    """A GraphModule of mod's forward (graph: its trace), to be rewritten and then _install-ed in mod's place: its
    class name, children, parameters and buffers mod's (an nn.ModuleDict's dict methods too, an nn.Sequential's or
    nn.ModuleList's indexing)."""
    cls = next((g for base, g in _GRAPH_MODULE_KINDS if isinstance(mod, base)), fx.GraphModule)
    gm = cls(mod, graph, class_name=type(mod).__name__)
    # The original children, all of them: GraphModule copies only what the graph calls, and for a call
    # of a grandchild (self.a.b(x)) it makes a new container `a` holding only `b`.
    for child_name, child in mod.named_children():
        setattr(gm, child_name, child)
    for pname, t in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
        if not hasattr(gm, pname):
            (gm.register_parameter if isinstance(t, nn.Parameter) else gm.register_buffer)(pname, t)
    return gm


def _install(model: nn.Module, name: str, mod: nn.Module, gm: fx.GraphModule) -> None:
    """gm's rewritten graph compiled, and gm in mod's place (model's submodule ``name``)."""
    gm.graph.lint()
    gm.recompile()
    gm.train(mod.training)
    if gm is not mod:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, gm)


def convs_into_concatenations(model: nn.Module) -> List[str]:
    """After chain_int8_convs: each part of a channel concatenation that an int8 static conv makes and nothing
    else reads is written by the conv straight into the concatenation's channels (fastinfer.nn.concat, ops.
    int8_conv2d_into): the extensions of a DenseNet block (cat_conv_extend), a torch.cat of an Inception block's
    branches (cat_with_convs). The conv may be the part's module, the last of a plain nn.Sequential's children (the
    ones before it are then called on their own), or the one conv of a module whose forward is that conv and
    identities (torchvision's BasicConv2d once fused). Returns the names of the submodules rewritten (each a
    GraphModule, as rewrite_residual_adds makes them)."""
    done = []
    for name, mod in reversed(list(model.named_modules())):  # children before their parents
        if not name:
            continue
        if isinstance(mod, fx.GraphModule):
            graph = mod.graph
        elif type(mod).__module__.startswith(("torch.", "fastinfer.")) or "cat" not in (_class_source(mod) or "cat"):
            continue
        else:
            try:
                graph = _OwnOpsTracer().trace(mod)
            except Exception:  # untraceable forward: left as it is
                continue
        sites = _conv_join_sites(mod, graph)
        if not sites or (not isinstance(mod, fx.GraphModule) and _fixed_signature(mod, graph) is not None):
            continue
        gm = mod if isinstance(mod, fx.GraphModule) else _graph_module(mod, graph)
        for node, convs in sites:
            _write_convs_into(gm, node, convs)
        _install(model, name, mod, gm)
        done.append(name)
    return done


def _hooked(mod: nn.Module) -> bool:
    return bool(mod._forward_hooks or mod._forward_pre_hooks)


def _writing_conv(root: nn.Module, target: str) -> Optional[Tuple[List[str], str]]:
    """(calls, conv) where calling submodule ``target`` of root on x computes conv(calls[-1](... calls[0](x))) (module
    paths under root), conv a static Int8Conv2d (the class itself) with int8 out (concat._conv_shape's); else None."""
    mod = root.get_submodule(target)
    if _hooked(mod):  # the rewrite calls what is inside: the module's own hooks would not run
        return None
    if isinstance(mod, Int8Conv2d):
        ok = type(mod) is Int8Conv2d and mod.x_scale is not None and mod.out_scale is not None
        return ([], target) if ok else None
    if type(mod) is nn.Sequential:
        names = list(mod._modules)
        while names and type(mod._modules[names[-1]]) in IDENTITIES:
            names.pop()
        tail = _writing_conv(root, f"{target}.{names[-1]}") if names else None
        return ([f"{target}.{k}" for k in names[:-1]] + tail[0], tail[1]) if tail else None
    calls = _call_chain(mod)  # x -> one chain of module calls: identities and one Int8Conv2d
    if not calls or len(calls) != 1 or not isinstance(mod.get_submodule(calls[0]), Int8Conv2d):
        return None
    return _writing_conv(root, f"{target}.{calls[0]}")


_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                      operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift,
                      operator.irshift, operator.imatmul, operator.setitem, operator.delitem}


def _writes_nothing(module: nn.Module, node: fx.Node, seen: Dict[int, bool], depth: int = 0) -> bool:
    """node writes into no tensor it did not make (conservatively): moving a conv's call past it cannot change what
    the conv reads. Module calls: torch.nn's and fastinfer's without ``inplace=True``, and a plain nn.Sequential or
    a user module (a GraphModule's graph, or its trace) whose own nodes all write nothing; function and method calls
    whose name does not end in ``_``, no in-place operator, no ``out=`` and no literal True argument
    (``F.relu(x, True)``, ``inplace=True``)."""
    if node.op in ("placeholder", "get_attr", "output"):
        return True
    if node.op == "call_module":
        return _module_writes_nothing(module.get_submodule(node.target), seen, depth)
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if node.op not in ("call_function", "call_method") or node.target in _INPLACE_OPERATORS:
        return False
    return (isinstance(name, str) and not name.endswith("_") and "out" not in node.kwargs
            and not any(a is True for a in (*node.args[1:], *node.kwargs.values())))


def _module_writes_nothing(mod: nn.Module, seen: Dict[int, bool], depth: int) -> bool:
    key = id(mod)
    if key not in seen:
        seen[key] = False  # a module reached again through itself: not known to write nothing
        if getattr(mod, "inplace", False) is True:
            ok = False
        elif type(mod) is nn.Sequential:
            ok = depth < 4 and all(_module_writes_nothing(m, seen, depth + 1) for m in mod)
        elif type(mod).__module__.startswith(("torch.", "fastinfer.")) and not isinstance(mod, fx.GraphModule):
            ok = True
        elif depth >= 4:
            ok = False
        else:
            try:
                graph = mod.graph if isinstance(mod, fx.GraphModule) else _OwnOpsTracer().trace(mod)
                ok = all(_writes_nothing(mod, n, seen, depth + 1) for n in graph.nodes)
            except Exception:
                ok = False
        seen[key] = ok
    return seen[key]


def _conv_join_sites(module: nn.Module, graph: fx.Graph) -> List[Tuple[fx.Node, Dict[fx.Node, tuple]]]:
    """The concatenations of graph (module's forward) whose parts an int8 conv can write in place: a channel
    torch.cat (_channel_cat) or a cat_channels_extend of one part, each with {part node: (calls, conv) of
    _writing_conv, the call of the conv's module, the nodes that make the part} for the parts that a module called
    once makes (behind identities), on one input, for this concatenation alone, where no node between that call and
    the concatenation writes into a tensor (_writes_nothing): the rewrite moves the call there."""
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    order = {n: i for i, n in enumerate(graph.nodes)}
    pure: List[bool] = []  # per node, _writes_nothing (made when a concatenation has a candidate part)
    seen: Dict[int, bool] = {}

    def writes_nothing(i0: int, i1: int) -> bool:
        if not pure:
            pure.extend(_writes_nothing(module, n, seen) for n in graph.nodes)
        return all(pure[i0:i1])

    sites = []
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is concat.cat_channels_extend and len(node.args) == 2 and len(node.args[1]) == 1:
            parts = list(node.args[1])
        elif _channel_cat(node):
            parts = list(node.args[0])
        else:
            continue
        convs = {}
        for p in parts:
            if not isinstance(p, fx.Node) or parts.count(p) != 1:
                continue
            # behind identities (a ReLU fuse folded into the conv: SqueezeNet's expand activations)
            made, q = [], p
            while (_single_call(q, calls) and type(module.get_submodule(q.target)) in IDENTITIES
                   and not _hooked(module.get_submodule(q.target)) and q.args[0].op == "call_module"):
                made.append(q)
                q = q.args[0]
            # the calls move to the concatenation: nothing between may write into what they read
            if _single_call(q, calls) and writes_nothing(order[q] + 1, order[node]):
                found = _writing_conv(module, q.target)
                if found is not None:
                    convs[p] = (*found, q, [*made, q])
        if convs:
            sites.append((node, convs))
    return sites


def _single_call(n: fx.Node, calls: Counter) -> bool:
    """n calls a module (called nowhere else) on one node, and one node uses its output."""
    return (n.op == "call_module" and calls[n.target] == 1 and len(n.users) == 1 and len(n.args) == 1
            and isinstance(n.args[0], fx.Node) and not n.kwargs)


def _write_convs_into(gm: fx.GraphModule, node: fx.Node, convs: Dict[fx.Node, tuple]) -> None:
    """A _conv_join_sites concatenation rewritten: its conv parts' calls moved into it (cat_conv_extend,
    cat_with_convs). convs: part -> (module calls before the conv, the conv, the call whose input the conv takes,
    the nodes that made the part)."""
    g = gm.graph
    with g.inserting_before(node):
        def conv_input(p):
            x = convs[p][2].args[0]  # read now: an earlier rewrite may have replaced the node it was
            for t in convs[p][0]:
                x = g.call_module(t, (x,))
            return x

        if node.target is concat.cat_channels_extend:
            (p,) = node.args[1]
            new = g.call_function(concat.cat_conv_extend, (node.args[0], g.get_attr(convs[p][1]), conv_input(p)))
        else:
            parts = list(node.args[0])
            new = g.call_function(concat.cat_with_convs, ([conv_input(p) if p in convs else p for p in parts],
                                                          [g.get_attr(convs[p][1]) if p in convs else None
                                                           for p in parts]))
    node.replace_all_uses_with(new)
    g.erase_node(node)
    for made in convs.values():
        for n in made[3]:  # the part first, then what made it
            g.erase_node(n)


def _residual_add(module: nn.Module, node: fx.Node) -> bool:
    if node.op != "call_function" or node.target not in _ADD_FUNCTIONS or node.kwargs or len(node.args) != 2:
        return False
    # two activations (not a parameter or buffer read with get_attr), one of them a static conv's output
    if (not all(isinstance(a, fx.Node) and a.op != "get_attr" for a in node.args)
            or node.args[0] is node.args[1]):
        return False
    # from a static conv, through Identity (a folded BatchNorm) at most, or from an nn.Sequential that ends
    # with one (MobileNetV2's ``x + self.conv(x)``)
    return any(_static_conv(_producer(module, arg)) for arg in node.args)


def _global_pool_input(module: nn.Module, node: fx.Node) -> Optional[fx.Node]:
    """x when node pools x to 1 x 1 by its mean: nn.AdaptiveAvgPool2d(1), F.adaptive_avg_pool2d(x, 1) or
    x.mean((2, 3), keepdim=True) (torch computes the same bits for the three); else None."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    if node.op == "call_module":
        mod = module.get_submodule(node.target)
        ok = type(mod) is nn.AdaptiveAvgPool2d and mod.output_size in (1, (1, 1)) and len(node.args) == 1
    elif node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        ok = _arg(node, 1, "output_size", None) in (1, (1, 1)) and len(node.args) + len(node.kwargs) == 2
    elif node.op == "call_method" and node.target == "mean":
        dims, keep = _arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False)
        ok = keep is True and isinstance(dims, (tuple, list)) and tuple(sorted(dims)) in ((2, 3), (-2, -1))
        ok = ok and len(node.args) + len(node.kwargs) == 3 and "dtype" not in node.kwargs
    else:
        ok = False
    return node.args[0] if ok else None


def _gate(module: nn.Module, mul: fx.Node) -> Optional[Tuple[fx.Node, fx.Node, fx.Node, fx.Node]]:
    """(pool, mul, x, g) when ``mul`` multiplies x by a gate g computed from x's global average pool alone,
    through a chain of single-input calls each used once (squeeze-excitation: ``x * sigmoid(fc2(relu(fc1(
    avgpool(x)))))``, in either operand order); else None."""
    if (mul.op != "call_function" or mul.target not in _MUL_FUNCTIONS or mul.kwargs or len(mul.args) != 2
            or not all(isinstance(a, fx.Node) for a in mul.args) or mul.args[0] is mul.args[1]):
        return None
    for g, x in (mul.args, mul.args[::-1]):
        node = g
        for _ in range(16):  # the chain's length: a few calls in every gate we know of
            if len(node.users) != 1 or node.op not in ("call_module", "call_function", "call_method"):
                break
            if _global_pool_input(module, node) is x:
                return node, mul, x, g
            extra = [a for a in list(node.args[1:]) + list(node.kwargs.values()) if isinstance(a, fx.Node)]
            if not node.args or not isinstance(node.args[0], fx.Node) or extra or node.args[0] is x:
                break
            node = node.args[0]
    return None


def _producer(module: nn.Module, node: fx.Node) -> Optional[nn.Module]:
    """The module whose output ``node`` is: behind nn.Identity calls, and for a call of a plain nn.Sequential,
    its last child that is not an nn.Identity, or of a module whose forward is a chain of calls of its children
    (YOLO's Conv: conv, BatchNorm, activation, once fused a conv and identities), the last call's (recursively).
    None for anything but a module call."""
    node = _behind_identities(module, node)
    if node.op != "call_module":
        return None
    mod = module.get_submodule(node.target)
    for _ in range(8):  # nesting depth
        if type(mod) is nn.Sequential:
            kids = [m for m in mod if type(m) not in IDENTITIES]
            if not kids:
                return None
            mod = kids[-1]
            continue
        chain = _call_chain(mod)
        if not chain:
            return mod
        mod = mod.get_submodule(chain[-1])
    return mod


def _call_chain(mod: nn.Module) -> Optional[List[str]]:
    """The children a user module's forward calls one after another, each on the previous one's output and the
    first on its one argument, and returns the last one's output: their names, nn.Identity-like calls (IDENTITIES)
    left out; None for any other forward (and for torch's and fastinfer's modules)."""
    if type(mod).__module__.startswith(("torch.", "fastinfer.")) and not isinstance(mod, fx.GraphModule):
        return None
    try:
        graph = mod.graph if isinstance(mod, fx.GraphModule) else _OwnOpsTracer().trace(mod)
    except Exception:
        return None
    nodes = list(graph.nodes)
    if len(nodes) < 3 or nodes[0].op != "placeholder" or nodes[-1].op != "output":
        return None
    prev, calls = nodes[0], []
    for n in nodes[1:-1]:
        if n.op != "call_module" or n.args != (prev,) or n.kwargs:
            return None
        if type(mod.get_submodule(n.target)) not in IDENTITIES:
            calls.append(n.target)
        prev = n
    return calls if nodes[-1].args == (prev,) and calls else None


def _is_relu(module: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        return type(module.get_submodule(node.target)) is nn.ReLU
    return ((node.op == "call_function" and node.target in _TRANSPARENT_FUNCTIONS)
            or (node.op == "call_method" and node.target in _TRANSPARENT_METHODS))


def _behind_identities(module: nn.Module, node: fx.Node) -> fx.Node:
    """node, or where it comes from through identities and stochastic depth in eval mode (EfficientNet's residual
    branch)."""
    while node.op == "call_module" and _identity(module.get_submodule(node.target)) and node.args:
        node = node.args[0]
    return node


def _identity(mod: nn.Module) -> bool:
    return type(mod) in IDENTITIES or (not mod.training and (is_drop_path(mod) or type(mod) is Int8DropPath))


def _relu_args_only(node: fx.Node, arg: fx.Node) -> bool:
    """node is relu(arg) or relu(arg, inplace)."""
    return (node.args[0] is arg and all(isinstance(v, bool) for v in node.args[1:])
            and set(node.kwargs) <= {"inplace"})


def _repeated_relu(module: nn.Module, node: fx.Node) -> bool:
    """node is a ReLU applied to the output of an Int8Conv2d that already applies ReLU/ReLU6: the shared
    ``self.relu`` that fuse leaves in a forward, or torchvision's BasicConv2d's ``F.relu(x, inplace=True)`` after
    the conv and BatchNorm that fuse folded into one."""
    if not node.args or not isinstance(node.args[0], fx.Node) or not _is_relu(module, node):
        return False
    src = _behind_identities(module, node.args[0])
    return (_relu_args_only(node, node.args[0]) and src.op == "call_module"
            and isinstance(module.get_submodule(src.target), Int8Conv2d)
            and module.get_submodule(src.target).activation in ("relu", "relu6"))


def _drop_repeated_relus(gm: fx.GraphModule) -> None:
    """Removes each _repeated_relu: relu(relu(y)) == relu(y), and it would be one more pass over the tensor (94
    of them in Inception v3's forward: 6% of its time at batch 8)."""
    for node in list(gm.graph.nodes):
        if _repeated_relu(gm, node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)


def _free_name(gm: fx.GraphModule, base: str) -> str:
    name, i = base, 0
    while hasattr(gm, name):
        i += 1
        name = f"{base}_{i}"
    return name


def _replace_gate(gm: fx.GraphModule, pool: fx.Node, mul: fx.Node, x: fx.Node, g: fx.Node) -> None:
    """pool(x) -> gate_pool(x), x * g -> gate_scale(g, x) (the original pooling child, if any, stays unused)."""
    pool_name = _free_name(gm, "gate_pool")
    dims = _arg(pool, 1, "dim", None) if pool.op == "call_method" else None  # x.mean(dims, keepdim=True)
    gm.add_submodule(pool_name, Int8GlobalAvgPool(mean_dims=None if dims is None else tuple(dims)))
    with gm.graph.inserting_after(pool):
        new_pool = gm.graph.call_module(pool_name, (x,))
    pool.replace_all_uses_with(new_pool)
    gm.graph.erase_node(pool)
    scale_name = _free_name(gm, "gate_scale")
    gm.add_submodule(scale_name, Int8ChannelScale())
    with gm.graph.inserting_after(mul):
        new_mul = gm.graph.call_module(scale_name, (g, x))
    mul.replace_all_uses_with(new_mul)
    gm.graph.erase_node(mul)


# functional pooling -> (its module, the arguments after the input in order, their defaults)
_POOL_FUNCTIONS = {
    F.avg_pool2d: (Int8AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                   "divisor_override"), (None, None, 0, False, True, None)),
    F.max_pool2d: (Int8MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                   (None, None, 0, 1, False, False)),
}


def _functional_pool(node: fx.Node) -> Optional[nn.Module]:
    """The Int8AvgPool2d / Int8MaxPool2d computing what ``node``, a call of F.avg_pool2d / F.max_pool2d on one
    tensor with constant arguments (no indices returned), computes; else None."""
    if node.op != "call_function" or node.target not in _POOL_FUNCTIONS or not node.args:
        return None
    cls, names, defaults = _POOL_FUNCTIONS[node.target]
    if not isinstance(node.args[0], fx.Node) or len(node.args) > len(names) + 1 or not set(node.kwargs) <= set(names):
        return None
    values = dict(zip(names, defaults))
    values.update(zip(names, node.args[1:]))
    values.update(node.kwargs)
    if values["kernel_size"] is None or any(isinstance(v, fx.Node) for v in values.values()):
        return None
    if values.pop("return_indices", False):
        return None
    return cls(**values)


_INTERPOLATE_ARGS = ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")
_INTERPOLATE_DEFAULTS = (None, None, "nearest", None, None, False)


def _functional_interpolate(node: fx.Node) -> Optional[tuple]:
    """The arguments of int8_interpolate for ``node``, an F.interpolate call on one tensor in a mode int8_interpolate
    takes, without antialias, its arguments but the size constant (the size may be a node: ``x.shape[-2:]``);
    else None."""
    if node.op != "call_function" or node.target is not F.interpolate or not node.args:
        return None
    if (not isinstance(node.args[0], fx.Node) or len(node.args) > len(_INTERPOLATE_ARGS) + 1
            or not set(node.kwargs) <= set(_INTERPOLATE_ARGS)):
        return None
    values = dict(zip(_INTERPOLATE_ARGS, _INTERPOLATE_DEFAULTS))
    values.update(zip(_INTERPOLATE_ARGS, node.args[1:]))
    values.update(node.kwargs)
    nested: List[fx.Node] = []  # nodes among the arguments (but a size node itself): a size tuple of traced ints
    fx.node.map_arg([v for k, v in values.items() if not (k == "size" and isinstance(v, fx.Node))], nested.append)
    if (nested or values.pop("antialias") is not False or values["mode"] not in INTERPOLATE_MODES
            or (values["size"] is None) == (values["scale_factor"] is None)):  # F.interpolate takes one of the two
        return None
    return (node.args[0], *values.values())


def _replace_call(gm: fx.GraphModule, node: fx.Node, base: str, mod: nn.Module) -> None:
    """node (a call on its first argument) -> a call of submodule ``mod``, added under a free name from base."""
    name = _free_name(gm, base)
    gm.add_submodule(name, mod)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node.args[0],))
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _channel_cat(node: fx.Node) -> bool:
    """node is torch.cat(a list of tensors, 1) (torch.concat, torch.concatenate; dim given by position or name)."""
    parts = _join_inputs(node) if node.target in _CAT_FUNCTIONS else None
    if not parts or len(node.args) > 2 or not all(isinstance(p, fx.Node) for p in parts):
        return False
    dim = node.args[1] if len(node.args) == 2 else node.kwargs.get("dim", 0)
    return type(dim) is int and dim == 1


# Modules that read their input and write a new tensor: a concatenation extended later may feed them (_cat_chains).
_READERS = (nn.BatchNorm2d, nn.Conv2d, Int8Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _reads_only(module: nn.Module, user: fx.Node, node: fx.Node) -> bool:
    """user only reads node: node.shape and the like, or a call of a _READERS module on node alone."""
    if _shape_query(user, node):
        return True
    return (user.op == "call_module" and isinstance(module.get_submodule(user.target), _READERS)
            and user.args == (node,) and not user.kwargs)


def _part_channels(module: nn.Module, node: fx.Node) -> Optional[int]:
    """The channels of node's output where a conv makes it (behind identities, or last in a Sequential)."""
    mod = _producer(module, node)
    return mod.out_channels if isinstance(mod, (nn.Conv2d, Int8Conv2d)) else None


def _cat_chains(module: nn.Module, graph: fx.Graph) -> List[List[fx.Node]]:
    """The chains of channel concatenations (_channel_cat) in module's forward (graph) where each extends the one
    before: its parts begin with all of the earlier one's (a DenseNet block: [f0], [f0, f1], [f0, f1, f2], ...),
    the parts it adds come from convs (their channel counts size the buffer), and the earlier one's other users
    only read it (_reads_only), before the extension runs. Each concatenation extends one other at most, and is
    extended once at most: no one then writes into a prefix another concatenation shares. Chains of two or more.

    A concatenation in no chain stays torch.cat: fastinfer's kernel copies no faster than torch's for a few parts
    (torch.cat took 0.74-1.23x its time, 2 to 9 parts, measured at batch 8); what pays is copying each feature
    once."""
    cats = [n for n in graph.nodes if _channel_cat(n)]
    order = {n: i for i, n in enumerate(graph.nodes)}
    parts = {c: list(c.args[0]) for c in cats}
    extends: Dict[fx.Node, fx.Node] = {}  # earlier concatenation -> the one extending it
    for c in cats:
        best = None
        for p in cats:
            k = len(parts[p])
            if (order[p] < order[c] and p not in extends and k < len(parts[c]) and parts[c][:k] == parts[p]
                    and (best is None or k > len(parts[best]))):
                best = p
        if best is None or any(_part_channels(module, n) is None for n in parts[c][len(parts[best]):]):
            continue
        if all(_reads_only(module, u, best) and order[u] < order[c] for u in best.users if u is not c):
            extends[best] = c
    chains = []
    for head in [c for c in cats if c in extends and c not in extends.values()]:
        chain = [head]
        while chain[-1] in extends:
            chain.append(extends[chain[-1]])
        chains.append(chain)
    return chains


def _replace_cat_chains(gm: fx.GraphModule, chains: List[List[fx.Node]]) -> None:
    """Each chain of _cat_chains (nodes of gm's graph) -> cat_channels_reserve(parts, spare) for its first
    concatenation (spare: the channels the later ones add) and cat_channels_extend(prev, new parts) for the
    others (fastinfer.nn.concat)."""
    for chain in chains:
        parts = [list(c.args[0]) for c in chain]
        added = [p[len(q):] for p, q in zip(parts[1:], parts)]
        spare = sum(_part_channels(gm, n) for new in added for n in new)
        prev = None
        for i, c in enumerate(chain):
            with gm.graph.inserting_after(c):
                if i == 0:
                    new = gm.graph.call_function(concat.cat_channels_reserve, (parts[0], spare))
                else:
                    new = gm.graph.call_function(concat.cat_channels_extend, (prev, added[i - 1]))
            c.replace_all_uses_with(new)
            gm.graph.erase_node(c)
            prev = new


def _replace_add(gm: fx.GraphModule, add: fx.Node) -> None:
    users = list(add.users)
    relu = users[0] if len(users) == 1 and _is_relu(gm, users[0]) and _relu_args_only(users[0], add) else None
    name = _free_name(gm, "residual_add")
    gm.add_submodule(name, Int8Add(relu=relu is not None))
    end = relu if relu is not None else add
    with gm.graph.inserting_after(end):
        new = gm.graph.call_module(name, add.args)
    end.replace_all_uses_with(new)
    if relu is not None:
        gm.graph.erase_node(relu)
    gm.graph.erase_node(add)


def _chain_graph(prefix: str, module: nn.Module, graph: fx.Graph, chained: List[str],
                 output_scales: Dict[str, float]) -> None:
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    # BatchNorms first: one that becomes a BatchNormQuant2d (int8 out, for a static conv) also takes int8 in, so
    # the producers in front of it (a DenseNet's convs, through its concatenations) can then hand off to it.
    for norms in (True, False):
        joined = {}  # producer node -> (its hand-off, scale): producers that reach a concatenation
        for node in graph.nodes:
            if node.op != "call_module":
                continue
            producer = module.get_submodule(node.target)
            # A module called twice has one out_scale for both calls: leave it (and any with out_scale set).
            kind = _foldable_norm(producer) if norms else isinstance(producer, (Int8Conv2d, Int8Add, Int8ChannelScale))
            if not kind or getattr(producer, "out_scale", None) is not None or calls[node.target] != 1:
                continue
            if isinstance(producer, Int8Conv2d) and not _static_conv(producer):
                continue
            found = _int8_consumers(module, node, calls)
            if found is None:
                continue
            scale = _handoff_scale(module, prefix, node, producer, found, output_scales)
            if scale is None:
                continue
            if found.joins:
                joined[node] = (found, scale)
            else:
                _hand_off(module, prefix, node, producer, found, scale, chained, calls)
        for node, (found, scale) in _complete_joins(joined).items():
            _hand_off(module, prefix, node, module.get_submodule(node.target), found, scale, chained, calls)


def _foldable_norm(mod: nn.Module) -> bool:
    """An nn.BatchNorm2d with running statistics: a producer whose int8 output a BatchNormQuant2d writes."""
    return type(mod) is nn.BatchNorm2d and mod.track_running_stats and mod.running_mean is not None


def _quantizing_norm(module: nn.Module, node: fx.Node, calls: Counter) -> BatchNormQuant2d:
    """Swaps the nn.BatchNorm2d called at ``node`` for a BatchNormQuant2d (returned; its out_scale is the caller's
    to set). A ReLU module that is its output's only user, called once, becomes the norm's activation and a
    Folded in the model (a functional relu stays: it passes int8 values as they are)."""
    norm = module.get_submodule(node.target)
    users = list(node.users)
    relu = users[0] if len(users) == 1 and users[0].op == "call_module" and calls[users[0].target] == 1 and \
        type(module.get_submodule(users[0].target)) is nn.ReLU and _relu_args_only(users[0], node) else None
    new = BatchNormQuant2d.from_float(norm, "relu" if relu is not None else "none")
    _set_submodule(module, node.target, new)
    if relu is not None:
        _set_submodule(module, relu.target, Folded())
    return new


def _set_submodule(root: nn.Module, name: str, mod: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, mod)


def _handoff_scale(module: nn.Module, prefix: str, node: fx.Node, producer: nn.Module, found: "_Consumers",
                   output_scales: Dict[str, float]) -> Optional[float]:
    """The one scale the producer's int8 output takes, or None where its consumers disagree. It is the conv
    consumers' calibrated one; an Int8Add operand (or a squeeze-excitation pool or scale) takes whatever it is
    given, so a conv that only feeds those uses its own calibrated output scale. A max pooling's output lies
    within its input's range, so a conv that reads through more max poolings than the others takes their
    scale (as torch.ao's max pooling shares its input's quantization parameters): the consumers reached
    through the fewest must agree. A conv that reads through an average pooling takes the others' scale too, and
    with no other conv consumer the producer's own calibrated output scale (below). Consumers that disagree take
    the largest of their scales where one reads through a concatenation or a chunk's piece (below)."""
    direct = [c for c in found.convs if c not in found.averaged]
    if not direct:
        # No conv consumer, or each reads through an average pooling, whose output spans a narrower range than its
        # input (a MaxViT shortcut's pooling): the producer's own calibrated output scale covers what it writes.
        name = _join(prefix, node.target)
        return output_scales.get(name) if isinstance(producer, Int8Conv2d) else None
    fewest = min(found.pools[c] for c in direct)
    group = [c for c in direct if found.pools[c] == fewest]
    scales = {module.get_submodule(c.target).x_scale for c in group}
    if len(scales) == 1:
        return scales.pop()
    # Consumers that read a piece of the output (a chunk's) or a concatenation holding it were calibrated on part of
    # its values, or on more: the largest of their scales covers what each reads (YOLOv8's C2f: a bottleneck reads
    # the second half of cv1's output, cv2 the concatenation of both halves and the bottleneck's output).
    return max(scales) if any(c in found.parted for c in group) else None


def _hand_off(module: nn.Module, prefix: str, node: fx.Node, producer: nn.Module, found: "_Consumers",
              scale: float, chained: List[str], calls: Counter) -> None:
    """Sets the producer's out_scale, its conv consumers' x_scale (changed only for those read through more
    max poolings: _handoff_scale) and its Int8Add / gate consumers' operand scales; swaps the max poolings and
    dropouts on the way for their int8 versions, and a BatchNorm producer for a BatchNormQuant2d."""
    if _foldable_norm(producer):
        producer = _quantizing_norm(module, node, calls)
    for p in found.passed:
        _int8_passthrough(module, p.target)
    producer.out_scale = scale
    for c in found.convs:
        module.get_submodule(c.target).x_scale = scale
    for add, attr in found.adds:
        if _foldable_norm(module.get_submodule(add.target)):  # a float norm reading int8
            _set_submodule(module, add.target, BatchNormQuant2d.from_float(module.get_submodule(add.target)))
        elif is_global_avg_pool(module.get_submodule(add.target)):
            _set_submodule(module, add.target, Int8AdaptiveAvgPool2d.from_float(module.get_submodule(add.target)))
        setattr(module.get_submodule(add.target), attr, scale)
    chained += [f"{_join(prefix, node.target)} -> {_join(prefix, c.target)}"
                for c in found.convs + [a for a, _ in found.adds]]


def _complete_joins(joined: Dict[fx.Node, Tuple["_Consumers", float]]) -> Dict[fx.Node, Tuple["_Consumers", float]]:
    """The producers whose every concatenation (torch.cat, along any dimension) can be int8, with the scale each
    hands off at: each input of such a concatenation comes from one of these producers. All the producers joined
    through concatenations (a group: an Inception block's branches; a DenseNet block's features, each read by
    every later layer's concatenation) hand off at one scale, the largest of theirs (the concatenation of int8
    tensors of one scale is the int8 tensor of the concatenation; the conv consumers of a producer whose scale
    grows read at it, a coarser step over the range they were calibrated for). Dropping a producer can leave a
    concatenation incomplete, so this repeats until none is dropped."""
    joined = dict(joined)
    while True:
        group = {n: n for n in joined}  # union-find: producer -> a producer of its group

        def root(n):
            while group[n] is not n:
                group[n] = group[group[n]]
                n = group[n]
            return n

        reached: Dict[fx.Node, set] = {}
        members: Dict[fx.Node, List[fx.Node]] = {}
        for n, (found, _) in joined.items():
            for cat, arg in found.joins:
                reached.setdefault(cat, set()).add(arg)
                members.setdefault(cat, []).append(n)
        for ns in members.values():
            for n in ns[1:]:
                group[root(n)] = root(ns[0])
        bad = {cat for cat, args in reached.items() if args != set(_join_inputs(cat))}
        drop = [n for n, (found, _) in joined.items() if any(cat in bad for cat, _ in found.joins)]
        if not drop:
            scale: Dict[fx.Node, float] = {}
            for n, (_, s) in joined.items():
                scale[root(n)] = max(scale.get(root(n), 0.0), s)
            return {n: (found, scale[root(n)]) for n, (found, _) in joined.items()}
        for n in drop:
            del joined[n]


def _transparent(module: nn.Module, node: fx.Node, one_pixel: bool = False) -> bool:
    """node passes an int8 hand-off (one_pixel: its input is a 1 x 1 map, which int8_interpolate broadcasts
    exactly in the bilinear mode)."""
    if node.op == "call_module":
        return _int8_passes(module.get_submodule(node.target))
    if node.op == "call_function" and node.target is int8_interpolate:
        mode = node.args[3] if len(node.args) > 3 else node.kwargs.get("mode", "nearest")
        return mode in Int8Upsample.MODES or (mode == "bilinear" and one_pixel)
    if pieces(node) is not None:  # a chunk or split (views: the same values), then a piece of it
        return all(u.op == "call_function" and u.target is operator.getitem and type(u.args[1]) is int
                   for u in node.users)
    if node.op == "call_function" and node.target is operator.getitem:
        return pieces(node.args[0]) is not None
    if node.op == "call_function":
        return node.target in _TRANSPARENT_FUNCTIONS
    return node.op == "call_method" and node.target in _TRANSPARENT_METHODS


def _int8_passthrough(root: nn.Module, name: str) -> None:
    """Swaps the nn.MaxPool2d called as ``name`` for an Int8MaxPool2d, an nn.Dropout for an Int8Dropout, a stochastic
    depth module for an Int8DropPath, a nearest nn.Upsample for an Int8Upsample (float inputs behave as before)."""
    mod = root.get_submodule(name)
    if type(mod) is nn.MaxPool2d:
        _set_submodule(root, name, Int8MaxPool2d.from_float(mod))
    elif type(mod) is nn.Dropout:
        _set_submodule(root, name, Int8Dropout.from_float(mod))
    elif is_drop_path(mod):
        _set_submodule(root, name, Int8DropPath.from_float(mod))
    elif type(mod) in (nn.Upsample, nn.UpsamplingNearest2d):
        _set_submodule(root, name, Int8Upsample.from_float(mod))
    elif type(mod) is nn.AvgPool2d:
        _set_submodule(root, name, Int8AvgPool2d.from_float(mod))


class _Consumers(NamedTuple):
    """What a producer's output reaches (_int8_consumers)."""
    convs: List[fx.Node]                   # static Int8Conv2d calls
    adds: List[Tuple[fx.Node, str]]        # (call, scale attribute) of layers that take an int8 operand at any scale
    passed: List[fx.Node]                  # module calls passed on the way (max poolings, dropouts, identities)
    joins: List[Tuple[fx.Node, fx.Node]]   # (torch.cat call, its input on the way) for concatenations
    pools: Dict[fx.Node, int]              # node on the way (convs included) -> how many max poolings precede it
    averaged: Set[fx.Node]                 # nodes on the way (convs included) behind an average pooling
    parted: Set[fx.Node]                   # nodes on the way behind a concatenation or a piece of a chunk or split


_CAT_FUNCTIONS = (torch.cat, torch.concat, torch.concatenate)


def _join_inputs(node: fx.Node) -> Optional[list]:
    """What concatenation node joins: the parts of torch.cat(parts, dim) (no out=) or of fastinfer.nn.concat's
    cat_channels_reserve, prev and the parts of cat_channels_extend(prev, parts); None for any other node."""
    if node.op != "call_function" or not node.args:
        return None
    first = node.args[0]
    if node.target in _CAT_FUNCTIONS:
        ok = (isinstance(first, (list, tuple)) and set(node.kwargs) <= {"dim"}
              and not any(isinstance(a, fx.Node) for a in node.args[1:]))
        return list(first) if ok else None
    if node.target is concat.cat_channels_reserve:
        return list(first)
    if node.target is concat.cat_channels_extend:
        return [first, *node.args[1]]
    return None


def _concatenation(user: fx.Node, node: fx.Node) -> bool:
    """user concatenates node with other tensors (_join_inputs), node among its inputs once."""
    inputs = _join_inputs(user)
    return inputs is not None and inputs.count(node) == 1


def _int8_consumers(module: nn.Module, start: fx.Node, calls: Counter) -> Optional[_Consumers]:
    """What ``start``'s output reaches through int8-transparent ops and concatenations (_Consumers).
    None when it also reaches anything else (the model's output, a plain add, a shape op, a float layer, the
    gate operand of an Int8ChannelScale), when a transparent op takes it as anything but its first argument,
    when it is both operands of an Int8Add, or when a max pooling returns indices. A concatenation is int8 only
    if all its inputs are (_complete_joins)."""
    found = _Consumers([], [], [], [], {start: 0}, set(), set())
    stack, seen, pools = [start], set(), found.pools
    # nodes on the way that are a 1 x 1 map: the producer's output where it is one, and what passes it unchanged
    ones = {start} if _one_pixel(module, start) else set()
    while stack:
        node = stack.pop()
        for user in node.users:
            again = user in seen  # reached through another of its inputs
            seen.add(user)
            if _concatenation(user, node):  # each input it joins (YOLOv8's C2f joins both pieces of one chunk)
                found.joins.append((user, node))
                if not again:
                    pools[user] = 0  # (the max poolings before each node: _settle_pools)
                    stack.append(user)
                continue
            mod = module.get_submodule(user.target) if user.op == "call_module" else None
            if again and not isinstance(mod, Int8Add):  # an Int8Add's other operand is recorded below
                continue
            if node in user.kwargs.values():
                return None
            if isinstance(mod, Int8Add):
                attr = _operand(user, node)
                if attr is None:
                    return None
                found.adds.append((user, attr))
                continue
            if (isinstance(mod, BatchNormQuant2d) or _foldable_norm(mod)) and calls[user.target] == 1:
                # a norm that writes int8 for its convs, or a float one (it becomes a BatchNormQuant2d that reads
                # int8 and writes float: DenseNet's last norm); called once, so one x_scale serves it
                if len(user.args) != 1 or user.kwargs:
                    return None
                found.adds.append((user, "x_scale"))
                continue
            if isinstance(mod, Int8GlobalAvgPool) or (is_global_avg_pool(mod) and calls[user.target] == 1):
                # a gate's pool, or a global average pooling beside convs (DeepLabV3's ASPP): int8 in, float out
                if len(user.args) != 1 or user.args[0] is not node or user.kwargs:
                    return None
                found.adds.append((user, "x_scale"))
                continue
            if _shape_query(user, node):  # x.shape, x.size(), x.dim(): the same for the int8 tensor
                continue
            if isinstance(mod, Int8ChannelScale):
                if len(user.args) != 2 or user.args[1] is not node or user.args[0] is node:
                    return None
                found.adds.append((user, "x_scale"))
                continue
            if not user.args or user.args[0] is not node or node in user.args[1:]:
                return None
            if _static_conv(mod):
                found.convs.append(user)
                pools[user] = 0
            elif _transparent(module, user, node in ones):
                if node in ones and (type(mod) in INT8_TRANSPARENT_MODULES if mod is not None else
                                     user.target is not int8_interpolate) and not isinstance(mod, nn.MaxPool2d):
                    ones.add(user)  # an identity, dropout or ReLU: still 1 x 1
                if mod is not None:
                    if isinstance(mod, nn.MaxPool2d) and mod.return_indices:
                        return None
                    found.passed.append(user)
                pools[user] = 0
                stack.append(user)
            else:
                return None
    if not (found.convs or found.adds):
        return None
    _settle_pools(module, start, found)
    return found


def _operand(add: fx.Node, node: fx.Node) -> Optional[str]:
    """The scale attribute of the Int8Add operand that node is at the call ``add``: "a_scale" or "b_scale"; None
    where node is not one operand of two."""
    if len(add.args) != 2 or (add.args[0] is node) == (add.args[1] is node):
        return None
    return "a_scale" if add.args[0] is node else "b_scale"


def _settle_pools(module: nn.Module, start: fx.Node, found: _Consumers) -> None:
    """found.pools, found.averaged and found.parted of each node the walk reached (the keys of found.pools), over
    every path to it, in the graph's (topological) order: the fewest max poolings before it, behind an average
    pooling only if every input is (a concatenation reached through several inputs holds values as wide as its
    widest one: SPPF joins the producer's output with it max-pooled once, twice, three times), and behind a
    concatenation or a chunk's piece."""
    pools, averaged = found.pools, found.averaged
    for n in start.graph.nodes:
        if n is start or n not in pools:
            continue
        ins = [a for a in n.all_input_nodes if a in pools]
        mod = module.get_submodule(n.target) if n.op == "call_module" else None
        pools[n] = min(pools[a] for a in ins) + isinstance(mod, nn.MaxPool2d)
        if isinstance(mod, nn.AvgPool2d) or all(a in averaged for a in ins):
            averaged.add(n)
        else:
            averaged.discard(n)
        if _join_inputs(n) is not None or pieces(n) is not None or any(a in found.parted for a in ins):
            found.parted.add(n)


def _one_pixel(module: nn.Module, node: fx.Node) -> bool:
    """node's output is a 1 x 1 map: node calls an unpadded 1x1 Int8Conv2d on a global average pooling's output
    (behind identities), as DeepLabV3's pooled ASPP branch does."""
    conv = module.get_submodule(node.target) if node.op == "call_module" else None
    if not isinstance(conv, Int8Conv2d) or conv.kernel_size != (1, 1) or conv.padding != (0, 0):
        return False
    if len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
        return False
    src = _behind_identities(module, node.args[0])
    pool = module.get_submodule(src.target) if src.op == "call_module" else None
    return is_global_avg_pool(pool) or isinstance(pool, Int8GlobalAvgPool)


def _shape_query(user: fx.Node, node: fx.Node) -> bool:
    """user reads only node's shape (``node.shape``, ``node.size(...)``, ``node.dim()``), as ASPPPooling's
    ``x.shape[-2:]`` does: what it gets does not depend on node's dtype."""
    if user.op == "call_function" and user.target is getattr:
        return len(user.args) == 2 and user.args[0] is node and user.args[1] == "shape"
    return (user.op == "call_method" and user.target in ("size", "dim") and bool(user.args) and user.args[0] is node
            and node not in user.args[1:] and node not in user.kwargs.values())


def _chain_sequential(prefix: str, seq: nn.Sequential, chained: List[str]) -> None:
    """Module-order fallback for an untraceable nn.Sequential: each child feeds only the next one."""
    kids = list(seq.named_children())
    for i, (name, mod) in enumerate(kids):
        if not _static_conv(mod) or mod.out_scale is not None:
            continue
        j = i + 1
        while j < len(kids) and _int8_exact(kids[j][1]):
            j += 1
        if j < len(kids) and _static_conv(kids[j][1]):
            if any(isinstance(m, nn.MaxPool2d) and m.return_indices for _, m in kids[i + 1:j]):
                continue
            for k in range(i + 1, j):
                _int8_passthrough(seq, kids[k][0])
            mod.out_scale = kids[j][1].x_scale
            chained.append(f"{_join(prefix, name)} -> {_join(prefix, kids[j][0])}")
