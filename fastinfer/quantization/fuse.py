"""fastinfer.fuse: fold eval-mode BatchNorm into the preceding Conv2d/Conv1d/Linear and fuse a following
ReLU/ReLU6 (or a GELU / Hardswish / SiLU module) into it (ConvAct2d/LinearAct), so that static int8 quantization
sees one layer per block.

How the model comes back: the *same* model object (or its deep copy), with submodules swapped in
place, never an fx.GraphModule. torch.fx is only used to find the patterns. So the model keeps its
class, its methods and every module name:

* a fused Conv2d/Linear keeps its name (``features.0`` stays ``features.0``); it becomes a
  ConvAct2d/LinearAct when an activation was fused, and stays an nn.Conv2d/nn.Linear (with folded
  weights, and a bias if it had none) when only a BatchNorm was folded;
* a folded BatchNorm is replaced by a fastinfer.nn.Folded (an nn.Identity whose call skips nn.Module's
  call machinery while it has no hooks) under its own name;
* an activation *module* whose every call was fused is replaced by a Folded; one that is also
  used elsewhere (a shared ``self.relu``), and every *functional* activation (F.relu, torch.relu,
  F.relu6, F.hardtanh(x, 0, 6), x.relu()), stays in the forward. This is correct because ReLU and
  ReLU6 are idempotent: relu(relu(y)) == relu(y), and the layer's output only fed that activation.

Returning the module tree rather than a GraphModule keeps names stable for calibration and for the
int8 swap, and lets one rule cover models fx cannot trace: their parts are fused by module
pattern (see walk_traced and fuse_untraceable) and come out in the same shape.
"""
from __future__ import annotations

import copy
from collections import Counter
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
from torch import Tensor, fx, nn
import torch.nn.functional as F

from ..nn.dropout import is_drop_path
from ..nn.fused import ConvAct2d, Folded, LinearAct
from .calibrate import model_call

TRAINING_ERROR = "fuse needs model.eval(): BatchNorm folding uses running statistics"

_RELU_FUNCTIONS = {F.relu: "F.relu", torch.relu: "torch.relu", F.relu_: "F.relu_", torch.relu_: "torch.relu_"}
_HARDTANH_FUNCTIONS = {F.relu6: "F.relu6", F.hardtanh: "F.hardtanh", F.hardtanh_: "F.hardtanh_"}
_RELU_METHODS = ("relu", "relu_")
# What nn.TransformerEncoderLayer / nn.TransformerDecoderLayer hold for activation="relu" / "gelu".
_TRANSFORMER_FUNCTIONS = {F.relu: "relu", F.gelu: "gelu"}
_TRANSFORMER_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def identity(x: Tensor) -> Tensor:
    """A transformer layer's activation once linear1 has taken it (fuse_transformer_ffns)."""
    return x


class FuseReport(list):
    """What fuse did: one string per fusion, in model order ("conv1 + bn1 + relu1", "fc + F.relu").

    Also ``skipped``: (BatchNorm name, reason) for every BatchNorm left unfolded, and ``notes``:
    submodules torch.fx could not trace (their Sequential children were fused by position).
    """

    def __init__(self, items=()):
        super().__init__(items)
        self.skipped: List[Tuple[str, str]] = []
        self.notes: List[str] = []

    def __str__(self) -> str:
        lines = [f"fastinfer.fuse: {len(self)} fusion(s), {len(self.skipped)} BatchNorm(s) left in place"]
        lines += [f"  fused    {f}" for f in self]
        lines += [f"  kept     {n}: {r}" for n, r in self.skipped]
        lines += [f"  note     {n}" for n in self.notes]
        return "\n".join(lines)


def fuse(model: nn.Module, example_inputs: Union[Tensor, Sequence[Tensor], Mapping[str, Tensor], None] = None,
         inplace: bool = False) -> nn.Module:
    """Folds BatchNorm2d into the preceding Conv2d and BatchNorm1d into the preceding Linear or Conv1d, and
    fuses a following activation into ConvAct2d/LinearAct, wherever the layer's output feeds only
    that BatchNorm/activation: ReLU/ReLU6 (modules or functions), and GELU (erf form), Hardswish and SiLU from
    a module called once (fuse replaces it by nn.Identity: applying them twice would change the result).
    Eval mode only (raises ValueError in training mode: the folded
    weights use the running statistics).

    Folding, per output channel c, with s = gamma / sqrt(running_var + eps) (gamma = 1, beta = 0
    without affine; b = 0 without bias), computed in float64 and stored in the weight's dtype:
        w'[c] = w[c] * s[c]        b'[c] = (b[c] - running_mean[c]) * s[c] + beta[c]

    ``example_inputs`` (optional: a tensor, a tuple of them, or a dict passed by keyword as a Hugging Face
    tokenizer's output is) is run through the model once to learn each Linear's and Conv1d's output rank:
    a BatchNorm1d is folded only where dim 1 is the layer's channels, a Linear's 2-D output ([N, C]) or a
    Conv1d's 3-D one ([N, C, L]). On a Linear's [N, L, C] a BatchNorm1d normalizes L, and folding would be
    wrong when L == C; so without example_inputs no BatchNorm1d is folded (the report says why).

    torch's nn.TransformerEncoderLayer / nn.TransformerDecoderLayer, which fx cannot trace, are found by type:
    linear1 takes the feed-forward activation (relu or gelu), which becomes the function ``identity``
    (_Fuser.fuse_transformer_ffns).

    ``inplace=False`` deep-copies the model first. Returns the model with submodules swapped (module
    names unchanged; see the module docstring) and ``model.fastinfer_fuse_report`` (a FuseReport).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if any(m.training for m in model.modules()):
        raise ValueError(TRAINING_ERROR)
    if isinstance(example_inputs, Tensor):
        example_inputs = (example_inputs,)
    call = None if example_inputs is None else model_call(model, example_inputs)  # a dict of inputs by keyword
    if not inplace:
        model = _deep_copy(model)
    counts = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    report = FuseReport()
    with torch.no_grad():
        ranks = None if call is None else _output_ranks(model, call, report)
        fuser = _Fuser(model, {i for i, n in counts.items() if n > 1}, report, ranks)
        fuser.fuse_transformer_ffns()
        fuser.fuse_module("", model)
    model.fastinfer_fuse_report = report
    return model


def _deep_copy(model: nn.Module) -> nn.Module:
    """copy.deepcopy, less a torch quirk: TransformerDecoderLayer.__setstate__ puts F.relu in the instance dict
    when "activation" is not there, which is the case when a module (nn.GELU()) holds it, and the dict entry
    then shadows that module: the copy would compute ReLU."""
    copied = copy.deepcopy(model)
    for m in copied.modules():
        if isinstance(m, nn.TransformerDecoderLayer) and "activation" in m._modules:
            m.__dict__.pop("activation", None)
    return copied


def _output_ranks(model: nn.Module, call: Tuple[tuple, dict], report: "FuseReport") -> Optional[Dict[str, Set[int]]]:
    """The ranks of every Linear's and Conv1d's outputs in one run ``model(*args, **kwargs)`` (call), by module
    name (None, and a note, when the run fails). Forward hooks see the real calls, also inside parts that
    torch.fx cannot trace."""
    ranks: Dict[str, Set[int]] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: ranks.setdefault(name, set()).add(out.dim()))
             for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d))]
    try:
        model(*call[0], **call[1])
    except Exception as exc:
        report.notes.append(f"example_inputs did not run through the model ({type(exc).__name__}: "
                            f"{str(exc)[:120]}); no BatchNorm1d folded")
        return None
    finally:
        for h in hooks:
            h.remove()
    return ranks


def pieces(node: fx.Node) -> Optional[int]:
    """How many tensors ``node`` returns where a trace can tell without shapes: a chunk into 2 (two for any
    dimension of 2 or more: YOLOv8's ``list(self.cv1(x).chunk(2, 1))``), a split by a list of sizes (one a
    size); else None."""
    if node.op == "call_method" and node.target in ("chunk", "split"):
        chunk = node.target == "chunk"
    elif node.op == "call_function" and node.target in (torch.chunk, torch.split):
        chunk = node.target is torch.chunk
    else:
        return None
    if len(node.args) > 1:
        how = node.args[1]
    else:  # by name: chunk's chunks, Tensor.split's split_size, torch.split's split_size_or_sections
        how = next((v for k, v in node.kwargs.items() if k in ("chunks", "split_size", "split_size_or_sections")),
                   None)
    if chunk:
        return 2 if type(how) is int and how == 2 else None
    return len(how) if isinstance(how, (list, tuple)) and all(type(s) is int for s in how) else None


class _Pieces(fx.Proxy):
    """The proxy of a node whose count of tensors pieces() tells: it has a length and iterates as its pieces
    (getitem nodes), as the tensors' tuple does."""

    def __len__(self) -> int:
        return pieces(self.node)

    def __iter__(self):
        return iter([self[i] for i in range(len(self))])


class PiecesTracer(fx.Tracer):
    """A tracer under which the result of a chunk or split whose count it can tell (pieces) has a length and can be
    iterated: ``list(x.chunk(2, 1))`` traces as the list of the two pieces instead of failing, as torch.fx does
    for anything but unpacking."""

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Pieces(node, self) if pieces(node) is not None else super().proxy(node)


class _Tracer(PiecesTracer):
    # fastinfer's own layers (ConvAct2d, LinearAct, Int8Linear ...) are leaves like torch.nn's, so
    # an already-fused layer shows up as one call and fuse can run twice.
    # Activation modules are leaves too, so a non-idempotent one (GELU) can be swapped for Identity; and stochastic
    # depth modules, so that an int8 hand-off can pass one in eval mode and swap it for an Int8DropPath; and frozen
    # BatchNorms, so that they are folded like BatchNorm2d.
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (type(m).__module__.startswith("fastinfer.nn") or _module_activation(m) is not None
                or is_drop_path(m) or is_frozen_bn(m) or super().is_leaf_module(m, qualname))


def walk_traced(prefix: str, module: nn.Module, on_graph: Callable[[str, nn.Module, fx.Graph], None],
                on_untraceable: Callable[[str, nn.Module, Exception], None]) -> None:
    """Calls on_graph(prefix, module, graph) on the largest parts of ``module`` torch.fx can trace (with
    fastinfer's layers and activation modules as leaves). Where it cannot trace a module (data-dependent
    control flow, unsupported ops), calls on_untraceable(prefix, module, exc), then walks each child that
    has children of its own. Assumes, as a Sequential's structure does, that a child is called only by its
    parent's forward (not also directly from elsewhere)."""
    try:
        graph = _Tracer().trace(module)
    except Exception as exc:  # any failure to trace
        on_untraceable(prefix, module, exc)
        for name, child in module.named_children():
            if next(child.children(), None) is not None and not type(child).__module__.startswith("fastinfer.nn"):
                walk_traced(_join(prefix, name), child, on_graph, on_untraceable)
        return
    on_graph(prefix, module, graph)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _arg(node: fx.Node, index: int, name: str, default):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


# Activations that may be applied twice without changing the result: a fused one may stay in the
# forward (shared modules, functional calls). GELU, Hardswish and SiLU are not: they are fused only from a
# module that is called once and can be replaced by nn.Identity.
IDEMPOTENT = ("relu", "relu6")


def _module_activation(mod: nn.Module) -> Optional[str]:
    if type(mod) is nn.ReLU:
        return "relu"
    if type(mod) in (nn.ReLU6, nn.Hardtanh) and mod.min_val == 0 and mod.max_val == 6:
        return "relu6"
    if type(mod) is nn.GELU and mod.approximate == "none":
        return "gelu"
    if type(mod) is nn.Hardswish:  # MobileNetV3
        return "hardswish"
    if type(mod) is nn.SiLU:  # EfficientNet, YOLO
        return "silu"
    # Hugging Face transformers' GELUActivation (BERT-family FFNs): a module holding F.gelu (erf form).
    if type(mod).__name__ == "GELUActivation" and getattr(mod, "act", None) is F.gelu:
        return "gelu"
    return None


def _takes_act(layer: nn.Module) -> bool:
    """A Conv1d takes a BatchNorm1d only: there is no fused 1-D layer for an activation."""
    return not isinstance(layer, nn.Conv1d)


def _bn_type(layer: nn.Module):
    return nn.BatchNorm2d if isinstance(layer, nn.Conv2d) else nn.BatchNorm1d


def is_frozen_bn(mod: nn.Module) -> bool:
    """Whether mod is a FrozenBatchNorm2d (torchvision.ops.misc's, which torchvision's detection backbones use in
    place of BatchNorm2d; detectron2's): a BatchNorm2d whose statistics and affine parameters are buffers, eval
    always. Known by class and package (fastinfer depends on neither) and checked for its four buffers."""
    t = type(mod)
    return (t.__name__ == "FrozenBatchNorm2d" and t.__module__.split(".")[0] in ("torchvision", "detectron2")
            and all(isinstance(getattr(mod, b, None), Tensor)
                    for b in ("weight", "bias", "running_mean", "running_var"))
            and isinstance(getattr(mod, "eps", None), float))


def _is_bn_for(layer: nn.Module, mod: nn.Module) -> bool:
    """mod is the kind of BatchNorm that layer's output takes: BatchNorm2d (or a FrozenBatchNorm2d) after a Conv2d,
    BatchNorm1d after a Linear or Conv1d."""
    return type(mod) is _bn_type(layer) or (isinstance(layer, nn.Conv2d) and is_frozen_bn(mod))


class _Fuser:
    def __init__(self, root: nn.Module, aliased: Set[int], report: FuseReport,
                 output_ranks: Optional[Dict[str, Set[int]]]):
        self.root, self.aliased, self.report, self.output_ranks = root, aliased, report, output_ranks

    # -- what can be fused

    def base_layer(self, mod: nn.Module) -> bool:
        """A layer that can take a BatchNorm or an activation: plain Conv2d/Linear (a subclass may
        change forward), or a ConvAct2d/LinearAct that has no activation yet."""
        if id(mod) in self.aliased:
            return False
        if type(mod) in (nn.Conv2d, nn.Linear, nn.Conv1d):
            return True
        return type(mod) in (ConvAct2d, LinearAct) and mod.activation is None

    def bn_problem(self, layer_name: str, layer: nn.Module, bn: nn.Module) -> Optional[str]:
        """Why ``bn`` cannot be folded into ``layer`` (None when it can)."""
        if id(bn) in self.aliased:
            return "the BatchNorm module is registered under several names"
        if bn.running_mean is None or bn.running_var is None:
            return "no running statistics (track_running_stats=False): it normalizes with batch statistics"
        n_out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        features = bn.running_mean.numel()  # (a FrozenBatchNorm2d keeps no num_features)
        if features != n_out:
            return f"num_features={features} but the layer has {n_out} output channels"
        if isinstance(layer, (nn.Linear, nn.Conv1d)):  # BatchNorm1d normalizes dim 1: [N, C] or [N, C, L]
            kind, want = ("Linear", 2) if isinstance(layer, nn.Linear) else ("Conv1d", 3)
            if self.output_ranks is None:
                return (f"the {kind}'s output rank is unknown: pass example_inputs to fuse (BatchNorm1d "
                        f"normalizes dim 1, which is the {kind}'s channels only on a {want}-D output)")
            ranks = self.output_ranks.get(layer_name)
            if ranks is None:
                return f"the {kind} did not run on example_inputs, so its output rank is unknown"
            if ranks != {want}:
                return (f"the {kind} output is {'/'.join(map(str, sorted(ranks)))}-D: BatchNorm1d normalizes "
                        "dim 1, not the channels")
        return None

    # -- the ways of finding patterns

    def fuse_transformer_ffns(self) -> None:
        """torch's nn.TransformerEncoderLayer / nn.TransformerDecoderLayer (exactly: a subclass may override
        _ff_block): linear1 takes the feed-forward block's activation, which only _ff_block calls, once, on
        linear1's output (relu or gelu: the function that activation="relu" / "gelu" gives, or an activation
        module). torch.fx cannot trace these layers, so they are found by type. The activation becomes the
        function `identity` (not an nn.Identity: a deep copy or unpickling of a TransformerDecoderLayer whose
        instance dict has no "activation" sets F.relu there, which would shadow a module), and an encoder
        layer's fused float path is turned off (it would apply the activation again, and reads
        linear1.weight, which an int8 layer does not have)."""
        for name, layer in self.root.named_modules():
            if type(layer) not in _TRANSFORMER_LAYERS or id(layer) in self.aliased or not self.base_layer(layer.linear1):
                continue
            fn, label = layer.activation, _join(name, "activation")
            if isinstance(fn, nn.Module):
                act = None if id(fn) in self.aliased else _module_activation(fn)
            else:
                act = next((a for f, a in _TRANSFORMER_FUNCTIONS.items() if fn is f), None)
                label = f"{label} (F.{act})"
            if act is None:
                continue
            self.apply(_join(name, "linear1"), None, act, label, remove_act=False)
            if isinstance(fn, nn.Module):
                delattr(layer, "activation")  # out of _modules (no state: the state_dict keys stay)
            layer.activation = identity
            if hasattr(layer, "activation_relu_or_gelu"):
                layer.activation_relu_or_gelu = 0  # the fused path's "not relu/gelu" exit

    def fuse_module(self, prefix: str, module: nn.Module) -> None:
        walk_traced(prefix, module, self.fuse_graph, self.fuse_untraceable)

    def fuse_untraceable(self, prefix: str, module: nn.Module, exc: Exception) -> None:
        """torch.fx could not trace ``module``: fuse adjacent children of a plain nn.Sequential (its
        forward feeds each child's output only to the next child); walk_traced then tries each child
        with children on its own, so traceable parts still get the full graph analysis."""
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self.report.notes.append(f"{prefix or '<model>'} ({type(module).__name__}): torch.fx could not trace it "
                                 f"({type(exc).__name__}: {reason[:120]}); fused by module pattern")
        if type(module) is nn.Sequential:
            self.fuse_sequential(prefix, module)

    def fuse_sequential(self, prefix: str, seq: nn.Sequential) -> None:
        names = list(seq._modules.keys())
        mods = [seq._modules[n] for n in names]
        i = 0
        while i < len(mods):
            layer = mods[i]
            if layer is None or not self.base_layer(layer):
                i += 1
                continue
            j, bn_name, act, act_name = i + 1, None, None, None
            if j < len(mods) and mods[j] is not None and _is_bn_for(layer, mods[j]):
                problem = self.bn_problem(_join(prefix, names[i]), layer, mods[j])
                if problem:
                    self.report.skipped.append((_join(prefix, names[j]), problem))
                    i = j + 1
                    continue
                bn_name, j = names[j], j + 1
            if j < len(mods) and mods[j] is not None and _module_activation(mods[j]) and _takes_act(layer) and (
                    _module_activation(mods[j]) in IDEMPOTENT or id(mods[j]) not in self.aliased):
                act, act_name, j = _module_activation(mods[j]), names[j], j + 1
            if bn_name is not None or act is not None:
                self.apply(_join(prefix, names[i]), bn_name and _join(prefix, bn_name), act,
                           act_name and _join(prefix, act_name),
                           remove_act=act_name is not None and id(seq._modules[act_name]) not in self.aliased)
            i = j

    def fuse_graph(self, prefix: str, module: nn.Module, graph: fx.Graph) -> None:
        mods: Dict[str, nn.Module] = dict(module.named_modules())
        calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
        act_fused: Counter = Counter()        # activation module name -> fused call sites
        folded: Set[str] = set()

        def only_user(node: fx.Node) -> Optional[fx.Node]:
            users = list(node.users)
            if len(users) == 1 and users[0].args and users[0].args[0] is node:
                return users[0]
            return None

        def activation_of(node: Optional[fx.Node]) -> Tuple[Optional[str], Optional[str], bool]:
            """(activation, how the report names it, is it a module) for an activation node."""
            if node is None:
                return None, None, False
            if node.op == "call_module":
                act = _module_activation(mods[node.target])
                return (act, _join(prefix, node.target), True) if act else (None, None, False)
            if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
                return "relu", _RELU_FUNCTIONS[node.target], False
            if node.op == "call_function" and node.target in _HARDTANH_FUNCTIONS:
                if node.target is F.relu6:
                    return "relu6", "F.relu6", False
                lo, hi = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
                if lo == 0 and hi == 6:
                    return "relu6", f"{_HARDTANH_FUNCTIONS[node.target]}(0, 6)", False
            if node.op == "call_method" and node.target in _RELU_METHODS:
                return "relu", f".{node.target}()", False
            return None, None, False

        for node in list(graph.nodes):
            if node.op != "call_module" or calls[node.target] != 1 or not self.base_layer(mods[node.target]):
                continue
            layer = mods[node.target]
            bn_node, nxt = None, only_user(node)
            if (nxt is not None and nxt.op == "call_module" and _is_bn_for(layer, mods[nxt.target])
                    and calls[nxt.target] == 1):
                problem = self.bn_problem(_join(prefix, node.target), layer, mods[nxt.target])
                if problem:
                    continue  # reported below with the other unfolded BatchNorms
                bn_node, nxt = nxt, only_user(nxt)
                folded.add(bn_node.target)
            act, act_label, is_module = activation_of(nxt) if _takes_act(layer) else (None, None, False)
            if act is not None and act not in IDEMPOTENT and (
                    not is_module or calls[nxt.target] != 1 or id(mods[nxt.target]) in self.aliased):
                act, act_label, is_module = None, None, False  # could not be removed from the forward
            if bn_node is None and act is None:
                continue
            if act is not None and is_module:
                act_fused[nxt.target] += 1
            self.apply(_join(prefix, node.target), bn_node and _join(prefix, bn_node.target), act, act_label,
                       remove_act=False)
        # An activation module becomes Identity only when every one of its calls was fused.
        for target, n in act_fused.items():
            if n == calls[target] and id(mods[target]) not in self.aliased:
                self.replace(_join(prefix, target), Folded())
        reported: Set[str] = set()  # a BatchNorm called twice is one entry
        for node in graph.nodes:
            if (node.op == "call_module" and node.target not in folded and node.target not in reported
                    and (isinstance(mods[node.target], (nn.BatchNorm1d, nn.BatchNorm2d))
                         or is_frozen_bn(mods[node.target]))):
                reported.add(node.target)
                self.report.skipped.append((_join(prefix, node.target), self.why_not_folded(prefix, node, mods, calls)))

    def why_not_folded(self, prefix: str, bn_node: fx.Node, mods, calls) -> str:
        bn = mods[bn_node.target]
        if calls[bn_node.target] != 1:
            return f"called {calls[bn_node.target]} times"
        src = bn_node.args[0] if bn_node.args else None
        if not isinstance(src, fx.Node) or src.op != "call_module":
            return "its input is not the output of a Conv2d/Linear module"
        layer = mods[src.target]
        if type(layer) not in (nn.Conv2d, nn.Linear, nn.Conv1d, ConvAct2d, LinearAct):
            return f"its input comes from {src.target} ({type(layer).__name__}), not a Conv2d/Linear"
        if not _is_bn_for(layer, bn):
            return f"{type(bn).__name__} after {type(layer).__name__} (expected {_bn_type(layer).__name__})"
        if len(src.users) != 1:
            others = ", ".join(u.name for u in src.users if u is not bn_node) or "the model output"
            return f"{src.target}'s output also feeds {others}"
        if calls[src.target] != 1:
            return f"{src.target} is called {calls[src.target]} times"
        if not self.base_layer(layer):
            return f"{src.target} cannot take it (shared module or activation already fused)"
        return self.bn_problem(_join(prefix, src.target), layer, bn) or "not foldable"

    # -- the swap

    def replace(self, name: str, new: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        owner = self.root.get_submodule(parent) if parent else self.root
        new.train(getattr(owner, child).training)  # new modules start in training mode; keep eval
        setattr(owner, child, new)

    def apply(self, layer_name: str, bn_name: Optional[str], act: Optional[str], act_label: Optional[str],
              remove_act: bool) -> None:
        layer = self.root.get_submodule(layer_name)
        new = layer
        if act is not None:
            new = (ConvAct2d.from_conv(layer, act) if isinstance(layer, nn.Conv2d)
                   else LinearAct.from_linear(layer, act))
        if bn_name is not None:
            fold_bn(new, self.root.get_submodule(bn_name))
            self.replace(bn_name, Folded())
        if new is not layer:
            self.replace(layer_name, new)
        if remove_act:
            self.replace(act_label, Folded())
        self.report.append(" + ".join(n for n in (layer_name, bn_name, act_label) if n))


def fold_bn(layer: nn.Module, bn: nn.Module) -> None:
    """Folds eval-mode ``bn`` into ``layer`` (a Conv2d or Linear), replacing its weight and bias
    Parameters; the math is in fuse's docstring. float64 keeps the result within rounding of the
    unfused pair even when running_var is tiny."""
    w = layer.weight
    dev = w.device
    inv_std = torch.rsqrt(bn.running_var.to(dev, torch.float64) + bn.eps)
    gamma = bn.weight.to(dev, torch.float64) if bn.weight is not None else torch.ones_like(inv_std)
    beta = bn.bias.to(dev, torch.float64) if bn.bias is not None else torch.zeros_like(inv_std)
    s = gamma * inv_std
    b = layer.bias.to(torch.float64) if layer.bias is not None else torch.zeros_like(inv_std)
    new_w = w.detach().to(torch.float64) * s.reshape(-1, *([1] * (w.dim() - 1)))
    new_b = (b - bn.running_mean.to(dev, torch.float64)) * s + beta
    layer.weight = nn.Parameter(new_w.to(w.dtype), requires_grad=w.requires_grad)
    layer.bias = nn.Parameter(new_b.to(w.dtype), requires_grad=w.requires_grad)


__all__ = ["fuse", "fold_bn", "identity", "FuseReport", "TRAINING_ERROR"]
