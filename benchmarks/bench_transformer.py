"""Whole transformer encoders built from torch's nn.TransformerEncoderLayer (nn.MultiheadAttention inside):
what quantizing the attention projections adds to quantizing the feed-forward layers.

    python benchmarks/bench_transformer.py [--threads 2] [--min-time 1.0] [--json out.json]

For each model and batch, timed in one run (eval, inference_mode, median of whole forwards):
  fp32              the float model, torch's fused fast path on (its fastest float form)
  int8 ffn only     fastinfer.quantize(w8a8_dynamic, exclude="*.self_attn.*"): linear1/linear2 int8, attention float
  int8 all          fastinfer.quantize(w8a8_dynamic): also q/k/v/out projections (SplitMultiheadAttention)
  int8 all w7       the same with weight_bits=7 (faster on AVX2-only CPUs)
  fuse + int8 all   fastinfer.fuse first (each layer's FFN activation into linear1: the GEMM's epilogue runs it),
                    then as "int8 all"
  torch.ao dynamic  torch.ao.quantization.quantize_dynamic on nn.Linear (it leaves attention's out_proj float; it
                    runs with torch's MHA fast path off: with the fast path its quantized encoder fails in eval)
Cosine similarity of each int8 output with fp32's is printed next to it. Speedups are over fp32.
--alternate N then times "int8 all" and "fuse + int8 all" call by call in turn (N calls each, the order
flipped every call) and prints the median of the paired ratios: how the two compare when neither runs
alone (glibc's malloc then maps large fp32 tensors anew, which the fused model allocates one fewer of a layer).
--tune-malloc calls fastinfer.tune_malloc() first (fixed glibc thresholds: every row, baselines included).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info, time_call, write_json  # noqa: E402

import fastinfer  # noqa: E402

# (name, d_model, heads, ffn, layers, sequence length)
MODELS = [("bert-small-like", 512, 8, 2048, 4, 128), ("vit-s16-like", 384, 6, 1536, 4, 197)]
BATCHES = (1, 8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timed forwards per case (at least)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--alternate", type=int, default=0, metavar="N",
                    help="also time 'int8 all' and 'fuse + int8 all' alternately, N calls each")
    ap.add_argument("--tune-malloc", action="store_true", help="fastinfer.tune_malloc() before anything runs")
    args = ap.parse_args()
    tuned = fastinfer.tune_malloc() if args.tune_malloc else False
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)
    print(f"# {info['cpu']} | fastinfer ISA {info['isa_active']} | threads {args.threads} | torch {info['torch']} "
          f"| {info['date']}{' | tune_malloc' if tuned else ''}")
    info["tune_malloc"] = tuned
    print(f"{'model':16} {'batch':>5}  {'impl':18} {'median ms':>10} {'p90':>9} {'speedup':>8} {'cosine':>8}")
    rows = []
    for name, d, heads, ffn, layers, seq in MODELS:
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(d, heads, ffn, batch_first=True, dropout=0.0, activation="gelu")
        enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()
        ffn_only = fastinfer.quantize(copy.deepcopy(enc), "w8a8_dynamic", exclude="*.self_attn.*")
        full = fastinfer.quantize(copy.deepcopy(enc), "w8a8_dynamic")
        full7 = fastinfer.quantize(copy.deepcopy(enc), "w8a8_dynamic", weight_bits=7)
        fused = fastinfer.quantize(fastinfer.fuse(enc), "w8a8_dynamic")
        assert fused.layers[0].linear1.activation == "gelu"
        assert isinstance(full.layers[0].self_attn.q_proj, fastinfer.nn.Int8Linear)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tao = torch.ao.quantization.quantize_dynamic(copy.deepcopy(enc), {nn.Linear}, dtype=torch.qint8)
        for batch in BATCHES:
            x = torch.randn(batch, seq, d)
            with torch.inference_mode():
                want = enc(x)
                cases = [("fp32", enc, True), ("int8 ffn only", ffn_only, True), ("int8 all", full, True),
                         ("int8 all w7", full7, True), ("fuse + int8 all", fused, True),
                         ("torch.ao dynamic", tao, False)]
                base = None
                for impl, model, fastpath in cases:
                    torch.backends.mha.set_fastpath_enabled(fastpath)
                    try:
                        cos = F.cosine_similarity(model(x).flatten(), want.flatten(), dim=0).item()
                        t = time_call(lambda: model(x), min_time_s=args.min_time, min_iters=5, warmup=2)
                    finally:
                        torch.backends.mha.set_fastpath_enabled(True)
                    base = base or t["median_ms"]
                    row = {"model": name, "batch": batch, "seq": seq, "d_model": d, "layers": layers, "impl": impl,
                           **t, "speedup_vs_fp32": base / t["median_ms"], "cosine_vs_fp32": cos}
                    rows.append(row)
                    print(f"{name:16} {batch:5d}  {impl:18} {t['median_ms']:10.3f} {t['p90_ms']:9.3f} "
                          f"{row['speedup_vs_fp32']:7.2f}x {cos:8.5f}")
                if args.alternate:
                    rows.append(alternate(name, batch, full, fused, x, args.alternate))
    if args.json:
        write_json(args.json, {"machine": info, "rows": rows})
    return 0


def alternate(name: str, batch: int, plain: nn.Module, fused: nn.Module, x: torch.Tensor, n: int) -> dict:
    """n forwards of each model in turn (which goes first flips every call): the median of the per-pair time
    ratios plain / fused, and each model's median."""
    times = {"plain": [], "fused": []}
    order = (("plain", plain), ("fused", fused))
    for _ in range(2):
        plain(x), fused(x)
    for i in range(n):
        for key, model in (order if i % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            model(x)
            times[key].append(time.perf_counter() - t0)
    ratio = statistics.median(p / f for p, f in zip(times["plain"], times["fused"]))
    plain_ms, fused_ms = (statistics.median(times[k]) * 1e3 for k in ("plain", "fused"))
    print(f"{name:16} {batch:5d}  alternating: int8 all {plain_ms:.3f} ms, fuse + int8 all {fused_ms:.3f} ms, "
          f"median paired ratio {ratio:.3f}x")
    return {"model": name, "batch": batch, "impl": "alternating int8 all / fuse + int8 all", "calls": n,
            "int8_all_median_ms": plain_ms, "fused_median_ms": fused_ms, "median_paired_ratio": ratio}


if __name__ == "__main__":
    sys.exit(main())
