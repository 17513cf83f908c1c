// The epilogue's output kinds and fused activations, shared by the CPU and the CUDA kernels' parameter
// structs (csrc/kernels/int8_gemm/params.h, csrc/kernels/cuda/params.h): one definition, so both
// backends name the same choices with the same values. Plain C++, no framework.
#pragma once
#include <cstdint>

namespace fastinfer {

// Float16 is produced by the CUDA kernels only (the CPU ops take and return fp32 / bf16).
enum class OutKind : int32_t { Int32 = 0, Float32 = 1, BFloat16 = 2, Int8 = 3, Float16 = 4 };
// Activation fused into the float epilogue (before an Int8 requantization). Gelu: the erf form. Hardswish:
// y * min(max(y + 3, 0), 6) / 6, one fp32 rounding an operation in that order (torch's F.hardswish gives the
// same bits), NaN kept. Silu: y / (1 + exp(-y)) (the vector kernels' exp is a polynomial, as gelu's erf).
enum class Act : int32_t { None = 0, Relu = 1, Relu6 = 2, Gelu = 3, Hardswish = 4, Silu = 5 };

// Whether a convolution's folded epilogue (EPILOGUE.md, "Convolutions") folds the int8 output scale
// into its per-channel scale and bias too: the activations that commute with a positive scale (relu6's
// 6, gelu, hardswish and silu do not).
inline bool folds_out_inv(Act act) { return act == Act::None || act == Act::Relu; }

// The CPU kernels' folded int8 clamp bound (int8_gemm/EPILOGUE.md, "Convolutions"): 127, or for relu6, whose
// out_inv is not folded, min(fl(6 * out_inv), 127). For out_inv > 0, relu6(y) * out_inv equals
// min(max(y * out_inv, 0), fl(6 * out_inv)) bit for bit (rounding is monotone: y <= 6 gives
// fl(y * out_inv) <= fl(6 * out_inv)), so the vector kernels multiply first and clamp once: a min fewer.
// ReLU and ReLU6 on a folded int8 output take their max against 0 on the packed bytes (int8_gemm/EPILOGUE.md,
// "ReLU on the packed bytes"): it replaces the -127 floor, and relu6's cap stays in folded_int8_hi.
constexpr bool relu_on_bytes(Act act) { return act == Act::Relu || act == Act::Relu6; }

inline float folded_int8_hi(Act act, float out_inv) {
  const float six = 6.0f * out_inv;
  return act == Act::Relu6 && six < 127.0f ? six : 127.0f;
}

}  // namespace fastinfer
