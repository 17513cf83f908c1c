"""The AMX-INT8 tile GEMM: it serves calls on AMX machines, its shape bucket, tile edges (M, N, K that miss
the 32 x 32 x 64 blocking), the streamed fp32 output, thread-count changes, and a forced VNNI fallback.
Oracle: fastinfer.reference (pure PyTorch, int64 products); integer results and the fp32 epilogue are
bit-exact. The whole reference suite also runs on the amx tier (conftest's isa fixture)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import fastinfer
from fastinfer import ops
from fastinfer import reference as ref

from conftest import CAPS, runnable_isas

needs_amx = pytest.mark.skipif("amx" not in runnable_isas(),
                               reason=f"this CPU cannot run the AMX path ({CAPS.get('amx_note') or CAPS['detected']})")


def rand_i8(*shape):
    return torch.randint(-128, 128, shape, dtype=torch.int8)


@pytest.fixture
def amx_every_shape():
    """The amx path for every M (by default GEMMs of fewer than amx_min_rows rows take the VNNI kernel)."""
    previous = ops.set_amx_min_rows(1)
    try:
        with fastinfer.use_isa("amx") as active:
            assert active == "amx"
            yield
    finally:
        ops.set_amx_min_rows(previous)


def test_amx_is_implemented_and_reported():
    caps = fastinfer.cpu_capabilities()
    assert caps["implemented"] == "amx"
    if caps["detected"] == "amx":
        assert caps["active"] == "amx" and caps["os_amx"] and caps["amx_note"] == ""
    else:
        assert caps["amx_note"], "cpu_capabilities must say why AMX is not used"
    assert caps["amx_min_rows"] >= 1


@needs_amx
def test_amx_serves_by_default_and_small_m_takes_vnni():
    # The shape bucket: below amx_min_rows rows the VNNI kernel streams the weights; from there on, AMX.
    threshold = fastinfer.cpu_capabilities()["amx_min_rows"]
    b = rand_i8(64, 256)
    packed = ops.pack_int8_weight(b)
    for M, want in [(1, "avx512_vnni"), (threshold - 1, "avx512_vnni"), (threshold, "amx"), (200, "amx")]:
        if M < 1:
            continue
        a = rand_i8(M, 256)
        torch.testing.assert_close(ops.int8_mm(a, packed, 64), ref.int8_mm(a, b), rtol=0, atol=0)
        assert ops.last_kernel("int8_gemm") == want, (M, ops.last_kernel("int8_gemm"))


@needs_amx
@pytest.mark.parametrize("K", [1, 60, 64, 65, 252, 1000, 1024, 1088, 2052])
@pytest.mark.parametrize("N", [1, 16, 17, 33, 48, 96, 130])
def test_int8_mm_tile_edges(amx_every_shape, K, N):
    # K: below one tile step (64), exact steps, a tail of 1..15 quads; N: part of a 16-column block,
    # odd numbers of blocks (a single 16-column block in the last pair), several pairs.
    for M in (1, 15, 16, 17, 33, 47):
        a, b = rand_i8(M, K), rand_i8(N, K)
        torch.testing.assert_close(ops.int8_mm(a, ops.pack_int8_weight(b), N), ref.int8_mm(a, b), rtol=0, atol=0)
        assert ops.last_kernel("int8_gemm") == "amx"


@needs_amx
@pytest.mark.parametrize("M", list(range(1, 40)) + [63, 64, 65, 127, 128, 129, 255, 257, 300])
def test_int8_mm_m_sweep(amx_every_shape, M):
    # Fewer than 16 rows: the zero-padded copy; 17..31 and pass tails: shifted tile windows; > 128: passes.
    a, b = rand_i8(M, 200), rand_i8(70, 200)
    torch.testing.assert_close(ops.int8_mm(a, ops.pack_int8_weight(b), 70), ref.int8_mm(a, b), rtol=0, atol=0)


@needs_amx
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M,K,N", [(5, 64, 40), (40, 1000, 48), (130, 512, 1000), (1024, 256, 1024)])
def test_scaled_mm_fp_epilogue(amx_every_shape, M, K, N, out_dtype):
    # (1024, 256, 1024) fp32 is a 4 MiB output: the streamed (non-temporal) stores; N = 1000 leaves rows
    # that are not 64-byte aligned, so streamed and masked stores mix.
    a, b = rand_i8(M, K), rand_i8(N, K)
    a_scale, b_scale, bias = torch.rand(M) * 0.1 + 1e-3, torch.rand(N) * 0.1 + 1e-3, torch.randn(N)
    out = ops.int8_scaled_mm(a, a_scale, ops.pack_int8_weight(b), b_scale, bias, out_dtype)
    torch.testing.assert_close(out, ref.int8_scaled_mm(a, a_scale, b, b_scale, bias, out_dtype), rtol=0, atol=0)
    assert ops.last_kernel("int8_gemm") == "amx"


@needs_amx
@pytest.mark.parametrize("N", [1001, 1024])
def test_streamed_output_large_and_unaligned(amx_every_shape, N):
    # Outputs of 1 MiB and more take non-temporal stores where a row's 16 values fill an aligned line;
    # N = 1001 (a 4004-byte row stride) mixes them with ordinary masked stores.
    M, K = 1100, 128
    a, b = rand_i8(M, K), rand_i8(N, K)
    a_scale, b_scale = torch.rand(M), torch.rand(N)
    packed = ops.pack_int8_weight(b)
    out = ops.int8_scaled_mm(a, a_scale, packed, b_scale, None, torch.float32)
    torch.testing.assert_close(out, ref.int8_scaled_mm(a, a_scale, b, b_scale, None), rtol=0, atol=0)
    torch.testing.assert_close(ops.int8_mm(a, packed, N), ref.int8_mm(a, b), rtol=0, atol=0)


@needs_amx
@pytest.mark.parametrize("activation", ["none", "relu", "relu6"])
def test_linear_static_int8_out_and_activation(amx_every_shape, activation):
    M, K, N = 70, 300, 90
    x, w = torch.randn(M, K), torch.randint(-127, 128, (N, K), dtype=torch.int8)
    w_scale, bias = torch.rand(N) * 0.01, torch.randn(N)
    out = ops.int8_linear_static(x, 0.02, ops.pack_int8_weight(w), w_scale, bias, activation, 0.05)
    expect = ref.int8_linear_static(x, 0.02, w, w_scale, bias, activation, 0.05)
    torch.testing.assert_close(out, expect, rtol=0, atol=0)
    assert ops.last_kernel("int8_gemm") == "amx"


@needs_amx
def test_thread_count_changes_between_calls():
    # Tile state is configured per thread per call: a pool that grows or shrinks still runs correctly.
    a, b = rand_i8(300, 700), rand_i8(200, 700)
    packed, want = ops.pack_int8_weight(b), ref.int8_mm(a, b)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            torch.testing.assert_close(ops.int8_mm(a, packed, 200), want, rtol=0, atol=0)
            assert ops.last_kernel("int8_gemm") == "amx"
    finally:
        torch.set_num_threads(before)


@needs_amx
def test_interleaved_with_onednn_amx():
    # torch's oneDNN int8 kernels configure the same tile registers on the same threads; each library's
    # calls must still be right when the other ran in between (we load our config per call, and release).
    M, K, N = 64, 256, 96
    a, b = rand_i8(M, K), torch.randint(-127, 128, (N, K), dtype=torch.int8)
    packed, want = ops.pack_int8_weight(b), ref.int8_mm(a, b)
    xu = (a.to(torch.int16) + 128).to(torch.uint8)
    wp = torch.ops.onednn.qlinear_prepack(b, [M, K])
    ones = torch.ones(N)
    onednn = lambda: torch.ops.onednn.qlinear_pointwise(xu, 1.0, 128, wp, ones, torch.zeros(N, dtype=torch.long),  # noqa: E731
                                                        None, 1.0, 0, torch.float32, "none", [], "")
    od_want = onednn()
    torch.testing.assert_close(od_want, want.double().float(), rtol=0, atol=0)
    for _ in range(3):
        torch.testing.assert_close(ops.int8_mm(a, packed, N), want, rtol=0, atol=0)
        torch.testing.assert_close(onednn(), od_want, rtol=0, atol=0)


def test_set_amx_min_rows_checks_and_restores():
    with pytest.raises(ValueError, match="rows must be an int >= 1"):
        ops.set_amx_min_rows(0)
    with pytest.raises(ValueError, match="rows must be an int >= 1"):
        ops.set_amx_min_rows(2.5)
    previous = ops.set_amx_min_rows(40)
    try:
        assert fastinfer.cpu_capabilities()["amx_min_rows"] == 40
    finally:
        assert ops.set_amx_min_rows(previous) == 40


def _served_in_subprocess(env_extra, M):
    env = dict(os.environ, **env_extra)
    code = ("import json, torch, fastinfer; from fastinfer import ops, reference as ref;"
            f"a = torch.randint(-128, 128, ({M}, 300), dtype=torch.int8);"
            "b = torch.randint(-128, 128, (40, 300), dtype=torch.int8);"
            "ok = torch.equal(ops.int8_mm(a, ops.pack_int8_weight(b), 40), ref.int8_mm(a, b));"
            "c = fastinfer.cpu_capabilities();"
            "print(json.dumps({'served': ops.last_kernel('int8_gemm'), 'ok': ok, 'active': c['active'],"
            " 'amx_min_rows': c['amx_min_rows']}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_amx
def test_forced_vnni_fallback_env():
    res = _served_in_subprocess({"FASTINFER_ISA": "avx512_vnni"}, 200)
    assert res == {"served": "avx512_vnni", "ok": True, "active": "avx512_vnni", "amx_min_rows": res["amx_min_rows"]}


@needs_amx
def test_amx_min_rows_env():
    res = _served_in_subprocess({"FASTINFER_AMX_MIN_ROWS": "300"}, 200)
    assert res["amx_min_rows"] == 300 and res["served"] == "avx512_vnni" and res["ok"]
    res = _served_in_subprocess({"FASTINFER_AMX_MIN_ROWS": "1"}, 3)
    assert res["amx_min_rows"] == 1 and res["served"] == "amx" and res["ok"]
    res = _served_in_subprocess({"FASTINFER_AMX_MIN_ROWS": "zero"}, 200)  # not a number: the default
    assert res["amx_min_rows"] == 9 and res["served"] == "amx"
