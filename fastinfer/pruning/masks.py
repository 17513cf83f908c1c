"""Magnitude pruning with masks: zeros the smallest weights of nn.Linear layers (unstructured, 2:4 or
block patterns), keeps them zero through fine-tuning with a parametrization, and bakes the masks in.

    report = prune_weights(model, 0.5, pattern="unstructured")   # in place: masks attached
    ...fine-tune: the pruned entries stay exactly zero...
    remove_masks(model)                                           # plain nn.Linear holding exact zeros
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._args import check_fraction, is_integer
from .._swap import is_hf_conv1d, swap_problem
from ..nn.fused import LinearAct
from ..nn.linear import Int8Linear
from ..nn.sparse import PATTERNS
from ..quantization.api import Patterns, _matcher, _parameter_holders

SCOPES = ("layer", "global")
# Exact types, looked up before parametrization: a subclass of nn.Linear may use its weight differently.
LINEAR_TYPES = (nn.Linear, LinearAct)


class Mask(nn.Module):
    """Parametrization of a weight: ``weight -> where(mask, weight, 0)``.

    The trained tensor lives at ``parametrizations.weight.original``; the module's ``weight`` is the
    masked one, so optimizer updates of pruned entries never reach the effective weight. ``mask`` is
    a bool buffer (saved in the state_dict); ``pattern`` (what pruned it, e.g. "2:4") is saved as
    extra state so a loaded model reports it.
    """

    def __init__(self, mask: Tensor, pattern: str = ""):
        super().__init__()
        self.register_buffer("mask", mask.detach() != 0)  # accepts bool or float masks, keeps bool
        self.pattern = pattern

    def forward(self, w: Tensor) -> Tensor:
        # where() rather than w * mask: a pruned entry holding inf or NaN would otherwise give NaN.
        return torch.where(self.mask, w, 0.0)

    def get_extra_state(self):
        return {"pattern": self.pattern}

    def set_extra_state(self, state) -> None:
        self.pattern = str(state.get("pattern", "")) if isinstance(state, dict) else ""

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        return f"pattern={self.pattern!r}, kept={kept}/{self.mask.numel()}"


@dataclass
class LayerSparsity:
    shape: Tuple[int, int]          # (out_features, in_features)
    pattern: str                    # what pruned it ("unstructured", "2:4", "block1x16", joined by "+"), "" if none
    sparsity: float                 # fraction of exact zeros in the effective weight
    nnz: int
    dense_bytes: int                # the weight stored dense in fp32
    format: str = "dense"           # storage: "dense" (plain or masked) or a SparseLinear's format
    nbytes: Optional[int] = None    # stored size, known for SparseLinear layers

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def empty(self) -> bool:
        return self.nnz == 0 and self.numel > 0


@dataclass
class SparsityReport:
    """Per-layer sparsity (``layers``, keyed by module name) and the layers left alone (``skipped``:
    (name, reason)). ``pattern``, ``target`` and ``scope`` are what prune_weights was asked for
    (None when the report comes from sparsity_report)."""
    layers: Dict[str, LayerSparsity] = field(default_factory=dict)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    pattern: Optional[str] = None
    target: Optional[float] = None
    scope: Optional[str] = None

    @property
    def numel(self) -> int:
        return sum(layer.numel for layer in self.layers.values())

    @property
    def nnz(self) -> int:
        return sum(layer.nnz for layer in self.layers.values())

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / self.numel if self.numel else 0.0

    def __str__(self) -> str:
        if self.pattern is None:
            head = "fastinfer sparsity report"
        else:
            target = "" if self.target is None else f", sparsity={self.target}"
            head = f"fastinfer.prune_weights ({self.pattern}{target}, scope={self.scope})"
        lines = [f"{head}: {len(self.layers)} layer(s), {self.numel:,} weights, {self.nnz:,} nonzero "
                 f"({self.sparsity:.1%} sparse), skipped {len(self.skipped)}"]
        if self.layers:
            rows = [("layer", "shape", "pattern", "sparsity", "nnz", "dense fp32", "stored")]
            for name, s in self.layers.items():
                stored = s.format if s.nbytes is None else f"{s.format} {_size(s.nbytes)}"
                rows.append((name or "(model)", f"{s.shape[0]}x{s.shape[1]}", s.pattern or "-",
                             "empty" if s.empty else f"{s.sparsity:.1%}", f"{s.nnz:,}", _size(s.dense_bytes), stored))
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines += [f"  skipped  {n or '(model)'}: {r}" for n, r in self.skipped]
        return "\n".join(lines)


def _size(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} B"
    return f"{nbytes / 1024:.1f} KiB" if nbytes < 1024 ** 2 else f"{nbytes / 1024 ** 2:.1f} MiB"


def _sparse_linear_type():
    # fastinfer.nn.SparseLinear is written alongside this module and may not exist yet.
    from .. import nn as fnn
    return getattr(fnn, "SparseLinear", None)


def _our_mask(module: nn.Module) -> Optional[Mask]:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    chain = module.parametrizations.weight
    return chain[0] if len(chain) == 1 and isinstance(chain[0], Mask) else None


def _foreign_parametrizations(module: nn.Module) -> List[str]:
    if not parametrize.is_parametrized(module, "weight"):
        return []
    chain = list(module.parametrizations.weight)
    return [] if len(chain) == 1 and isinstance(chain[0], Mask) else [type(p).__name__ for p in chain]


def _stored_weight(module: nn.Module) -> Tensor:
    """The Parameter the optimizer sees (under a parametrization, the original)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def _check_args(sparsity, pattern, scope, block) -> Tuple[Optional[float], Tuple[int, int]]:
    if pattern not in PATTERNS:
        hint = " ('channels' is structured pruning: fastinfer.prune)" if pattern == "channels" else ""
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}{hint}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not (isinstance(block, (tuple, list)) and len(block) == 2
            and all(is_integer(b) and b >= 1 for b in block)):
        raise ValueError(f"block must be (rows, cols), two positive ints, got {block!r}")
    if sparsity is None:
        if pattern != "2:4":
            raise ValueError(f"sparsity is required for pattern {pattern!r} (a fraction in [0, 1])")
    else:
        check_fraction("sparsity", sparsity)  # numpy scalars too; NaN refused
    if pattern == "2:4":
        if sparsity is not None and sparsity != 0.5:
            raise ValueError(f"pattern '2:4' keeps 2 of every 4 weights: sparsity must be 0.5 or None, got {sparsity!r}")
        if scope == "global":
            raise ValueError("scope='global' has no meaning for pattern '2:4': every group of 4 keeps its own 2 largest")
    return (None if sparsity is None else float(sparsity)), (int(block[0]), int(block[1]))


def _shape_problem(weight: Tensor, pattern: str, block: Tuple[int, int]) -> Optional[str]:
    n, k = weight.shape
    if pattern == "2:4" and k % 4:
        return f"in_features={k} is not a multiple of 4 (2:4 groups 4 consecutive input columns; not padded)"
    if pattern == "block" and (n % block[0] or k % block[1]):
        return f"weight {n}x{k} is not divisible into {block[0]}x{block[1]} blocks"
    return None


def _select(model: nn.Module, pattern: str, block, include: Patterns, exclude: Patterns):
    """(name, module) of the layers to prune, and (name, reason) for the Linear-like layers left alone."""
    inc, exc = _matcher(include, "include"), _matcher(exclude, "exclude")
    sparse_t = _sparse_linear_type()
    # The modules that hold each Parameter: a weight tied to another module (e.g. an embedding) would
    # keep serving that one unmasked, so such layers are not pruned. (A module reachable under two
    # names is one holder: masking it masks both uses.)
    holders = _parameter_holders(model)
    targets, skipped = [], []
    for name, mod in model.named_modules():
        base = parametrize.type_before_parametrizations(mod)
        if (sparse_t is not None and isinstance(mod, sparse_t)) or isinstance(mod, Int8Linear):
            skipped.append((name, f"already a {type(mod).__name__}: prune the float model before converting it"))
            continue
        if base not in LINEAR_TYPES:
            if is_hf_conv1d(mod):
                skipped.append((name, "transformers Conv1D (weight stored [in, out]): weight masks are for "
                                      "nn.Linear; fastinfer.quantize takes it as a Linear"))
            elif isinstance(mod, nn.Linear):
                skipped.append((name, f"subclass {base.__name__} of nn.Linear (may use its weight differently)"))
            elif isinstance(mod, (nn.Conv1d, nn.Conv2d)):
                skipped.append((name, "a convolution: weight masks are for Linear layers (pattern='channels' "
                                      "removes conv filters)"))
            continue
        if inc is not None and not inc(name, mod):
            skipped.append((name, "not matched by include"))
        elif exc is not None and exc(name, mod):
            skipped.append((name, "matched by exclude"))
        elif problem := swap_problem(mod):  # torch.nn.utils.weight_norm's hook computes the weight
            skipped.append((name, problem))
        elif _foreign_parametrizations(mod):
            skipped.append((name, f"weight already has parametrizations {_foreign_parametrizations(mod)} "
                                  "(a mask on top could not be removed alone)"))
        elif id(_stored_weight(mod)) not in holders:
            skipped.append((name, "its weight is not a Parameter of the model (computed in forward): nothing to mask"))
        elif len(holders[id(_stored_weight(mod))]) > 1:
            owner = mod.parametrizations.weight if parametrize.is_parametrized(mod, "weight") else mod
            others = [h for mid, h in holders[id(_stored_weight(mod))].items() if mid != id(owner)]
            skipped.append((name, f"weight is tied to {', '.join(others)}: a mask here would not reach the other use"))
        elif not mod.weight.is_floating_point():
            skipped.append((name, f"weight dtype {mod.weight.dtype} is not floating point"))
        elif (problem := _shape_problem(mod.weight, pattern, block)) is not None:
            skipped.append((name, problem))
        else:
            targets.append((name, mod))
    return targets, skipped


def _unit_scores(w: Tensor, old: Optional[Tensor], pattern: str, block: Tuple[int, int]) -> Tensor:
    """Importance of each prunable unit (an entry, or a block by its L2 norm). Units the current mask
    already removed score -1, so they are the first picked again and re-pruning combines masks
    without removing more than asked."""
    score = w.detach().float().abs()
    score = torch.where(score.isnan(), float("inf"), score)  # NaN has no magnitude: keep it visible
    gone = None if old is None else ~old
    if pattern == "block":
        n, k = w.shape
        r, c = block
        score = score.reshape(n // r, r, k // c, c).pow(2).sum(dim=(1, 3)).sqrt()
        if gone is not None:
            gone = gone.reshape(n // r, r, k // c, c).all(dim=3).all(dim=1)
    if gone is not None:
        score = torch.where(gone, -1.0, score)
    return score


def _smallest(score: Tensor, k: int) -> Tensor:
    """Bool mask of the k smallest entries of a 1-D score; ties go to the lowest indices, so the count
    is exact and the choice deterministic."""
    n = score.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=score.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=score.device)
    t = torch.kthvalue(score, k).values
    out = score < t
    need = k - int(out.sum())
    tied = (score == t).nonzero().squeeze(1)[:need]
    out[tied] = True
    return out


def _to_elements(pruned_units: Tensor, shape, pattern: str, block: Tuple[int, int]) -> Tensor:
    if pattern != "block":
        return pruned_units.reshape(shape)
    n, k = shape
    r, c = block
    return pruned_units.reshape(n // r, 1, k // c, 1).expand(n // r, r, k // c, c).reshape(n, k)


def _keep_2_of_4(w: Tensor, old: Optional[Tensor]) -> Tensor:
    n, k = w.shape
    score = _unit_scores(w, old, "unstructured", (1, 1)).reshape(n, k // 4, 4)
    # A stable descending sort keeps the lower column on ties: deterministic.
    order = torch.argsort(score, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(score, dtype=torch.bool)
    keep.scatter_(-1, order[..., :2], True)
    return keep.reshape(n, k)


def _label(pattern: str, block: Tuple[int, int]) -> str:
    return f"block{block[0]}x{block[1]}" if pattern == "block" else pattern


def _apply_mask(module: nn.Module, keep: Tensor, label: str) -> None:
    mask = _our_mask(module)
    if mask is None:
        parametrize.register_parametrization(module, "weight", Mask(keep, label))
        module.parametrizations.train(module.training)  # the new modules take the layer's mode (fuse checks eval)
        return
    mask.mask.copy_(mask.mask & keep)  # pruning only adds zeros: a re-pruned layer keeps its old ones
    if label not in mask.pattern.split("+"):
        mask.pattern = f"{mask.pattern}+{label}" if mask.pattern else label


def prune_weights(model: nn.Module, sparsity: Optional[float], pattern: str = "unstructured", scope: str = "layer",
                  include: Patterns = None, exclude: Patterns = None, block: Sequence[int] = (1, 16),
                  verbose: bool = False) -> SparsityReport:
    """Zeros the smallest-magnitude weights of every nn.Linear (and fastinfer.nn.LinearAct) layer, in place,
    and attaches a :class:`Mask` parametrization so they stay zero while fine-tuning.

    pattern:
      'unstructured': the round(sparsity * numel) smallest |w| of each layer (scope='layer'), or the
        smallest round(sparsity * total) over all selected layers at once (scope='global': one threshold,
        so layers end with different sparsities). Ties go to the lower index: counts are exact.
      '2:4': in every group of 4 consecutive input columns keep the 2 largest |w| (sparsity 0.5 or None).
        Layers whose in_features is not a multiple of 4 are skipped (not padded).
      'block': zero whole `block` = (rows, cols) tiles with the smallest L2 norm, round(sparsity * blocks)
        of them (per layer or globally). Layers not divisible into blocks are skipped.
    sparsity: fraction in [0, 1]; 0 attaches all-ones masks (weights unchanged), 1 empties the layers.
    include / exclude: glob patterns on module names, lists of them, or a callable(name, module) -> bool.

    A layer that already has a mask is pruned again on its effective weight and the masks are combined
    (its zeros stay zero). Bias vectors are not pruned. Returns a :class:`SparsityReport` (also at
    ``model.fastinfer_sparsity_report``) with the sparsity reached and the layers skipped and why.
    Call :func:`remove_masks` before saving for deployment, fastinfer.quantize or fastinfer.sparsify.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    sparsity, block = _check_args(sparsity, pattern, scope, block)
    targets, skipped = _select(model, pattern, block, include, exclude)
    label = _label(pattern, block)

    with torch.no_grad():
        if pattern == "2:4":
            for _, mod in targets:
                old = _our_mask(mod)
                _apply_mask(mod, _keep_2_of_4(mod.weight, None if old is None else old.mask), label)
        else:
            scores = []
            for _, mod in targets:
                old = _our_mask(mod)
                scores.append(_unit_scores(mod.weight, None if old is None else old.mask, pattern, block).reshape(-1))
            if scope == "global" and scores:
                dev = scores[0].device  # layers may sit on several devices: rank them on one
                flat = torch.cat([s.to(dev) for s in scores])
                pruned = _smallest(flat, round(sparsity * flat.numel())).split([s.numel() for s in scores])
                pruned = [p.to(s.device) for p, s in zip(pruned, scores)]
            else:
                pruned = [_smallest(s, round(sparsity * s.numel())) for s in scores]
            for (_, mod), p in zip(targets, pruned):
                _apply_mask(mod, ~_to_elements(p, mod.weight.shape, pattern, block), label)

    report = SparsityReport({name: _measure(mod) for name, mod in targets}, skipped,
                            pattern=label, target=0.5 if pattern == "2:4" else sparsity, scope=scope)
    emptied = [name for name, m in report.layers.items() if m.nnz == 0 and m.dense_bytes]
    if scope == "global" and emptied and sparsity < 1.0:
        # one threshold over all layers can take every weight of a layer whose weights are all small
        warnings.warn(f"prune(scope='global'): layers {emptied[:4]} lost every weight (their output no longer "
                      "depends on their input); scope='layer' or exclude= keeps them", stacklevel=2)
    model.fastinfer_sparsity_report = report
    if verbose:
        print(report)
    return report


def _measure(mod: nn.Module) -> LayerSparsity:
    sparse_t = _sparse_linear_type()
    if sparse_t is not None and isinstance(mod, sparse_t):
        shape = (int(mod.out_features), int(mod.in_features))
        nnz = int(mod.nnz)
        numel = shape[0] * shape[1]
        return LayerSparsity(shape, str(getattr(mod, "pattern", "")), 1.0 - nnz / numel if numel else 0.0, nnz, numel * 4,
                             format=f"{mod.format} {str(mod.value_dtype).replace('torch.', '')}",
                             nbytes=int(mod.nbytes))
    with torch.no_grad():
        w = mod.weight  # the effective (masked) weight when a mask is attached
        nnz = int(torch.count_nonzero(w))
    mask = _our_mask(mod)
    shape = (int(w.shape[0]), int(w.shape[1]))
    return LayerSparsity(shape, mask.pattern if mask is not None else "",
                         1.0 - nnz / w.numel() if w.numel() else 0.0, nnz, w.numel() * 4)


def sparsity_report(model: nn.Module) -> SparsityReport:
    """Measures every Linear layer of any model: exact zeros of the effective weight (masked or not);
    for fastinfer.nn.SparseLinear layers, their own nnz, format and nbytes. int8 layers are listed
    as skipped."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    sparse_t = _sparse_linear_type()
    report = SparsityReport()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or (sparse_t is not None and isinstance(mod, sparse_t)):
            report.layers[name] = _measure(mod)
        elif isinstance(mod, Int8Linear):
            report.skipped.append((name, "int8 weights (not measured)"))
    return report


def remove_masks(model: nn.Module) -> List[str]:
    """Bakes every Mask in: the layers become plain modules again (nn.Linear / LinearAct) whose weight
    holds exact zeros where it was pruned; the weight Parameter object is kept (optimizers still hold
    it). Returns the names of the layers unmasked. Refuses, changing nothing, if a masked weight also
    carries other parametrizations (baking would fold those in too)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    masked = []
    for name, mod in model.named_modules():
        if not parametrize.is_parametrized(mod, "weight"):
            continue
        chain = list(mod.parametrizations.weight)
        if any(isinstance(p, Mask) for p in chain):
            if len(chain) > 1:
                raise ValueError(f"{name or '(model)'}: weight has parametrizations {[type(p).__name__ for p in chain]}; "
                                 "remove the others first (remove_masks bakes the whole chain)")
            masked.append((name, mod))
    for _, mod in masked:
        parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
    return [name for name, _ in masked]


__all__ = ["prune_weights", "remove_masks", "sparsity_report", "SparsityReport", "LayerSparsity", "Mask",
           "PATTERNS", "SCOPES"]
