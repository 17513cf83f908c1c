// AVX2 fp32 sparse x dense kernels of the csr16 / csr8 layouts (sparse.h, LAYOUTS.md): the AVX-512 kernels'
// plan on 8-float vectors, for CPUs without AVX-512 (AMD Zen 2/3, Intel client cores).
//
// Batch 1: 8 entries at a time, x gathered by column (vgatherdps), four chains in flight. csr8 gathers from
//   its group's 64-column window of x (AVX2 has no two-register permute to pick them as AVX-512 does).
// Batch > 1: vectorized across the batch on x transposed, each entry broadcast against its x^T row: up to
//   32 lanes (4 ymm) a chunk, 8 accumulator chains (U entries x CH lane vectors), passes over x^T as on
//   AVX-512 (csr_passes.h).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include <immintrin.h>

#include "sparse.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

#include "csr_passes.h"

namespace fastinfer {
namespace kernels {
namespace {

inline float hsum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// x at the columns of entries [i, i + 8): csr16 columns clamped to K - 1; csr8 offsets (6 bits) from the
// group's base clamped to K (x has K + 64 readable floats, zero from K on).
inline __m256 gather8(const float* x, const CsrCols16& cols, int64_t i, __m256i kmax) {
  const __m256i c = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(cols.cols + i)));
  return _mm256_i32gather_ps(x, _mm256_min_epu32(c, kmax), 4);
}
inline __m256 gather8(const float* x, const CsrCols8& cols, int64_t i, __m256i) {
  int64_t off8;
  std::memcpy(&off8, cols.off + i, 8);
  const __m256i off = _mm256_and_si256(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(off8)), _mm256_set1_epi32(63));
  return _mm256_i32gather_ps(cols.start(x, 1, i), off, 4);
}

// Row m of x (batch 1, and the last rows of a batch whose lanes would be mostly padding).
template <class Cols>
void gemv(const CsrParams& p, int64_t n0, int64_t n1, int64_t m) {
  const Cols cols(p);
  const float* x = p.x + m * p.ldx;
  float* out = p.out + m * p.ldo;
  const float* vals = p.vals;
  const __m256i kmax = _mm256_set1_epi32(static_cast<int32_t>(p.K - 1));
  for (int64_t n = n0; n < n1; ++n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    const int64_t end = p.row_ptr[n + 1];
    int64_t i = p.row_ptr[n];
    for (; i + 32 <= end; i += 32) {
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(vals + i), gather8(x, cols, i, kmax), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(vals + i + 8), gather8(x, cols, i + 8, kmax), a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(vals + i + 16), gather8(x, cols, i + 16, kmax), a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(vals + i + 24), gather8(x, cols, i + 24, kmax), a3);
    }
    for (; i < end; i += 16) {  // runs are multiples of 16
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(vals + i), gather8(x, cols, i, kmax), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(vals + i + 8), gather8(x, cols, i + 8, kmax), a1);
    }
    const float acc = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    out[n] = p.bias ? acc + p.bias[n] : acc;
  }
}

// One pass over a row's groups from *cursor up to the first group at or past col_end: U entries at a time,
// each broadcast against CH vectors (8 lanes each) of its x^T row.
template <class Cols, int CH, int U>
inline void pass_row(const CsrParams& p, const Cols& cols, const float* xt, int64_t ldxt, int64_t* cursor,
                     int64_t end, uint32_t col_end, __m256 (&part)[CH]) {
  static_assert(kCsrPad % U == 0 && CH * U <= 8, "groups are 16 entries; 8 accumulators");
  __m256 acc[U][CH];
#pragma GCC unroll 8
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
    for (int c = 0; c < CH; ++c) acc[u][c] = u == 0 ? part[c] : _mm256_setzero_ps();
  const float* vals = p.vals;
  int64_t g = *cursor;
  for (; g < end && cols.first(g) < col_end; g += kCsrPad) {
    const float* x0 = cols.start(xt, ldxt, g);
#pragma GCC unroll 2
    for (int64_t i = g; i < g + kCsrPad; i += U) {
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) {
        const __m256 v = _mm256_broadcast_ss(vals + i + u);
        const float* row = x0 + cols.row(i + u) * ldxt;
#pragma GCC unroll 4
        for (int c = 0; c < CH; ++c) acc[u][c] = _mm256_fmadd_ps(v, _mm256_loadu_ps(row + 8 * c), acc[u][c]);
      }
    }
  }
  *cursor = g;
#pragma GCC unroll 4
  for (int c = 0; c < CH; ++c) {
    __m256 s = acc[0][c];
#pragma GCC unroll 8
    for (int u = 1; u < U; ++u) s = _mm256_add_ps(s, acc[u][c]);
    part[c] = s;
  }
}

template <class Cols, int CH, int U>
void rows(const CsrParams& p, int64_t n0, int64_t n1, int64_t m0) {
  csr_rows<Cols, __m256, CH, 8>(p, n0, n1, m0,
                                [&p](const Cols& cols, const float* xt, int64_t ldxt, int64_t* cursor, int64_t end,
                                     uint32_t col_end, __m256(&part)[CH]) {
                                  pass_row<Cols, CH, U>(p, cols, xt, ldxt, cursor, end, col_end, part);
                                });
}

template <class Cols>
void batched(const CsrParams& p, int64_t n0, int64_t n1) {
  // Chunks of 32 lanes (x^T rows hold ldxt = 8, or a multiple of 16, floats: a chunk never reads past its
  // row), the last one 8 or 16; one or two rows left run as batch 1 (mostly padding otherwise).
  int64_t m0 = 0;
  while (m0 < p.M) {
    const int64_t lanes = p.M - m0, room = p.ldxt - m0;
    if (lanes <= 2) {
      for (int64_t m = m0; m < p.M; ++m) gemv<Cols>(p, n0, n1, m);
      return;
    }
    if (room >= 32 && lanes > 16) {
      rows<Cols, 4, 2>(p, n0, n1, m0);
      m0 += 32;
    } else if (room >= 16 && lanes > 8) {
      rows<Cols, 2, 4>(p, n0, n1, m0);
      m0 += 16;
    } else {
      rows<Cols, 1, 8>(p, n0, n1, m0);
      m0 += 8;
    }
  }
}

}  // namespace

void csr_linear_avx2(const CsrParams& p, int64_t n0, int64_t n1) {
  if (p.xt == nullptr) {  // the entry layer transposes x for M > 2 only
    for (int64_t m = 0; m < p.M; ++m) p.offsets ? gemv<CsrCols8>(p, n0, n1, m) : gemv<CsrCols16>(p, n0, n1, m);
    return;
  }
  if (p.offsets) batched<CsrCols8>(p, n0, n1);
  else batched<CsrCols16>(p, n0, n1);
}

}  // namespace kernels
}  // namespace fastinfer

#pragma GCC pop_options
