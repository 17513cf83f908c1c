// Scalar sparse x dense kernel: the oracle of the vector path and the fallback on any CPU.
#include <algorithm>

#include "sparse.h"

namespace fastinfer {
namespace kernels {

void sparse_linear_ref(const SparseParams& p, int64_t n0, int64_t n1) {
  const auto* f32 = static_cast<const float*>(p.vals);
  const auto* i8 = static_cast<const int8_t*>(p.vals);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m = 0; m < p.M; ++m) {
      const float* x = p.x + m * p.ldx;
      float acc = 0.0f;
      for (int32_t i = p.row_ptr[n]; i < p.row_ptr[n + 1]; ++i) {
        const int64_t k = std::min<int64_t>(p.cols[i], p.K - 1);
        acc += (p.int8_vals ? static_cast<float>(i8[i]) : f32[i]) * x[k];
      }
      float y = p.int8_vals ? acc * p.w_scale[n] : acc;
      if (p.bias) y += p.bias[n];
      p.out[m * p.ldo + n] = y;
    }
  }
}

}  // namespace kernels
}  // namespace fastinfer
