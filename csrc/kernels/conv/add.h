// Residual add of two activations, each int8 (with its scale) or fp32, with an optional ReLU and an
// optional requantization to int8: what ends a ResNet block, so that the residual stream between int8
// blocks stays int8. Framework-free; portable C++ written so that the loop vectorizes with the baseline
// flags (the requantization clamps, then rounds by adding 1.5 * 2^23: round-half-even, exactly
// std::nearbyint's result for |v| <= 127).
#pragma once
#include <cstdint>

namespace fastinfer {
namespace kernels {

struct AddParams {
  const void* a = nullptr;  // int8 or fp32, n contiguous elements
  const void* b = nullptr;
  bool a_int8 = false, b_int8 = false;
  float a_scale = 1.0f, b_scale = 1.0f;  // int8 operands: value = q * scale
  bool relu = false;
  void* out = nullptr;      // fp32, or int8 when out_int8
  bool out_int8 = false;
  float out_inv_scale = 1.0f;  // int8 out: q = clamp(round_half_even(y * out_inv_scale), -127, 127), NaN -> 0
};

// y = (a' + b'), a' = a * a_scale for an int8 a (a itself for fp32), the same for b; relu; store.
// Elements [i0, i1).
void add_act(const AddParams& p, int64_t i0, int64_t i1);

}  // namespace kernels
}  // namespace fastinfer
