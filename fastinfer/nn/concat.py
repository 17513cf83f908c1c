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

These functions are leaves for torch.fx: a symbolic trace records one call of each, not what it does.
"""
from __future__ import annotations

import functools
from typing import List, Sequence

import torch
from torch import Tensor, fx

from .. import ops  # noqa: F401 (registers torch.ops.fastinfer)


def _fx_leaf(fn):
    """fn, recorded as one call_function node when an argument (or a tensor in a list argument) is a torch.fx Proxy
    (as torch.fx.wrap does for the tracers that know the function; this works for any tracer, a user's included).
    Checked by hand, not with pytree: these run once per concatenation in a forward."""

    @functools.wraps(fn)
    def call(*args):
        for a in args:
            if isinstance(a, fx.Proxy) or (type(a) in (list, tuple) and any(isinstance(x, fx.Proxy) for x in a)):
                tracer = a.tracer if isinstance(a, fx.Proxy) else next(x for x in a if isinstance(x, fx.Proxy)).tracer
                return tracer.create_proxy("call_function", call, args, {})
        return fn(*args)

    return call


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


def _join(parts: List[Tensor], spare: int) -> Tensor:
    # Under torch.compile: torch.cat, whose copies the compiler plans itself (the buffer's room and the attributes
    # that mark it are eager-mode bookkeeping, which Inductor's fake tensors do not carry).
    c = _channels(parts) if parts and not torch.compiler.is_compiling() else -1
    if c < 0:
        return torch.cat(parts, 1)
    n, _, h, w = parts[0].shape
    buf = torch.empty((n, c + spare, h, w), dtype=torch.int8, memory_format=torch.channels_last)
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
