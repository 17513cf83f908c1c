"""Swapping a layer for its fastinfer version, wherever the model holds it."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn


def replace_module(model: nn.Module, name: str, new: nn.Module) -> List[str]:
    """Puts `new` in place of the module at `name` and at every other name the same module object is
    registered under (`self.k = self.q`: one layer, two attributes, which stays one layer). Swapping under
    the first name only left the other a float layer that no report mentioned. The new module takes the old
    one's train/eval mode, and torch's fused transformer paths above it are turned off if they would read
    its weight (_fused_paths_off). Returns the names."""
    old = model.get_submodule(name)
    new.train(old.training)  # a new module starts in training mode; an eval model stays in eval mode
    names = [n for n, m in model.named_modules(remove_duplicate=False) if m is old and n]
    for n in names:
        parent, _, child = n.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    _fused_paths_off(model, names)
    return names


def is_hf_conv1d(mod: nn.Module) -> bool:
    """Hugging Face transformers' Conv1D (GPT-2's attention and MLP layers): ``x @ weight + bias`` with weight
    [in, out], so a Linear whose weight is the transpose (not a convolution, despite the name)."""
    t = type(mod)
    w = getattr(mod, "weight", None)
    return (t.__name__ == "Conv1D" and t.__module__.startswith("transformers.") and isinstance(w, torch.Tensor)
            and w.dim() == 2 and getattr(mod, "nf", None) == w.shape[1])


def linear_from_conv1d(mod: nn.Module) -> nn.Linear:
    """The nn.Linear computing what a transformers Conv1D computes (weight transposed, same bias)."""
    n_in, n_out = mod.weight.shape
    lin = nn.Linear(n_in, n_out, bias=mod.bias is not None, device=mod.weight.device, dtype=mod.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(mod.weight.t())
        if mod.bias is not None:
            lin.bias.copy_(mod.bias)
    lin.train(mod.training)
    return lin


def _swapped(layer: nn.Module) -> bool:
    """An nn.TransformerEncoderLayer whose fused eval path would read a float weight that is no longer there."""
    return isinstance(layer, nn.TransformerEncoderLayer) and not (
        all(isinstance(lin, nn.Linear) for lin in (layer.linear1, layer.linear2))
        and isinstance(layer.self_attn, nn.MultiheadAttention))


def fused_path_flags(model: nn.Module) -> Dict[nn.Module, Tuple[str, object]]:
    """The flags _fused_paths_off may turn off, as they are now (for restore_fused_paths)."""
    flags = {}
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoderLayer):
            flags[m] = ("activation_relu_or_gelu", m.activation_relu_or_gelu)
        elif isinstance(m, nn.TransformerEncoder) and hasattr(m, "use_nested_tensor"):
            flags[m] = ("use_nested_tensor", m.use_nested_tensor)
    return flags


def restore_fused_paths(flags: Dict[nn.Module, Tuple[str, object]]) -> None:
    """Puts back the flags of fused_path_flags on the layers and encoders that hold no swapped layer (any
    more): a quantize that raised, or put every layer of an encoder back, leaves it computing as before."""
    for m, (attr, value) in flags.items():
        layers = m.layers if isinstance(m, nn.TransformerEncoder) else [m]
        if not any(_swapped(layer) for layer in layers):
            setattr(m, attr, value)


def _fused_paths_off(model: nn.Module, names: List[str]) -> None:
    """Turns off the fused eval-mode paths of an nn.TransformerEncoderLayer whose feed-forward layer or
    self-attention was swapped, and of the nn.TransformerEncoder above it: they read linear1.weight /
    linear2.weight / self_attn.in_proj_weight and compute the layer in one float kernel, which an int8 or
    sparse layer (no float weight) does not allow. The layer then runs its own forward (self_attn, then
    _ff_block calling linear1 and linear2), the same math."""
    for name in names:
        parts = name.split(".")
        for ancestor in (model.get_submodule(".".join(parts[:i])) for i in range(len(parts))):
            if _swapped(ancestor):
                ancestor.activation_relu_or_gelu = 0  # only the fused path reads it (its "not relu/gelu" exit)
            elif isinstance(ancestor, nn.TransformerEncoder) and any(_swapped(layer) for layer in ancestor.layers):
                ancestor.use_nested_tensor = False  # its nested-tensor path reads layers[0].linear1.weight too


def swap_problem(mod: nn.Module) -> Optional[str]:
    """Why a layer is not swapped although its type would be (None: it can be): an uninitialized lazy module
    (no weight yet), or forward hooks, which the new layer would not run (torch.nn.utils.weight_norm /
    spectral_norm, the hook versions, compute the weight in one)."""
    if isinstance(mod, nn.modules.lazy.LazyModuleMixin) and mod.has_uninitialized_params():
        return "an uninitialized lazy module (no weight yet): run one forward first"
    if not (mod._forward_pre_hooks or mod._forward_hooks):
        return None
    return ("has forward hooks, which the new layer would not run (torch.nn.utils.weight_norm / spectral_norm "
            "compute the weight in one: use their torch.nn.utils.parametrizations versions, or remove the hooks)")
