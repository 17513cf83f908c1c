"""fastinfer.profile: per-layer parameters, bytes, MACs/FLOPs and latency of a model, plus the
whole model's latency, so a table before and after pruning/quantization shows what each bought.

Counting conventions (one forward of ``model(*example_inputs)``, bias additions never counted):

=====================================  ==========================================  ===========================
layer                                  MACs                                        FLOPs
=====================================  ==========================================  ===========================
Conv1d/2d/3d                           out elements * in_channels/groups * k-elems 2 * MACs
ConvTranspose1d/2d/3d                  in elements * out_channels/groups * k-elems 2 * MACs
Linear, fastinfer.nn.Int8Linear        out elements * in_features                  2 * MACs
MultiheadAttention                     q/k/v/out projections + QK^T + attn*V       2 * MACs + 3 per score (softmax)
fastinfer.nn.ScaledDotProductAttention QK^T + attn*V (its projections are layers)  2 * MACs + 3 per score (softmax)
BatchNorm (eval: x*scale + shift)      0                                           2 per element
LayerNorm, GroupNorm, InstanceNorm     0                                           5 per element, +2 if affine
RMSNorm                                0                                           3 per element, +1 if affine
activations (ReLU, GELU, SiLU, ...)    0                                           1 per element
Softmax, LogSoftmax, Softmin           0                                           3 per element
MaxPool/AvgPool                        0                                           kernel elements per output
AdaptiveAvgPool/AdaptiveMaxPool        0                                           window elements per output
Embedding, Dropout, Flatten, padding   0                                           0
=====================================  ==========================================  ===========================

MACs are the multiply-accumulates of weights and attention (the number papers quote for a CNN);
FLOPs add the element-wise work, so FLOPs = 2 * MACs + element-wise FLOPs. Leaf types without a
formula get MACs/FLOPs = None and a note. Functional calls in a ``forward`` (``torch.flatten``,
``F.relu``, ``x + y``, ``x @ w``) are not modules and are not counted per layer;
``totals.total_flops_flopcounter`` is torch's FlopCounterMode over the same forward as a cross-check:
it counts aten matmul/conv/attention ops only (2 per MAC), so on a float model it equals
``2 * (macs - int8_macs)`` unless functional matmuls or convs are hidden in a ``forward``. It does
not see fastinfer's own int8 ops, hence the ``int8_macs`` subtraction, nor MultiheadAttention's
fused inference kernel (it reports 0 for that layer).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._args import is_integer
from ._swap import is_hf_conv1d
from .nn.attention import ScaledDotProductAttention
from .nn.conv import Int8Conv1d, Int8Conv2d
from .nn.linear import Int8Linear
from .nn.sparse import SparseLinear

# Modules that have children but are profiled as one layer: their children are part of their
# computation (MultiheadAttention's out_proj is applied inside its functional forward, not called).
KNOWN_LEAVES: Tuple[type, ...] = (nn.MultiheadAttention, Int8Linear, Int8Conv2d, SparseLinear)


# ----------------------------------------------------------------------------------------------
# Per-type counters: (module, args, kwargs, output tensor) -> (MACs, FLOPs) for one call.

def _first_tensor(x: Any) -> Optional[Tensor]:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for item in x:
            t = _first_tensor(item)
            if t is not None:
                return t
    if isinstance(x, dict):
        return _first_tensor(list(x.values()))
    return None


def _conv(m, args, kwargs, out):
    macs = out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
    return macs, 2 * macs


def _conv_transpose(m, args, kwargs, out):
    # Each input element is scattered through an (out_channels/groups) x kernel block.
    inp = _first_tensor(args) if args else _first_tensor(kwargs)
    macs = inp.numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size)
    return macs, 2 * macs


def _linear(m, args, kwargs, out):
    macs = out.numel() * m.in_features
    return macs, 2 * macs


def _sparse_linear(m, args, kwargs, out):
    # The products a sparse kernel does: each output row's nonzero weights, once per token.
    macs = out.numel() // m.out_features * m.nnz
    return macs, 2 * macs


def _mha(m, args, kwargs, out):
    def arg(i, name):
        return args[i] if len(args) > i else kwargs[name]
    q, k = arg(0, "query"), arg(1, "key")
    if q.dim() == 2:  # unbatched: [L, E]
        n, tgt, src = 1, q.shape[0], k.shape[0]
    elif m.batch_first:
        n, tgt, src = q.shape[0], q.shape[1], k.shape[1]
    else:
        n, tgt, src = q.shape[1], q.shape[0], k.shape[0]
    e = m.embed_dim
    proj = n * tgt * e * e + n * src * e * (m.kdim + m.vdim) + n * tgt * e * e  # q, k, v, out
    # bias_k and add_zero_attn each append one key/value position after the projections.
    src += int(m.bias_k is not None) + int(m.add_zero_attn)
    attn = 2 * n * tgt * src * e  # QK^T and attn @ V, summed over heads (heads * head_dim = E)
    macs = proj + attn
    return macs, 2 * macs + 3 * n * m.num_heads * tgt * src


def _sdpa(m, args, kwargs, out):
    # fastinfer.nn.ScaledDotProductAttention (SplitMultiheadAttention's core): q [N, heads, L, d], k [N, heads, S, d]
    q, k = args[0], args[1]
    scores = q.shape[:-1].numel() * k.shape[-2]
    macs = 2 * scores * q.shape[-1]  # QK^T and attn @ V
    return macs, 2 * macs + 3 * scores


def _per_element(flops_per_elem: int) -> Callable:
    def count(m, args, kwargs, out):
        return 0, flops_per_elem * out.numel()
    return count


def _norm_with_stats(m, args, kwargs, out):
    # mean 1, variance 2, normalize 2 per element; the affine scale/shift is one more mul-add.
    affine = getattr(m, "elementwise_affine", None)
    if affine is None:
        affine = getattr(m, "affine", False)
    return 0, (5 + (2 if affine else 0)) * out.numel()


def _rms_norm(m, args, kwargs, out):
    # square-accumulate 2, scale by 1/rms 1; the affine weight is one multiply.
    return 0, (3 + (1 if m.elementwise_affine else 0)) * out.numel()


def _pool(nd: int) -> Callable:
    def count(m, args, kwargs, out):
        k = m.kernel_size
        k = (k,) * nd if isinstance(k, int) else tuple(k)
        return 0, out.numel() * math.prod(k)
    return count


def _adaptive_pool(nd: int) -> Callable:
    def count(m, args, kwargs, out):
        # Exact window sizes: output index i covers [floor(i*In/Out), ceil((i+1)*In/Out)).
        inp = _first_tensor(args) if args else _first_tensor(kwargs)
        in_sizes, out_sizes = inp.shape[-nd:], out.shape[-nd:]
        per_out = 1
        for size_in, size_out in zip(in_sizes, out_sizes):
            per_out *= sum(-(-(i + 1) * size_in // size_out) - i * size_in // size_out for i in range(size_out))
        return 0, out.numel() // max(1, math.prod(out_sizes)) * per_out
    return count


def _free(m, args, kwargs, out):
    return 0, 0


_COUNTERS: Dict[type, Callable] = {
    nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv,
    nn.ConvTranspose1d: _conv_transpose, nn.ConvTranspose2d: _conv_transpose, nn.ConvTranspose3d: _conv_transpose,
    nn.Linear: _linear, Int8Linear: _linear, Int8Conv2d: _conv, Int8Conv1d: _conv, SparseLinear: _sparse_linear,
    nn.MultiheadAttention: _mha, ScaledDotProductAttention: _sdpa,
    nn.BatchNorm1d: _per_element(2), nn.BatchNorm2d: _per_element(2), nn.BatchNorm3d: _per_element(2),
    nn.SyncBatchNorm: _per_element(2),
    nn.LayerNorm: _norm_with_stats, nn.GroupNorm: _norm_with_stats,
    nn.InstanceNorm1d: _norm_with_stats, nn.InstanceNorm2d: _norm_with_stats, nn.InstanceNorm3d: _norm_with_stats,
    nn.Softmax: _per_element(3), nn.LogSoftmax: _per_element(3), nn.Softmin: _per_element(3),
}
if hasattr(nn, "RMSNorm"):  # torch >= 2.4
    _COUNTERS[nn.RMSNorm] = _rms_norm
for _name in ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
              "Sigmoid", "Tanh", "Hardtanh", "Hardswish", "Hardsigmoid", "Softplus", "Softsign", "Tanhshrink",
              "Threshold", "LogSigmoid", "Hardshrink", "Softshrink"):
    _COUNTERS[getattr(nn, _name)] = _per_element(1)
for _nd in (1, 2, 3):
    for _kind, _fn in (("MaxPool", _pool), ("AvgPool", _pool), ("AdaptiveAvgPool", _adaptive_pool),
                       ("AdaptiveMaxPool", _adaptive_pool)):
        _COUNTERS[getattr(nn, f"{_kind}{_nd}d")] = _fn(_nd)
for _name in ("Identity", "Flatten", "Unflatten", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
              "FeatureAlphaDropout", "Embedding", "Sequential", "ModuleList", "ModuleDict",
              "ZeroPad1d", "ZeroPad2d", "ZeroPad3d", "ConstantPad1d", "ConstantPad2d", "ConstantPad3d",
              "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d", "ReplicationPad1d", "ReplicationPad2d",
              "ReplicationPad3d", "CircularPad1d", "CircularPad2d", "CircularPad3d", "PixelShuffle", "PixelUnshuffle",
              "ChannelShuffle"):
    if hasattr(nn, _name):  # some of these are newer than torch 2.4
        _COUNTERS[getattr(nn, _name)] = _free


def _counter_for(module: nn.Module) -> Tuple[Optional[Callable], Optional[type]]:
    """The counter for the module's type or its nearest base with one (so subclasses are counted)."""
    for cls in type(module).__mro__:
        if cls in _COUNTERS:
            return _COUNTERS[cls], cls
    if is_hf_conv1d(module):  # transformers' Conv1D (GPT-2): x @ W with W [in, out], a Linear's MACs
        return _hf_conv1d, type(module)
    return None, None


def _hf_conv1d(m, args, kwargs, out):
    macs = out.numel() * m.weight.shape[0]
    return macs, 2 * macs


def _logical_params(module: nn.Module) -> int:
    """Weights a quantized module holds in buffers, counted as the float layer's parameters would be."""
    if isinstance(module, Int8Linear):
        return module.in_features * module.out_features + (module.out_features if module.bias is not None else 0)
    if isinstance(module, Int8Conv2d):
        bias = module.out_channels if module.bias is not None else 0
        return module.out_channels * (module.in_channels // module.groups) * math.prod(module.kernel_size) + bias
    if isinstance(module, SparseLinear):  # the nonzero weights it stores (its buffers are the layout)
        return module.nnz + (module.out_features if module.bias is not None else 0)
    return 0


def _int8_math(module: nn.Module) -> bool:
    # w8_only keeps activations in float and widens the weights in the kernel: int8 storage, float MACs.
    return (isinstance(module, Int8Linear) and module.scheme in ("w8a8_dynamic", "w8a8_static")) or \
        isinstance(module, Int8Conv2d) or (isinstance(module, SparseLinear) and module.value_dtype == torch.int8)


# ----------------------------------------------------------------------------------------------
# Report types

@dataclass
class LayerProfile:
    """One leaf module. macs/flops are per forward (summed over calls); None where no formula exists.

    latency_ms is the median over the timed forwards of the time between the layer's forward pre-
    and post-hooks (summed over calls), so it includes the hooks' small overhead.
    """
    name: str
    type: str
    params: int                 # parameters, plus the logical weight count of quantized layers
    bytes: int                  # storage of parameters and buffers as held (int8, packed, scales ...)
    output_shape: Optional[Tuple[int, ...]]  # first tensor of the first call's output
    macs: Optional[int]
    flops: Optional[int]
    int8: bool                  # the MACs run on int8 units (fastinfer w8a8 layers)
    latency_ms: Optional[float]
    calls: int                  # calls per forward (a shared module is called more than once)
    note: str = ""


@dataclass
class ProfileTotals:
    params: int                 # whole model, each shared tensor once, quantized layers at logical size
    bytes: int                  # whole model's parameters and buffers, each shared tensor once
    macs: int                   # sum over layers with a formula (see uncounted)
    flops: int
    int8_macs: int              # part of macs that runs on int8 units
    latency_ms: float           # whole forward without hooks: median over iters
    latency_p90_ms: float
    layer_latency_ms: float     # sum of the layers' median latencies (with hooks)
    total_flops_flopcounter: Optional[int]  # torch FlopCounterMode cross-check (aten matmul/conv only)
    uncounted: List[str] = field(default_factory=list)  # leaf layers whose MACs/FLOPs are unknown


def _fmt_count(n: Optional[int]) -> str:
    if n is None:
        return "?"
    if abs(n) < 10_000:
        return str(n)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _fmt_ms(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.4f}"


def _ratio(after: Optional[float], before: Optional[float]) -> Optional[float]:
    if after is None or before is None or before == 0:
        return None
    return after / before


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int,
           footer: Sequence[Sequence[str]] = ()) -> List[str]:
    """Aligned text table: the first `left` columns left-aligned (names), the rest right-aligned (numbers)."""
    allrows = [list(header)] + [list(r) for r in rows] + [list(r) for r in footer]
    widths = [max(len(r[i]) for r in allrows) for i in range(len(header))]

    def line(r):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [line(header), rule] + [line(r) for r in rows]
    if footer:
        out += [rule] + [line(r) for r in footer]
    return out


@dataclass
class ProfileReport:
    """What :func:`profile` measured: ``rows`` (one LayerProfile per leaf module, in module order),
    ``totals``, ``settings`` (warmup, iters, threads, device, torch version) and ``notes``."""
    rows: List[LayerProfile]
    totals: ProfileTotals
    settings: Dict[str, Any]
    notes: List[str] = field(default_factory=list)

    def layer(self, name: str) -> LayerProfile:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no layer named {name!r} in this profile")

    def to_dict(self) -> Dict[str, Any]:
        """Plain dicts, lists and numbers (json.dumps-able)."""
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["output_shape"] = None if r.output_shape is None else list(r.output_shape)
            rows.append(d)
        return {"rows": rows, "totals": asdict(self.totals), "settings": dict(self.settings), "notes": list(self.notes)}

    def compare(self, other: "ProfileReport") -> "ProfileComparison":
        """``before.compare(after)``: ratios after/before; see :func:`compare_profiles`."""
        return compare_profiles(self, other)

    def __str__(self) -> str:
        header = ("layer", "type", "params", "size", "output", "MACs", "FLOPs", "int8", "calls", "ms")
        body = [(r.name, r.type, _fmt_count(r.params), _fmt_bytes(r.bytes),
                 "x".join(map(str, r.output_shape)) if r.output_shape is not None else "-",
                 _fmt_count(r.macs), _fmt_count(r.flops), "int8" if r.int8 else "", str(r.calls),
                 _fmt_ms(r.latency_ms)) for r in self.rows]
        t = self.totals
        unc = f" (+{len(t.uncounted)} uncounted)" if t.uncounted else ""
        foot = [("total", f"{len(self.rows)} layers", _fmt_count(t.params), _fmt_bytes(t.bytes), "",
                 _fmt_count(t.macs) + unc, _fmt_count(t.flops) + unc,
                 _fmt_count(t.int8_macs) if t.int8_macs else "", "", _fmt_ms(t.layer_latency_ms))]
        s = self.settings
        lines = _table(header, body, left=2, footer=foot)
        lines.append(f"total latency (whole forward, no hooks): median {t.latency_ms:.4f} ms, "
                     f"p90 {t.latency_p90_ms:.4f} ms "
                     f"over {s['iters']} iters after {s['warmup']} warm-up, {s['threads']} thread(s), {s['device']}")
        lines.append("ms column: per-layer median with timing hooks; functional ops between layers are not in it")
        if t.total_flops_flopcounter is not None:
            lines.append(f"cross-check: torch FlopCounterMode {_fmt_count(t.total_flops_flopcounter)} FLOPs in aten "
                         f"matmul/conv ops vs 2 * float MACs here {_fmt_count(2 * (t.macs - t.int8_macs))}")
        lines += [f"note: {r.name}: {r.note}" for r in self.rows if r.note]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class LayerComparison:
    name: str
    type_before: Optional[str]   # None: the layer is only in one of the two profiles
    type_after: Optional[str]
    params_ratio: Optional[float]
    bytes_ratio: Optional[float]
    macs_ratio: Optional[float]
    latency_ratio: Optional[float]


@dataclass
class ProfileComparison:
    """Ratios after/before (0.5 = halved); ``speedup`` is before/after median latency."""
    ratios: Dict[str, Optional[float]]
    speedup: Optional[float]
    layers: List[LayerComparison]

    def to_dict(self) -> Dict[str, Any]:
        return {"ratios": dict(self.ratios), "speedup": self.speedup, "layers": [asdict(l) for l in self.layers]}

    def __str__(self) -> str:
        def f(x):
            return "-" if x is None else f"{x:.3f}"
        header = ("layer", "before", "after", "params", "size", "MACs", "ms")
        body = [(l.name, l.type_before or "-", l.type_after or "-", f(l.params_ratio), f(l.bytes_ratio),
                 f(l.macs_ratio), f(l.latency_ratio)) for l in self.layers]
        r = self.ratios
        foot = [("total", "", "", f(r["params"]), f(r["bytes"]), f(r["macs"]), f(r["latency_ms"]))]
        lines = ["ratios after/before"] + _table(header, body, left=3, footer=foot)
        lines.append(f"FLOPs ratio {f(r['flops'])}, p90 latency ratio {f(r['latency_p90_ms'])}, "
                     f"speedup (median) {f(self.speedup)}x")
        return "\n".join(lines)


def compare_profiles(before: ProfileReport, after: ProfileReport) -> ProfileComparison:
    """Ratios after/before of params, bytes, MACs, FLOPs and latency, in total and per layer
    (layers matched by name, so in-place pruning or quantization lines up)."""
    for arg, rep in (("before", before), ("after", after)):
        if not isinstance(rep, ProfileReport):
            raise TypeError(f"{arg} must be a ProfileReport, got {type(rep).__name__}")
    tb, ta = before.totals, after.totals
    ratios = {k: _ratio(getattr(ta, k), getattr(tb, k))
              for k in ("params", "bytes", "macs", "flops", "latency_ms", "latency_p90_ms")}
    rows_b, rows_a = {r.name: r for r in before.rows}, {r.name: r for r in after.rows}
    names = list(rows_b) + [n for n in rows_a if n not in rows_b]

    def get(row: Optional[LayerProfile], key: str):
        return None if row is None else getattr(row, key)
    layers = []
    for name in names:
        b, a = rows_b.get(name), rows_a.get(name)
        layers.append(LayerComparison(name, get(b, "type"), get(a, "type"),
                                      *(_ratio(get(a, k), get(b, k)) for k in ("params", "bytes", "macs", "latency_ms"))))
    return ProfileComparison(ratios, _ratio(tb.latency_ms, ta.latency_ms), layers)


# ----------------------------------------------------------------------------------------------
# profile()

def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not is_integer(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _leaves(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Modules without children, plus KNOWN_LEAVES and parametrized modules (a masked layer: its
    parametrizations are children), whose children are then skipped, in module order."""
    def whole(m: nn.Module) -> bool:
        return isinstance(m, KNOWN_LEAVES) or parametrize.is_parametrized(m)

    if whole(model) or not any(True for _ in model.children()):
        return [("(model)", model)]
    out, covered = [], []
    for name, m in model.named_modules():
        if not name or any(name.startswith(p) for p in covered):
            continue
        if whole(m):
            covered.append(name + ".")
            out.append((name, m))
        elif not any(True for _ in m.children()):
            out.append((name, m))
    return out


def _percentile(xs: Sequence[float], q: float) -> float:
    # Linear interpolation between order statistics (numpy's default), so small iters still work.
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _count_pass(model, inputs, leaves):
    """One forward with shape hooks: per leaf (calls, first output shape, MACs, FLOPs, error note)."""
    stats = [{"calls": 0, "shape": None, "macs": 0, "flops": 0, "note": ""} for _ in leaves]

    def make_hook(i, module):
        counter, base = _counter_for(module)

        def hook(mod, args, kwargs, output):
            st = stats[i]
            st["calls"] += 1
            out = _first_tensor(output)
            if st["shape"] is None and out is not None:
                st["shape"] = tuple(out.shape)
            if st["macs"] is None:
                return
            if counter is None:
                st["macs"] = st["flops"] = None
                st["note"] = f"no MAC/FLOP formula for {type(mod).__name__}; not counted"
                return
            try:
                macs, flops = counter(mod, args, kwargs, out)
            except Exception as e:  # a formula must never stop the profile; say what went wrong
                st["macs"] = st["flops"] = None
                st["note"] = f"MAC formula for {base.__name__} failed ({type(e).__name__}: {e}); not counted"
                return
            st["macs"] += int(macs)
            st["flops"] += int(flops)
            if base is not type(mod) and not st["note"]:
                st["note"] = f"counted as {base.__name__}"
        return hook

    handles = [m.register_forward_hook(make_hook(i, m), with_kwargs=True) for i, (_, m) in enumerate(leaves)]
    try:
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return stats


def _time_total(model, inputs, warmup, iters, sync) -> List[float]:
    times = []
    for it in range(warmup + iters):
        sync()
        t0 = time.perf_counter()
        model(*inputs)
        sync()
        if it >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _time_layers(model, inputs, leaves, warmup, iters, sync) -> List[List[float]]:
    """Per leaf, its time per forward (ms, summed over calls) for each of the `iters` timed forwards."""
    acc = [0.0] * len(leaves)
    start = [0.0] * len(leaves)
    samples: List[List[float]] = [[] for _ in leaves]

    def pre(i):
        def hook(mod, args):
            sync()
            start[i] = time.perf_counter()
        return hook

    def post(i):
        def hook(mod, args, output):
            sync()
            acc[i] += time.perf_counter() - start[i]
        return hook

    handles = []
    for i, (_, m) in enumerate(leaves):
        handles.append(m.register_forward_pre_hook(pre(i)))
        handles.append(m.register_forward_hook(post(i)))
    try:
        for it in range(warmup + iters):
            acc[:] = [0.0] * len(leaves)
            model(*inputs)
            if it >= warmup:
                for i, a in enumerate(acc):
                    samples[i].append(a * 1e3)
    finally:
        for h in handles:
            h.remove()
    return samples


def _flopcounter_total(model, inputs) -> Tuple[Optional[int], str]:
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None, "torch.utils.flop_counter is not available in this torch; no FlopCounterMode cross-check"
    try:
        # no_grad, not inference_mode: under inference_mode torch's counter fails on parametrized layers
        # (a masked model: "'ParametrizedLinear' object has no attribute 'weight'").
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(*inputs)
        return int(fc.get_total_flops()), ""
    except Exception as e:  # the cross-check is optional; the profile stands without it
        return None, f"FlopCounterMode failed on this model ({type(e).__name__}: {e}); no cross-check"


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def profile(model: nn.Module, example_inputs, *, warmup: int = 5, iters: int = 50,
            threads: Optional[int] = None) -> ProfileReport:
    """Profiles ``model(*example_inputs)``: per leaf module its parameters, bytes, output shape,
    MACs, FLOPs (conventions in this module's docstring), int8 flag and median latency; in total
    the whole forward's median and p90 latency, measured separately without hooks.

    example_inputs: a tensor or a tuple of tensors. warmup: untimed forwards before each timed
    series (>= 0). iters: timed forwards (>= 1). threads: torch intra-op threads while profiling
    (default: leave as is). Runs under torch.inference_mode() with the model in eval mode; each
    module's training flag and the thread count are restored afterwards, also on error.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, Tensor):
        inputs: Tuple[Tensor, ...] = (example_inputs,)
    elif isinstance(example_inputs, tuple):
        inputs = example_inputs
        if not inputs:
            raise ValueError("example_inputs must be a tensor or a non-empty tuple of tensors, got ()")
        bad = [f"[{i}]: {type(x).__name__}" for i, x in enumerate(inputs) if not isinstance(x, Tensor)]
        if bad:
            raise TypeError(f"example_inputs must be a tensor or a tuple of tensors; not tensors: {', '.join(bad)}")
    else:
        hint = " (pass a tuple: it is unpacked as model(*example_inputs))" if isinstance(example_inputs, list) else ""
        raise TypeError(f"example_inputs must be a tensor or a tuple of tensors, "
                        f"got {type(example_inputs).__name__}{hint}")
    _check_int("warmup", warmup, 0)
    _check_int("iters", iters, 1)
    _check_int("threads", threads, 1, allow_none=True)

    devices = sorted({t.device.type for t in inputs} | {p.device.type for p in model.parameters()})
    # Asynchronous devices must finish before a clock is read; the CPU needs nothing.
    sync = torch.cuda.synchronize if "cuda" in devices else (lambda: None)
    leaves = _leaves(model)

    modes = [(m, m.training) for m in model.modules()]
    old_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        model.eval()
        with torch.inference_mode():
            counts = _count_pass(model, inputs, leaves)
            total_ms = _time_total(model, inputs, warmup, iters, sync)
            layer_ms = _time_layers(model, inputs, leaves, warmup, iters, sync)
        fc_flops, fc_note = _flopcounter_total(model, inputs)
        used_threads = torch.get_num_threads()
    finally:
        for m, was_training in modes:
            m.training = was_training
        if threads is not None:
            torch.set_num_threads(old_threads)

    rows = []
    for (name, m), st, ms in zip(leaves, counts, layer_ms):
        notes = [st["note"]]
        if st["calls"] == 0:
            notes = ["not called in this forward"]
        elif st["calls"] > 1:
            notes.append(f"called {st['calls']}x per forward: MACs, FLOPs and ms summed")
        if isinstance(m, Int8Linear) and not _int8_math(m):
            notes.append("int8 weights, float math (w8_only)")
        note = "; ".join(x for x in notes if x)
        rows.append(LayerProfile(
            name=name, type=type(m).__name__,
            params=sum(p.numel() for p in m.parameters()) + sum(_logical_params(x) for x in m.modules()),
            bytes=_tensor_bytes(m.parameters()) + _tensor_bytes(m.buffers()),
            output_shape=st["shape"], macs=st["macs"], flops=st["flops"], int8=_int8_math(m),
            latency_ms=statistics.median(ms) if st["calls"] else None, calls=st["calls"], note=note))

    counted = [r for r in rows if r.macs is not None]
    totals = ProfileTotals(
        params=sum(p.numel() for p in model.parameters()) + sum(_logical_params(m) for m in model.modules()),
        bytes=_tensor_bytes(model.parameters()) + _tensor_bytes(model.buffers()),
        macs=sum(r.macs for r in counted), flops=sum(r.flops for r in counted),
        int8_macs=sum(r.macs for r in counted if r.int8),
        latency_ms=statistics.median(total_ms), latency_p90_ms=_percentile(total_ms, 0.9),
        layer_latency_ms=sum(r.latency_ms for r in rows if r.latency_ms is not None),
        total_flops_flopcounter=fc_flops, uncounted=[r.name for r in rows if r.macs is None])

    notes = [fc_note] if fc_note else []
    # Parameters owned directly by a container (not by a leaf) are in the totals but in no row.
    leaf_ids = {id(m) for _, m in leaves}
    inside = {id(x) for _, m in leaves for x in m.modules()}
    orphans = sum(p.numel() for m in model.modules() if id(m) not in leaf_ids and id(m) not in inside
                  for p in m.parameters(recurse=False))
    if orphans:
        notes.append(f"{orphans} parameters belong to non-leaf modules: in the totals, in no row")
    settings = {"warmup": warmup, "iters": iters, "threads": used_threads, "device": ",".join(devices) or "cpu",
                "torch": torch.__version__}
    return ProfileReport(rows, totals, settings, notes)


__all__ = ["profile", "ProfileReport", "LayerProfile", "ProfileTotals", "compare_profiles", "ProfileComparison",
           "LayerComparison", "KNOWN_LEAVES"]
