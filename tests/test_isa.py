"""ISA detection and selection: one cached detection, FASTINFER_ISA and use_isa caps, defaults."""
import json
import os
import subprocess
import sys

import pytest
import torch

import fastinfer
from fastinfer import ops

from conftest import CAPS, runnable_isas, served_by


def test_capabilities_are_consistent():
    caps = fastinfer.cpu_capabilities()
    for key in ("avx2", "avx512_vnni", "amx_int8", "os_amx", "detected", "implemented", "active", "amx_note"):
        assert key in caps
    if caps["avx512_vnni"] and caps["os_avx512"] and caps["avx512bw"] and caps["avx512vl"]:
        assert caps["detected"] in ("avx512_vnni", "amx")
    if not caps["amx_int8"]:
        assert caps["amx_note"], "cpu_capabilities must say why AMX is not used"


def test_default_is_best_runnable_path():
    # Without a cap, calls are served by the best path the CPU and this build allow.
    best = runnable_isas()[-1]
    assert fastinfer.cpu_capabilities()["active"] == best
    w = ops.pack_int8_weight(torch.randint(-127, 128, (8, 8), dtype=torch.int8))
    ops.int8_linear_dynamic(torch.randn(32, 8), w, torch.ones(8))  # 32 rows: above the AMX shape bucket (9)
    assert ops.last_kernel("int8_gemm") == best and ops.last_kernel("quantize") == served_by("quantize", best)


def test_use_isa_restores_and_cannot_exceed_cpu():
    best = runnable_isas()[-1]
    with fastinfer.use_isa("ref") as active:
        assert active == "ref" and fastinfer.cpu_capabilities()["active"] == "ref"
    assert fastinfer.cpu_capabilities()["active"] == best
    with fastinfer.use_isa("amx") as active:  # asking for more than exists gives the best there is
        assert active == best


def _run(env_isa):
    env = dict(os.environ, FASTINFER_ISA=env_isa)
    code = ("import json, torch, fastinfer; from fastinfer import ops;"
            "w = ops.pack_int8_weight(torch.ones(4, 4, dtype=torch.int8));"
            "ops.int8_mm(torch.ones(2, 4, dtype=torch.int8), w, 4);"
            "c = fastinfer.cpu_capabilities(); c['served'] = ops.last_kernel('int8_gemm'); print(json.dumps(c))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["ref", "avx2", "avx_vnni"])
def test_env_var_caps_isa(name):
    if name not in runnable_isas():
        pytest.skip(f"CPU cannot run {name}")
    caps = _run(name)
    assert caps["active"] == name and caps["served"] == name and caps["env_cap"] == name


def test_env_var_unknown_name_is_reported():
    caps = _run("sse9")
    assert "not one of" in caps["env_cap_error"] and caps["active"] == CAPS["active"]


def test_runnable_tiers_follow_the_cpu_features():
    caps = fastinfer.cpu_capabilities()
    runnable = caps["runnable"]
    assert runnable[0] == "ref" and runnable[-1] == caps["active"] and runnable == sorted(runnable, key=fastinfer.ISAS.index)
    assert ("avx_vnni" in runnable) == (bool(caps["avx_vnni"]) and "avx2" in runnable)
    assert ("avx512_vnni" in runnable) <= ("avx2" in runnable) and ("amx" in runnable) <= ("avx512_vnni" in runnable)


@pytest.mark.parametrize("cap", fastinfer.ISAS)
def test_cap_gives_the_highest_runnable_tier_below_it(cap):
    # Tiers need not be contiguous: a CPU with AVX-512 VNNI but no AVX-VNNI (Ice Lake, Zen 4) capped at
    # avx_vnni runs avx2.
    runnable = runnable_isas()
    want = [t for t in runnable if fastinfer.ISAS.index(t) <= fastinfer.ISAS.index(cap)][-1]
    with fastinfer.use_isa(cap) as active:
        assert active == want
        w = ops.pack_int8_weight(torch.randint(-127, 128, (16, 8), dtype=torch.int8))
        ops.int8_mm(torch.ones(32, 8, dtype=torch.int8), w, 16)
        assert ops.last_kernel("int8_gemm") == want


def test_use_isa_blocks_nest():
    best = runnable_isas()[-1]
    with fastinfer.use_isa("avx2"):
        with fastinfer.use_isa("ref"):
            assert fastinfer.cpu_capabilities()["active"] == "ref"
        assert fastinfer.cpu_capabilities()["active"] == min(("avx2", best), key=fastinfer.ISAS.index)
    assert fastinfer.cpu_capabilities()["active"] == best


def test_use_isa_restores_a_cap_set_with_set_isa_cap():
    best = runnable_isas()[-1]
    avx2 = min(("avx2", best), key=fastinfer.ISAS.index)
    try:
        ops.set_isa_cap("avx2")
        with fastinfer.use_isa("ref"):
            assert fastinfer.cpu_capabilities()["active"] == "ref"
        assert fastinfer.cpu_capabilities()["active"] == avx2 and ops.isa_cap() == "avx2"
    finally:
        ops.set_isa_cap("amx")
    assert fastinfer.cpu_capabilities()["active"] == best


def test_use_isa_and_last_kernel_are_per_thread():
    # Thread A enters use_isa("ref"), thread B use_isa("avx2"), A leaves, then B: each block caps its own
    # thread's calls, reads back its own thread's kernel, and nothing is left capped afterwards. With one
    # process-wide cap, B ran uncapped and the process stayed on "ref" after both blocks.
    import threading

    best = runnable_isas()[-1]
    b_cap = min(("avx2", best), key=fastinfer.ISAS.index)
    w = ops.pack_int8_weight(torch.randint(-127, 128, (16, 32), dtype=torch.int8))
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen, errors = {}, []

    def call():
        ops.int8_mm(torch.randint(-127, 128, (24, 32), dtype=torch.int8), w, 16)
        return fastinfer.cpu_capabilities()["active"], ops.last_kernel("int8_gemm")

    def thread_a():
        try:
            with fastinfer.use_isa("ref"):
                a_in.set()
                b_in.wait(10)
                seen["a"] = call()
            a_out.set()
        except Exception as e:  # reported below: an assert in a thread would be lost
            errors.append(e)
            a_out.set()

    def thread_b():
        try:
            a_in.wait(10)
            with fastinfer.use_isa("avx2"):
                b_in.set()
                a_out.wait(10)
                seen["b"] = call()
            seen["b_after"] = call()
        except Exception as e:
            errors.append(e)
            b_in.set()

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert seen["a"] == ("ref", "ref")
    assert seen["b"] == (b_cap, b_cap)
    assert seen["b_after"] == (best, best)
    assert call() == (best, best)  # this thread was never capped


# Integer ops per probe iteration and thread: 12 chains of the tier's int8 step, 8 on AVX2 (AMX: 4 tile products).
PROBE_OPS = {"avx2": 8 * 32 * 2, "avx_vnni": 12 * 32 * 2, "avx512_vnni": 12 * 64 * 2, "amx": 4 * 16 * 16 * 64 * 2}


def test_peak_probe_per_tier(isa):
    if isa == "ref":
        with pytest.raises(RuntimeError, match=r"the active ISA \(ref\) has no vector int8 instruction"):
            ops.int8_peak_probe(10)
        return
    assert ops.int8_peak_probe(10) == 10 * PROBE_OPS[isa] * torch.get_num_threads()
    assert ops.last_kernel("int8_gemm") == isa
    with pytest.raises(RuntimeError, match="iters must be >= 1"):
        ops.int8_peak_probe(0)


def test_info_command_reports_the_tiers():
    out = subprocess.run([sys.executable, "-m", "fastinfer", "info"], capture_output=True, text=True, check=True).stdout
    lines = {line.split()[0]: line.split(None, 1)[1].strip() for line in out.splitlines() if line.startswith("  ")}
    assert lines["runnable"] == ", ".join(runnable_isas())
    assert lines["active"] == CAPS["active"] and lines["avx_vnni"] == ("yes" if CAPS["avx_vnni"] else "no")
