// Scalar epilogue pieces shared by every ISA (no intrinsics: safe in any translation unit).
// The vector kernels apply the same algebra lane-wise; EPILOGUE.md writes it down.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "params.h"

namespace fastinfer {
namespace kernels {

// fp32 -> bf16, round to nearest even; NaN -> 0x7FC0 (same as c10::BFloat16).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float apply_act(float y, Act act) {
  // max/min written so NaN stays NaN (as torch.relu / hardtanh do).
  if (act == Act::None) return y;
  if (act == Act::Gelu) return 0.5f * y * (1.0f + std::erf(y * 0.70710678118654752f));
  if (act == Act::Hardswish) {
    float t = y + 3.0f;
    t = t < 0.0f ? 0.0f : t;
    t = t > 6.0f ? 6.0f : t;
    return y * t / 6.0f;
  }
  if (act == Act::Silu) return y / (1.0f + std::exp(-y));
  y = y < 0.0f ? 0.0f : y;
  return (act == Act::Relu6 && y > 6.0f) ? 6.0f : y;
}

// Dequantize + bias + activation for one output element, the order every kernel uses.
inline float dequant(int32_t acc, float a_scale, float b_scale, const float* bias, int64_t n, Act act = Act::None) {
  float y = static_cast<float>(acc) * a_scale * b_scale;
  return apply_act(bias ? y + bias[n] : y, act);
}

// Requantization to int8 (symmetric): NaN -> 0.
inline int8_t requant(float y, float out_inv_scale) {
  float r = std::nearbyint(y * out_inv_scale);
  if (!(r == r)) return 0;
  return static_cast<int8_t>(r < -127.0f ? -127.0f : (r > 127.0f ? 127.0f : r));
}

inline void store_out(void* out, int64_t idx, OutKind kind, float v, float out_inv_scale = 1.0f) {
  if (kind == OutKind::BFloat16)
    static_cast<uint16_t*>(out)[idx] = f32_to_bf16(v);
  else if (kind == OutKind::Int8)
    static_cast<int8_t*>(out)[idx] = requant(v, out_inv_scale);
  else
    static_cast<float*>(out)[idx] = v;
}

// Quantizes one value with a fixed inverse scale (static per-tensor rule): NaN -> 0.
inline int32_t quant_static(float x, float inv) {
  float r = std::nearbyint(x * inv);
  if (!(r == r)) return 0;
  return static_cast<int32_t>(r < -127.0f ? -127.0f : (r > 127.0f ? 127.0f : r));
}

// Row scale rule of QuantizeParams, given amax as raw |x| bits (NaN/Inf >= 0x7f800000).
// Returns the multiplier applied to x (0 for an all-zero or non-finite row) and sets *scale.
inline float quant_row_inverse(uint32_t amax_bits, float* scale) {
  if (amax_bits >= 0x7f800000u) {
    *scale = std::nanf("");
    return 0.0f;
  }
  float amax;
  std::memcpy(&amax, &amax_bits, 4);
  const float inv = 127.0f / amax;
  if (amax == 0.0f || !std::isfinite(inv)) {
    *scale = 0.0f;
    return 0.0f;
  }
  *scale = amax / 127.0f;
  return inv;
}

}  // namespace kernels
}  // namespace fastinfer
