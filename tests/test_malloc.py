"""fastinfer.tune_malloc: argument checks, and (glibc) that a large tensor then comes from the heap, not a mapping
of its own (glibc's mallinfo2 counts mapped bytes), in a fresh process each."""
import platform
import subprocess
import sys

import pytest

import fastinfer

PROBE = """
import ctypes, sys, torch
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "tuned":
    import fastinfer
    assert fastinfer.tune_malloc() is True
before = libc.mallinfo2().hblkhd
t = torch.empty(64 << 20, dtype=torch.uint8)
t.fill_(1)
print((libc.mallinfo2().hblkhd - before) >> 20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_a_large_tensor_comes_from_the_heap():
    import ctypes
    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("glibc before 2.33: no mallinfo2")

    def mapped_mib(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        return int(run.stdout.split()[-1])

    assert mapped_mib("default") >= 64  # glibc's default: a block this size is a mapping of its own
    assert mapped_mib("tuned") == 0


@pytest.mark.parametrize("kwargs, error, match", [
    ({"mmap_threshold": 1.5e8}, TypeError, "mmap_threshold must be an integer number of bytes, got float"),
    ({"trim_threshold": True}, TypeError, "trim_threshold must be an integer number of bytes, got bool"),
    ({"mmap_threshold": "256M"}, TypeError, "mmap_threshold must be an integer"),
    ({"mmap_threshold": -1}, ValueError, r"mmap_threshold must be in \[0, 2147483647\] bytes, got -1"),
    ({"trim_threshold": 2**31}, ValueError, r"trim_threshold must be in \[0, 2147483647\] bytes, got 2147483648"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        fastinfer.tune_malloc(**kwargs)
