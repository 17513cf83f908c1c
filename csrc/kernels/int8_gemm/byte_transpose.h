// A 16 x 16 byte block transposed in SSE2 registers, for the kernels that quantize NCHW planes into NHWC rows
// (QuantizePlanesParams: AVX-512 and AVX2). Baseline x86-64 instructions only, so any ISA's file may include it.
#pragma once

#include <immintrin.h>

namespace fastinfer {
namespace kernels {

// Row bitrev4(j) of the result holds column j of the input (four rounds of unpacks, bytes, words, dwords, qwords,
// each pairing rows 2i and 2i + 1, leave the rows in bit-reversed order; the stores pick them through this table).
constexpr int kTransposedRow[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};

inline void transpose16x16_bytes(__m128i r[16]) {
  __m128i t[16];
  for (int i = 0; i < 8; ++i) {
    t[i] = _mm_unpacklo_epi8(r[2 * i], r[2 * i + 1]);
    t[i + 8] = _mm_unpackhi_epi8(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm_unpacklo_epi16(t[2 * i], t[2 * i + 1]);
    r[i + 8] = _mm_unpackhi_epi16(t[2 * i], t[2 * i + 1]);
  }
  for (int i = 0; i < 8; ++i) {
    t[i] = _mm_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[i + 8] = _mm_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm_unpacklo_epi64(t[2 * i], t[2 * i + 1]);
    r[i + 8] = _mm_unpackhi_epi64(t[2 * i], t[2 * i + 1]);
  }
}

}  // namespace kernels
}  // namespace fastinfer
