"""fastinfer: int8 (and, later, sparse) inference for PyTorch models on our own kernels.

    import fastinfer
    model = fastinfer.quantize(model, scheme="w8a8_dynamic")   # nn.Linear -> Int8Linear

See README.md for the schemes, ISA selection (FASTINFER_ISA) and benchmarks.
"""
from __future__ import annotations

import contextlib
import os

from . import _ext  # noqa: F401  (loads fastinfer._C: registers torch.ops.fastinfer)
from . import nn, ops, reference
from ._malloc import tune_malloc
from .distillation import DistillResult, distill, kd_loss
from .profiling import ProfileReport, compare_profiles, profile
from .pruning import (PruningError, PruningReport, SparsityReport, load_pruned, prune, remove_masks, save_pruned,
                      sparsify, sparsity_report)
from .quantization import (CalibrationResult, QuantConfig, QuantizationReport, calibrate, fuse, load_quantized,
                           quantize)

__version__ = "0.1.0"
ISAS = ("ref", "avx2", "avx_vnni", "avx512_vnni", "amx")  # tiers, lowest first


def cpu_capabilities() -> dict:
    """CPU features found (CPUID + OS support), the best ISA with kernels, and the one in use.

    Keys include avx2, avx_vnni, avx512_vnni, amx_int8, os_amx, amx_note (why AMX is unusable, if so),
    'detected' (best the CPU allows), 'implemented' (best this build has kernels for), 'runnable'
    (every tier this CPU and build can run: a CPU with AVX-512 VNNI may lack AVX-VNNI) and
    'active' (what serves calls now, after FASTINFER_ISA and use_isa caps).
    """
    caps = ops.cpu_capabilities()
    env = os.environ.get("FASTINFER_ISA")
    caps["env_cap"] = env
    if env and env not in ISAS:
        caps["env_cap_error"] = f"FASTINFER_ISA={env!r} is not one of {ISAS}; ignored"
    return caps


@contextlib.contextmanager
def use_isa(isa: str):
    """Caps the CPU kernels at `isa` for the calls made inside the block on this thread (e.g. to compare
    paths; other threads keep their own cap, as torch.no_grad is per thread); yields the ISA used: the
    highest tier at or below `isa` that this CPU runs (use_isa("avx_vnni") gives avx2 on a CPU without
    AVX-VNNI)."""
    if isa not in ISAS:
        raise ValueError(f"isa must be one of {ISAS}, got {isa!r}")
    previous = ops.isa_cap()  # this thread's cap: an enclosing block's, or one set with ops.set_isa_cap
    active = ops.set_isa_cap(isa)
    try:
        yield active
    finally:  # restore it, so use_isa blocks nest
        ops.set_isa_cap(previous)


__all__ = ["quantize", "load_quantized", "QuantConfig", "QuantizationReport", "fuse", "calibrate", "CalibrationResult",
           "distill", "kd_loss", "DistillResult", "profile",
           "ProfileReport", "compare_profiles", "prune", "PruningReport", "PruningError", "save_pruned", "sparsify", "sparsity_report",
           "SparsityReport", "remove_masks",
           "load_pruned", "cpu_capabilities", "use_isa", "tune_malloc", "nn", "ops", "reference", "ISAS", "__version__"]
