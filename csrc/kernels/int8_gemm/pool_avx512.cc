// int8 average pooling (csrc/kernels/conv/pool.h) on 64-byte vectors: each window's values summed 32 channels at a
// time as int16 lanes (vpmovsxbw; exact while the window holds at most 258 taps: 258 * 127 < 2^15), widened to
// int32 and fp32, divided by the divisor (vdivps: the portable kernel's correctly rounded quotient), rounded half
// to even (vrndscaleps) and clamped to +-127. Larger windows take the portable kernel. The AVX-512 VNNI set (and
// AMX's, which copies it) holds it. Inception v3's nine 3x3 poolings at batch 8 (AMD Zen 4, 2 threads, profiled in
// the whole model): 19.9 ms on the portable kernel, 2.5 ms here; its six pooling shapes at batch 1: 1.73 -> 0.24 ms.
// Max pooling too (max_pool_avx512, below).
#include <algorithm>
#include <cstdint>

#include <immintrin.h>

#include "params.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

namespace fastinfer {
namespace kernels {
namespace {

// 16 int32 sums -> 16 int32 values of clamp(round_half_even(sum / d), -127, 127).
inline __m512i average16(__m512i sums, __m512 d) {
  const __m512 v = _mm512_div_ps(_mm512_cvtepi32_ps(sums), d);
  const __m512 r = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 lim = _mm512_set1_ps(127.0f);
  return _mm512_cvttps_epi32(_mm512_min_ps(lim, _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), lim), r)));
}

}  // namespace

void avg_pool_avx512(const AvgPoolParams& p, int64_t r0, int64_t r1) {
  if (p.KH * p.KW > kAvgInt16Taps) return avg_pool_nhwc_s8(p, r0, r1);
  const int64_t C = p.C;
  avg_pool_pixels(p, r0, r1, [&](const int8_t* img, const AvgSpan& h, const AvgSpan& w, int64_t divisor, int8_t* o) {
    const __m512 d = _mm512_set1_ps(static_cast<float>(divisor));
    for (int64_t c = 0; c < C; c += 32) {
      const __mmask32 m = C - c >= 32 ? ~__mmask32{0} : (__mmask32{1} << (C - c)) - 1;
      __m512i acc = _mm512_setzero_si512();
      for (int64_t ih = h.i0; ih < h.i1; ++ih) {
        const int8_t* row = img + ih * p.W * C + c;
        for (int64_t iw = w.i0; iw < w.i1; ++iw)
          acc = _mm512_add_epi16(acc, _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, row + iw * C)));
      }
      const __m128i lo = _mm512_cvtepi32_epi8(average16(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(acc)), d));
      const __m128i hi = _mm512_cvtepi32_epi8(average16(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(acc, 1)), d));
      _mm256_mask_storeu_epi8(o + c, m, _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
    }
  });
}

// Max pooling, 64 channels a vector (the last ones masked: masked-off bytes are not read): the window's taps
// folded by vpmaxsb from -128, the identity of max on int8 (every window holds a tap). The portable kernel's
// baseline (SSE2) build has no byte max. Against it (AMX machine, 2 threads, batch 8, in one process, oneDNN's
// quantized max_pool2d beside): GoogLeNet's 3x3 stride-1 branch poolings 5.3-5.9x (512 channels at 14 x 14:
// 0.177 -> 0.030 ms, oneDNN 0.040; 256 at 28 x 28 0.312 -> 0.059, oneDNN 0.084), its stride-2 ones 2.0-3.0x
// (64 channels at 112 x 112: 0.454 -> 0.175, oneDNN 0.363), ResNet's stem pooling 2.5x. Four vectors a group
// where 256 channels remain (one tap address for four chains): the 512-channel branch pooling 0.058 -> 0.030.
void max_pool_avx512(const MaxPoolParams& p, int64_t r0, int64_t r1) {
  const int64_t C = p.C, th = p.DH * p.W * C, tw = p.DW * C;
  max_pool_pixels(p, r0, r1, [&](const int8_t* first, int64_t kh, int64_t kw, int8_t* o) {
    // Groups of 4 vectors (256 channels): each tap's address once for four independent vpmaxsb chains.
    int64_t c = 0;
    for (; c + 256 <= C; c += 256) {
      __m512i a0 = _mm512_set1_epi8(-128), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t i = 0; i < kh; ++i)
        for (int64_t j = 0; j < kw; ++j) {
          const int8_t* in = first + i * th + j * tw + c;
          a0 = _mm512_max_epi8(a0, _mm512_loadu_si512(in));
          a1 = _mm512_max_epi8(a1, _mm512_loadu_si512(in + 64));
          a2 = _mm512_max_epi8(a2, _mm512_loadu_si512(in + 128));
          a3 = _mm512_max_epi8(a3, _mm512_loadu_si512(in + 192));
        }
      _mm512_storeu_si512(o + c, a0);
      _mm512_storeu_si512(o + c + 64, a1);
      _mm512_storeu_si512(o + c + 128, a2);
      _mm512_storeu_si512(o + c + 192, a3);
    }
    for (; c < C; c += 64) {
      const __mmask64 m = C - c >= 64 ? ~__mmask64{0} : (__mmask64{1} << (C - c)) - 1;
      __m512i acc = _mm512_set1_epi8(-128);
      for (int64_t i = 0; i < kh; ++i)
        for (int64_t j = 0; j < kw; ++j)
          acc = _mm512_max_epi8(acc, _mm512_maskz_loadu_epi8(m, first + i * th + j * tw + c));
      _mm512_mask_storeu_epi8(o + c, m, acc);
    }
  });
}

}  // namespace kernels
}  // namespace fastinfer

#pragma GCC pop_options
