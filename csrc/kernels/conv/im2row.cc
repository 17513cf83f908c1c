// Row gather for the implicit-GEMM int8 convolution (baseline C++: memcpy of channel runs).
#include "im2row.h"

#include <cstring>

namespace fastinfer {
namespace kernels {

// With width dilation 1 and one group, the KW taps of a kernel row read neighbouring input pixels,
// whose channels are one contiguous run of KW * C bytes in NHWC: one copy per kernel row where the
// row lies inside the image, not KW copies of C bytes (the 3-channel 7x7 stem of ResNet: 7 copies of
// 21 bytes per output pixel instead of 49 of 3).
void gather_conv_rows(const ConvGeometry& g, const uint8_t* x, int64_t group, int64_t m0, int64_t m1,
                      uint8_t* dst, int64_t ld, int64_t K_pad, uint8_t pad) {
  const int64_t K = g.KH * g.KW * g.cin_g;
  const size_t run = static_cast<size_t>(g.cin_g);
  const bool rows_contiguous = g.DW == 1 && g.cin_g == g.C;
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t n = m / (g.OH * g.OW), oh = (m / g.OW) % g.OH, ow = m % g.OW;
    uint8_t* row = dst + (m - m0) * ld;
    const int64_t iw0 = ow * g.SW - g.PW;
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t ih = oh * g.SH - g.PH + kh * g.DH;
      uint8_t* seg = row + kh * g.KW * g.cin_g;
      if (ih < 0 || ih >= g.H) {
        std::memset(seg, pad, run * static_cast<size_t>(g.KW));
        continue;
      }
      const uint8_t* in_row = x + (n * g.H + ih) * g.W * g.C + group * g.cin_g;
      if (rows_contiguous && iw0 >= 0 && iw0 + g.KW <= g.W) {
        std::memcpy(seg, in_row + iw0 * g.C, run * static_cast<size_t>(g.KW));
        continue;
      }
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t iw = iw0 + kw * g.DW;
        uint8_t* d = seg + kw * g.cin_g;
        if (iw < 0 || iw >= g.W)
          std::memset(d, pad, run);
        else
          std::memcpy(d, in_row + iw * g.C, run);
      }
    }
    std::memset(row + K, pad, static_cast<size_t>(K_pad - K));
  }
}

}  // namespace kernels
}  // namespace fastinfer
