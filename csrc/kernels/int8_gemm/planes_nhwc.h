// The skeleton of the kernels that quantize an NCHW fp32 image into NHWC int8 (QuantizePlanesParams;
// avx512_vnni.cc, avx2.cc): blocks of 16 channels x 16 pixels, each channel's 16 values quantized to one
// 16-byte row by the kernel's own `row`, the 16 x 16 byte block transposed in registers, each pixel's 16
// channels handed to the kernel's `store`.
// Baseline x86-64 (SSE2) intrinsics and SSSE3's byte shuffle only. Include it after the ISA's `#pragma GCC
// target` (as dw_row_quads.h), so that the template, instantiated with the kernel's lambdas, inlines them. The
// including file includes <immintrin.h>, <algorithm> and params.h before the pragma.
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

// A few channels (2 <= C <= 4: RGB or RGBA first layers): each 16-pixel block's C channel rows interleave into
// 16 * C bytes by byte shuffles, output vector o, byte b taking pixel (16 o + b) / C of channel (16 o + b) % C,
// instead of a 16 x 16 transpose for C useful rows and one store a pixel. kFewChannelPick[C - 1][o][ch] is the
// shuffle that picks channel ch's bytes of output vector o (0x80 elsewhere: zero, OR-ed away). In-process A/B
// against the transpose (AMD Zen 4, 2 threads, 2026-12-06), whole convolutions on an NCHW fp32 input:
// MobileNetV2's 3 -> 32 3x3 stride-2 stem at 224 x 224 1.25x (batch 1) / 1.27x (batch 8), the same with 4
// channels 1.23x, ResNet's 7x7 stem (whose products dominate) 1.05-1.06x.
constexpr int kFewChannelsMax = 4;
struct FewChannelPicks {
  unsigned char b[kFewChannelsMax][kFewChannelsMax][kFewChannelsMax][16];
};
constexpr FewChannelPicks few_channel_picks() {
  FewChannelPicks t{};
  for (int C = 2; C <= kFewChannelsMax; ++C)
    for (int o = 0; o < C; ++o)
      for (int ch = 0; ch < C; ++ch)
        for (int b = 0; b < 16; ++b) {
          const int j = 16 * o + b;
          t.b[C - 1][o][ch][b] = j % C == ch ? static_cast<unsigned char>(j / C) : 0x80;
        }
  return t;
}
inline constexpr FewChannelPicks kFewChannelPick = few_channel_picks();

template <int C, typename Row, typename Store>
inline void quantize_few_channels(const QuantizePlanesParams& p, int64_t p0, int64_t p1, Row& row, Store& store) {
  __m128i pick[C][C];
  for (int o = 0; o < C; ++o)
    for (int ch = 0; ch < C; ++ch)
      pick[o][ch] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kFewChannelPick.b[C - 1][o][ch]));
  for (int64_t px = p0; px < p1; px += 16) {
    const int64_t np = std::min<int64_t>(16, p1 - px), bytes = np * C;
    __m128i r[C];
    for (int ch = 0; ch < C; ++ch) r[ch] = row(p.x + ch * p.HW + px, np);
    int8_t* const dst = p.out + px * C;
    const int64_t room = (p1 - px) * C;
    for (int o = 0; o < C && 16 * o < bytes; ++o) {
      __m128i v = _mm_shuffle_epi8(r[0], pick[o][0]);
      for (int ch = 1; ch < C; ++ch) v = _mm_or_si128(v, _mm_shuffle_epi8(r[ch], pick[o][ch]));
      store(dst + 16 * o, v, std::min<int64_t>(16, bytes - 16 * o), room - 16 * o);
    }
  }
}

// Pixels [p0, p1) of the image. row(src, np): the 16 bytes of one channel's np (1-16) values from src;
// store(dst, row, nc, room): the first nc (1-16) bytes of row (a pixel's nc channels; with few channels, 16 / C
// pixels' interleaved ones) to dst, with room bytes from dst to the end of this call's pixels. Channel blocks go
// from the last down (avx2.cc's whole-row stores need it), each over all the call's pixels: 16 planes read
// front to back at a time, which the hardware prefetchers follow
// (with pixel blocks outside, reading all C planes 64 bytes at a time, the l1 1x1 convolution on its 256-channel
// NCHW input ran 1.35x slower: 2.65x instead of 3.58x the copy-first path).
template <typename Row, typename Store>
inline void quantize_planes_blocks(const QuantizePlanesParams& p, int64_t p0, int64_t p1, Row&& row, Store&& store) {
  const int64_t C = p.C, HW = p.HW;
  switch (C) {  // C == 1 never comes here: its NCHW tensor is already NHWC
    case 2: return quantize_few_channels<2>(p, p0, p1, row, store);
    case 3: return quantize_few_channels<3>(p, p0, p1, row, store);
    case 4: return quantize_few_channels<4>(p, p0, p1, row, store);
    default: break;
  }
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
