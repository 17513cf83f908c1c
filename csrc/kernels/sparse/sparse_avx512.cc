// AVX-512 sparse x dense kernels. Batch 1: 16 nonzeros at a time, x gathered by column index.
// Batch > 1: vectorized across the batch on x transposed: each nonzero w[n, k] is broadcast and
// multiplied with x^T[k, m-chunk], so a row's accumulators stay in registers.
#include <algorithm>
#include <cstring>

#include <immintrin.h>

#include "sparse.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")

namespace fastinfer {
namespace kernels {
namespace {

inline __m512 load_vals16(const SparseParams& p, int64_t i) {
  if (p.int8_vals)
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
        reinterpret_cast<const __m128i*>(static_cast<const int8_t*>(p.vals) + i))));
  return _mm512_loadu_ps(static_cast<const float*>(p.vals) + i);
}

inline float finish(const SparseParams& p, int64_t n, float acc) {
  float y = p.int8_vals ? acc * p.w_scale[n] : acc;
  return p.bias ? y + p.bias[n] : y;
}

inline __m512 gather16(const SparseParams& p, int64_t i, __m512i kmax) {
  const __m512i c = _mm512_min_epu32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
      reinterpret_cast<const __m256i*>(p.cols + i))), kmax);
  return _mm512_i32gather_ps(c, p.x, 4);
}

void gemv(const SparseParams& p, int64_t n0, int64_t n1) {
  const __m512i kmax = _mm512_set1_epi32(static_cast<int32_t>(p.K - 1));
  for (int64_t n = n0; n < n1; ++n) {
    // Four independent chains: several gathers in flight hide their latency.
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    const int32_t end = p.row_ptr[n + 1];
    int32_t i = p.row_ptr[n];
    for (; i + 64 <= end; i += 64) {
      a0 = _mm512_fmadd_ps(load_vals16(p, i), gather16(p, i, kmax), a0);
      a1 = _mm512_fmadd_ps(load_vals16(p, i + 16), gather16(p, i + 16, kmax), a1);
      a2 = _mm512_fmadd_ps(load_vals16(p, i + 32), gather16(p, i + 32, kmax), a2);
      a3 = _mm512_fmadd_ps(load_vals16(p, i + 48), gather16(p, i + 48, kmax), a3);
    }
    for (; i < end; i += 16)  // runs are multiples of 16
      a0 = _mm512_fmadd_ps(load_vals16(p, i), gather16(p, i, kmax), a0);
    p.out[n] = finish(p, n, _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))));
  }
}

// One output row n over batch lanes [m0, m0 + 16 * CH): CH accumulators.
template <int CH>
void row_batch(const SparseParams& p, int64_t n, int64_t m0) {
  __m512 acc[CH];
  for (int c = 0; c < CH; ++c) acc[c] = _mm512_setzero_ps();
  const auto* f32 = static_cast<const float*>(p.vals);
  const auto* i8 = static_cast<const int8_t*>(p.vals);
  for (int32_t i = p.row_ptr[n]; i < p.row_ptr[n + 1]; ++i) {
    const int64_t k = std::min<int64_t>(p.cols[i], p.K - 1);
    const __m512 v = _mm512_set1_ps(p.int8_vals ? static_cast<float>(i8[i]) : f32[i]);
    const float* xt = p.xt + k * p.ldxt + m0;
#pragma GCC unroll 4
    for (int c = 0; c < CH; ++c) acc[c] = _mm512_fmadd_ps(v, _mm512_loadu_ps(xt + 16 * c), acc[c]);
  }
  const __m512 scale = _mm512_set1_ps(p.int8_vals ? p.w_scale[n] : 1.0f);
  const __m512 bias = _mm512_set1_ps(p.bias ? p.bias[n] : 0.0f);
  alignas(64) float t[16 * CH];
  for (int c = 0; c < CH; ++c) _mm512_store_ps(t + 16 * c, _mm512_add_ps(_mm512_mul_ps(acc[c], scale), bias));
  const int64_t valid = std::min<int64_t>(16 * CH, p.M - m0);
  for (int64_t j = 0; j < valid; ++j) p.out[(m0 + j) * p.ldo + n] = t[j];  // column of out: strided store
}

void batched(const SparseParams& p, int64_t n0, int64_t n1) {
  // Chunks of 64 batch lanes keep a row's x^T slices (64 floats per nonzero) within a few cache lines.
  for (int64_t m0 = 0; m0 < p.M; m0 += 64) {
    const int64_t lanes = p.M - m0;
    for (int64_t n = n0; n < n1; ++n) {
      if (lanes > 48) row_batch<4>(p, n, m0);
      else if (lanes > 32) row_batch<3>(p, n, m0);
      else if (lanes > 16) row_batch<2>(p, n, m0);
      else row_batch<1>(p, n, m0);
    }
  }
}

}  // namespace

void sparse_linear_avx512(const SparseParams& p, int64_t n0, int64_t n1) {
  if (p.M == 1)
    gemv(p, n0, n1);
  else
    batched(p, n0, n1);
}

}  // namespace kernels
}  // namespace fastinfer

#pragma GCC pop_options
