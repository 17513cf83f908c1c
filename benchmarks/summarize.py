"""Merges repeated benchmark JSON runs into one markdown table (median over runs of each median).

    python benchmarks/summarize.py run1.json run2.json run3.json
"""
from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict

from common import check_target


def main(paths):
    runs = [json.load(open(p)) for p in paths]
    times = defaultdict(list)
    order = []
    for run in runs:
        for r in run["rows"]:
            key = (r["M"], r["K"], r["N"], r["impl"])
            if key not in times:
                order.append(key)
            times[key].append(r["median_ms"])
    m = runs[0]["machine"]
    peaks = [r["int8_peak_tops"] for r in runs if r.get("int8_peak_tops")]
    print(f"Machine: {m['cpu']} ({m['vendor']}), fastinfer ISA {m['isa_active']}, {m['threads']} threads, "
          f"torch {m['torch']}, {m['date']}; {len(runs)} runs, median of per-run medians.")
    if peaks:
        print(f"int8 instruction peak (int8_peak_probe, all threads): {statistics.median(peaks):.3f} TOPS\n")
    print("| M | K | N | impl | median ms | TOPS | runs (ms) |")
    print("|---:|---:|---:|---|---:|---:|---|")
    for key in order:
        M, K, N, impl = key
        med = statistics.median(times[key])
        print(f"| {M} | {K} | {N} | {impl} | {med:.4f} | {2 * M * N * K / (med * 1e-3) / 1e12:.3f} | "
              f"{', '.join(f'{t:.3f}' for t in times[key])} |")
    print("\n| issue | target | per run | median | target | status |")
    print("|---|---|---|---:|---:|---|")
    tv = defaultdict(list)
    meta = {}
    for run in runs:
        for t in run.get("targets", []):
            tv[t["name"]].append(t["value"])
            meta[t["name"]] = (t.get("issue", ""), t["target"], t.get("higher_is_better", True))
    for name, vals in tv.items():
        issue, want, higher = meta[name]
        med = statistics.median(vals)
        met, rel = check_target(med, want, higher)
        print(f"| {issue} | {name} | {', '.join(f'{v:.3f}' for v in vals)} | {med:.3f} | "
              f"{'-' if met is None else f'{rel} {want:.2f}'} | {'-' if met is None else ('met' if met else 'missed')} |")


if __name__ == "__main__":
    main(sys.argv[1:])
