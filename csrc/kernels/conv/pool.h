// Max and average pooling of int8 NHWC activations: what sits between two int8 convs (a ResNet stem's 3x3/2 pool)
// so that the int8 hand-off needs no fp32 round trip. Framework-free; portable C++ (the channel loop
// vectorizes with the baseline flags). Max pooling commutes with the monotonic requantization, so the
// result is exactly the int8 image of the fp32 pooling.
#pragma once
#include <cstdint>

#include "float_bits.h"
#include "window.h"

namespace fastinfer {
namespace kernels {

struct MaxPoolParams {
  const int8_t* x = nullptr;  // [N, H, W, C] contiguous
  int8_t* out = nullptr;      // [N, OH, OW, C] contiguous
  int64_t N = 0, H = 0, W = 0, C = 0, OH = 0, OW = 0;
  int64_t KH = 1, KW = 1, SH = 1, SW = 1, PH = 0, PW = 0, DH = 1, DW = 1;
};

// Output rows [r0, r1) of the N * OH rows (n, oh). Padding is ignored (as -inf); every window must
// hold at least one input pixel (the entry layer's check: padding <= kernel / 2). The portable kernel;
// KernelSet::max_pool holds the vector ones (int8_gemm/pool_avx512.cc, pool_avx2.cc).
void max_pool_nhwc_s8(const MaxPoolParams& p, int64_t r0, int64_t r1);

// Calls pixel(first, kh1 - kh0, kw1 - kw0, out) for each output pixel of output rows [r0, r1): the window's
// first valid input pixel (its taps DH * W * C and DW * C bytes apart), its valid taps and its C outputs. The
// max kernels' common walk.
template <class Pixel>
inline void max_pool_pixels(const MaxPoolParams& p, int64_t r0, int64_t r1, Pixel&& pixel) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / p.OH, oh = r % p.OH;
    int64_t kh0, kh1;
    valid_taps(oh * p.SH - p.PH, p.DH, p.KH, p.H, &kh0, &kh1);
    const int8_t* rows = p.x + (n * p.H + oh * p.SH - p.PH + kh0 * p.DH) * p.W * p.C;
    for (int64_t ow = 0; ow < p.OW; ++ow) {
      const int64_t iw0 = ow * p.SW - p.PW;
      int64_t kw0, kw1;
      valid_taps(iw0, p.DW, p.KW, p.W, &kw0, &kw1);
      pixel(rows + (iw0 + kw0 * p.DW) * p.C, kh1 - kh0, kw1 - kw0, p.out + (r * p.OW + ow) * p.C);
    }
  }
}

// Average pooling of int8 NHWC activations at one scale (a DenseNet transition's 2x2 pool, a ResNet-D shortcut's):
// out = clamp(round_half_even(float(sum of the window's values) / float(divisor)), -127, 127), the sum exact in
// int32; the output keeps the input's scale. The divisor is torch's avg_pool2d's: divisor_override when > 0, else
// the window clipped to the padded input (count_include_pad) or to the input. Unlike max pooling this rounds: the
// result is within half a step of the fp32 pooling of the dequantized input.
struct AvgPoolParams {
  const int8_t* x = nullptr;  // [N, H, W, C] contiguous
  int8_t* out = nullptr;      // [N, OH, OW, C] contiguous
  int64_t N = 0, H = 0, W = 0, C = 0, OH = 0, OW = 0;
  int64_t KH = 1, KW = 1, SH = 1, SW = 1, PH = 0, PW = 0;
  bool count_include_pad = true;
  int64_t divisor_override = 0;
};

// Output rows [r0, r1) of the N * OH rows (n, oh); every window holds at least one input pixel (the entry's check).
// The portable kernel; KernelSet::avg_pool holds the vector ones (int8_gemm/pool_avx512.cc).
void avg_pool_nhwc_s8(const AvgPoolParams& p, int64_t r0, int64_t r1);

// One dimension of an output's window: its input taps [i0, i1) and its extent for the divisor, torch's rule (the
// window clipped to the padded input for count_include_pad, to the input otherwise).
struct AvgSpan {
  int64_t i0, i1, padded;
};
inline AvgSpan avg_span(int64_t o, int64_t stride, int64_t pad, int64_t k, int64_t size) {
  const int64_t a = o * stride - pad, b = a + k < size + pad ? a + k : size + pad;
  return {a > 0 ? a : 0, b < size ? b : size, b - a};
}
inline int64_t avg_divisor(const AvgPoolParams& p, const AvgSpan& h, const AvgSpan& w) {
  if (p.divisor_override > 0) return p.divisor_override;
  return p.count_include_pad ? h.padded * w.padded : (h.i1 - h.i0) * (w.i1 - w.i0);
}

// clamp(round_half_even(sum / d), -127, 127): float_bits.h's requantization rule on the quotient (d > 0, so never
// NaN), integer compares and an add of 1.5 * 2^23, which vectorizes where std::nearbyint is a libm call at the
// baseline flags (2x faster on Inception v3's 3x3 poolings).
inline int8_t avg_round(int32_t sum, float d) {
  return static_cast<int8_t>(requant_bits<float, int32_t>(static_cast<float>(sum) / d));
}

// The most taps a window of the vector kernels may hold: they sum as int16 lanes (258 * 127 < 2^15); larger
// windows take the portable kernel.
constexpr int64_t kAvgInt16Taps = 258;

// Calls pixel(img, h, w, divisor, out) for each output pixel of output rows [r0, r1): its image's input [H, W, C],
// its window, torch's divisor and its C outputs. The kernels' common walk.
template <class Pixel>
inline void avg_pool_pixels(const AvgPoolParams& p, int64_t r0, int64_t r1, Pixel&& pixel) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / p.OH, oh = r % p.OH;
    const AvgSpan h = avg_span(oh, p.SH, p.PH, p.KH, p.H);
    const int8_t* img = p.x + n * p.H * p.W * p.C;
    for (int64_t ow = 0; ow < p.OW; ++ow) {
      const AvgSpan w = avg_span(ow, p.SW, p.PW, p.KW, p.W);
      pixel(img, h, w, avg_divisor(p, h, w), p.out + (r * p.OW + ow) * p.C);
    }
  }
}

}  // namespace kernels
}  // namespace fastinfer
