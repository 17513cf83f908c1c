// Residual add of two activations, each int8 (with its scale) or fp32, with an optional ReLU and an
// optional requantization to int8: what ends a ResNet block, so that the residual stream between int8
// blocks stays int8. Framework-free; portable C++ written so that the loop vectorizes with the baseline
// flags (the requantization clamps, then rounds by adding 1.5 * 2^23: round-half-even, exactly
// std::nearbyint's result for |v| <= 127).
#pragma once
#include <cstdint>
#include <type_traits>

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
// Elements [i0, i1). The portable kernel; the AVX2 and AVX-512 kernel sets have their own.
void add_act(const AddParams& p, int64_t i0, int64_t i1);

// Calls loop(a_int8, b_int8, relu, out_int8) with std::bool_constant arguments for p's case, so that each
// kernel instantiates one loop per combination: loop<decltype(a8)::value, ...>(...).
template <typename Loop>
inline void dispatch_add(const AddParams& p, Loop&& loop) {
  auto out = [&](auto a8, auto b8) {
    if (p.relu)
      p.out_int8 ? loop(a8, b8, std::true_type{}, std::true_type{}) : loop(a8, b8, std::true_type{}, std::false_type{});
    else
      p.out_int8 ? loop(a8, b8, std::false_type{}, std::true_type{}) : loop(a8, b8, std::false_type{}, std::false_type{});
  };
  if (p.a_int8)
    p.b_int8 ? out(std::true_type{}, std::true_type{}) : out(std::true_type{}, std::false_type{});
  else
    p.b_int8 ? out(std::false_type{}, std::true_type{}) : out(std::false_type{}, std::false_type{});
}

}  // namespace kernels
}  // namespace fastinfer
