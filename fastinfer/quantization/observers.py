"""Activation observers for static int8 quantization: each streams batches and proposes a symmetric
per-tensor clipping threshold ``amax`` and scale ``amax / 127`` (int8 codes -127..127).

* MinMaxObserver:     amax = max |x| over every value seen.
* PercentileObserver: amax = the p-th percentile of |x| (default 99.99), read from a histogram.
* MSEObserver:        amax = the threshold T minimizing the expected squared error of int8
                      rounding (|x| <= T) plus clipping (|x| > T), estimated from a histogram.

Histogram observers bin |x| by its float32 exponent and leading mantissa bits: 256 equal bins per
octave by default, the same bins for every batch, so batches add exactly and the resolution is
relative (within 0.4% of a value) at every magnitude: one outlier 10^6 times the rest does not hide
where the rest lies, as it would with bins of equal width over [0, max].
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .._args import check_number, is_integer
from ..nn._common import MIN_SCALE

QMAX = 127  # symmetric int8: codes -127..127, so that -x quantizes to -q(x)
_MANTISSA_BITS = 23           # float32
_MAX_BINS_PER_OCTAVE = 4096   # a batch's bin counts then take at most 255 * 4096 int64 (8 MB)
_FLOAT32_MAX = torch.finfo(torch.float32).max


class Observer:
    """Common API: ``observe(x)`` per batch, then ``amax()`` / ``scale()``; ``reset()`` starts over.

    Every batch is checked first: NaN or Inf raises ValueError naming the observer (``name``,
    set by calibrate to the layer) and counting the non-finite values; the batch is not recorded.
    ``amax()`` / ``scale()`` before any value was observed raise ValueError("no data observed").
    A stream of zeros gives amax 0 and scale 1.0 (any scale represents zeros exactly; 1.0 keeps
    1/scale finite).
    """

    def __init__(self, name: Optional[str] = None):
        self.name = name or type(self).__name__
        self.reset()

    def reset(self) -> None:
        self.count = 0          # values observed
        self.max = 0.0          # exact max |x| observed

    def observe(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{self.name}: observe() needs a tensor, got {type(x).__name__}")
        x = x.detach()
        if x.numel() == 0:
            return
        if not x.is_floating_point():
            x = x.float()  # |int8(-128)| would overflow in int8
        a = x.abs()
        m = float(a.max())  # max propagates NaN, so one reduction screens the common, finite case
        if not math.isfinite(m):
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"{self.name}: {bad} non-finite value(s) (NaN or Inf) in the observed data")
        if m > _FLOAT32_MAX:  # float64 data: the kernels' scales and arithmetic are float32
            bad = int((a > _FLOAT32_MAX).sum())
            raise ValueError(f"{self.name}: {bad} value(s) beyond float32's range (|x| > {_FLOAT32_MAX:.4g}) "
                             "in the observed data: int8 scales are float32")
        self.count += a.numel()
        self.max = max(self.max, m)
        self._update(a, m)

    def _update(self, a: Tensor, m: float) -> None:
        """Records ``a`` = |x| (finite, non-empty, max ``m``), after count and max were updated."""

    def amax(self) -> float:
        if self.count == 0:
            raise ValueError("no data observed")
        return self._amax()

    def _amax(self) -> float:
        raise NotImplementedError

    def scale(self) -> float:
        amax = self.amax()
        # Activations below float32's normal range still get a scale the kernels accept (MIN_SCALE).
        return max(amax / QMAX, MIN_SCALE) if amax > 0 else 1.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, count={self.count})"


class MinMaxObserver(Observer):
    """amax = max |x| over all batches (nothing is clipped; one outlier sets the scale)."""

    def _amax(self) -> float:
        return self.max


class HistogramObserver(Observer):
    """Base of the histogram observers: counts of |x| in bins of equal relative width, ``bins_per_octave``
    equal bins in each octave [2^e, 2^(e+1)) (256: a bin is at most 0.4% of its values), plus the number of
    exact zeros (rounding leaves them exact).

    A bin is a float32 magnitude's exponent and the top log2(bins_per_octave) bits of its mantissa: the top
    bits of its bit pattern. So binning is a shift, bins are the same for every batch (batches add, never
    rebin), and the resolution is relative at every magnitude: values far below an outlier are resolved as
    finely as the outlier. Counts are kept (float64, on the CPU) for the span of bins seen so far."""

    def __init__(self, bins_per_octave: int = 256, name: Optional[str] = None):
        if (not is_integer(bins_per_octave) or not 1 <= bins_per_octave <= _MAX_BINS_PER_OCTAVE
                or bins_per_octave & (bins_per_octave - 1)):
            raise ValueError(f"bins_per_octave must be a power of two from 1 to {_MAX_BINS_PER_OCTAVE}, "
                             f"got {bins_per_octave!r}")
        self.bins_per_octave = int(bins_per_octave)
        self._shift = _MANTISSA_BITS - (self.bins_per_octave.bit_length() - 1)
        super().__init__(name)

    def reset(self) -> None:
        super().reset()
        self.hist: Optional[Tensor] = None  # counts of bins first_bin, first_bin + 1, ... (non-zero values)
        self.first_bin = 0
        self.zeros = 0

    def _update(self, a: Tensor, m: float) -> None:
        zeros = int((a == 0).sum())
        self.zeros += zeros
        if m == 0:
            return
        if a.dtype != torch.float32:  # bf16/fp16 widen exactly, float64 rounds (observe refused what overflows)
            a = a.float()
        # |x| >= 0, so the sign bit is clear and the bit pattern orders like the value.
        counts = torch.bincount(a.reshape(-1).view(torch.int32) >> self._shift)
        counts[0] -= zeros  # exact zeros are bit pattern 0: counted apart
        lo = int(counts.nonzero()[0, 0])
        counts = counts[lo:].to("cpu", torch.float64)
        if self.hist is None:
            self.hist, self.first_bin = counts, lo
            return
        first = min(self.first_bin, lo)
        end = max(self.first_bin + self.hist.numel(), lo + counts.numel())
        merged = torch.zeros(end - first, dtype=torch.float64)
        merged[self.first_bin - first:self.first_bin - first + self.hist.numel()] += self.hist
        merged[lo - first:lo - first + counts.numel()] += counts
        self.hist, self.first_bin = merged, first

    def bin_edges(self) -> Tensor:
        """The edges of the histogram's bins (float64, one more than bins): bin i holds |x| in
        [edges[i], edges[i + 1])."""
        i = torch.arange(self.first_bin, self.first_bin + self.hist.numel() + 1, dtype=torch.int64) << self._shift
        return i.to(torch.int32).view(torch.float32).to(torch.float64)


class PercentileObserver(HistogramObserver):
    """amax = the ``percentile``-th percentile of |x| over all batches, e.g. 99.99 clips the largest
    0.01% of magnitudes. Read from the histogram: the first bin where the cumulative count reaches
    percentile/100 * count, interpolated linearly inside that bin, and never above the exact max
    (so percentile=100 gives the max). Where the percentile falls among exact zeros (over
    percentile% of the values are 0), amax is the top of the lowest non-zero bin: the smallest
    non-zero magnitudes then keep a code, where a scale for 0 would leave them none."""

    def __init__(self, percentile: float = 99.99, bins_per_octave: int = 256, name: Optional[str] = None):
        if not 0 < check_number("percentile", percentile) <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
        self.percentile = float(percentile)
        super().__init__(bins_per_octave, name)

    def _amax(self) -> float:
        if self.hist is None:
            return 0.0
        edges = self.bin_edges()
        target = self.percentile / 100.0 * self.count - self.zeros  # among the non-zero values
        if target <= 0:
            return min(float(edges[1]), self.max)
        cdf = torch.cumsum(self.hist, 0)
        idx = min(int(torch.searchsorted(cdf, torch.tensor([target], dtype=torch.float64))[0]), cdf.numel() - 1)
        below = float(cdf[idx - 1]) if idx > 0 else 0.0
        in_bin = float(self.hist[idx])
        frac = min(max((target - below) / in_bin, 0.0), 1.0) if in_bin > 0 else 1.0
        lo, hi = float(edges[idx]), float(edges[idx + 1])
        return min(lo + frac * (hi - lo), self.max)

    def __repr__(self) -> str:
        return f"PercentileObserver(percentile={self.percentile}, name={self.name!r}, count={self.count})"


class MSEObserver(HistogramObserver):
    """amax = argmin over T of the expected squared error of quantizing |x| with threshold T, D = T / 127:

        MSE(T) = sum over 0 < |x| < D/2 of x^2  +  n(D/2 <= |x| <= T) * D^2 / 12
                 + sum over |x| > T of (|x| - T)^2

    values below half a step round to 0 (their error is themselves), the rest of the range gets uniform
    rounding noise of step D (exact zeros stay exact), and values above T are clipped. Candidates T are
    the bin edges below the observed max, and the max itself (no clipping; the max is then exact).
    Inside a bin, values are taken as uniform over it (the last bin ends at the max), so a bin [lo, hi]
    with count c contributes c * ((mid - T)^2 + (hi - lo)^2 / 12) above T and c * (mid^2 + (hi - lo)^2 / 12)
    below D/2 (a bin straddling D/2 counts as rounding noise). Prefix and suffix sums make all candidates
    cost O(bins log bins). Uniform data gives T close to the max (~ max / (1 + 1/254)); heavy tails give T
    well below it; a lone far outlier is kept (clipping it costs more than the bulk's rounding).
    """

    def _amax(self) -> float:
        if self.hist is None:
            return 0.0
        c = self.hist
        n = c.numel()
        edges = self.bin_edges().clamp(max=self.max)
        lo, hi = edges[:-1], edges[1:]
        mid, var = (lo + hi) / 2, (hi - lo) ** 2 / 12

        def suffix(v: Tensor) -> Tensor:  # [j] = the sum over bins i >= j, for j = 0 .. n (n: no bin, 0)
            return torch.cat([torch.flip(torch.cumsum(torch.flip(v, [0]), 0), [0]), v.new_zeros(1)])
        s0, s1, s2 = suffix(c), suffix(c * mid), suffix(c * (mid ** 2 + var))
        # Candidates: the max first (no clipping, and the max itself exact: its code is 127; first, so that a tie
        # keeps it), then T = lo[j] for j >= 1 below the max (lo[0] would clip every value). j = n: no bin above.
        j = torch.arange(1, n, dtype=torch.long)
        j = torch.cat([torch.tensor([n]), j[lo[j] < self.max]])
        t = torch.cat([torch.tensor([self.max], dtype=torch.float64), lo[j[1:]]])
        exact = torch.zeros_like(t)
        exact[0] = 1.0
        step = t / QMAX
        k = torch.searchsorted(hi, step / 2, right=True)  # bins [0, k) lie below half a step: they round to 0
        below = s0[0] - s0[j]  # the non-zero values below T (bins < j)
        rounding = (s2[0] - s2[k]) + (below - (s0[0] - s0[k]) - exact).clamp(min=0) * step ** 2 / 12
        clipping = (s2[j] - 2 * t * s1[j] + t ** 2 * s0[j]).clamp(min=0)
        return float(t[int(torch.argmin(rounding + clipping))])


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver}
# What calibrate and quantize(scheme="w8a8_static") use unless told: the least-error threshold (min-max keeps
# every outlier inside the range and spends the int8 steps on them; benchmarks/RESULTS.md, session 17).
DEFAULT_OBSERVER = "mse"


def make_observer(kind: str, name: Optional[str] = None, **kwargs) -> Observer:
    """An observer by name: 'minmax', 'percentile' or 'mse' (kwargs go to its constructor)."""
    if kind not in OBSERVERS:
        raise ValueError(f"observer must be one of {tuple(OBSERVERS)}, got {kind!r}")
    return OBSERVERS[kind](name=name, **kwargs)


__all__ = ["Observer", "MinMaxObserver", "HistogramObserver", "PercentileObserver", "MSEObserver", "OBSERVERS",
           "make_observer", "QMAX"]
