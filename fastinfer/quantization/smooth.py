"""SmoothQuant factors: move activation outliers into the weights, per input channel.

For a Linear with input channels j: s_j = max|X_j|^alpha / max|W_:j|^(1 - alpha), measured on
calibration batches. The layer then computes (X / s) (s W)^T = X W^T, and the per-token
quantization of X / s no longer has to cover a few huge channels (Xiao et al., 2023). fastinfer
folds s into the weight's columns when packing, and applies 1 / s inside the activation
quantization pass of the kernel, so no other layer of the model needs to change.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .._args import check_fraction
from .calibrate import _model_call

_S_MIN, _S_MAX = 1e-5, 1e5  # keep factors (and their inverses) comfortably inside fp32


def channel_amax(model: nn.Module, data: Iterable, names: List[str], num_batches: Optional[int] = None,
                 progress: bool = False) -> Dict[str, Tensor]:
    """max |x| per input channel (last dim) of each named Linear's input over the calibration batches."""
    amax: Dict[str, Tensor] = {}
    hooks = []

    def hook(name):
        def fn(_mod, args, kwargs):
            x = (args[0] if args else kwargs["input"]).detach()  # positional, or torch's keyword `input`
            if not torch.isfinite(x).all():
                raise ValueError(f"smoothing calibration: the input of layer '{name}' contains NaN or Inf")
            m = x.abs().reshape(-1, x.shape[-1]).amax(dim=0).float()
            amax[name] = m if name not in amax else torch.maximum(amax[name], m)
        return fn

    modules = dict(model.named_modules())
    for n in names:
        hooks.append(modules[n].register_forward_pre_hook(hook(n), with_kwargs=True))
    was_training = [(m, m.training) for m in model.modules()]
    model.eval()
    seen = 0
    try:
        with torch.inference_mode():
            for batch in tqdm(data, desc="smoothquant calibration", unit="batch", disable=not progress):
                args, kwargs = _model_call(model, batch)
                model(*args, **kwargs)
                seen += 1
                if num_batches is not None and seen >= num_batches:
                    break
    finally:
        for h in hooks:
            h.remove()
        for m, t in was_training:
            m.train(t)
    if seen == 0:
        raise ValueError("calib_data is empty: SmoothQuant needs a few batches of representative inputs")
    return amax


def smooth_factors(model: nn.Module, data: Iterable, names: List[str], alpha: float,
                   num_batches: Optional[int] = None, progress: bool = False) -> Dict[str, Tensor]:
    """SmoothQuant factors s [in_features] for each named Linear (layers never called get none)."""
    alpha = check_fraction("smooth_alpha", alpha)
    act = channel_amax(model, data, names, num_batches, progress)
    modules = dict(model.named_modules())
    out = {}
    for name, a in act.items():
        w = modules[name].weight.detach().float().abs().amax(dim=0)
        s = a.clamp_min(1e-8).pow(alpha) / w.clamp_min(1e-8).pow(1.0 - alpha)
        # A channel that is zero in X or in W gains nothing from scaling: leave it at 1.
        s = torch.where((a > 0) & (w > 0), s, torch.ones_like(s))
        out[name] = s.clamp(_S_MIN, _S_MAX)
    return out
