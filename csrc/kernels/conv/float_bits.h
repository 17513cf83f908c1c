// The ReLU and the int8 requantization clamp on the floats' bits, with integer compares: the same code for a
// scalar (float, int32_t) and for GCC vector-extension lanes (V, I of equal width), which add.cc and
// gate_impl.h compile at their own widths. Internal linkage: the including units are compiled for different ISAs.
#pragma once
#include <cstdint>
#include <cstring>

namespace fastinfer {
namespace kernels {
namespace {

// Bits of +inf and of 127.0f
constexpr int32_t kAbs = 0x7fffffff, kInf = 0x7f800000, k127 = 0x42fe0000;
constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds |v| <= 127 half to even
constexpr int32_t kRoundBits = 0x4B400000;  // its bits: the sum's bits minus these are the integer

template <typename V, typename I>
inline V relu_bits(V y) {  // y < 0 -> 0 (-0 and NaN stay), as the reference's relu
  I u;
  std::memcpy(&u, &y, sizeof(u));
  const I mag = u & kAbs;
  u = ((u < 0) & (mag != 0) & (mag <= kInf)) ? 0 : u;
  std::memcpy(&y, &u, sizeof(u));
  return y;
}

// clamp(round_half_even(v), -127, 127) with NaN -> 0, as int32 lanes: the clamp compares magnitudes as
// integers, then adding 1.5 * 2^23 rounds |v| <= 127 half to even (std::nearbyint's result there).
template <typename V, typename I>
inline I requant_bits(V v) {
  I u;
  std::memcpy(&u, &v, sizeof(u));
  const I mag = u & kAbs;
  u = mag > kInf ? 0 : (mag > k127 ? ((u & ~kAbs) | k127) : u);
  std::memcpy(&v, &u, sizeof(u));
  v = v + kRound;
  std::memcpy(&u, &v, sizeof(u));
  return u - kRoundBits;
}

}  // namespace
}  // namespace kernels
}  // namespace fastinfer
