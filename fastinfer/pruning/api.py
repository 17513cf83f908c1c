"""fastinfer.prune (one entry point for structured and weight pruning) and fastinfer.sparsify."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import ops
from .._args import check_fraction
from .._swap import is_hf_conv1d, linear_from_conv1d, replace_module, swap_problem
from ..nn.fused import LinearAct
from ..nn.linear import Int8Linear
from ..nn.sparse import MAX_K as SPARSE_MAX_K
from ..nn.sparse import PATTERNS as WEIGHT_PATTERNS  # masks.PATTERNS: the same tuple
from ..nn.sparse import SparseLinear
from ..quantization.api import Patterns, _matcher
from . import masks, structured


def prune(model: nn.Module, pattern: Optional[str] = None, amount: Optional[float] = None, *,
          sparsity: Optional[float] = None, importance: str = "l1", example_inputs=None,
          round_to: Optional[int] = None, scope: str = "layer", block: Sequence[int] = (1, 16),
          include: Patterns = None, exclude: Patterns = None, verbose: bool = False):
    """Prunes ``model`` in place.

    pattern="channels" (structured, the network really shrinks): ``amount`` of each group's
      channels removed (default 0.5); see fastinfer.pruning.structured.prune for importance,
      example_inputs and round_to. Returns a PruningReport.
    pattern="unstructured" | "2:4" | "block" (weight sparsity, kept with masks so fine-tuning stays
      sparse): ``sparsity`` in [0, 1], per layer or (scope="global") over all selected layers;
      see fastinfer.pruning.masks.prune_weights. Convert with fastinfer.sparsify to run the sparse
      kernels. Returns a SparsityReport.
    pattern=None (the default): "unstructured" when ``sparsity`` is given (``prune(model, sparsity=0.9)``),
      else "channels".
    """
    if pattern is None:
        pattern = "unstructured" if sparsity is not None else "channels"
    if pattern == "channels":
        if sparsity is not None:
            raise ValueError("pattern='channels' removes a fraction of channels: pass amount=, not sparsity=")
        return structured.prune(model, "channels", 0.5 if amount is None else amount, importance, example_inputs,
                                round_to, include, exclude, verbose)
    if pattern in WEIGHT_PATTERNS:
        if amount is not None:
            raise ValueError(f"pattern={pattern!r} zeros weights: pass sparsity=, not amount=")
        return masks.prune_weights(model, sparsity, pattern, scope, include, exclude, block, verbose)
    raise ValueError(f"pattern must be 'channels' or one of {WEIGHT_PATTERNS}, got {pattern!r}")


def _layer_type(mod: nn.Module) -> type:
    # A masked layer's class is torch's generated Parametrized<Class> subclass: look through it.
    return type(mod).__bases__[0] if parametrize.is_parametrized(mod) else type(mod)


@dataclass
class SparsifyReport:
    value_dtype: str
    converted: List[Tuple[str, float, int, int]] = field(default_factory=list)  # name, sparsity, dense, sparse bytes
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"fastinfer.sparsify ({self.value_dtype}): {len(self.converted)} layer(s) converted, "
                 f"{len(self.skipped)} kept dense"]
        lines += [f"  sparse   {n}: {s:.1%} zeros, {d:,} -> {b:,} bytes" for n, s, d, b in self.converted]
        lines += [f"  dense    {n}: {why}" for n, why in self.skipped]
        return "\n".join(lines)


def sparsify(model: nn.Module, value_dtype=torch.float32, min_sparsity: float = 0.5, include: Patterns = None,
             exclude: Patterns = None, verbose: bool = False) -> nn.Module:
    """Replaces nn.Linear layers whose (masked) weight has at least ``min_sparsity`` zeros with
    fastinfer.nn.SparseLinear (fp32 or int8 values), in place; returns the model with
    ``model.fastinfer_sparsify_report``. Below ~50% zeros a dense kernel is faster: those stay dense."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    min_sparsity = check_fraction("min_sparsity", min_sparsity)
    if value_dtype not in (torch.float32, torch.int8):  # checked here too: a model with no sparse layer says so
        raise ValueError(f"value_dtype must be torch.float32 or torch.int8, got {value_dtype!r}")
    inc, exc = _matcher(include, "include"), _matcher(exclude, "exclude")
    report = SparsifyReport(str(value_dtype).replace("torch.", ""))
    targets = []
    for name, mod in model.named_modules():
        if isinstance(mod, SparseLinear):
            report.skipped.append((name, "already a SparseLinear"))
            continue
        if isinstance(mod, Int8Linear):
            report.skipped.append((name, "already an Int8Linear: sparsify the float model instead "
                                         "(value_dtype=torch.int8 gives int8 sparse layers)"))
            continue
        if _layer_type(mod) not in (nn.Linear, LinearAct) and not is_hf_conv1d(mod):
            continue
        if isinstance(mod, LinearAct) and mod.activation is not None:
            report.skipped.append((name, f"fused activation {mod.activation!r} (SparseLinear has none)"))
            continue
        if inc is not None and not inc(name, mod) or exc is not None and exc(name, mod):
            report.skipped.append((name, "excluded by include/exclude"))
            continue
        if problem := swap_problem(mod):
            report.skipped.append((name, problem))
            continue
        w = mod.weight.detach()
        k = w.shape[0 if is_hf_conv1d(mod) else 1]  # transformers' Conv1D stores [in, out]
        if k > SPARSE_MAX_K:
            report.skipped.append((name, f"in_features {k} is past SparseLinear's limit of {SPARSE_MAX_K} "
                                         "(16-bit column indices): left dense"))
            continue
        zeros = float((w == 0).sum()) / w.numel()
        if zeros < min_sparsity:
            report.skipped.append((name, f"{zeros:.1%} zeros < min_sparsity {min_sparsity:.0%}"))
            continue
        targets.append((name, zeros))
    if value_dtype == torch.int8 and any(model.get_submodule(n).weight.device.type == "cpu" for n, _ in targets):
        caps = ops.cpu_capabilities()
        if caps["active"] == "ref":
            warnings.warn("sparsify(value_dtype=torch.int8): the int8 sparse kernels need AVX2 or AVX-512 VBMI, "
                          "and the active ISA here is 'ref' (a CPU without AVX2, or kernels capped by "
                          "fastinfer.use_isa / FASTINFER_ISA), so these layers will run the scalar reference path, "
                          "slower than dense ones.", stacklevel=2)
    for name, zeros in targets:
        layer = model.get_submodule(name)
        layer = linear_from_conv1d(layer) if is_hf_conv1d(layer) else layer  # transformers' Conv1D: a Linear
        mask = masks._our_mask(layer)
        new = SparseLinear.from_float(layer, value_dtype, pattern=(mask.pattern if mask is not None and mask.pattern
                                                                   else "unstructured"))
        replace_module(model, name, new)  # under every name it has (counted once here)
        report.converted.append((name, zeros, layer.weight.numel() * 4, new.nbytes))
    model.fastinfer_sparsify_report = report
    if verbose:
        print(report)
    return model
