// Max pooling of int8 NHWC activations: what sits between two int8 convs (a ResNet stem's 3x3/2 pool)
// so that the int8 hand-off needs no fp32 round trip. Framework-free; portable C++ (the channel loop
// vectorizes with the baseline flags). Max pooling commutes with the monotonic requantization, so the
// result is exactly the int8 image of the fp32 pooling.
#pragma once
#include <cstdint>

namespace fastinfer {
namespace kernels {

struct MaxPoolParams {
  const int8_t* x = nullptr;  // [N, H, W, C] contiguous
  int8_t* out = nullptr;      // [N, OH, OW, C] contiguous
  int64_t N = 0, H = 0, W = 0, C = 0, OH = 0, OW = 0;
  int64_t KH = 1, KW = 1, SH = 1, SW = 1, PH = 0, PW = 0, DH = 1, DW = 1;
};

// Output rows [r0, r1) of the N * OH rows (n, oh). Padding is ignored (as -inf); every window must
// hold at least one input pixel (the entry layer's check: padding <= kernel / 2).
void max_pool_nhwc_s8(const MaxPoolParams& p, int64_t r0, int64_t r1);

}  // namespace kernels
}  // namespace fastinfer
