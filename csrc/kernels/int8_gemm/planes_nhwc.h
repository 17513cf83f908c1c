// The skeleton of the kernels that quantize an NCHW fp32 image into NHWC int8 (QuantizePlanesParams;
// avx512_vnni.cc, avx2.cc): blocks of 16 channels x 16 pixels, each channel's 16 values quantized to one
// 16-byte row by the kernel's own `row`, the 16 x 16 byte block transposed in registers, each pixel's 16
// channels handed to the kernel's `store`.
// Baseline x86-64 (SSE2) intrinsics only. Include it after the ISA's `#pragma GCC target` (as dw_row_quads.h),
// so that the template, instantiated with the kernel's lambdas, inlines them. The including file includes
// <immintrin.h>, <algorithm> and params.h before the pragma.
#pragma once

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

// Pixels [p0, p1) of the image. row(src, np): the 16 bytes of one channel's np (1-16) values from src;
// store(dst, row, nc, room): pixel's nc (1-16) channels, the first nc bytes of row, to dst, with room bytes from
// dst to the end of this call's pixels. Channel blocks go from the last down (avx2.cc's whole-row stores need it),
// each over all the call's pixels: 16 planes read front to back at a time, which the hardware prefetchers follow
// (with pixel blocks outside, reading all C planes 64 bytes at a time, the l1 1x1 convolution on its 256-channel
// NCHW input ran 1.35x slower: 2.65x instead of 3.58x the copy-first path).
template <typename Row, typename Store>
inline void quantize_planes_blocks(const QuantizePlanesParams& p, int64_t p0, int64_t p1, Row&& row, Store&& store) {
  const int64_t C = p.C, HW = p.HW;
  for (int64_t c0 = (C - 1) / 16 * 16; c0 >= 0; c0 -= 16) {
    const int64_t nc = std::min<int64_t>(16, C - c0);
    for (int64_t px = p0; px < p1; px += 16) {
      const int64_t np = std::min<int64_t>(16, p1 - px);
      __m128i r[16];
      for (int i = 0; i < 16; ++i) r[i] = i < nc ? row(p.x + (c0 + i) * HW + px, np) : _mm_setzero_si128();
      transpose16x16_bytes(r);
      int8_t* const dst = p.out + px * C + c0;
      const int64_t room = (p1 - px) * C - c0;
      for (int j = 0; j < np; ++j) store(dst + j * C, r[kTransposedRow[j]], nc, room - j * C);
    }
  }
}

}  // namespace kernels
}  // namespace fastinfer
