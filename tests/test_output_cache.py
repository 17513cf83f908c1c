"""The CPU ops' output cache (csrc/cpu/output_pool.cc): outputs of 256 KiB or more come from freed outputs of
the same size, the results stay exact, the limit holds, and the tensors behave as torch's."""
import io
import threading

import pytest
import torch

from fastinfer import ops
from fastinfer import reference as ref

BIG = (2, 16, 40, 40)  # int8 NHWC input; a 1x1 conv to 32 channels writes 2 * 40 * 40 * 32 fp32 = 400 KiB


@pytest.fixture
def limit():
    """Restores the cache's limit after the test (and empties what the test left)."""
    old = ops.set_output_cache_limit(512 << 20)
    yield
    ops.set_output_cache_limit(0)
    ops.set_output_cache_limit(old)


def conv_case(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-127, 128, (BIG[0], BIG[2], BIG[3], BIG[1]), dtype=torch.int8, generator=g).permute(0, 3, 1, 2)
    w = torch.randint(-127, 128, (32, BIG[1], 1, 1), dtype=torch.int8, generator=g)
    ws, b = torch.rand(32, generator=g) * 0.01, torch.randn(32, generator=g)
    return x, w, ws, b


def conv(x, w, ws, b, out_scale=None):
    return ops.int8_conv2d(x, ops.pack_conv_weight(w), ws, b, (1, 1), (1, 1), (0, 0), (1, 1), 1, 0.05, out_scale)


def test_freed_output_is_reused_and_results_stay_exact(limit):
    x, w, ws, b = conv_case(0)
    y = conv(x, w, ws, b)
    assert y.nbytes == 400 * 1024 and y.is_contiguous(memory_format=torch.channels_last)
    ptr, before = y.data_ptr(), ops.output_cache_bytes()
    del y
    assert ops.output_cache_bytes() == before + 400 * 1024
    x2, w2, ws2, b2 = conv_case(1)
    y2 = conv(x2, w2, ws2, b2)  # the same size: the freed block, holding the first call's values
    assert y2.data_ptr() == ptr and ops.output_cache_bytes() == before
    want = ref.int8_conv2d(x2, w2, ws2, b2, (1, 1), (0, 0), (1, 1), 1, 0.05, None)
    torch.testing.assert_close(y2, want, rtol=0, atol=0)


def test_small_outputs_are_not_cached(limit):
    x, w, ws, b = conv_case(0)
    before = ops.output_cache_bytes()
    y = conv(x[:, :, :4], w, ws, b)  # 2 * 4 * 40 * 32 floats = 40 KiB
    del y
    assert ops.output_cache_bytes() == before


def test_limit(limit):
    x, w, ws, b = conv_case(0)
    ys = [conv(x, w, ws, b) for _ in range(3)]
    before = ops.output_cache_bytes()
    ops.set_output_cache_limit(before + 500 * 1024)  # room for one of the three
    del ys
    assert ops.output_cache_bytes() == before + 400 * 1024
    assert ops.set_output_cache_limit(0) == before + 500 * 1024
    assert ops.output_cache_bytes() == 0  # lowering the limit frees what is over it
    y = conv(x, w, ws, b)
    del y
    assert ops.output_cache_bytes() == 0  # limit 0: nothing is kept
    for bad in (-1, 1.5, "1"):
        with pytest.raises(ValueError, match="nbytes must be an integer >= 0"):
            ops.set_output_cache_limit(bad)


def test_least_recently_freed_go_first(limit):
    # Sizes that stop coming leave the cache to the ones in use (a new batch size, a new sequence length).
    x, w, ws, b = conv_case(0)
    ops.set_output_cache_limit(0)
    ops.set_output_cache_limit(700 * 1024)  # room for one 400 KiB output and one 320 KiB one, not both
    y = conv(x, w, ws, b)
    del y
    assert ops.output_cache_bytes() == 400 * 1024
    y = conv(x[:, :, :32], w, ws, b)  # 2 * 32 * 40 * 32 floats = 320 KiB: a size not cached
    ptr = y.data_ptr()
    del y  # evicts the 400 KiB block
    assert ops.output_cache_bytes() == 320 * 1024
    assert conv(x[:, :, :32], w, ws, b).data_ptr() == ptr


def test_every_op_family_returns_exact_results_in_reused_blocks(limit):
    # Each op twice at one size with different inputs: the second call's output is the first's block.
    g = torch.Generator().manual_seed(2)
    w = torch.randint(-127, 128, (300, 256), dtype=torch.int8, generator=g)
    packed, ws = ops.pack_int8_weight(w), torch.rand(300, generator=g) * 0.01
    for seed in (3, 4):
        x = torch.randn(300, 256, generator=torch.Generator().manual_seed(seed))
        y = ops.int8_linear_static(x, 0.02, packed, ws, None)
        torch.testing.assert_close(y, ref.int8_linear_static(x, 0.02, w, ws, None), rtol=0, atol=0)
        yd = ops.int8_linear_dynamic(x, packed, ws, None)
        torch.testing.assert_close(yd, ref.int8_linear_dynamic(x, w, ws, None), rtol=0, atol=0)
        del y, yd
    for seed in (5, 6):
        x, w4, ws4, b4 = conv_case(seed)
        y8 = conv(x, w4, ws4, b4, out_scale=0.1)
        a = torch.randint(-127, 128, y8.shape, dtype=torch.int8).contiguous(memory_format=torch.channels_last)
        s = ops.int8_add(y8, a, 0.1, 0.07, None)
        torch.testing.assert_close(s, ref.int8_add(y8, a, 0.1, 0.07, None), rtol=0, atol=0)
        del y8, s


def test_per_call_buffers_come_from_the_cache(limit):
    # An fp32 NCHW input's channels-last form (its int8 NHWC quantization where a quantize_planes kernel
    # serves, AVX-512 or AVX2: 400 KiB here, else an fp32 copy, 1600 KiB) and a dynamic linear's int8 operand are per-call
    # buffers of the cache too: freed when the op returns, there for the next call; results exact.
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 32, 80, 80, generator=g)  # NCHW
    w = torch.randint(-127, 128, (8, 32, 3, 3), dtype=torch.int8, generator=g)
    ws, b = torch.rand(8, generator=g) * 0.01, torch.randn(8, generator=g)
    ops.set_output_cache_limit(0)
    ops.set_output_cache_limit(512 << 20)
    y = ops.int8_conv2d(x, ops.pack_conv_weight(w), ws, b, (3, 3), (1, 1), (1, 1), (1, 1), 1, 0.05, 0.1)
    held = 400 * 1024 if ops.last_kernel("quantize_planes") else 1600 * 1024
    assert ops.output_cache_bytes() == held  # the input's NHWC form (the 100 KiB int8 output is below the threshold)
    want = ref.int8_conv2d(x.contiguous(memory_format=torch.channels_last), w, ws, b, (1, 1), (1, 1), (1, 1), 1,
                           0.05, 0.1)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    xl = torch.randn(2048, 256, generator=g)
    wl = torch.randint(-127, 128, (64, 256), dtype=torch.int8, generator=g)
    yl = ops.int8_linear_dynamic(xl, ops.pack_int8_weight(wl), torch.ones(64), None)  # a 512 KiB operand
    assert ops.output_cache_bytes() >= held + 512 * 1024
    torch.testing.assert_close(yl, ref.int8_linear_dynamic(xl, wl, torch.ones(64), None), rtol=0, atol=0)


def test_cached_outputs_behave_as_torch_tensors(limit):
    x, w, ws, b = conv_case(0)
    y = conv(x, w, ws, b)
    buf = io.BytesIO()
    torch.save(y, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf), y)
    z = y.clone()
    first = y.permute(0, 2, 3, 1).flatten()[:10].clone()  # the first 10 values in memory order
    y.resize_(10)  # a resizable storage, as at::empty's
    assert y.shape == (10,) and torch.equal(y, first)
    y.resize_(300000)  # grows: a new block from the same allocator, the old values copied
    assert torch.equal(y[:10], first)
    y.add_(1)
    assert torch.equal(conv(x, w, ws, b), z)


def test_threads_share_the_cache(limit):
    # Outputs allocated and freed on several threads at once (the deleter runs on whichever thread drops
    # the last reference): every result stays exact.
    cases = [conv_case(s) for s in range(4)]
    wants = [ref.int8_conv2d(x, w, ws, b, (1, 1), (0, 0), (1, 1), 1, 0.05, None) for x, w, ws, b in cases]
    errors = []

    def work(i):
        try:
            for _ in range(20):
                y = conv(*cases[i])
                if not torch.equal(y, wants[i]):
                    errors.append(i)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
