"""Static quantization's activation observers: how good a threshold each picks, and what observing costs.

    python benchmarks/bench_observers.py [--threads 2] [--n 1000000] [--batches 4] [--json out.json]

For each distribution (Gaussian, Laplace, Student-t 1.5, log-normal sigma 2, post-ReLU Gaussian, and the
README's far outlier: 1000 beside N(0, 0.001)), fed to every observer in --batches batches, one run gives:
  percentile  fastinfer's PercentileObserver(99.99) against the sample quantile (torch.quantile on all the
              data): relative error.
  mse         the real mean squared error of int8 fake-quantization (codes -127..127) at the threshold
              fastinfer's MSEObserver picks, against the best threshold of a brute-force search (600
              log-spaced thresholds from max / 10^5 to max, on the real samples), and against torch.ao's
              HistogramObserver (per-tensor symmetric qint8; its own scale and -128..127 codes), the
              observer torch's static quantization workflow defaults to. Ratios: error / best (1.00 = the best).
  minmax      the same error at max |x| (what MinMaxObserver picks), for scale.
And the time of one observe() of a batch (median of 5) for ours and torch.ao's HistogramObserver.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Callable, Dict, List

import torch

from common import machine_info, write_json
from fastinfer.quantization.observers import QMAX, MSEObserver, PercentileObserver


def distributions(n: int, g: torch.Generator) -> Dict[str, Callable[[], torch.Tensor]]:
    return {
        "gauss": lambda: torch.randn(n, generator=g),
        "laplace": lambda: torch.log(torch.rand(n, generator=g) / torch.rand(n, generator=g)),
        "student-t 1.5": lambda: torch.randn(n, generator=g) / torch.rand(n, generator=g) ** (1 / 1.5),
        "lognormal 2": lambda: torch.exp(torch.randn(n, generator=g) * 2) * torch.sign(torch.randn(n, generator=g)),
        "relu gauss": lambda: torch.relu(torch.randn(n, generator=g)),
        "far outlier": lambda: torch.cat([torch.randn(n - 1, generator=g) * 1e-3, torch.tensor([1000.0])]),
    }


def int8_error(x: torch.Tensor, scale: float, qmin: int, qmax: int) -> float:
    """Mean squared error of fake-quantizing x with a symmetric scale onto codes qmin..qmax."""
    return float(((torch.clamp(torch.round(x / scale), qmin, qmax) * scale - x) ** 2).mean())


def torch_ao_histogram():
    from torch.ao.quantization import HistogramObserver
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return HistogramObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)


def feed(obs, batch: torch.Tensor) -> None:
    """One batch into one of ours (observe) or a torch.ao observer (a module: called)."""
    if hasattr(obs, "observe"):
        obs.observe(batch)
    else:
        obs(batch)


def observe_ms(make, batch: torch.Tensor, repeats: int = 5) -> float:
    obs = make()
    feed(obs, batch)  # warm-up, and a first range
    times: List[float] = []
    scale = 1.0
    for _ in range(repeats):
        scale *= 1.5  # a wider range each time: the histograms' growth paths run too
        b = batch * scale
        t0 = time.perf_counter()
        feed(obs, b)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=1_000_000, help="values per distribution")
    p.add_argument("--batches", type=int, default=4, help="batches the values are observed in")
    p.add_argument("--json", help="write the rows and machine info here")
    args = p.parse_args()
    if not 2 <= args.n <= 16_000_000:  # torch.quantile's input limit
        p.error(f"--n must be from 2 to 16000000, got {args.n}")
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    print(f"{'data':14s} {'p99.99 err':>10s} {'mse ours':>9s} {'torch.ao':>9s} {'minmax':>9s} "
          f"{'observe ms ours':>15s} {'torch.ao':>9s}")
    for name, make_data in distributions(args.n, g).items():
        x = make_data()
        batches = list(x.chunk(args.batches))
        ours_p, ours_m, ao = PercentileObserver(99.99), MSEObserver(), torch_ao_histogram()
        for b in batches:
            for obs in (ours_p, ours_m, ao):
                feed(obs, b)
        want_p = float(torch.quantile(x.abs().double(), 0.9999))
        amax = float(x.abs().max())
        best = min(int8_error(x, t / QMAX, -QMAX, QMAX) for t in torch.logspace(-5, 0, 600).mul(amax).tolist())
        ao_scale = float(ao.calculate_qparams()[0])
        row = {
            "data": name, "n": x.numel(), "batches": args.batches,
            "percentile_rel_err": abs(ours_p.amax() - want_p) / want_p,
            "mse_ours": int8_error(x, ours_m.scale(), -QMAX, QMAX) / best,
            "mse_torch_ao_histogram": int8_error(x, ao_scale, -128, 127) / best,
            "minmax": int8_error(x, amax / QMAX, -QMAX, QMAX) / best,
            "best_mse": best,
            "observe_ms_ours": observe_ms(MSEObserver, batches[0]),
            "observe_ms_torch_ao": observe_ms(torch_ao_histogram, batches[0]),
        }
        rows.append(row)
        print(f"{name:14s} {row['percentile_rel_err']:10.2e} {row['mse_ours']:8.3f}x "
              f"{row['mse_torch_ao_histogram']:8.3f}x {row['minmax']:8.3f}x {row['observe_ms_ours']:15.2f} "
              f"{row['observe_ms_torch_ao']:9.2f}")
    print(f"(mse columns: the int8 error at each observer's threshold / the brute-force best; observe: one batch of "
          f"{batches[0].numel()} values, {args.threads} threads)")
    if args.json:
        write_json(args.json, {"machine": machine_info(args.threads), "rows": rows})


if __name__ == "__main__":
    main()
