// The loop of the register-tile direct convolutions (AVX-512 VNNI, AVX-VNNI and AVX2: tiles of at most MR
// output pixels within one output row). No intrinsics: the ISA files pass their tile kernel in.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "pack.h"
#include "params.h"

namespace fastinfer {
namespace kernels {

// One tap of a direct convolution's tile: its input bytes from the first tap's (>= 0: taps run in (kh, kw)
// order) and its packed-weight bytes from the column block's start (K offset * kPackNB).
struct ConvTap {
  int64_t x;
  int64_t b;
};

// The taps of cp's tap box (ConvDirectParams::kh0 ...) into `taps` (cp.KH * cp.KW entries at least); returns
// their count and sets *first to the first tap's input offset from the window's origin.
inline int64_t conv_box_taps(const ConvDirectParams& cp, ConvTap* taps, int64_t* first) {
  const int64_t kh1 = cp.kh1 < 0 ? cp.KH : cp.kh1, kw1 = cp.row_seg ? 1 : cp.kw1 < 0 ? cp.KW : cp.kw1;
  const int64_t kw0 = cp.row_seg ? 0 : cp.kw0;
  int64_t t = 0;
  for (int64_t kh = cp.kh0; kh < kh1; ++kh)
    for (int64_t kw = kw0; kw < kw1; ++kw, ++t) {
      taps[t].x = (kh * cp.DH * cp.Wp + kw * cp.DW) * cp.C;
      taps[t].b = (cp.row_seg ? kh * cp.row_seg : (kh * cp.KW + kw) * cp.C) * kPackNB;
    }
  *first = t > 0 ? taps[0].x : 0;
  for (int64_t i = 0; i < t; ++i) taps[i].x -= *first;
  return t;
}

// Output rows [r0, r1) of the flattened (n, oh) range, output columns [ow0, ow1) of each (the tap box's:
// all of OW by default), weight columns [n0, n1), in column steps of NB packed 16-column blocks. Each
// row's columns are split into ceil(width / MR) tiles of near-equal width (56 pixels, MR 6: 6 x 6 + 4 x 5,
// not 9 x 6 + 2): a narrow tile costs loads, not products, but the even split keeps every tile
// load-light. tile(width, blocks, taps, ntaps, a0, out_row, n) computes `width` pixels into output row
// out_row, columns n ...: tap t of pixel i reads a0 + taps[t].x + i * SW * C and the weight block at
// taps[t].b. a0 is the first tap's address, formed from integer offsets (x_origin included) so that it
// points into x even where the window's origin lies in padding that an in-place input does not hold.
template <int MR, int NB, class Tile>
void conv_direct_rows(const ConvDirectParams& cp, int64_t r0, int64_t r1, int64_t n0, int64_t n1, const Tile& tile) {
  if (r1 <= r0) return;
  constexpr int64_t kStackTaps = 64;  // a 7x7 kernel's 49 taps, or a few-channel layer's kernel rows
  ConvTap stack_taps[kStackTaps];
  std::vector<ConvTap> heap_taps;
  ConvTap* taps = stack_taps;
  if (cp.KH * cp.KW > kStackTaps) {
    heap_taps.resize(static_cast<size_t>(cp.KH * cp.KW));
    taps = heap_taps.data();
  }
  int64_t first = 0;
  const int64_t ntaps = conv_box_taps(cp, taps, &first);
  const uint8_t* x = reinterpret_cast<const uint8_t*>(cp.x);
  const int64_t image = cp.Hp * cp.Wp * cp.C;
  const int64_t ow0 = cp.ow0, ow1 = cp.ow1 < 0 ? cp.OW : cp.ow1, tiles = (ow1 - ow0 + MR - 1) / MR;
  n1 = std::min(n1, round_up(cp.gemm.N, kPackNB));
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t in_row = cp.x_origin + (row / cp.OH) * image + (row % cp.OH) * cp.SH * cp.Wp * cp.C + first;
    for (int64_t k = 0; k < tiles; ++k) {
      const int64_t w0 = ow0 + k * (ow1 - ow0) / tiles, w1 = ow0 + (k + 1) * (ow1 - ow0) / tiles;
      // Column steps innermost: a pixel's output columns [n0, n1) are written one after the other (a
      // 64-column panel of int8 is one cache line), the tile's input stays in L1, the panel's weights in L1/L2.
      for (int64_t n = n0; n < n1; n += 16 * NB)
        tile(w1 - w0, std::min<int64_t>(NB, (n1 - n) / 16), taps, ntaps, x + (in_row + w0 * cp.SW * cp.C),
             row * cp.OW + w0, n);
    }
  }
}

}  // namespace kernels
}  // namespace fastinfer
