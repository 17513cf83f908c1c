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
  const int64_t C = p.C, th = p.DH * p.W * C, tw = p.DW * C;
  max_pool_pixels(p, r0, r1, [&](const int8_t* first, int64_t kh, int64_t kw, int8_t* o) {
    std::memcpy(o, first, static_cast<size_t>(C));
    for (int64_t i = 0; i < kh; ++i)
      for (int64_t j = 0; j < kw; ++j) {
        const int8_t* in = first + i * th + j * tw;
        for (int64_t c = 0; c < C; ++c) o[c] = std::max(o[c], in[c]);
      }
  });
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
