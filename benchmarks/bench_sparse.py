"""Sparse linear benchmark: fastinfer SparseLinear (fp32: csr16/csr8 by sparsity; int8: slot128, dynamic
W8A8) vs dense fp32 F.linear, torch's CSR (the faster of F.linear on a CSR weight and torch.sparse.mm),
and fastinfer's dense int8 Int8Linear (w8a8_dynamic), timed in the same run on a 4096x4096 weight.

    python benchmarks/bench_sparse.py [--threads 2] [--batches 1,8,128] [--sparsities 0.5,0.7,0.9,0.95,2:4]
                                      [--json out.json] [--min-time 0.3]
    python benchmarks/bench_sparse.py --device cuda [--json out.json]   (benchmarks/bench_sparse_cuda.py: 2:4 on Hopper)

Weights are random with magnitude pruning to each sparsity (the pattern does not matter to an
unstructured kernel; '2:4' keeps the 2 largest of every 4 consecutive inputs). Prints a table, the
issue #5 CPU targets computed from this run, and writes JSON rows
(op, impl, format, M, K, N, sparsity, threads, median_ms, p10_ms, p90_ms, speedup_vs_dense, nbytes).
"""
from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import fastinfer
from fastinfer.nn import Int8Linear, SparseLinear

from common import machine_info, time_call, write_json

K = N = 4096


def pruned_weight(pattern: str, gen: torch.Generator) -> torch.Tensor:
    w = torch.randn(N, K, generator=gen) * 0.02
    if pattern == "2:4":
        groups = w.abs().reshape(N, K // 4, 4)
        drop = groups.argsort(dim=2)[:, :, :2]  # the 2 smallest of each group of 4
        mask = torch.ones_like(groups, dtype=torch.bool).scatter_(2, drop, False)
        return w * mask.reshape(N, K)
    sparsity = float(pattern)
    k = int(round(sparsity * w.numel()))
    if k:
        thresh = w.abs().flatten().kthvalue(k).values
        w = torch.where(w.abs() <= thresh, torch.zeros_like(w), w)
    return w


def csr_best(x, w_csr, w_csr_t):
    # torch CSR: F.linear with a CSR weight, or sparse.mm(W, x^T)^T; the bench keeps the faster one.
    return {"F.linear(csr)": lambda: F.linear(x, w_csr), "sparse.mm(csr)": lambda: torch.sparse.mm(w_csr, x.t()).t()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,8,128")
    p.add_argument("--sparsities", default="0.5,0.7,0.9,0.95,2:4")
    p.add_argument("--json")
    p.add_argument("--min-time", type=float, default=0.3)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = p.parse_args(argv)
    if args.device == "cuda":
        import bench_sparse_cuda
        result = bench_sparse_cuda.run(args)
        if args.json:
            write_json(args.json, result)
        return
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)
    print(f"# {info['cpu']} | fastinfer ISA {info['isa_active']} | threads {args.threads} | torch {info['torch']} | "
          f"{info['date']} | weight {N}x{K}")
    gen = torch.Generator().manual_seed(0)
    bias = torch.randn(N, generator=gen) * 0.01
    rows, dense_ms = [], {}
    print(f"{'sparsity':>8} {'M':>4}  {'impl':<26} {'format':<10} {'median ms':>10} {'p10':>8} {'p90':>8} {'vs dense':>9}")
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's sparse CSR beta warning
        dense_w = torch.randn(N, K, generator=gen) * 0.02
        dense_lin = nn.Linear(K, N)
        dense_lin.weight.copy_(dense_w)
        dense_lin.bias.copy_(bias)
        dense_int8 = Int8Linear.from_float(dense_lin)
        for pattern in args.sparsities.split(","):
            w = pruned_weight(pattern, gen)
            lin = nn.Linear(K, N)
            lin.weight.copy_(w)
            lin.bias.copy_(bias)
            sp32, sp8 = SparseLinear.from_float(lin), SparseLinear.from_float(lin, torch.int8)
            w_csr = w.to_sparse_csr()
            actual = 1.0 - sp32.nnz / w.numel()
            for M in (int(b) for b in args.batches.split(",")):
                x = torch.randn(M, K, generator=gen)
                cases = {"dense fp32 F.linear": lambda: F.linear(x, dense_w, bias)}
                cases.update(csr_best(x, w_csr, None))
                cases.update({"fastinfer dense int8": lambda: dense_int8(x),
                              "fastinfer sparse fp32": lambda: sp32(x),
                              "fastinfer sparse int8": lambda: sp8(x)})
                timed = {name: time_call(fn, min_time_s=args.min_time) for name, fn in cases.items()}
                layers = {"fastinfer sparse fp32": sp32, "fastinfer sparse int8": sp8, "fastinfer dense int8": dense_int8}
                best_csr = min(("F.linear(csr)", "sparse.mm(csr)"), key=lambda n: timed[n]["median_ms"])
                base = timed["dense fp32 F.linear"]["median_ms"]
                dense_ms[(pattern, M)] = base
                for name, t in timed.items():
                    label = f"torch CSR {name}" + (" *" if name == best_csr else "") if "csr" in name else name
                    layer = layers.get(name)
                    fmt = getattr(layer, "format", "int8 n16k4" if layer is not None else "")
                    if layer is not None:  # what the layer stores (its buffers)
                        nbytes = sum(t.numel() * t.element_size() for t in layer.buffers())
                    else:
                        nbytes = K * N * 4 if "dense fp32" in name else None
                    row = {"op": "linear", "impl": label, "format": fmt, "M": M, "K": K, "N": N, "sparsity": pattern,
                           "actual_sparsity": actual, "threads": args.threads, **t, "speedup_vs_dense": base / t["median_ms"],
                           "nbytes": nbytes}
                    rows.append(row)
                    print(f"{pattern:>8} {M:>4}  {label:<26} {fmt:<10} {t['median_ms']:>10.4f} {t['p10_ms']:>8.4f} "
                          f"{t['p90_ms']:>8.4f} {row['speedup_vs_dense']:>8.2f}x")
                print()
    # Issue #5 CPU targets (fastinfer sparse fp32 vs dense fp32 unless noted).
    def sp(pattern, M, impl="fastinfer sparse fp32"):
        r = [r for r in rows if r["sparsity"] == pattern and r["M"] == M and r["impl"] == impl]
        return r[0]["speedup_vs_dense"] if r else None
    want = [("0.9", 1, 5.0), ("0.9", 8, 5.0), ("0.95", 1, 8.0), ("0.95", 8, 8.0), ("0.7", 1, 2.0), ("0.7", 8, 2.0),
            ("0.5", 1, 1.3), ("0.5", 8, 1.3)]
    targets = []
    for pattern, M, t in want:
        v = sp(pattern, M)
        if v is not None:
            targets.append((f"unstructured {pattern} batch {M}: sparse fp32 vs dense fp32", v, t))
    v = sp("0.9", 1, "fastinfer sparse int8")
    if v is not None:
        targets.append(("unstructured 0.9 batch 1: sparse int8 vs dense fp32", v, 10.0))
    print("targets (issue #5, CPU):")
    for name, v, t in targets:
        print(f"  {name:<58} {v:6.2f}x  (target >= {t:.1f}x)  {'met' if v >= t else 'MISSED'}")
    if args.json:
        write_json(args.json, {"machine": info, "rows": rows,
                               "targets": [{"name": n, "value": v, "target": t} for n, v, t in targets]})


if __name__ == "__main__":
    main()
