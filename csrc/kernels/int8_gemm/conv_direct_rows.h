// The loop of the VNNI direct convolutions (AVX-512 VNNI and AVX-VNNI: register tiles of at most MR
// output pixels within one output row). No intrinsics: the ISA files pass their tile kernel in.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "pack.h"
#include "params.h"

namespace fastinfer {
namespace kernels {

// Output rows [r0, r1) of the flattened (n, oh) range, columns [n0, n1), in column steps of NB packed
// 16-column blocks. Each output row is split into ceil(OW / MR) tiles of near-equal width (56 pixels,
// MR 6: 6 x 6 + 4 x 5, not 9 x 6 + 2): a narrow tile costs loads, not products, but the even split keeps
// every tile load-light. tile(width, blocks, tap_off, a0, out_row, n) computes `width` pixels from the
// padded input at a0 (tap t's bytes at a0 + tap_off[t]) into output row out_row, columns n ...
template <int MR, int NB, class Tile>
void conv_direct_rows(const ConvDirectParams& cp, int64_t r0, int64_t r1, int64_t n0, int64_t n1, const Tile& tile) {
  if (r1 <= r0) return;
  const int64_t kws = cp.row_seg ? 1 : cp.KW;  // row segments: one offset per kernel row
  std::vector<int64_t> tap_off(static_cast<size_t>(cp.KH * kws));  // once per call (many rows)
  for (int64_t kh = 0, t = 0; kh < cp.KH; ++kh)
    for (int64_t kw = 0; kw < kws; ++kw, ++t) tap_off[t] = (kh * cp.DH * cp.Wp + kw * cp.DW) * cp.C;
  const uint8_t* x = reinterpret_cast<const uint8_t*>(cp.x);
  const int64_t image = cp.Hp * cp.Wp * cp.C, tiles = (cp.OW + MR - 1) / MR;
  n1 = std::min(n1, round_up(cp.gemm.N, kPackNB));
  for (int64_t row = r0; row < r1; ++row) {
    const uint8_t* in_row = x + (row / cp.OH) * image + (row % cp.OH) * cp.SH * cp.Wp * cp.C;
    for (int64_t k = 0; k < tiles; ++k) {
      const int64_t w0 = k * cp.OW / tiles, w1 = (k + 1) * cp.OW / tiles;
      // Column steps innermost: a pixel's output columns [n0, n1) are written one after the other (a
      // 64-column panel of int8 is one cache line), the tile's input stays in L1, the panel's weights in L1/L2.
      for (int64_t n = n0; n < n1; n += 16 * NB)
        tile(w1 - w0, std::min<int64_t>(NB, (n1 - n) / 16), tap_off.data(), in_row + w0 * cp.SW * cp.C, row * cp.OW + w0, n);
    }
  }
}

}  // namespace kernels
}  // namespace fastinfer
