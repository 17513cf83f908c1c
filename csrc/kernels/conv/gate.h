// Squeeze-excitation on int8 activations (MobileNetV3, EfficientNet): the two passes a gated block makes over
// its int8 NHWC activation x, so that the block's activations stay int8 (fastinfer/nn/gate.py):
//   channel_sum:   sums[n, c] = sum over the pixels p of x[n, p, c], int32 (exact): the global average pool
//                  before the gate is float(sum) * x_scale / P, done by the entry layer.
//   channel_scale: v = float(x[n, p, c]) * f[n, c] with f = fl(x_scale * gate[n, c]) (the entry layer rounds it
//                  once); stored as fp32 v, or int8 clamp(round_half_even(v * out_inv_scale), -127, 127), NaN -> 0
//                  (the requantization of int8_gemm/EPILOGUE.md).
// Framework-free. The loops are written once (gate_impl.h, GCC vector extensions) and compiled at three vector
// widths: here with the baseline flags (16 bytes), and in the AVX2 and AVX-512 translation units.
#pragma once
#include <cstdint>

namespace fastinfer {
namespace kernels {

struct GateParams {
  const int8_t* x = nullptr;  // [N, P, C]: NHWC, P = H * W pixels
  int64_t N = 0, P = 0, C = 0;
  int32_t* sums = nullptr;    // channel_sum: [N, C]
  const float* f = nullptr;   // channel_scale: [N, C], x_scale * gate
  void* out = nullptr;        // channel_scale: [N, P, C], int8 (out_int8) or fp32
  bool out_int8 = false;
  float out_inv_scale = 1.0f;
};

// Work items of channel_sum: (image, block of kGateSumBlock channels), item i = n * blocks + b.
constexpr int64_t kGateSumBlock = 64;
inline int64_t gate_sum_items(const GateParams& p) { return p.N * ((p.C + kGateSumBlock - 1) / kGateSumBlock); }

// The portable kernels (baseline-flag vectors). channel_sum: items [i0, i1); channel_scale: pixel rows [r0, r1)
// of the flattened (n, p) range.
void channel_sum_s8(const GateParams& p, int64_t i0, int64_t i1);
void channel_scale_s8(const GateParams& p, int64_t r0, int64_t r1);

}  // namespace kernels
}  // namespace fastinfer
