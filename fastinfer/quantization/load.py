"""load_quantized: rebuild a quantized (or sparsified) model from its state_dict and the float architecture.

Deploying a quantized model should not need the calibration data, nor a pickle of the whole model (which
ties the file to the code that wrote it). The state_dict already says what each layer became: every
fastinfer layer saves its kind in its extra state (scheme, activation and scales for Int8Linear; the
weight shape and scales for Int8Conv2d; the layout for SparseLinear; the operand scales for Int8Add).
So the float model, built from its own code, is turned into the quantized one by swapping each layer the
file names, replaying the structural rewrites of static quantization (residual adds, int8 pooling), and
loading the file strictly.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from .._swap import is_hf_conv1d, replace_module
from ..nn._common import half_dtype_of
from ..nn.add import Int8Add
from ..nn.attention import SplitMultiheadAttention
from ..nn.conv import Int8Conv1d, Int8Conv2d, conv_padding
from ..nn.gate import Int8AdaptiveAvgPool2d, Int8ChannelScale, Int8GlobalAvgPool
from ..nn.linear import Int8Linear
from ..nn.sparse import FORMATS, INT8_FORMATS, SparseLinear
from .api import layer_kind
from .chain import adopt_half_dtype, chain_int8_convs, convs_into_concatenations, rewrite_residual_adds

_ADD_STATE = set(Int8Add().get_extra_state())
_REWRITE_STATES = (_ADD_STATE, set(Int8GlobalAvgPool().get_extra_state()), set(Int8ChannelScale().get_extra_state()))


def _check_activation(mod: nn.Module, name: str, saved: str) -> None:
    """The file's layer applies `saved` in its epilogue; the model's layer must be fused the same way, or the
    model would apply an activation twice, or not at all (fuse replaces the activation module after a fused
    layer with an Identity)."""
    own = getattr(mod, "activation", None) or "none"
    if own == saved:
        return
    if not hasattr(mod, "activation"):  # a plain layer: the file's was fused
        raise ValueError(f"{name}: the file's layer applies activation {saved!r} (it was fused): call "
                         "fastinfer.fuse(model) (eval mode; with example_inputs where a BatchNorm1d was folded "
                         "into a Linear) before load_quantized")
    raise ValueError(f"{name}: this model's fused layer applies activation {own!r}, the file's applies {saved!r}: "
                     "the file was written from a model fused differently (or not fused)")


def _layer_from_state(mod: nn.Module, prefix: str, sd: Mapping) -> Optional[nn.Module]:
    """The fastinfer layer the state_dict holds at `prefix` in place of float layer `mod`, empty (the
    strict load fills it), or None when the file holds the float layer there."""
    extra = sd.get(prefix + "_extra_state")
    if not isinstance(extra, dict):
        return None
    bias = mod.bias is not None
    kind = layer_kind(mod)
    if kind == "linear" and prefix + "packed_weight" in sd and "scheme" in extra:
        _check_activation(mod, prefix[:-1], extra["activation"])
        return Int8Linear(mod.in_features, mod.out_features, bias, extra["scheme"], extra["activation"],
                          extra["x_scale"], extra["out_scale"])
    if kind == "linear" and extra.get("format") in FORMATS and "nnz" in extra:
        _check_activation(mod, prefix[:-1], "none")  # sparsify leaves fused layers with an activation float
        fmt = extra["format"]
        return SparseLinear(mod.in_features, mod.out_features, bias,
                            torch.int8 if fmt in INT8_FORMATS else torch.float32, fmt)
    # An Int8Conv2d's state: its weight shape, or (checkpoints from before that entry) the activation and
    # scales without an Int8Linear's scheme.
    conv_state = "weight_shape" in extra or ("activation" in extra and "x_scale" in extra and "scheme" not in extra)
    if kind == "conv" and prefix + "packed_weight" in sd and conv_state:
        _check_activation(mod, prefix[:-1], extra["activation"])
        if mod.padding_mode != "zeros":
            raise ValueError(f"{prefix[:-1]}: the file holds an Int8Conv2d, but this model's conv has "
                             f"padding_mode={mod.padding_mode!r} (Int8Conv2d pads with zeros only)")
        # Padding 'same' / 'valid' as numbers (conv_padding, as from_float). out_scale stays None here:
        # chain_int8_convs sets it, and with it swaps the pooling in between (it passes over a conv that has
        # one already); the strict load then gives the file's value.
        cls = Int8Conv1d if isinstance(mod, nn.Conv1d) else Int8Conv2d
        return cls(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, conv_padding(mod),
                   mod.dilation, mod.groups, bias, extra["activation"], extra["x_scale"])
    return None


def read_weights_file(source, op: str, how: str):
    """torch.load(source, weights_only=True) on the CPU, with a ValueError that says what the file should be
    when it is not one (a whole model pickled by torch.save(model), a damaged or foreign file) instead of the
    unpickler's or the zip reader's own error."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # UnpicklingError, RuntimeError (not a zip), struct.error (truncated), ...
        name = source if isinstance(source, (str, os.PathLike)) else "the file object"
        raise ValueError(f"{op}: could not read {name} as tensors saved by {how} ({type(e).__name__}, chained "
                         f"below). A whole model pickled by torch.save(model) is not such a file: save it with "
                         f"{how}") from e


def load_quantized(source, model: nn.Module, *, strict: bool = True) -> nn.Module:
    """Turns ``model``, a float instance of the architecture that was quantized (or sparsified), into the
    quantized model saved in ``source`` (a state_dict, or a path or file object holding one written by
    ``torch.save(qmodel.state_dict(), path)``), in place, and returns it.

    Every nn.Linear / nn.Conv2d whose entry in the file is an Int8Linear, Int8Conv2d or SparseLinear
    is swapped for one, the residual-add and int8-pooling rewrites of ``w8a8_static`` are replayed, and
    the file is loaded with ``load_state_dict(strict=strict)``: weights, scales and layouts come from
    the file; no calibration data is needed. A model that was fused before quantizing must be fused
    again first (``fastinfer.fuse(model)``: no data needed, except example_inputs where fuse folded a
    BatchNorm1d into a Linear, which it does only with them).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(source, (str, os.PathLike)) or hasattr(source, "read"):  # a path or an open file (BytesIO)
        sd = read_weights_file(source, "load_quantized", "torch.save(model.state_dict(), path)")
    else:
        sd = source
    if not isinstance(sd, Mapping):
        raise TypeError(f"source must be a state_dict (a mapping of names to tensors), a path to one or a file "
                        f"object holding one, got {type(sd).__name__}")
    bn_missing = [n for n, m in model.named_modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                  and f"{n}.running_mean" not in sd]
    # An nn.MultiheadAttention that quantize split (its projections saved under q_proj, k_proj ...): split again.
    split = {k.rpartition(".q_proj.")[0] for k in sd if isinstance(k, str) and ".q_proj." in k}
    mha_originals = {name: mod for name, mod in model.named_modules()
                     if type(mod) is nn.MultiheadAttention and name in split}
    for name, mod in mha_originals.items():
        replace_module(model, name, SplitMultiheadAttention.from_float(mod))
    swaps: Dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        if name and layer_kind(mod) is not None:
            # transformers' Conv1D: a stand-in Linear of its shape (on the meta device: no weight copied)
            view = nn.Linear(*mod.weight.shape, bias=mod.bias is not None, device="meta") if is_hf_conv1d(mod) else mod
            new = _layer_from_state(view, name + ".", sd)
            if new is not None:
                swaps[name] = new.to(mod.weight.device)
    if bn_missing and swaps:
        for name, mod in mha_originals.items():
            replace_module(model, name, mod)  # the model as it came
        raise ValueError(f"the file has no BatchNorm statistics for {', '.join(bn_missing[:3])}"
                         f"{' ...' if len(bn_missing) > 3 else ''}: the quantized model was fused; call "
                         "fastinfer.fuse(model) (eval mode; with example_inputs where a BatchNorm1d was folded "
                         "into a Linear) before load_quantized")
    half_dtype = None  # a model cast to fp16/bf16 before loading: int8 hand-offs come back in its dtype
    for name, new in swaps.items():
        half_dtype = half_dtype or half_dtype_of(model.get_submodule(name))
        replace_module(model, name, new)
    if any(isinstance(m, Int8Conv2d) and m.x_scale is not None for m in model.modules()):
        # quantize rewrote the blocks' forwards: their residual adds and gates where the file holds Int8Adds or
        # gates, their functional poolings in any case (a pooling module computes what the call did on float
        # inputs, and an int8 one reaches it only where the file's convs hand off int8 through it)
        residuals = any(k.endswith("._extra_state") and isinstance(v, dict) and set(v) in _REWRITE_STATES
                        for k, v in sd.items())
        rewrite_residual_adds(model, residuals=residuals)
        # The same hand-offs as quantize made: a conv whose consumers are Int8Adds takes its calibrated
        # output scale, which is the out_scale the file holds for it.
        saved = {name: sd[name + "._extra_state"].get("out_scale") for name, m in swaps.items()
                 if isinstance(m, Int8Conv2d)}
        chain_int8_convs(model, {name: v for name, v in saved.items() if v is not None})
        convs_into_concatenations(model)
        # A file written before global poolings beside convs read int8 holds the float pooling (and its producer
        # writes float): keep that pooling float.
        for name, m in list(model.named_modules()):
            if isinstance(m, Int8AdaptiveAvgPool2d) and f"{name}._extra_state" not in sd:
                replace_module(model, name, nn.AdaptiveAvgPool2d(1))
    adopt_half_dtype(model, half_dtype)
    model.load_state_dict(sd, strict=strict)
    return model
