// Scalar sparse x dense kernels: the oracles of the vector paths and the fallback on any CPU.
#include <algorithm>
#include <vector>

#include "sparse.h"

namespace fastinfer {
namespace kernels {

void csr_linear_ref(const CsrParams& p, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m = 0; m < p.M; ++m) {
      const float* x = p.x + m * p.ldx;
      float acc = 0.0f;
      for (int32_t i = p.row_ptr[n]; i < p.row_ptr[n + 1]; ++i) {
        const int64_t col = p.offsets ? int64_t{p.group_base[i / kCsrPad]} + (p.offsets[i] & 63) : int64_t{p.cols[i]};
        acc += p.vals[i] * x[std::min<int64_t>(col, p.K - 1)];
      }
      p.out[m * p.ldo + n] = p.bias ? acc + p.bias[n] : acc;
    }
  }
}

void slot128_linear_ref(const Slot128Params& p, int64_t b0, int64_t b1) {
  std::vector<uint32_t> acc(kSlotRows);  // unsigned: wraps like the vector kernel's int32 lanes, no UB
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t m = 0; m < p.M; ++m) {
      const uint8_t* x = p.xq + m * p.ldxq;
      std::fill(acc.begin(), acc.end(), 0u);
      for (int64_t s = 0; s < p.segs; ++s) {
        for (int32_t g = p.grp_ptr[b * p.segs + s]; g < p.grp_ptr[b * p.segs + s + 1]; ++g) {
          const uint8_t* idx = p.idx + int64_t{g} * kSlotGroup;
          const int8_t* w = p.vals + int64_t{g} * kSlotGroup;
          for (int j = 0; j < kSlotGroup; ++j)
            acc[j / 4] += static_cast<uint32_t>(x[s * kSlotSeg + (idx[j] & 127)] * int32_t{w[j]});
        }
      }
      for (int64_t r = 0; r < kSlotRows && b * kSlotRows + r < p.N; ++r) {
        const int64_t n = b * kSlotRows + r;
        const auto exact = static_cast<int32_t>(acc[r] - 128u * static_cast<uint32_t>(p.w_sum[n]));
        float y = static_cast<float>(exact) * p.x_scale[m] * p.w_scale[n];
        if (p.bias) y = y + p.bias[n];
        p.out[m * p.ldo + n] = y;
      }
    }
  }
}

}  // namespace kernels
}  // namespace fastinfer
