"""The concatenations of a DenseNet block's int8 features, each feature copied once: what fastinfer.quantize
(scheme="w8a8_static") puts in a forward in place of a chain of torch.cat(parts, 1) calls that extend one another.

A DenseNet layer concatenates all the features before it ([f0], [f0, f1], [f0, f1, f2], ...), so torch.cat copies
each feature once per later layer. ``cat_channels_reserve`` writes the first concatenation into a buffer with room
for the later parts, and each ``cat_channels_extend`` writes only its new parts behind the previous concatenation
(fastinfer.ops.int8_cat_channels_into) and returns the longer channel prefix of the same buffer. The prefixes are
channel slices of a channels_last tensor (contiguous channels, pixels ``buffer channels`` apart), which a
BatchNormQuant2d reads in place; other consumers read them as any strided tensor. fastinfer.quantize builds such
chains only where nothing writes into a prefix (chain.py, _cat_chains). Each function computes what torch.cat
computes; parts that are not int8 4-D CPU tensors with one N, H and W take torch.cat itself.

Where a part is an int8 conv's output that nothing else reads, the conv writes it straight into the buffer's
channels (``cat_conv_reserve``, ``cat_conv_extend``: fastinfer.ops.int8_conv2d_into), so it is not copied at all:
fastinfer.quantize puts them in a DenseNet block's extensions and in the concatenations of an Inception block's
branches (chain.py, convs_into_concatenations).

These functions are leaves for torch.fx: a symbolic trace records one call of each, not what it does.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor

from .. import _C, ops
from ._common import fx_leaf as _fx_leaf
from .conv import Int8Conv2d


_cat_into = torch.ops.fastinfer.int8_cat_channels_into


def _channels(parts: Sequence[Tensor]) -> int:
    """The channels of int8_cat_channels_into's result for parts (int8 4-D CPU tensors with one N, H and W), or
    -1 where it does not join them (torch.cat does)."""
    first = parts[0]
    if not isinstance(first, Tensor) or first.dtype != torch.int8 or first.dim() != 4 or not first.is_cpu:
        return -1
    n, _, h, w = first.shape
    c = 0
    for p in parts:
        if (not isinstance(p, Tensor) or p.dtype != torch.int8 or p.dim() != 4 or not p.is_cpu
                or p.shape[0] != n or p.shape[2] != h or p.shape[3] != w):
            return -1
        c += p.shape[1]
    return c


def _buffer(n: int, c: int, h: int, w: int) -> Tensor:
    """An uninitialised int8 [n, c, h, w] channels_last tensor from the ops' output cache (fastinfer._C.int8_buffer:
    a block used before, not pages mapped afresh and faulted in by the first write), or torch.empty's under a mode."""
    buf = _C.int8_buffer(n, c, h, w)
    if buf is NotImplemented:
        buf = torch.empty((n, c, h, w), dtype=torch.int8, memory_format=torch.channels_last)
    return buf


def _join(parts: List[Tensor], spare: int) -> Tensor:
    # Under torch.compile: torch.cat, whose copies the compiler plans itself (the buffer's room and the attributes
    # that mark it are eager-mode bookkeeping, which Inductor's fake tensors do not carry).
    c = _channels(parts) if parts and not torch.compiler.is_compiling() else -1
    if c < 0:
        return torch.cat(parts, 1)
    n, _, h, w = parts[0].shape
    buf = _buffer(n, c + spare, h, w)
    _cat_into(buf, parts, 0)
    return _prefix(buf, c) if spare else buf


@_fx_leaf
def cat_channels_reserve(parts: List[Tensor], spare: int) -> Tensor:
    """torch.cat(parts, 1). int8 parts: the first channels of a channels_last buffer ``spare`` channels wider,
    which cat_channels_extend fills (spare 0: the buffer itself)."""
    return _join(list(parts), spare)


def _prefix(buf: Tensor, c: int) -> Tensor:
    """buf's first c channels, marked as all that is filled of buf (for _room). The view holds buf itself: in
    inference mode a view has no ._base."""
    buf._fastinfer_filled = c
    view = buf[:, :c] if c < buf.shape[1] else buf
    if view is not buf:
        view._fastinfer_buffer = buf
    return view


def _room(prev: Tensor, channels: int) -> bool:
    """Whether prev is all that is filled of a buffer cat_channels_reserve made (its first channels), and the
    buffer has at least ``channels`` channels. A slice of any other tensor is not: its other channels are not
    room. Nor is an older prefix of a buffer already extended: its room is taken."""
    buf = getattr(prev, "_fastinfer_buffer", None)
    return (buf is not None and getattr(buf, "_fastinfer_filled", None) == prev.shape[1] and buf.shape[1] >= channels
            and prev.data_ptr() == buf.data_ptr() and prev.stride() == buf.stride())


@_fx_leaf
def cat_channels_extend(prev: Tensor, parts: List[Tensor]) -> Tensor:
    """torch.cat([prev, *parts], 1). Where prev came from cat_channels_reserve or cat_channels_extend and its
    buffer has room (prev is all that is filled of it: _room), the parts are written behind it, and the longer
    prefix of that buffer is returned (prev's own channels are not copied). A prefix must not be written into
    while a longer one is in use (they share their channels): fastinfer.quantize extends a concatenation only
    where its users read it (chain.py, _cat_chains)."""
    joined = [prev, *parts]
    c = _channels(joined) if not torch.compiler.is_compiling() else -1
    if c < 0 or not _room(prev, c):
        return _join(joined, 0)
    buf = prev._fastinfer_buffer
    _cat_into(buf, list(parts), prev.shape[1])
    return _prefix(buf, c)


def _conv_shape(conv, x) -> tuple:
    """(N, Cout, OH, OW) of conv(x) where the conv can write it into a buffer's channels: an Int8Conv2d (the class
    itself: a subclass may have a forward of its own) with int8 out (out_scale), x a 4-D float32 or int8 CPU batch
    of its channels; else (). The caller has checked that no compiler is tracing. Per call of a forward: kept
    short (cat_with_convs' Python added about 8 us a concatenation over torch.cat's at first)."""
    if type(conv) is not Int8Conv2d or conv.out_scale is None or conv.float_dtype is not None:
        return ()
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_cpu or x.dtype not in _CONV_INPUTS:
        return ()
    n, c, h, w = x.shape
    if c != conv.in_channels:
        return ()
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    ph, pw = conv.padding
    dh, dw = conv.dilation
    oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return (n, conv.out_channels, oh, ow) if oh > 0 and ow > 0 else ()


_CONV_INPUTS = (torch.float32, torch.int8)
_conv2d_into_op = torch.ops.fastinfer.int8_conv2d_into


def _conv_into(conv: Int8Conv2d, x: Tensor, out: Tensor) -> None:
    args = conv._args(x)
    if _C.int8_conv2d_into(out, *args) is NotImplemented:  # the dispatcher decides (a mode, the profiler, ...)
        _conv2d_into_op(out, *args)


@_fx_leaf
def cat_conv_reserve(conv, x: Tensor, spare: int) -> Tensor:
    """cat_channels_reserve([conv(x)], spare), an int8 Int8Conv2d writing its output into the buffer's first
    channels (any other module, or an input it does not take so, runs as it is, and its output is copied)."""
    shape = _conv_shape(conv, x) if not torch.compiler.is_compiling() else ()
    if not shape:
        return _join([conv(x)], spare)
    n, c, h, w = shape
    buf = _buffer(n, c + spare, h, w)
    _conv_into(conv, x, buf[:, :c] if spare else buf)
    return _prefix(buf, c) if spare else buf


@_fx_leaf
def cat_conv_extend(prev: Tensor, conv, x: Tensor) -> Tensor:
    """cat_channels_extend(prev, [conv(x)]), an int8 Int8Conv2d writing its output behind prev's channels in
    prev's buffer where that has room (_room); else the conv runs as it is and its output is copied."""
    shape = _conv_shape(conv, x) if not torch.compiler.is_compiling() else ()
    c0 = prev.shape[1] if isinstance(prev, Tensor) and prev.dim() == 4 else -1
    if (not shape or c0 < 0 or prev.dtype != torch.int8 or (prev.shape[0], prev.shape[2], prev.shape[3]) !=
            (shape[0], shape[2], shape[3]) or not _room(prev, c0 + shape[1])
            or torch._C._is_alias_of(x, prev._fastinfer_buffer)):  # a conv of the concatenation itself
        return cat_channels_extend(prev, [conv(x)])
    buf = prev._fastinfer_buffer
    c = c0 + shape[1]
    _conv_into(conv, x, buf[:, c0:c])
    return _prefix(buf, c)


@_fx_leaf
def cat_with_convs(parts: List[Tensor], convs: list) -> Tensor:
    """torch.cat([convs[i](parts[i]) if convs[i] is not None else parts[i] for i ...], 1): an Inception block's
    branches joined, each int8 Int8Conv2d writing its output straight into its channels of the result, the other
    int8 parts copied there. Where a conv cannot (_conv_shape), or a part is not an int8 4-D CPU tensor, or the
    shapes differ, every conv runs as it is and their outputs are joined as torch.cat joins them."""
    # one pass: each part's channels and (N, H, W), which must agree; None where a part cannot be written
    nhw, widths = None, []
    if parts and not torch.compiler.is_compiling():
        for p, conv in zip(parts, convs):
            if conv is not None:
                shape = _conv_shape(conv, p)
                if not shape:
                    nhw = None
                    break
                n, c, h, w = shape
            elif isinstance(p, Tensor) and p.dtype == torch.int8 and p.dim() == 4 and p.is_cpu:
                n, c, h, w = p.shape
            else:
                nhw = None
                break
            if nhw is None:
                nhw = (n, h, w)
            elif nhw != (n, h, w):
                nhw = None
                break
            widths.append(c)
    if nhw is None:
        return _join([c(p) if c is not None else p for p, c in zip(parts, convs)], 0)
    buf = _buffer(nhw[0], sum(widths), nhw[1], nhw[2])
    c0 = 0
    for p, conv, w in zip(parts, convs, widths):
        if conv is not None:
            _conv_into(conv, p, buf[:, c0:c0 + w])
        elif w:
            _cat_into(buf, [p], c0)
        c0 += w
    return buf
