// int8 NHWC max pooling (see pool.h).
#include "pool.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "window.h"

namespace fastinfer {
namespace kernels {

void max_pool_nhwc_s8(const MaxPoolParams& p, int64_t r0, int64_t r1) {
  const int64_t C = p.C;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / p.OH, oh = r % p.OH;
    int64_t kh0, kh1;
    valid_taps(oh * p.SH - p.PH, p.DH, p.KH, p.H, &kh0, &kh1);
    const int8_t* img = p.x + n * p.H * p.W * C;
    int8_t* orow = p.out + r * p.OW * C;
    for (int64_t ow = 0; ow < p.OW; ++ow) {
      const int64_t iw0 = ow * p.SW - p.PW;
      int64_t kw0, kw1;
      valid_taps(iw0, p.DW, p.KW, p.W, &kw0, &kw1);
      int8_t* o = orow + ow * C;
      bool first = true;
      for (int64_t kh = kh0; kh < kh1; ++kh) {
        const int8_t* irow = img + (oh * p.SH - p.PH + kh * p.DH) * p.W * C;
        for (int64_t kw = kw0; kw < kw1; ++kw) {
          const int8_t* in = irow + (iw0 + kw * p.DW) * C;
          if (first) {
            std::memcpy(o, in, static_cast<size_t>(C));
            first = false;
            continue;
          }
          for (int64_t c = 0; c < C; ++c) o[c] = std::max(o[c], in[c]);
        }
      }
    }
  }
}

void avg_pool_nhwc_s8(const AvgPoolParams& p, int64_t r0, int64_t r1) {
  const int64_t C = p.C;
  std::vector<int32_t> acc(static_cast<size_t>(C));
  avg_pool_pixels(p, r0, r1, [&](const int8_t* img, const AvgSpan& h, const AvgSpan& w, int64_t divisor, int8_t* o) {
    int32_t* sums = acc.data();
    std::fill(sums, sums + C, 0);
    for (int64_t ih = h.i0; ih < h.i1; ++ih)
      for (int64_t iw = w.i0; iw < w.i1; ++iw) {
        const int8_t* in = img + (ih * p.W + iw) * C;
        for (int64_t c = 0; c < C; ++c) sums[c] += in[c];
      }
    const float d = static_cast<float>(divisor);
    for (int64_t c = 0; c < C; ++c) o[c] = avg_round(sums[c], d);
  });
}

}  // namespace kernels
}  // namespace fastinfer
