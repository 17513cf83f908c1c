// AVX-512 VBMI + VNNI kernel of the slot128 layout (int8 weights x int8 activations; sparse.h).
//
// A 128-column segment of a quantized activation row (u8 = q + 128) sits in two zmm registers; one
// vpermt2b picks, for each of the 64 slot bytes of a group, the activation of its column, and one
// vpdpbusd multiplies them with the group's 64 int8 weights into 16 row sums. No gathers, and the
// same group (indices + weights, read once) serves up to 8 rows of x.
#include <algorithm>

#include <immintrin.h>

#include "sparse.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vnni")

namespace fastinfer {
namespace kernels {
namespace {

// Row block b for MB rows of x starting at m0 (rows past M repeat row M - 1; their results are
// dropped); U accumulators per row rotate over the groups so that few rows still keep several
// vpdpbusd chains in flight.
template <int MB, int U>
void slot_block(const Slot128Params& p, int64_t b, int64_t m0) {
  const uint8_t* x[MB];
  for (int m = 0; m < MB; ++m) x[m] = p.xq + std::min<int64_t>(m0 + m, p.M - 1) * p.ldxq;
  __m512i acc[U][MB];
  for (int u = 0; u < U; ++u)
    for (int m = 0; m < MB; ++m) acc[u][m] = _mm512_setzero_si512();
  const int32_t* gp = p.grp_ptr + b * p.segs;
  for (int64_t s = 0; s < p.segs; ++s) {
    int64_t g = gp[s];  // int64: see sparse_avx512.cc on -fwrapv
    const int64_t end = gp[s + 1];
    if (g == end) continue;
    __m512i lo[MB], hi[MB];
    for (int m = 0; m < MB; ++m) {
      lo[m] = _mm512_loadu_si512(x[m] + s * kSlotSeg);
      hi[m] = _mm512_loadu_si512(x[m] + s * kSlotSeg + 64);
    }
    for (; g + U <= end; g += U) {
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) {
        const __m512i idx = _mm512_loadu_si512(p.idx + (g + u) * kSlotGroup);
        const __m512i w = _mm512_loadu_si512(p.vals + (g + u) * kSlotGroup);
#pragma GCC unroll 8
        for (int m = 0; m < MB; ++m)
          acc[u][m] = _mm512_dpbusd_epi32(acc[u][m], _mm512_permutex2var_epi8(lo[m], idx, hi[m]), w);
      }
    }
    for (; g < end; ++g) {
      const __m512i idx = _mm512_loadu_si512(p.idx + g * kSlotGroup);
      const __m512i w = _mm512_loadu_si512(p.vals + g * kSlotGroup);
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m)
        acc[0][m] = _mm512_dpbusd_epi32(acc[0][m], _mm512_permutex2var_epi8(lo[m], idx, hi[m]), w);
    }
  }
  // Epilogue (EPILOGUE.md order): exact int32 sum, -128 * w_sum, then * x_scale[m] * w_scale[n] + bias[n].
  const int64_t n0 = b * kSlotRows;
  const int64_t left = p.N - n0;
  const __mmask16 live = left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
  const __m512i comp = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(live, p.w_sum + n0), 7);
  const __m512 ws = _mm512_maskz_loadu_ps(live, p.w_scale + n0);
  const __m512 bias = p.bias ? _mm512_maskz_loadu_ps(live, p.bias + n0) : _mm512_setzero_ps();
  const int64_t valid = std::min<int64_t>(MB, p.M - m0);
  for (int m = 0; m < valid; ++m) {
    __m512i s = acc[0][m];
    for (int u = 1; u < U; ++u) s = _mm512_add_epi32(s, acc[u][m]);
    __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(s, comp)),
                                           _mm512_set1_ps(p.x_scale[m0 + m])), ws);
    if (p.bias) y = _mm512_add_ps(y, bias);
    _mm512_mask_storeu_ps(p.out + (m0 + m) * p.ldo + n0, live, y);
  }
}

}  // namespace

void slot128_linear_avx512(const Slot128Params& p, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    // Up to 8 rows of x share each group (two table registers per row); fewer rows rotate
    // several accumulators instead (vpdpbusd has a 4-5 cycle latency).
    for (int64_t m0 = 0; m0 < p.M; m0 += 8) {
      const int64_t rows = p.M - m0;
      if (rows > 4) slot_block<8, 1>(p, b, m0);
      else if (rows > 2) slot_block<4, 1>(p, b, m0);
      else if (rows > 1) slot_block<2, 2>(p, b, m0);
      else slot_block<1, 4>(p, b, m0);
    }
  }
}

}  // namespace kernels
}  // namespace fastinfer

#pragma GCC pop_options
