// Weight-only int8 for few rows (decode-like batches): Y = (X . B^T) * b_scale (+ bias), X fp32/bf16/fp16
// [M <= 16, K], B int8 [N, K_pad] (or the Tiles8x64 layout: params.h). Bound by reading the weight once: each
// lane streams 16-byte int8 chunks of a warp's weight rows (coalesced: a warp reads 512 consecutive bytes of a
// row; from Tiles8x64, 8 pieces of 256 bytes, 512 apart, with the warp of the group's other 4 rows), widens them
// to fp32 in registers and multiplies them with the same 16 activations of every row; the partial
// sums are reduced across the warp at the end.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "epilogue.cuh"
#include "params.h"

namespace fastinfer {
namespace cuda_kernels {
namespace {

constexpr int kWarps = 4;      // warps per block
constexpr int kChunk = 16;     // k values per lane per step (one 16-byte weight load)
// Output columns per warp: 4, or 2 for 9-16 rows, so that the accumulators (rows x columns), the
// widened weights (columns x 16) and a row's activations fit in registers without spills (ptxas -v,
// sm_80 and sm_90a).
template <int MR>
struct Cols {
  static constexpr int value = MR > 8 ? 2 : 4;
};

// x[m, k .. k + 16) as floats, by 16-byte loads (K % 16 == 0 and 16-byte aligned rows: the launcher's
// precondition; the entry layer pads x otherwise).
__device__ __forceinline__ void load_x16(const WeightOnlyParams& p, int64_t m, int64_t k, float (&v)[kChunk]) {
  const int64_t base = m * p.ldx + k;
  if (p.x_kind == XKind::Float32) {
    const float4* x4 = reinterpret_cast<const float4*>(static_cast<const float*>(p.x) + base);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float4 t = __ldg(x4 + i);
      v[4 * i] = t.x;
      v[4 * i + 1] = t.y;
      v[4 * i + 2] = t.z;
      v[4 * i + 3] = t.w;
    }
    return;
  }
  {  // 16-bit types: two 16-byte loads
    const uint4* x8 = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p.x) + base);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint4 t = __ldg(x8 + i);
      const uint32_t w[4] = {t.x, t.y, t.z, t.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint16_t lo = static_cast<uint16_t>(w[j] & 0xffffu), hi = static_cast<uint16_t>(w[j] >> 16);
        if (p.x_kind == XKind::BFloat16) {
          v[8 * i + 2 * j] = __uint_as_float(static_cast<uint32_t>(lo) << 16);
          v[8 * i + 2 * j + 1] = __uint_as_float(static_cast<uint32_t>(hi) << 16);
        } else {
          v[8 * i + 2 * j] = __half2float(__ushort_as_half(lo));
          v[8 * i + 2 * j + 1] = __half2float(__ushort_as_half(hi));
        }
      }
    }
  }
}

template <int MR>
__global__ void __launch_bounds__(kWarps * 32) weight_only_kernel(const WeightOnlyParams p) {
  constexpr int kCols = Cols<MR>::value;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kCols;
  if (n0 >= p.N) return;
  float acc[MR][kCols];
#pragma unroll
  for (int m = 0; m < MR; ++m)
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc[m][c] = 0.0f;
  // The lane's 16-byte chunks of the warp's kCols rows at k = 16 lane + 512 s, at row[c] + s * step in either
  // layout (params.h, weight_offset); zeros past K (a prefetch past the end reads nothing). A missing column
  // reuses a valid row (never stored).
  const int8_t* row[kCols];
#pragma unroll
  for (int c = 0; c < kCols; ++c)
    row[c] = p.b + weight_offset(p.b_layout, p.ldb, n0 + c < p.N ? n0 + c : n0, static_cast<int64_t>(lane) * kChunk);
  const int64_t step = 32 * kChunk * weight_k_mul(p.b_layout);
  auto load = [&](int64_t k, int64_t steps, int4 (&raw)[kCols]) {
#pragma unroll
    for (int c = 0; c < kCols; ++c)
      raw[c] = k < p.K ? __ldg(reinterpret_cast<const int4*>(row[c] + steps * step)) : make_int4(0, 0, 0, 0);
  };
  // The next step's chunks are loaded before this step's products, so each warp keeps two steps of its rows in
  // flight: with one (the loads at the top of each step), a layer with few rows a multiprocessor could not hold
  // enough bytes in flight to cover the memory's latency (1 x 14336 x 4096 on an H200: 1024 warps, 2.4 TB/s,
  // where 8192 x 8192's 2048 warps drew 3.3). Not yet timed on a GPU.
  int4 cur[kCols];
  load(static_cast<int64_t>(lane) * kChunk, 0, cur);
  int64_t done = 0;  // steps taken
  for (int64_t k = static_cast<int64_t>(lane) * kChunk; k < p.K; k += 32 * kChunk, ++done) {
    int4 next[kCols];
    load(k + 32 * kChunk, done + 1, next);
    float w[kCols][kChunk];
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int4 raw = cur[c];
      cur[c] = next[c];
      // Each byte w + 128 in the mantissa of 2^23 (float 0x4B0000XX = 2^23 + XX), minus 2^23 + 128: w, exactly,
      // with a byte permute and an add instead of an int-to-float conversion (16 a clock per multiprocessor:
      // fewer than the weights per clock one row's stream delivers at full memory bandwidth).
      constexpr uint32_t kFlip = 0x80808080u;
      const uint32_t words[4] = {static_cast<uint32_t>(raw.x) ^ kFlip, static_cast<uint32_t>(raw.y) ^ kFlip,
                                 static_cast<uint32_t>(raw.z) ^ kFlip, static_cast<uint32_t>(raw.w) ^ kFlip};
#pragma unroll
      for (int e = 0; e < kChunk; ++e)
        w[c][e] = __uint_as_float(__byte_perm(words[e / 4], 0x4B000000u, 0x7540 + e % 4)) - 8388736.0f;
    }
#pragma unroll
    for (int m = 0; m < MR; ++m) {
      if (m >= p.M) break;
      float x[kChunk];
      load_x16(p, m, k, x);
#pragma unroll
      for (int c = 0; c < kCols; ++c)
#pragma unroll
        for (int e = 0; e < kChunk; ++e) acc[m][c] = fmaf(x[e], w[c][e], acc[m][c]);
    }
  }
#pragma unroll
  for (int m = 0; m < MR; ++m)
#pragma unroll
    for (int c = 0; c < kCols; ++c)
#pragma unroll
      for (int off = 16; off > 0; off /= 2) acc[m][c] += __shfl_xor_sync(0xffffffffu, acc[m][c], off);
  // Every lane now holds every sum; lane 0 stores them (constant indices keep acc in registers).
  if (lane != 0) return;
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    if (m >= p.M) break;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int64_t n = n0 + c;
      if (n >= p.N) continue;
      float y = __fmul_rn(acc[m][c], p.b_scale[n]);
      if (p.bias) y = __fadd_rn(y, p.bias[n]);
      const int64_t idx = m * p.ldo + n;
      if (p.x_kind == XKind::BFloat16)
        static_cast<__nv_bfloat16*>(p.out)[idx] = __float2bfloat16_rn(y);
      else if (p.x_kind == XKind::Float16)
        static_cast<__half*>(p.out)[idx] = __float2half_rn(y);
      else
        static_cast<float*>(p.out)[idx] = y;
    }
  }
}

template <int MR>
const char* launch_rows(const WeightOnlyParams& p, cudaStream_t s) {
  constexpr int kCols = Cols<MR>::value;
  const unsigned blocks = static_cast<unsigned>((p.N + kWarps * kCols - 1) / (kWarps * kCols));
  weight_only_kernel<MR><<<blocks, kWarps * 32, 0, s>>>(p);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

const char* launch_weight_only_gemm(const WeightOnlyParams& p, void* stream) {
  if (p.M == 0 || p.N == 0) return nullptr;
  if (p.M > kWeightOnlyMaxRows) return "weight-only kernel: more rows than kWeightOnlyMaxRows";
  const int64_t elem = p.x_kind == XKind::Float32 ? 4 : 2;
  if (p.K % kChunk != 0 || (p.ldx * elem) % 16 != 0 || reinterpret_cast<uintptr_t>(p.x) % 16 != 0 ||
      p.ldb % 16 != 0 || reinterpret_cast<uintptr_t>(p.b) % 16 != 0)
    return "weight-only kernel: x and the weight need 16-byte aligned rows of K % 16 == 0 values";
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (p.M == 1) return launch_rows<1>(p, s);
  if (p.M <= 2) return launch_rows<2>(p, s);
  if (p.M <= 4) return launch_rows<4>(p, s);
  if (p.M <= 8) return launch_rows<8>(p, s);
  return launch_rows<16>(p, s);
}

}  // namespace cuda_kernels
}  // namespace fastinfer
