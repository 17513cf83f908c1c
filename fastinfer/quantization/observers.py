"""Activation observers for static int8 quantization: each streams batches and proposes a symmetric
per-tensor clipping threshold ``amax`` and scale ``amax / 127`` (int8 codes -127..127).

* MinMaxObserver:     amax = max |x| over every value seen.
* PercentileObserver: amax = the p-th percentile of |x| (default 99.99), read from a histogram.
* MSEObserver:        amax = the threshold T minimizing the expected squared error of int8
                      rounding (|x| <= T) plus clipping (|x| > T), estimated from a histogram.

Histogram observers keep a fixed number of bins over [0, hi]. hi starts at the first batch's max;
when a batch exceeds it, hi grows by the smallest integer factor k that covers the new max and
every k adjacent bins merge into one. New bins are exact unions of old ones (nothing is
interpolated), and the observed max always lies in the upper half of [0, hi], so at least half of
the bins resolve the data.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .._args import check_number
from ..nn._common import MIN_SCALE

QMAX = 127  # symmetric int8: codes -127..127, so that -x quantizes to -q(x)


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
    """Base of the histogram observers: counts of |x| in ``bins`` equal bins over [0, hi] (float64,
    on the CPU), plus the number of exact zeros (rounding leaves them exact)."""

    def __init__(self, bins: int = 2048, name: Optional[str] = None):
        if not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an int >= 2, got {bins!r}")
        self.bins = bins
        super().__init__(name)

    def reset(self) -> None:
        super().reset()
        self.hist: Optional[Tensor] = None
        self.hi = 0.0
        self.zeros = 0

    def _update(self, a: Tensor, m: float) -> None:
        if a.dtype != torch.float32:
            # The histogram is built in float32 (histc's own precision), and hi is a float32 value,
            # so every value, rounded to float32, lands in [0, hi] and none is dropped by histc.
            a = a.float()
            m = float(a.max())
        n = a.numel()
        self.zeros += int((a == 0).sum())
        if m == 0:
            if self.hist is not None:
                self.hist[0] += n
            return  # all zeros before the first non-zero value: counted by count - (values in hist)
        if self.hist is None:
            self.hi = float(a.max())
            self.hist = torch.zeros(self.bins, dtype=torch.float64)
            self.hist[0] += self.count - n  # the zeros seen so far
        elif m > self.hi:
            k = math.ceil(m / self.hi)
            while _float32_at_least(k * self.hi) < m:  # guard the float division
                k += 1
            merged = torch.zeros(self.bins, dtype=torch.float64)
            # k >= bins (a batch bins times larger than all before it): every old bin lands in the first.
            merged.index_add_(0, torch.arange(self.bins) // min(k, self.bins), self.hist)
            self.hist, self.hi = merged, _float32_at_least(self.hi * k)
        if self.hi * self.bins < 1e38:
            self.hist += torch.histc(a, bins=self.bins, min=0.0, max=self.hi).to("cpu", torch.float64)
        else:  # histc scales x by bins / max in float32, which overflows here: bin x / hi in [0, 1] instead
            self.hist += torch.histc(a / self.hi, bins=self.bins, min=0.0, max=1.0).to("cpu", torch.float64)

    @property
    def bin_width(self) -> float:
        return self.hi / self.bins


def _float32_at_least(v: float) -> float:
    """The smallest float32 value >= v (histc takes its range as float32; rounding it down could
    drop the largest values). The 1-ulp change of bin width against the merged bins is negligible."""
    f = torch.tensor(v, dtype=torch.float32)
    if float(f) < v:
        f = torch.nextafter(f, torch.tensor(math.inf, dtype=torch.float32))
    return float(f)


class PercentileObserver(HistogramObserver):
    """amax = the ``percentile``-th percentile of |x| over all batches, e.g. 99.99 clips the largest
    0.01% of magnitudes. Read from the histogram: the first bin where the cumulative count reaches
    percentile/100 * count, interpolated linearly inside that bin, and never above the exact max
    (so percentile=100 gives the max)."""

    def __init__(self, percentile: float = 99.99, bins: int = 2048, name: Optional[str] = None):
        if not 0 < check_number("percentile", percentile) <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
        self.percentile = float(percentile)
        super().__init__(bins, name)

    def _amax(self) -> float:
        if self.hist is None:
            return 0.0
        target = self.percentile / 100.0 * self.count
        cdf = torch.cumsum(self.hist, 0)
        idx = min(int(torch.searchsorted(cdf, torch.tensor([target], dtype=torch.float64))[0]), self.bins - 1)
        below = float(cdf[idx - 1]) if idx > 0 else 0.0
        in_bin = float(self.hist[idx])
        frac = min(max((target - below) / in_bin, 0.0), 1.0) if in_bin > 0 else 1.0
        return min((idx + frac) * self.bin_width, self.max)

    def __repr__(self) -> str:
        return f"PercentileObserver(percentile={self.percentile}, name={self.name!r}, count={self.count})"


class MSEObserver(HistogramObserver):
    """amax = argmin over T of the expected squared error of quantizing |x| with threshold T:

        MSE(T) = (n_below(T) - n_zero) * D^2 / 12  +  sum over |x| > T of (|x| - T)^2,   D = T / 127

    the first term is uniform rounding noise of step D for the non-zero values inside the range
    (exact zeros stay exact), the second the clipping error. Candidates T are the bin edges below
    the observed max, and the max itself (no clipping). Inside a bin, values are taken as uniform
    over it (the last bin ends at the max), so a bin [lo, hi] above T with count c contributes
    c * ((mid - T)^2 + (hi - lo)^2 / 12). The sums are suffix sums, so all candidates cost O(bins).
    Uniform data gives T close to the max (~ max / (1 + 1/254)); heavy tails give T well below it.
    """

    def _amax(self) -> float:
        if self.hist is None:
            return 0.0
        w = self.bin_width
        n_used = int(torch.nonzero(self.hist).max()) + 1   # up to the last non-empty bin
        c = self.hist[:n_used]
        lo = torch.arange(n_used, dtype=torch.float64) * w
        hi = torch.clamp(lo + w, max=self.max)
        mid, var = (lo + hi) / 2, (hi - lo) ** 2 / 12
        # Suffix sums over bins i >= j, for candidate T = j * w, j = 1 .. n_used - 1.
        def suffix(v: Tensor) -> Tensor:
            return torch.flip(torch.cumsum(torch.flip(v, [0]), 0), [0])
        s0, s1, s2 = suffix(c), suffix(c * mid), suffix(c * (mid ** 2 + var))
        j = torch.arange(1, n_used, dtype=torch.long)
        t = j.to(torch.float64) * w
        nonzero_below = (self.count - s0[j]) - self.zeros
        rounding = nonzero_below.clamp(min=0) * (t / QMAX) ** 2 / 12
        clipping = (s2[j] - 2 * t * s1[j] + t ** 2 * s0[j]).clamp(min=0)
        mse = rounding + clipping
        mse_at_max = (self.count - self.zeros) * (self.max / QMAX) ** 2 / 12
        if mse.numel() == 0 or mse_at_max <= float(mse.min()):
            return self.max
        return float(t[int(torch.argmin(mse))])


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver}


def make_observer(kind: str, name: Optional[str] = None, **kwargs) -> Observer:
    """An observer by name: 'minmax', 'percentile' or 'mse' (kwargs go to its constructor)."""
    if kind not in OBSERVERS:
        raise ValueError(f"observer must be one of {tuple(OBSERVERS)}, got {kind!r}")
    return OBSERVERS[kind](name=name, **kwargs)


__all__ = ["Observer", "MinMaxObserver", "HistogramObserver", "PercentileObserver", "MSEObserver", "OBSERVERS",
           "make_observer", "QMAX"]
