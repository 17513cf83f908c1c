"""Structured (channel) pruning: removes whole output channels / neurons and the matching inputs
of every layer that consumes them, giving a smaller dense model that runs on plain PyTorch.

    plan = fastinfer.prune(model, pattern="channels", amount=0.5, example_inputs=x)

The dependencies come from graph.py (torch.fx). The surgery is recorded as a plan of kept
indices per module, so a pruned model can be saved and rebuilt from a fresh unpruned instance.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import parametrize

from ..quantization.api import Patterns, _matcher
from ..quantization.load import read_weights_file
from .graph import ChannelGraph, Layout, analyze
from .masks import Mask

IMPORTANCE = ("l1", "l2", "taylor")
PATTERNS = ("channels",)
SAVE_FORMAT = "fastinfer-pruned-v1"


class PruningError(ValueError):
    """The model cannot be analysed (e.g. torch.fx cannot trace it)."""


@dataclass
class GroupDecision:
    producers: List[str]
    coupled: List[str]          # batch norms, depthwise convs and consumers sliced with the producers
    size: int
    kept: int
    reason: str = ""            # why it was left unpruned (empty when pruned)


@dataclass
class PruningReport:
    amount: float
    importance: str
    params_before: int
    params_after: int
    groups: List[GroupDecision] = field(default_factory=list)

    @property
    def pruned(self) -> List[GroupDecision]:
        return [g for g in self.groups if g.kept < g.size]

    @property
    def skipped(self) -> List[GroupDecision]:
        return [g for g in self.groups if g.reason]

    def __str__(self) -> str:
        lines = [f"fastinfer.prune (channels, amount={self.amount}, importance={self.importance}): parameters "
                 f"{self.params_before:,} -> {self.params_after:,} "
                 f"({self.params_after / max(1, self.params_before):.1%})"]
        for g in self.groups:
            who = ", ".join(g.producers) or "(input)"
            if g.reason:
                lines.append(f"  kept     {who}: {g.size} channels ({g.reason})")
            else:
                lines.append(f"  pruned   {who}: {g.size} -> {g.kept} channels"
                             + (f"; also sliced: {', '.join(g.coupled)}" if g.coupled else ""))
        return "\n".join(lines)


def _as_tuple(example_inputs) -> Tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and \
            all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise TypeError("example_inputs must be a tensor or a non-empty tuple of tensors (passed as model(*inputs))")


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Every module in eval mode meanwhile (a shape pass in train mode would update BatchNorm's running
    statistics with the example input), each module's own flag restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


class _Tracer(fx.Tracer):
    """torch.nn's layers and fastinfer's (ConvAct2d / LinearAct from fastinfer.fuse, the quantized and sparse
    layers) are single calls, which analyze() recognizes or refuses by type; traced through, a fused
    layer would be a bare torch.conv2d call that no dependency is recorded for."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m).__module__.startswith("fastinfer.nn") or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> fx.GraphModule:
    gm = fx.GraphModule(model, _Tracer().trace(model))
    with torch.no_grad(), _eval_mode(model):
        ShapeProp(gm).propagate(*inputs)
    return gm


def _row_importance(module: nn.Module, kind: str) -> torch.Tensor:
    w = module.weight.detach()
    if kind == "taylor":
        if module.weight.grad is None:
            raise ValueError("importance='taylor' needs gradients: run a backward pass on a few batches of your "
                             "loss first (the pruner uses |weight * grad| summed per output channel)")
        score = (w * module.weight.grad.detach()).abs()
    elif kind == "l1":
        score = w.abs()
    else:
        score = w.pow(2)
    score = score.reshape(w.shape[0], -1).sum(dim=1).float()
    return score.sqrt() if kind == "l2" else score


def _expand(layout: Layout, kept: Dict[int, Optional[torch.Tensor]], root) -> torch.Tensor:
    """Kept feature indices of a consumer's input, given the kept channels of each space."""
    parts, offset = [], 0
    for seg in layout:
        k = kept.get(root(seg.space))
        ch = torch.arange(seg.length) if k is None else k
        idx = (ch[:, None] * seg.repeat + torch.arange(seg.repeat)[None, :]).reshape(-1) + offset
        parts.append(idx)
        offset += seg.length * seg.repeat
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _keep_count(size: int, amount: float, round_to: Optional[int]) -> int:
    keep = size - int(math.floor(size * amount))
    if round_to:
        keep = min(size, int(math.ceil(keep / round_to)) * round_to)
    return max(1, keep)


def prune(model: nn.Module, pattern: str = "channels", amount: float = 0.5, importance: str = "l1",
          example_inputs=None, round_to: Optional[int] = None, include: Patterns = None,
          exclude: Patterns = None, verbose: bool = False) -> PruningReport:
    """Removes `amount` of the output channels of every prunable layer group, in place.

    amount: fraction of channels to remove in each group, in [0, 1).
    importance: 'l1' / 'l2' norm of each channel's weights (summed over coupled producers), or
      'taylor' (|w * grad|, needs gradients from a backward pass you ran).
    example_inputs: what model(*example_inputs) takes; used to trace shapes.
    round_to: keep channel counts multiples of this (8/16/32/64 fit the kernels' tiles).
    include / exclude: glob patterns (or a callable) on producer layer names.

    Returns a PruningReport (also at model.fastinfer_pruning_report). The kept indices are
    appended to model.fastinfer_pruning_plans, which save_pruned/load_pruned use.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS} (structured pruning), got {pattern!r}")
    if not isinstance(amount, (int, float)) or not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be a fraction in [0, 1), got {amount!r}")
    if importance not in IMPORTANCE:
        raise ValueError(f"importance must be one of {IMPORTANCE}, got {importance!r}")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be a positive int (e.g. 8, 16, 32, 64) or None, got {round_to!r}")
    if example_inputs is None:
        raise TypeError("example_inputs is required: a tensor or tuple of tensors the model accepts")
    inputs = _as_tuple(example_inputs)
    inc, exc = _matcher(include, "include"), _matcher(exclude, "exclude")
    masked = [name for name, m in model.named_modules() if parametrize.is_parametrized(m)]
    if masked:
        names = ", ".join(repr(n) for n in masked[:4]) + (" ..." if len(masked) > 4 else "")
        ours = all(all(isinstance(p, Mask) for p in plist)
                   for name in masked for plist in model.get_submodule(name).parametrizations.values())
        hint = ("pruning masks from pattern='unstructured'/'2:4'/'block'; call fastinfer.remove_masks(model) first"
                if ours else "e.g. torch.nn.utils.parametrizations.weight_norm; remove them first with "
                "torch.nn.utils.parametrize.remove_parametrizations(module, 'weight')")
        raise PruningError(f"fastinfer.prune: layers {names} carry parametrizations, and structured pruning "
                           f"slices the weights ({hint})")
    try:
        with torch.no_grad(), _eval_mode(model):
            model(*inputs)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PruningError(f"fastinfer.prune: model(*example_inputs) failed ({type(e).__name__}: {first}); "
                           "example_inputs must be inputs the model accepts") from e
    try:
        gm = _trace(model, inputs)
    except Exception as e:  # torch.fx raises several types (TraceError, TypeError, ...)
        raise PruningError(_untraceable_message(model, inputs, e)) from e
    graph = analyze(gm)
    modules = dict(model.named_modules())
    report = PruningReport(amount, importance, _count_params(model), 0)

    kept: Dict[int, Optional[torch.Tensor]] = {}
    for root, spaces in graph.groups().items():
        producers = [p for sp in spaces for p in sp.producers]
        coupled = sorted({c for sp in spaces for c in sp.passthrough})
        size = spaces[0].size
        reasons = sorted({r for sp in spaces for r in sp.blocked})
        if reasons and not producers:
            continue  # model inputs and opaque outputs: nothing of ours to prune, nothing to report
        if not reasons:
            for p in producers:
                if inc is not None and not inc(p, modules[p]):
                    reasons.append(f"{p} not matched by include")
                elif exc is not None and exc(p, modules[p]):
                    reasons.append(f"{p} matched by exclude")
        keep = size if reasons else _keep_count(size, amount, round_to)
        dec = GroupDecision(producers, coupled, size, keep, "; ".join(dict.fromkeys(reasons)))
        report.groups.append(dec)
        if keep < size:
            score = sum(_row_importance(modules[p], importance) for p in producers)
            kept[root] = torch.sort(torch.topk(score, keep).indices).values

    plan = _build_plan(graph, kept, modules)
    apply_plan(model, plan)
    report.params_after = _count_params(model)
    plans = list(getattr(model, "fastinfer_pruning_plans", []))
    plans.append(plan)
    model.fastinfer_pruning_plans = plans
    model.fastinfer_pruning_report = report
    if verbose:
        print(report)
    return report


def _build_plan(graph: ChannelGraph, kept, modules) -> Dict[str, Dict[str, List[int]]]:
    plan: Dict[str, Dict[str, List[int]]] = {}
    for sp in graph.spaces:
        k = kept.get(graph.root(sp.id))
        if k is not None:
            for p in sp.producers:
                plan.setdefault(p, {})["out"] = k.tolist()
    for c in graph.consumers:
        if not any(graph.root(s.space) in kept for s in c.layout):
            continue
        idx = _expand(c.layout, kept, graph.root).tolist()
        mod = modules[c.name]
        key = "channels" if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) or _is_depthwise(mod) else "in"
        plan.setdefault(c.name, {})[key] = idx
    return plan


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=like.requires_grad)


def apply_plan(model: nn.Module, plan: Dict[str, Dict[str, List[int]]]) -> None:
    """Slices the modules named in `plan` (kept indices per dimension); updates their shape attributes."""
    for name, ops in plan.items():
        m = model.get_submodule(name)
        out_idx = ops.get("out") if "channels" not in ops else ops["channels"]
        in_idx = ops.get("in")
        with torch.no_grad():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                # Rows of the weight are output channels, columns input channels, for both kinds.
                out_attr, in_attr = ("out_features", "in_features") if isinstance(m, nn.Linear) \
                    else ("out_channels", "in_channels")
                w = m.weight
                if out_idx is not None:
                    o = torch.tensor(out_idx, dtype=torch.long)
                    w = w[o]
                    if m.bias is not None:
                        m.bias = _param(m.bias[o], m.bias)
                    setattr(m, out_attr, len(out_idx))
                    if "channels" in ops:  # depthwise conv: one filter per channel
                        m.in_channels = m.groups = len(out_idx)
                if in_idx is not None:
                    w = w[:, torch.tensor(in_idx, dtype=torch.long)]
                    setattr(m, in_attr, len(in_idx))
                m.weight = _param(w, m.weight)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                o = torch.tensor(out_idx, dtype=torch.long)
                if m.affine:
                    m.weight, m.bias = _param(m.weight[o], m.weight), _param(m.bias[o], m.bias)
                if m.track_running_stats:
                    m.running_mean = m.running_mean[o].clone()
                    m.running_var = m.running_var[o].clone()
                m.num_features = len(out_idx)
            else:
                raise PruningError(f"plan names {name} ({type(m).__name__}), which the pruner cannot slice")


def save_pruned(model: nn.Module, path) -> None:
    """Saves the architecture change (kept indices) with the weights: load with load_pruned."""
    plans = getattr(model, "fastinfer_pruning_plans", None)
    if not plans:
        raise ValueError("model has no channel pruning to save (no fastinfer_pruning_plans: fastinfer.prune with "
                         "pattern='channels' sets them); use torch.save(model.state_dict()) instead")
    # load_pruned rebuilds float layers: a file with masks or int8/sparse layers could not be read back.
    masked = [name for name, m in model.named_modules() if parametrize.is_parametrized(m)]
    converted = [name for name, m in model.named_modules() if type(m).__module__.startswith("fastinfer.nn.")
                 and type(m).__name__.startswith(("Int8", "Sparse"))]
    if masked:
        raise ValueError(f"save_pruned saves a channel-pruned float model, and layers {masked[:3]} carry weight "
                         "masks, which load_pruned could not rebuild: call fastinfer.remove_masks(model) first "
                         "(the pruned zeros stay)")
    if converted:
        raise ValueError(f"save_pruned saves a channel-pruned float model, and layers {converted[:3]} are "
                         "quantized or sparse, which load_pruned could not rebuild: save the pruned float model "
                         "with save_pruned before converting it, and the converted one with "
                         "torch.save(model.state_dict(), path); to deploy, load_pruned the first into a fresh "
                         "model, then fastinfer.load_quantized(path, model)")
    torch.save({"format": SAVE_FORMAT, "plans": plans, "state_dict": model.state_dict()}, path)


def load_pruned(path, model: nn.Module) -> nn.Module:
    """Rebuilds a pruned model: `model` is a fresh instance of the original (unpruned) architecture."""
    blob = read_weights_file(path, "load_pruned", "fastinfer.save_pruned(model, path)")
    if not isinstance(blob, dict) or blob.get("format") != SAVE_FORMAT:
        raise ValueError(f"{path} is not a file written by fastinfer.save_pruned")
    if getattr(model, "fastinfer_pruning_plans", None):
        raise ValueError("load_pruned: model is already channel-pruned; pass a fresh instance of the original "
                         "(unpruned) architecture")
    for plan in blob["plans"]:
        try:
            apply_plan(model, plan)
        except (AttributeError, KeyError, IndexError) as e:  # a module or channel the plan names is not there
            raise ValueError(f"load_pruned: {path}'s pruning plans do not fit this model ({type(e).__name__}: {e}); "
                             "pass a fresh instance of the architecture that was pruned") from e
    model.load_state_dict(blob["state_dict"])
    model.fastinfer_pruning_plans = list(blob["plans"])
    return model


def _untraceable_message(model: nn.Module, inputs, err: Exception) -> str:
    """Names the construct torch.fx stopped at, and the submodules that can still be pruned alone."""
    captured: Dict[str, tuple] = {}
    hooks = []
    for name, m in model.named_modules():
        if name:
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args, name=name: captured.setdefault(name, args)))
    try:
        with torch.no_grad(), _eval_mode(model):
            model(*inputs)
    except Exception:
        pass
    finally:
        for h in hooks:
            h.remove()
    safe: List[str] = []
    for name, args in captured.items():
        if any(name.startswith(s + ".") for s in safe):
            continue
        if not args or not all(isinstance(a, torch.Tensor) for a in args):
            continue
        sub = model.get_submodule(name)
        try:
            groups = analyze(_trace(sub, args)).groups()
        except Exception:
            continue
        if any(not any(sp.blocked for sp in sps) and any(sp.producers for sp in sps) for sps in groups.values()):
            safe.append(name)
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    msg = (f"fastinfer.prune: torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {first} "
           "(data-dependent control flow or an untraceable call in forward).")
    if safe:
        msg += (" These submodules trace on their own and have channels that can be pruned safely: "
                f"{', '.join(safe)} (call fastinfer.prune on each with that submodule's own inputs, e.g. "
                f"fastinfer.prune(model.get_submodule({safe[0]!r}), example_inputs=...)).")
    else:
        msg += " No submodule could be pruned on its own either."
    return msg
