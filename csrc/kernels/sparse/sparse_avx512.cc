// AVX-512 fp32 sparse x dense kernels of the csr16 / csr8 layouts (sparse.h, LAYOUTS.md).
//
// Batch 1, csr16: 16 entries at a time, x gathered by column, four chains in flight.
// Batch 1, csr8: a group's 16 columns lie in a 64-column window of x: two vpermt2ps pick them from
//   four registers, no gather (4096^2 at 50% zeros: 0.77 ms, memory speed, vs 1.04 ms gathering).
// Batch > 1: vectorized across the batch on x transposed: each entry w[n, k] is broadcast and
//   multiplied with x^T[k, lanes], so a row's accumulators stay in registers (8 lanes for M <= 8,
//   two entries per zmm; else up to 64 lanes in zmm).
// The two layouts differ only in how an entry's column is decoded (CsrCols16 / CsrCols8: csr_passes.h).
// Indices are int64_t throughout: Python's build flags include -fwrapv, under which int32 index
// arithmetic must be re-sign-extended at every use (measured 1.4x slower batched loops).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include <immintrin.h>

#include "sparse.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")

#include "csr_passes.h"

namespace fastinfer {
namespace kernels {
namespace {

using Cols16 = CsrCols16;
using Cols8 = CsrCols8;

// Columns of csr16 entries [i, i + 16), i a multiple of 16.
inline __m512i group16(const Cols16& cols, int64_t i) {
  return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(cols.cols + i)));
}

inline __m512 gather16(const float* x, const Cols16& cols, int64_t i, __m512i kmax) {
  return _mm512_i32gather_ps(_mm512_min_epu32(group16(cols, i), kmax), x, 4);
}

// Row m of x (batch 1, and the last rows of a batch whose lanes would be mostly padding).
void gemv16(const CsrParams& p, int64_t n0, int64_t n1, int64_t m) {
  const Cols16 cols(p);
  const float* x = p.x + m * p.ldx;
  float* out = p.out + m * p.ldo;
  const float* vals = p.vals;
  const __m512i kmax = _mm512_set1_epi32(static_cast<int32_t>(p.K - 1));
  for (int64_t n = n0; n < n1; ++n) {
    // Four independent chains: several gathers in flight hide their latency.
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    const int64_t end = p.row_ptr[n + 1];
    int64_t i = p.row_ptr[n];
    for (; i + 64 <= end; i += 64) {
      // The value stream is read once: fetch it ~1 KiB ahead of the gathers (measured +3-8%).
      _mm_prefetch(reinterpret_cast<const char*>(vals + i + 256), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(vals + i + 272), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(vals + i + 288), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(vals + i + 304), _MM_HINT_T0);
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + i), gather16(x, cols, i, kmax), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + i + 16), gather16(x, cols, i + 16, kmax), a1);
      a2 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + i + 32), gather16(x, cols, i + 32, kmax), a2);
      a3 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + i + 48), gather16(x, cols, i + 48, kmax), a3);
    }
    for (; i < end; i += 16)  // runs are multiples of 16
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + i), gather16(x, cols, i, kmax), a0);
    const float acc = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    out[n] = p.bias ? acc + p.bias[n] : acc;
  }
}

// x[base + offsets[i .. i + 16)]: the 64-float window at base (clamped to K: x has K + 64 readable
// floats) in four registers, two two-register permutes (offset bits 0-4) and a blend on bit 5.
inline __m512 window16(const float* x, const Cols8& cols, int64_t i) {
  const float* w = cols.start(x, 1, i);
  const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(cols.off + i)));
  const __m512 lo = _mm512_permutex2var_ps(_mm512_loadu_ps(w), idx, _mm512_loadu_ps(w + 16));
  const __m512 hi = _mm512_permutex2var_ps(_mm512_loadu_ps(w + 32), idx, _mm512_loadu_ps(w + 48));
  return _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, _mm512_set1_epi32(32)), lo, hi);
}

void gemv8(const CsrParams& p, int64_t n0, int64_t n1, int64_t m) {
  const Cols8 cols(p);
  const float* x = p.x + m * p.ldx;
  float* out = p.out + m * p.ldo;
  const float* vals = p.vals;
  for (int64_t n = n0; n < n1; ++n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    const int64_t end = p.row_ptr[n + 1];
    int64_t i = p.row_ptr[n];
    for (; i + 32 <= end; i += 32) {
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + i), window16(x, cols, i), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + i + 16), window16(x, cols, i + 16), a1);
    }
    if (i < end) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + i), window16(x, cols, i), a0);
    const float acc = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    out[n] = p.bias ? acc + p.bias[n] : acc;
  }
}

// One pass over row n's groups from *cursor up to (not including) the first group at or past
// `col_end`: U chains of CH lane vectors of x^T (V: __m256 with 8 lanes, or __m512 with 16).
template <class Cols, class V, int CH, int U>
inline void pass_row(const CsrParams& p, const Cols& cols, const float* xt, int64_t ldxt, int64_t* cursor, int64_t end,
                     uint32_t col_end, V (&part)[CH]) {
  static_assert(kCsrPad % U == 0, "groups are 16 entries");
  constexpr int kLanes = sizeof(V) / sizeof(float);
  V acc[U][CH];
  for (int u = 0; u < U; ++u)
    for (int c = 0; c < CH; ++c) acc[u][c] = u == 0 ? part[c] : V{};
  const float* vals = p.vals;
  __m512 pair[U / 2 > 0 ? U / 2 : 1];  // 8-lane path: accumulators of entry pairs (16 lanes = 2 x 8)
  for (auto& a : pair) a = _mm512_setzero_ps();
  int64_t g = *cursor;
  for (; g < end && cols.first(g) < col_end; g += kCsrPad) {
    const float* x0 = cols.start(xt, ldxt, g);
    [[maybe_unused]] const __m512 group_vals = kLanes == 8 ? _mm512_loadu_ps(vals + g) : _mm512_setzero_ps();
#pragma GCC unroll 2
    for (int64_t i = g; i < g + kCsrPad; i += U) {
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) {
        if constexpr (kLanes == 8) {
          // Two entries per zmm: lanes 0-7 the x^T row of entry i + u, lanes 8-15 that of i + u + 1, their
          // values broadcast from one load of the group's 16 values. Two loads and ~1.5 port-0/5 uops an
          // entry instead of three loads (one value broadcast each): the loop was load-port bound.
          static_assert(U % 2 == 0, "entries go in pairs");
          if (u % 2 == 0) {
            const __m512 pair_rows = _mm512_insertf32x8(
                _mm512_castps256_ps512(_mm256_loadu_ps(x0 + cols.row(i + u) * 8)),
                _mm256_loadu_ps(x0 + cols.row(i + u + 1) * 8), 1);
            const int j = (i - g) + u;  // entry within the group
            const __m512i sel = _mm512_set_epi32(j + 1, j + 1, j + 1, j + 1, j + 1, j + 1, j + 1, j + 1,
                                                 j, j, j, j, j, j, j, j);
            pair[u / 2] = _mm512_fmadd_ps(_mm512_permutexvar_ps(sel, group_vals), pair_rows, pair[u / 2]);
          }
        } else {
          const __m512 v = _mm512_set1_ps(vals[i + u]);
          const float* row = x0 + cols.row(i + u) * ldxt;
#pragma GCC unroll 4
          for (int c = 0; c < CH; ++c) acc[u][c] = _mm512_fmadd_ps(v, _mm512_loadu_ps(row + 16 * c), acc[u][c]);
        }
      }
    }
  }
  *cursor = g;
  if constexpr (kLanes == 8) {
    __m512 t = pair[0];
    for (int k = 1; k < U / 2; ++k) t = _mm512_add_ps(t, pair[k]);
    acc[0][0] = _mm256_add_ps(acc[0][0], _mm256_add_ps(_mm512_castps512_ps256(t), _mm512_extractf32x8_ps(t, 1)));
  }
  for (int c = 0; c < CH; ++c) {
    V s = acc[0][c];
    for (int u = 1; u < U; ++u) {
      if constexpr (kLanes == 8) s = _mm256_add_ps(s, acc[u][c]);
      else s = _mm512_add_ps(s, acc[u][c]);
    }
    part[c] = s;
  }
}

// Lanes [m0, m0 + CH * lanes of V) of x^T for output rows [n0, n1).
template <class Cols, class V, int CH, int U>
void rows(const CsrParams& p, int64_t n0, int64_t n1, int64_t m0) {
  csr_rows<Cols, V, CH, sizeof(V) / sizeof(float)>(
      p, n0, n1, m0, [&p](const Cols& cols, const float* xt, int64_t ldxt, int64_t* cursor, int64_t end,
                          uint32_t col_end, V(&part)[CH]) {
        pass_row<Cols, V, CH, U>(p, cols, xt, ldxt, cursor, end, col_end, part);
      });
}

void gemv_rows(const CsrParams& p, int64_t n0, int64_t n1, int64_t m0, int64_t m1) {
  for (int64_t m = m0; m < m1; ++m) p.offsets ? gemv8(p, n0, n1, m) : gemv16(p, n0, n1, m);
}

template <class Cols>
void batched(const CsrParams& p, int64_t n0, int64_t n1) {
  // M <= 8: x^T rows of 8 floats, entry pairs in four zmm chains (with fewer chains the FMA latency
  // capped the loop). Else chunks of up to 64 lanes (one to four zmm per x^T row), eight or fewer
  // chains as the lanes give independent FMAs. One or two
  // rows run as batch 1 (a lane vector would be mostly padding: 4096^2 at 50% zeros, two rows took
  // 2.5 ms batched, 1.5 ms as two batch-1 rows).
  int64_t m0 = 0;
  while (m0 < p.M) {
    const int64_t lanes = p.M - m0;
    if (lanes <= 2) return gemv_rows(p, n0, n1, m0, p.M);
    if (p.ldxt == 8) return rows<Cols, __m256, 1, 8>(p, n0, n1, 0);
    if (lanes > 48) rows<Cols, __m512, 4, 2>(p, n0, n1, m0);
    else if (lanes > 32) rows<Cols, __m512, 3, 2>(p, n0, n1, m0);
    else if (lanes > 16) rows<Cols, __m512, 2, 4>(p, n0, n1, m0);
    else rows<Cols, __m512, 1, 8>(p, n0, n1, m0);
    m0 += 64;
  }
}

}  // namespace

void csr_linear_avx512(const CsrParams& p, int64_t n0, int64_t n1) {
  if (p.offsets) batched<Cols8>(p, n0, n1);
  else batched<Cols16>(p, n0, n1);
}

}  // namespace kernels
}  // namespace fastinfer

#pragma GCC pop_options
