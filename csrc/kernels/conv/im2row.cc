// Row gather for the implicit-GEMM int8 convolution (baseline C++: memcpy of channel runs).
#include "im2row.h"

#include <cstring>

namespace fastinfer {
namespace kernels {

void gather_conv_rows(const ConvGeometry& g, const uint8_t* x, int64_t group, int64_t m0, int64_t m1,
                      uint8_t* dst, int64_t ld, int64_t K_pad, uint8_t pad) {
  const int64_t K = g.KH * g.KW * g.cin_g;
  const size_t run = static_cast<size_t>(g.cin_g);
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t n = m / (g.OH * g.OW), oh = (m / g.OW) % g.OH, ow = m % g.OW;
    uint8_t* row = dst + (m - m0) * ld;
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t ih = oh * g.SH - g.PH + kh * g.DH;
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t iw = ow * g.SW - g.PW + kw * g.DW;
        uint8_t* d = row + (kh * g.KW + kw) * g.cin_g;
        if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W)
          std::memset(d, pad, run);
        else
          std::memcpy(d, x + ((n * g.H + ih) * g.W + iw) * g.C + group * g.cin_g, run);
      }
    }
    std::memset(row + K, pad, static_cast<size_t>(K_pad - K));
  }
}

}  // namespace kernels
}  // namespace fastinfer
