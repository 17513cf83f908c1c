// Window arithmetic shared by the pooling kernel and the convolution entry layer. Framework-free.
#pragma once
#include <cstdint>

namespace fastinfer {
namespace kernels {

// The taps t in [t0, t1) of a window whose input index i0 + t * d lies in [0, size) (t0 == t1: none).
inline void valid_taps(int64_t i0, int64_t d, int64_t k, int64_t size, int64_t* t0, int64_t* t1) {
  int64_t a = 0, b = k;
  while (a < b && i0 + a * d < 0) ++a;
  while (b > a && i0 + (b - 1) * d >= size) --b;
  *t0 = a;
  *t1 = b;
}

}  // namespace kernels
}  // namespace fastinfer
