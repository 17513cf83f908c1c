// Framework-free parameter structs for the int8 GEMM family (no torch headers here).
// The entry layer (csrc/cpu) fills these from checked tensors; kernels only read them.
#pragma once
#include <cstdint>

namespace fastinfer {
namespace kernels {

enum class OutKind : int32_t { Int32 = 0, Float32 = 1, BFloat16 = 2 };

// Y[m, n] for m in [0, M), n in [0, N):
//   acc   = sum_k A_u8[m, k] * B[n, k] - 128 * colsum[n]        (== sum_k A_s8 * B, exact)
//   Int32 : Y = acc
//   Float : Y = float(acc) * a_scale[m] * b_scale[n] (+ bias[n])  (see EPILOGUE.md)
struct Int8GemmParams {
  int64_t M = 0, N = 0, K = 0;
  int64_t K_pad = 0;            // K rounded up to 4; A rows hold K_pad valid bytes
  const uint8_t* a = nullptr;   // activations, s8 + 128 stored as u8, row-major
  int64_t lda = 0;              // bytes between rows of a (>= K_pad)
  const int8_t* b = nullptr;    // packed weight data (PACKING.md, format n16k4)
  const int32_t* b_colsum = nullptr;  // per output channel sum_k B[n, k], length N_pad
  const float* a_scale = nullptr;     // [M], per token (float outputs only)
  const float* b_scale = nullptr;     // [N], per output channel (float outputs only)
  const float* bias = nullptr;        // [N] or null
  void* out = nullptr;
  int64_t ldo = 0;              // elements between rows of out
  OutKind out_kind = OutKind::Int32;
};

// Weight-only int8: Y = (X_f32 . B^T) * b_scale[n] (+ bias[n]); weights dequantized on the fly.
struct W8GemmParams {
  int64_t M = 0, N = 0, K = 0;
  const float* a = nullptr;     // fp32 activations, row-major, K valid floats per row
  int64_t lda = 0;              // floats between rows
  const int8_t* b = nullptr;    // packed weight data (n16k4)
  int64_t K_pad = 0;
  const float* b_scale = nullptr;
  const float* bias = nullptr;
  void* out = nullptr;
  int64_t ldo = 0;
  OutKind out_kind = OutKind::Float32;  // Float32 or BFloat16
};

// Per-token symmetric quantization of rows of X (fp32 or bf16) to int8.
//   amax = max_k |x|; inv = 127 / amax; q = clamp(round_half_even(x * inv), -127, 127)
//   scale = amax / 127.  amax == 0 or inv not finite (amax subnormal): q = 0, scale = 0.
//   Any NaN/Inf in the row: q = 0, scale = NaN, so the row's GEMM output is NaN.
struct QuantizeParams {
  int64_t M = 0, K = 0;
  const void* x = nullptr;
  bool x_is_bf16 = false;
  int64_t ldx = 0;              // elements between rows of x
  void* q = nullptr;            // int8 (or u8 = q + 128 when shift128)
  int64_t ldq = 0;              // bytes between rows of q
  int64_t K_pad = 0;            // columns [K, K_pad) of q are written as 0 (128 when shifted)
  bool shift128 = false;        // write q + 128 as u8 (the VNNI u8 x s8 operand)
  float* scale = nullptr;       // [M]
};

// Kernels compute the block rows [m0, m1) x columns [n0, n1) of Y; n0 is a multiple of 16.
using Int8GemmFn = void (*)(const Int8GemmParams&, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
using W8GemmFn = void (*)(const W8GemmParams&, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
using QuantizeFn = void (*)(const QuantizeParams&, int64_t m0, int64_t m1);
// Runs `iters` rounds of the ISA's int8 multiply-accumulate on registers only (no memory):
// the instruction's peak rate, for benchmarks. Returns the integer ops done (2 per MAC).
using PeakProbeFn = int64_t (*)(int64_t iters);

// One ISA's kernels. Blocking traits are here so the one dispatch function can split work.
struct KernelSet {
  const char* name;
  Int8GemmFn int8_gemm;
  W8GemmFn w8_gemm;
  QuantizeFn quantize;
  PeakProbeFn peak_probe;   // null where there is no vector int8 instruction (ref)
  int64_t n_panel;   // columns a thread takes at once (B panel kept hot in L2)
  int64_t m_chunk;   // rows per work item
};

// Defined one per ISA translation unit.
const KernelSet& kernels_ref();
const KernelSet& kernels_avx2();
const KernelSet& kernels_avx512_vnni();

}  // namespace kernels
}  // namespace fastinfer
