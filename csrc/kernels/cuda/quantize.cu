// Per-token (and static per-tensor) int8 quantization of activation rows, one block per row:
// the row's max |x| by a block reduction, then the quantized row written into the GEMM's padded
// operand. The rule (NaN/Inf rows, zero rows, rounding) is QuantizeParams', the CPU kernels' own.
#include <cuda_runtime.h>

#include <cstdint>

#include "epilogue.cuh"
#include "params.h"

namespace fastinfer {
namespace cuda_kernels {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float load_scaled(const QuantizeParams& p, int64_t m, int64_t k) {
  const float v = load_x(p.x, p.x_kind, m * p.ldx + k);
  return p.col_scale ? __fmul_rn(v, p.col_scale[k]) : v;
}

__device__ __forceinline__ int8_t quant(float v, float inv) {
  const float r = rintf(__fmul_rn(v, inv));
  if (r != r) return 0;
  return static_cast<int8_t>(r < -127.0f ? -127.0f : (r > 127.0f ? 127.0f : r));
}

__global__ void __launch_bounds__(kThreads) quantize_rows_kernel(const QuantizeParams p) {
  const int64_t m = blockIdx.x;
  int8_t* q = p.q + m * p.ldq;
  float inv = p.static_inv;
  if (inv <= 0.0f) {
    // max over the row of |x| as ordered bits (NaN and Inf compare above every finite value).
    uint32_t mx = 0;
    for (int64_t k = threadIdx.x; k < p.K; k += kThreads)
      mx = max(mx, __float_as_uint(load_scaled(p, m, k)) & 0x7fffffffu);
    for (int off = 16; off > 0; off /= 2) mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    __shared__ uint32_t warp_max[kThreads / 32];
    __shared__ float row_inv;
    if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = mx;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < kThreads / 32; ++w) mx = max(mx, warp_max[w]);
      mx = max(mx, warp_max[0]);
      float scale, r;
      if (mx >= 0x7f800000u) {  // NaN or Inf in the row: every output of the row becomes NaN
        scale = __int_as_float(0x7fc00000);
        r = 0.0f;
      } else {
        const float amax = __uint_as_float(mx);
        r = __fdiv_rn(127.0f, amax);
        if (amax == 0.0f || !isfinite(r)) {
          scale = 0.0f;
          r = 0.0f;
        } else {
          scale = __fdiv_rn(amax, 127.0f);
        }
      }
      p.scale[m] = scale;
      row_inv = r;
    }
    __syncthreads();
    inv = row_inv;
    if (inv == 0.0f) {
      for (int64_t k = threadIdx.x; k < p.K_pad; k += kThreads) q[k] = 0;
      return;
    }
  }
  for (int64_t k = threadIdx.x; k < p.K_pad; k += kThreads) q[k] = k < p.K ? quant(load_scaled(p, m, k), inv) : 0;
}

}  // namespace

const char* launch_quantize_rows(const QuantizeParams& p, void* stream) {
  if (p.M == 0) return nullptr;
  quantize_rows_kernel<<<static_cast<unsigned>(p.M), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace cuda_kernels
}  // namespace fastinfer
