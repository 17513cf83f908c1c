// Device-side epilogue of the CUDA int8 GEMMs: the algebra of csrc/kernels/int8_gemm/EPILOGUE.md with
// one IEEE fp32 rounding per operation in the same order as the CPU kernels and fastinfer.reference
// (__fmul_rn / __fadd_rn: nvcc would otherwise contract y * s + b into one FMA), so results match the
// reference bit for bit (GELU's erff and SiLU's expf excepted, as on the CPU).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "params.h"

namespace fastinfer {
namespace cuda_kernels {

__device__ __forceinline__ float apply_act(float y, Act act) {
  if (act == Act::Relu) return y < 0.0f ? 0.0f : y;  // NaN stays NaN
  if (act == Act::Relu6) return y < 0.0f ? 0.0f : (y > 6.0f ? 6.0f : y);
  if (act == Act::Gelu) return __fmul_rn(__fmul_rn(0.5f, y), __fadd_rn(1.0f, erff(__fmul_rn(y, 0.70710678118654752f))));
  if (act == Act::Hardswish) {  // y * min(max(y + 3, 0), 6) / 6, NaN kept
    const float t = __fadd_rn(y, 3.0f);
    return __fdiv_rn(__fmul_rn(y, t < 0.0f ? 0.0f : (t > 6.0f ? 6.0f : t)), 6.0f);
  }
  if (act == Act::Silu) return __fdiv_rn(y, __fadd_rn(1.0f, expf(-y)));  // expf: within 2 ulp, as gelu's erff
  return y;
}

// Requantization to int8: clamp(rint(y * inv), -127, 127) clamped in float, NaN -> 0.
__device__ __forceinline__ int8_t requant(float y, float inv) {
  const float r = rintf(__fmul_rn(y, inv));
  if (r != r) return 0;
  return static_cast<int8_t>(r < -127.0f ? -127.0f : (r > 127.0f ? 127.0f : r));
}

// The float epilogue of one accumulator.
__device__ __forceinline__ float dequant(int32_t acc, float a_scale, float b_scale, const float* bias, int64_t n,
                                         Act act) {
  float y = __fmul_rn(__fmul_rn(static_cast<float>(acc), a_scale), b_scale);
  if (bias) y = __fadd_rn(y, bias[n]);
  return apply_act(y, act);
}

// Stores row m's accumulators for columns n and n + 1 (the second only when n + 1 < N).
__device__ __forceinline__ void store_pair(const GemmParams& p, int64_t m, int64_t n, int32_t acc0, int32_t acc1) {
  const bool two = n + 1 < p.N;
  const int64_t idx = m * p.ldo + n;
  if (p.out_kind == OutKind::Int32) {
    int32_t* o = static_cast<int32_t*>(p.out) + idx;
    o[0] = acc0;
    if (two) o[1] = acc1;
    return;
  }
  const float as = p.a_scale[p.a_scale_per_tensor ? 0 : m];
  const float y0 = dequant(acc0, as, p.b_scale[n], p.bias, n, p.act);
  const float y1 = two ? dequant(acc1, as, p.b_scale[n + 1], p.bias, n + 1, p.act) : 0.0f;
  switch (p.out_kind) {
    case OutKind::Float32: {
      float* o = static_cast<float*>(p.out) + idx;
      o[0] = y0;
      if (two) o[1] = y1;
      break;
    }
    case OutKind::BFloat16: {
      __nv_bfloat16* o = static_cast<__nv_bfloat16*>(p.out) + idx;
      o[0] = __float2bfloat16_rn(y0);
      if (two) o[1] = __float2bfloat16_rn(y1);
      break;
    }
    case OutKind::Float16: {
      __half* o = static_cast<__half*>(p.out) + idx;
      o[0] = __float2half_rn(y0);
      if (two) o[1] = __float2half_rn(y1);
      break;
    }
    default: {  // Int8
      int8_t* o = static_cast<int8_t*>(p.out) + idx;
      o[0] = requant(y0, p.out_inv_scale);
      if (two) o[1] = requant(y1, p.out_inv_scale);
      break;
    }
  }
}

__device__ __forceinline__ float load_x(const void* x, XKind kind, int64_t idx) {
  if (kind == XKind::BFloat16) return __bfloat162float(static_cast<const __nv_bfloat16*>(x)[idx]);
  if (kind == XKind::Float16) return __half2float(static_cast<const __half*>(x)[idx]);
  return static_cast<const float*>(x)[idx];
}

}  // namespace cuda_kernels
}  // namespace fastinfer
