"""quantize_per_token vs fastinfer.reference, bit-exact (q and scales), on every ISA path."""
import math

import pytest
import torch

from fastinfer import ops
from fastinfer import reference as ref

from conftest import assert_served


def check(x):
    q, s = ops.quantize_per_token(x)
    qr, sr = ref.quantize_per_token(x)
    torch.testing.assert_close(q, qr, rtol=0, atol=0)
    torch.testing.assert_close(s, sr, rtol=0, atol=0, equal_nan=True)
    return q, s


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M,K", [(1, 1), (3, 7), (17, 13), (64, 255), (5, 513), (2, 1000), (255, 31)])
def test_quantize_matches_reference(isa, M, K, dtype):
    x = (torch.randn(M, K) * 4).to(dtype)
    x[0, -1] = 1000.0  # one huge outlier
    q, s = check(x)
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    assert int(q.abs().max()) <= 127
    assert_served("quantize", isa)


def test_quantize_half_way_ties(isa):
    # x * 127 / amax lands exactly on .5 for these: round half to even, like torch.round.
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]])
    q, _ = check(x)
    assert q.tolist()[0][1:] == [0, 2, 2, 0, -2, -2, 4]
    # 200 columns: three 64-value blocks of the packed AVX-512 path and a tail, ties in every lane.
    wide = torch.cat([torch.tensor([127.0]), (torch.arange(-99, 100, dtype=torch.float32) + 0.5)]).reshape(1, -1)
    q, _ = check(wide)
    assert q[0, 1:].tolist() == torch.round(wide[0, 1:]).to(torch.int8).tolist()


def test_quantize_special_rows(isa):
    x = torch.randn(6, 37)
    x[1] = 0.0                       # all zero -> scale 0, q 0
    x[2, 5] = float("nan")           # NaN -> scale NaN, q 0
    x[3, 0] = float("inf")           # Inf -> scale NaN, q 0
    x[4] = 1e-40                     # subnormal: 127 / amax overflows -> treated as zero
    x[5] = -127.0
    q, s = check(x)
    assert s[1] == 0 and math.isnan(s[2]) and math.isnan(s[3]) and s[4] == 0
    assert not q[1:5].any()
    assert bool((q[5] == -127).all())


def test_quantize_empty_and_noncontiguous(isa):
    q, s = ops.quantize_per_token(torch.empty(0, 8))
    assert q.shape == (0, 8) and s.shape == (0,)
    q, s = ops.quantize_per_token(torch.empty(3, 0))
    assert q.shape == (3, 0) and bool((s == 0).all())
    x = torch.randn(40, 30).t()
    check(x)
