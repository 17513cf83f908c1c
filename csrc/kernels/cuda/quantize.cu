// int8 quantization of activations. Per token (and static per tensor), one block per row: the row's max |x|
// by a block reduction, then the quantized row written into the GEMM's padded operand (rows of aligned
// 16-byte pieces: the vectorized kernel; others: the scalar one); the rule (NaN/Inf rows, zero rows,
// rounding) is QuantizeParams', the CPU kernels' own. Dynamic per tensor (a convolution's float input
// without x_scale): two grid-wide passes, TensorQuantizeParams' rule (the reference's).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "epilogue.cuh"
#include "params.h"

namespace fastinfer {
namespace cuda_kernels {
namespace {

constexpr int kThreads = 256;

// The per-column steps applied to x before the rule: scale, shift, ReLU (QuantizeParams).
__device__ __forceinline__ float column_steps(const QuantizeParams& p, float v, int64_t k) {
  if (p.col_scale) v = __fmul_rn(v, p.col_scale[k]);
  if (p.col_shift) v = __fadd_rn(v, p.col_shift[k]);
  return p.relu ? (v > 0.0f ? v : 0.0f) : v;  // NaN -> 0
}

__device__ __forceinline__ float load_scaled(const QuantizeParams& p, int64_t m, int64_t k) {
  return column_steps(p, load_x(p.x, p.x_kind, m * p.ldx + k), k);
}

__device__ __forceinline__ int8_t quant(float v, float inv) {
  const float r = rintf(__fmul_rn(v, inv));
  if (r != r) return 0;
  return static_cast<int8_t>(r < -127.0f ? -127.0f : (r > 127.0f ? 127.0f : r));
}

// The block's max of each thread's mx (|x| as ordered bits: NaN and Inf compare above every finite value),
// by a warp then a block reduction: the result in thread 0 (the other threads' are partial).
__device__ __forceinline__ uint32_t block_max(uint32_t mx) {
  for (int off = 16; off > 0; off /= 2) mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  __shared__ uint32_t warp_max[kThreads / 32];
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = mx;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int w = 1; w < kThreads / 32; ++w) mx = max(mx, warp_max[w]);
  return mx;
}

// The row's inverse scale 127 / max|x| from each thread's max of |x| (block_max); thread 0 writes the row's
// scale. 0 for a row of zeros or one whose scale does not invert; NaN scale (and 0) for a row holding NaN or Inf.
__device__ float row_inverse(const QuantizeParams& p, int64_t m, uint32_t mx) {
  __shared__ float row_inv;
  mx = block_max(mx);
  if (threadIdx.x == 0) {
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
  return row_inv;
}

// Any row layout: one element per thread and step, the row read twice (the second time from cache).
__global__ void __launch_bounds__(kThreads) quantize_rows_kernel(const QuantizeParams p) {
  const int64_t m = blockIdx.x;
  int8_t* q = p.q + m * p.ldq;
  float inv = p.static_inv;
  if (inv <= 0.0f) {
    uint32_t mx = 0;
    for (int64_t k = threadIdx.x; k < p.K; k += kThreads)
      mx = max(mx, __float_as_uint(load_scaled(p, m, k)) & 0x7fffffffu);
    inv = row_inverse(p, m, mx);
    if (inv == 0.0f) {
      for (int64_t k = threadIdx.x; k < p.K_pad; k += kThreads) q[k] = 0;
      return;
    }
  }
  for (int64_t k = threadIdx.x; k < p.K_pad; k += kThreads) q[k] = k < p.K ? quant(load_scaled(p, m, k), inv) : 0;
}

// Rows of 16-byte aligned pieces (8 bf16/fp16 or 4 fp32 values): each thread loads its R pieces of the row
// once, with 16-byte loads, and keeps them in registers for both passes; the int8 values of a piece go out in
// one 8- or 4-byte store. The values, the max and the rounding are the scalar kernel's (bf16 and fp16 widen
// exactly), so the two agree bit for bit. Pieces per thread R in {1, 2, 4, 8, 16}: rows up to 16 x 256
// pieces (32768 bf16/fp16 or 16384 fp32 values).
template <XKind KIND>
struct Piece {
  static constexpr int n = KIND == XKind::Float32 ? 4 : 8;  // values in 16 bytes
};

template <XKind KIND>
__device__ __forceinline__ void widen(const QuantizeParams& p, const uint4& raw, int64_t k0,
                                      float (&v)[Piece<KIND>::n]) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (KIND == XKind::Float32) {
      v[i] = __uint_as_float(w[i]);
    } else if constexpr (KIND == XKind::BFloat16) {  // a bf16 is the upper half of its fp32
      v[2 * i] = __uint_as_float(w[i] << 16);
      v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    } else {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
      v[2 * i] = f.x;
      v[2 * i + 1] = f.y;
    }
  }
  if (p.col_scale || p.col_shift || p.relu) {
#pragma unroll
    for (int i = 0; i < Piece<KIND>::n; ++i) v[i] = column_steps(p, v[i], k0 + i);
  }
}

// f(c, v) for each of this thread's pieces c of the row held in raw (v: the piece's values, widened and
// scaled by the per-column scale, if any).
template <XKind KIND, int R, class F>
__device__ __forceinline__ void each_piece(const QuantizeParams& p, const uint4 (&raw)[R], int64_t pieces, F&& f) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(r) * kThreads;
    if (c >= pieces) continue;
    float v[Piece<KIND>::n];
    widen<KIND>(p, raw[r], c * Piece<KIND>::n, v);
    f(c, v);
  }
}

template <XKind KIND, int R>
__global__ void __launch_bounds__(kThreads) quantize_rows_vec_kernel(const QuantizeParams p) {
  constexpr int V = Piece<KIND>::n;
  const int64_t m = blockIdx.x, pieces = p.K / V;
  const uint4* const row = reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(p.x) + m * p.ldx * (16 / V));
  int8_t* const q = p.q + m * p.ldq;
  uint4 raw[R];
  uint32_t mx = 0;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(r) * kThreads;
    raw[r] = c < pieces ? __ldg(row + c) : make_uint4(0, 0, 0, 0);
  }
  float inv = p.static_inv;
  if (inv <= 0.0f) {
    each_piece<KIND>(p, raw, pieces, [&](int64_t, const float (&v)[V]) {
#pragma unroll
      for (int i = 0; i < V; ++i) mx = max(mx, __float_as_uint(v[i]) & 0x7fffffffu);
    });
    inv = row_inverse(p, m, mx);
    if (inv == 0.0f) {
      for (int64_t k = threadIdx.x; k < p.K_pad; k += kThreads) q[k] = 0;
      return;
    }
  }
  each_piece<KIND>(p, raw, pieces, [&](int64_t c, const float (&v)[V]) {
    const auto byte = [&](int i) { return static_cast<uint32_t>(static_cast<uint8_t>(quant(v[i], inv))); };
    uint32_t packed[V / 4];
#pragma unroll
    for (int j = 0; j < V / 4; ++j)
      packed[j] = byte(4 * j) | byte(4 * j + 1) << 8 | byte(4 * j + 2) << 16 | byte(4 * j + 3) << 24;
    if constexpr (V == 8)
      *reinterpret_cast<uint2*>(q + c * V) = make_uint2(packed[0], packed[1]);
    else
      *reinterpret_cast<uint32_t*>(q + c * V) = packed[0];
  });
  for (int64_t k = p.K + threadIdx.x; k < p.K_pad; k += kThreads) q[k] = 0;  // the GEMM's zero padding
}

// Per-tensor dynamic quantization (TensorQuantizeParams): each block's max |x| (block_max), joined by atomicMax
// into p.amax_bits (zeroed by the launcher).
__global__ void __launch_bounds__(kThreads) tensor_absmax_kernel(const TensorQuantizeParams p) {
  uint32_t mx = 0;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < p.n; i += step)
    mx = max(mx, __float_as_uint(load_x(p.x, p.x_kind, i)) & 0x7fffffffu);
  mx = block_max(mx);
  if (threadIdx.x == 0) atomicMax(p.amax_bits, mx);
}

// Then each value by the tensor's inverse scale; thread 0 of block 0 also stores the scale.
__global__ void __launch_bounds__(kThreads) tensor_quantize_kernel(const TensorQuantizeParams p) {
  const uint32_t bits = *p.amax_bits;
  // amax / 127 and 1 / scale as true divisions (the reference's torch ops); NaN for a NaN or Inf in x.
  const float scale = bits >= 0x7f800000u ? __int_as_float(0x7fc00000) : __fdiv_rn(__uint_as_float(bits), 127.0f);
  const bool valid = isfinite(scale) && scale > 0.0f;
  const float inv = valid ? __fdiv_rn(1.0f, scale) : 0.0f;
  if (blockIdx.x == 0 && threadIdx.x == 0) *p.scale = scale;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < p.n; i += step)
    p.q[i] = valid ? quant(load_x(p.x, p.x_kind, i), inv) : 0;
}

constexpr int kMaxPiecesPerThread = 16;

// The vectorized kernel's pieces per thread for p (a power of two), or 0 where it does not apply: x rows
// not made of whole aligned 16-byte pieces, int8 outputs not aligned for the piece's store, or rows longer
// than kMaxPiecesPerThread * kThreads pieces.
int vec_pieces_per_thread(const QuantizeParams& p) {
  const int64_t bytes = p.x_kind == XKind::Float32 ? 4 : 2, per_piece = 16 / bytes;
  if (p.K % per_piece || (p.ldx * bytes) % 16 || reinterpret_cast<uintptr_t>(p.x) % 16 || p.ldq % 8 ||
      reinterpret_cast<uintptr_t>(p.q) % 8)
    return 0;
  const int64_t per_thread = (p.K / per_piece + kThreads - 1) / kThreads;
  int r = 1;
  while (r < per_thread) r *= 2;
  return r <= kMaxPiecesPerThread ? r : 0;
}

// With a static scale every element is quantized alike, so dense rows (x and q both [M, K], no gaps, no
// padding, no per-column scale) are regrouped into half as many rows of twice the length, while M is even,
// up to two pieces a thread: a convolution's NHWC rows hold only C = 3-512 values, which left most of a
// block's 256 threads idle (and one block per pixel).
QuantizeParams regrouped(const QuantizeParams& p) {
  QuantizeParams g = p;
  if (p.static_inv <= 0.0f || p.col_scale || p.col_shift || p.relu || p.ldx != p.K || p.ldq != p.K || p.K_pad != p.K)
    return g;
  const int64_t target = 2 * kThreads * (p.x_kind == XKind::Float32 ? 4 : 8);
  while (g.M % 2 == 0 && 2 * g.K <= target) {
    g.M /= 2;
    g.K *= 2;
  }
  g.ldx = g.ldq = g.K_pad = g.K;
  return g;
}

template <XKind KIND>
void launch_vec(const QuantizeParams& p, int r, cudaStream_t s) {
  const unsigned grid = static_cast<unsigned>(p.M);
  switch (r) {
    case 1: quantize_rows_vec_kernel<KIND, 1><<<grid, kThreads, 0, s>>>(p); break;
    case 2: quantize_rows_vec_kernel<KIND, 2><<<grid, kThreads, 0, s>>>(p); break;
    case 4: quantize_rows_vec_kernel<KIND, 4><<<grid, kThreads, 0, s>>>(p); break;
    case 8: quantize_rows_vec_kernel<KIND, 8><<<grid, kThreads, 0, s>>>(p); break;
    default: quantize_rows_vec_kernel<KIND, 16><<<grid, kThreads, 0, s>>>(p); break;
  }
}

}  // namespace

const char* launch_quantize_rows(const QuantizeParams& params, void* stream, bool* vectorized) {
  const QuantizeParams p = regrouped(params);
  const int r = vec_pieces_per_thread(p);
  if (vectorized) *vectorized = r != 0;
  if (p.M == 0) return nullptr;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (r == 0)
    quantize_rows_kernel<<<static_cast<unsigned>(p.M), kThreads, 0, s>>>(p);
  else if (p.x_kind == XKind::BFloat16)
    launch_vec<XKind::BFloat16>(p, r, s);
  else if (p.x_kind == XKind::Float16)
    launch_vec<XKind::Float16>(p, r, s);
  else
    launch_vec<XKind::Float32>(p, r, s);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

const char* launch_quantize_tensor(const TensorQuantizeParams& p, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t e = cudaMemsetAsync(p.amax_bits, 0, sizeof(uint32_t), s);
  if (e == cudaSuccess && p.n > 0) {
    // Enough blocks to fill a large GPU a few times over; each thread strides over the rest.
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>((p.n + kThreads - 1) / kThreads, 4096));
    tensor_absmax_kernel<<<grid, kThreads, 0, s>>>(p);
    tensor_quantize_kernel<<<grid, kThreads, 0, s>>>(p);
    e = cudaGetLastError();
  } else if (e == cudaSuccess) {  // no values: amax 0, scale 0
    e = cudaMemsetAsync(p.scale, 0, sizeof(float), s);
  }
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace cuda_kernels
}  // namespace fastinfer
