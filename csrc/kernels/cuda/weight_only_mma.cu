// Weight-only int8 on tensor cores for 9-64 rows of 16-bit activations (WeightOnlyParams with x bf16 or
// fp16). The CUDA-core kernel (weight_only.cu) does 16 fp32 FMAs per weight at 16 rows and stops being
// bound by reading the weight from about 8 rows; here mma.sync m16n8k16 (fp32 accumulation) does the
// products, so up to 64 rows still cost about one pass over the int8 weight.
//
// Each lane loads 16 consecutive k of one weight row (a 16-byte load: coalesced across the warp) and widens
// them to 16-bit pairs in registers (exact: |w| <= 128). The mma wants lane (g, t) to hold k = 2t, 2t + 1,
// 2t + 8, 2t + 9 of its fragment; as a dot product does not care how k is numbered, logical k of mma step s
// is mapped onto the lane's own chunk instead: {2t, 2t + 1} -> chunk elements 4s, 4s + 1 and {2t + 8, 2t + 9}
// -> 4s + 2, 4s + 3, for the activations (read from shared memory) and the weights alike. Four steps use the
// chunk's 16 values, so a round covers 64 k. A block's four warps each own NT n8 tiles of the block's
// columns and all MT m16 tiles of rows; the activation tile of a round is staged in shared memory once for
// the four, double-buffered: the next round's tile loads while this round multiplies, and the weights two
// rounds ahead (the first version, one tile between two barriers a round and each round's weights loaded
// just before use, streamed the weight at 0.7-1.1 TB/s on an H200; this one has not run on a GPU yet). The K
// rounds are split over gridDim.y blocks when there are too few column blocks to fill the GPU: partial sums
// go to a workspace and weight_only_reduce_kernel adds them in split order (deterministic), then applies the
// epilogue.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "params.h"

namespace fastinfer {
namespace cuda_kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kRoundK = 64;                 // k values per round: 4 lanes x 16
constexpr int kXStride = kRoundK * 2 + 16;  // bytes per activation row in shared memory: with 16 of padding,
                                            // the 2 rows x 4 chunks of a quarter-warp's 16-byte reads hit
                                            // distinct banks

// n8 tiles per warp: 2 for 64 rows (the accumulators, the activation words and the weight chunks stay
// in registers: ptxas -v, no spills), 4 below.
template <int MT>
struct WarpCols {
  static constexpr int value = MT >= 4 ? 2 : 4;
};

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Bytes `shift / 8` and `shift / 8 + 1` (shift 0 or 16) of four int8 weights as a packed 16-bit pair (low
// half first), exact (|w| <= 128), without int-to-float conversions (16 a clock per multiprocessor: at 16
// rows they would take about as long as streaming the weight). The byte w + 128 goes into the mantissa of a
// float whose mantissa unit is 1, and subtracting that float's value at 128 leaves w:
//   fp16: 0x64XX is 1024 + XX, minus 1152 (0x6480), both halves in one __hsub2;
//   bf16: fp32 0x4B0000XX is 2^23 + XX, minus 2^23 + 128 exactly, then the upper halves (low bits 0).
// (Checked byte by byte against int8 for random words with a byte-level model of __byte_perm.)
template <bool BF16>
__device__ __forceinline__ uint32_t widen2(uint32_t w, int shift) {
  const uint32_t u = w ^ 0x80808080u;  // each byte w + 128
  if constexpr (BF16) {
    const int b = shift / 8;
    const float lo = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540 + b)) - 8388736.0f;
    const float hi = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7541 + b)) - 8388736.0f;
    return __byte_perm(__float_as_uint(lo), __float_as_uint(hi), 0x7632);
  } else {
    const uint32_t h = __byte_perm(u, 0x64646464u, shift == 0 ? 0x4140 : 0x4342);
    const uint32_t magic = 0x64806480u;  // 1152 in both halves
    const __half2 v = __hsub2(*reinterpret_cast<const __half2*>(&h), *reinterpret_cast<const __half2*>(&magic));
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}

template <bool BF16>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (BF16)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The weight-only epilogue (as weight_only.cu): y = acc * b_scale[n] (+ bias[n]), stored in x's type.
__device__ __forceinline__ void store_out(const WeightOnlyParams& p, int64_t m, int64_t n, float acc) {
  float y = __fmul_rn(acc, p.b_scale[n]);
  if (p.bias) y = __fadd_rn(y, p.bias[n]);
  const int64_t idx = m * p.ldo + n;
  if (p.x_kind == XKind::BFloat16)
    static_cast<__nv_bfloat16*>(p.out)[idx] = __float2bfloat16_rn(y);
  else
    static_cast<__half*>(p.out)[idx] = __float2half_rn(y);
}

// The lane's 16-byte chunk of weight rows n0 + 8 j + g at k (zeros past N or K, or when !any: no round left).
template <int NT>
__device__ __forceinline__ void load_w(const WeightOnlyParams& p, int64_t n0, int g, int64_t k, bool any,
                                       uint4 (&w)[NT]) {
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int64_t n = n0 + 8 * j + g;
    w[j] = (any && k < p.K && n < p.N) ? __ldg(reinterpret_cast<const uint4*>(p.b + n * p.ldb + k))
                                       : make_uint4(0, 0, 0, 0);
  }
}

// This thread's pieces of the activation tile of round r ([16 MT rows][64 k] as 8 16-byte pieces a row: MT
// pieces a thread), zeros past M or K, or when !any (no round left).
template <int MT>
__device__ __forceinline__ void load_x(const WeightOnlyParams& p, int64_t r, bool any, uint4 (&xr)[MT]) {
  const uint8_t* const x = static_cast<const uint8_t*>(p.x);
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    const int c = threadIdx.x + i * kWarps * 32, row = c / 8, piece = c % 8;
    const int64_t k = r * kRoundK + 8 * piece;
    xr[i] = (any && row < p.M && k < p.K) ? __ldg(reinterpret_cast<const uint4*>(x + (row * p.ldx + k) * 2))
                                          : make_uint4(0, 0, 0, 0);
  }
}

template <int MT>
__device__ __forceinline__ void store_x(uint8_t* xs, const uint4 (&xr)[MT]) {
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    const int c = threadIdx.x + i * kWarps * 32;
    *reinterpret_cast<uint4*>(xs + (c / 8) * kXStride + 16 * (c % 8)) = xr[i];
  }
}

template <bool BF16, int MT>
__global__ void __launch_bounds__(kWarps * 32) weight_only_mma_kernel(const WeightOnlyParams p, float* partial) {
  constexpr int NT = WarpCols<MT>::value, BM = 16 * MT, BN = kWarps * NT * 8;
  static_assert(BM * 8 == MT * kWarps * 32, "the activation tile is MT 16-byte pieces a thread");
  // Two activation tiles: round r multiplies from one while round r + 1's is loaded into registers and then
  // stored into the other, so a round waits at one barrier and never on an activation load.
  __shared__ __align__(16) uint8_t xs[2][BM * kXStride];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
  const int64_t n_block = static_cast<int64_t>(blockIdx.x) * BN, n0 = n_block + warp * NT * 8;
  const int64_t rounds = (p.K + kRoundK - 1) / kRoundK;
  const int64_t r0 = rounds * blockIdx.y / gridDim.y, r1 = rounds * (blockIdx.y + 1) / gridDim.y;

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  // The weight stream runs two rounds ahead: when round r starts, its weights and round r + 1's are in
  // registers or in flight, and it issues round r + 2's into the buffer round r - 1 used. Three buffers, the
  // loop unrolled by three so that each stays in its own registers. (With one round ahead, or with a rotation
  // w = wn; wn = wnn, the sm_90a SASS issued each round's loads after most of its products, into registers
  // read by the next round right after the barrier: no time in flight. ptxas still places the loads late in
  // the round, so now they have about one round of products and a barrier to arrive.)
  uint4 wa[NT], wb[NT], wc[NT];
  load_w<NT>(p, n0, g, r0 * kRoundK + 16 * t, r0 < r1, wa);
  load_w<NT>(p, n0, g, (r0 + 1) * kRoundK + 16 * t, r0 + 1 < r1, wb);
  uint4 xr[MT];
  load_x<MT>(p, r0, r0 < r1, xr);
  store_x<MT>(xs[0], xr);
  __syncthreads();
  // One round: issue round r + 2's weights (into `ahead`) and round r + 1's activations, multiply round r's
  // (`cur`, the activation tile of its parity), store the next tile into the other buffer, one barrier.
  auto round = [&](int64_t r, const uint4(&cur)[NT], uint4(&ahead)[NT]) {
    load_w<NT>(p, n0, g, (r + 2) * kRoundK + 16 * t, r + 2 < r1, ahead);
    load_x<MT>(p, r + 1, r + 1 < r1, xr);
    const uint8_t* const tile = xs[(r - r0) & 1];
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      // Rows 16 i + g and 16 i + g + 8: the lane's 16 activations (k 16 t .. 16 t + 15 of the round).
      const uint8_t* const lo = tile + (16 * i + g) * kXStride + 32 * t;
      const uint4 a_lo[2] = {*reinterpret_cast<const uint4*>(lo), *reinterpret_cast<const uint4*>(lo + 16)};
      const uint4 a_hi[2] = {*reinterpret_cast<const uint4*>(lo + 8 * kXStride),
                             *reinterpret_cast<const uint4*>(lo + 8 * kXStride + 16)};
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        // Step s: chunk elements 4 s .. 4 s + 3, i.e. words 2 s and 2 s + 1 of the 8 (two per uint4).
        const uint32_t a[4] = {word(a_lo[s / 2], (2 * s) % 4), word(a_hi[s / 2], (2 * s) % 4),
                               word(a_lo[s / 2], (2 * s + 1) % 4), word(a_hi[s / 2], (2 * s + 1) % 4)};
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const uint32_t ww = word(cur[j], s);  // weights 4 s .. 4 s + 3 of the lane's chunk of row n0 + 8 j + g
          mma16816<BF16>(acc[i][j], a, widen2<BF16>(ww, 0), widen2<BF16>(ww, 16));
        }
      }
    }
    // The other tile was last read in round r - 1, which every thread finished before the previous barrier.
    if (r + 1 < r1) store_x<MT>(xs[(r + 1 - r0) & 1], xr);
    __syncthreads();
  };
  for (int64_t r = r0; r < r1; r += 3) {  // r, r0 and r1 are the block's own: every thread takes the same path
    round(r, wa, wc);
    if (r + 1 >= r1) break;
    round(r + 1, wb, wa);
    if (r + 2 >= r1) break;
    round(r + 2, wc, wb);
  }

  // Accumulator (i, j, e): row 16 i + g (+ 8 for e >= 2), column n0 + 8 j + 2 t + e % 2.
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t m = 16 * i + g + 8 * (e / 2), n = n0 + 8 * j + 2 * t + e % 2;
        if (m >= p.M || n >= p.N) continue;
        if (partial)
          partial[(static_cast<int64_t>(blockIdx.y) * p.M + m) * p.N + n] = acc[i][j][e];
        else
          store_out(p, m, n, acc[i][j][e]);
      }
}

// Sums the splits' partial products in split order, then the epilogue.
__global__ void weight_only_reduce_kernel(const WeightOnlyParams p, const float* partial, int splits) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.M * p.N) return;
  float acc = partial[idx];
  for (int s = 1; s < splits; ++s) acc = __fadd_rn(acc, partial[static_cast<int64_t>(s) * p.M * p.N + idx]);
  store_out(p, idx / p.N, idx % p.N, acc);
}

int m_tiles(int64_t M) { return M <= 16 ? 1 : M <= 32 ? 2 : 4; }

int64_t block_cols(int64_t M) {
  const int mt = m_tiles(M);
  return kWarps * 8 * (mt == 1 ? WarpCols<1>::value : mt == 2 ? WarpCols<2>::value : WarpCols<4>::value);
}

// K split: enough blocks for about 4 per multiprocessor, each split at least kWarps rounds long.
int splits_for(const WeightOnlyParams& p) {
  const int64_t col_blocks = (p.N + block_cols(p.M) - 1) / block_cols(p.M);
  const int64_t rounds = (p.K + kRoundK - 1) / kRoundK;
  const int64_t want = (4 * std::max(1, p.sms) + col_blocks - 1) / col_blocks;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, rounds / kWarps, 32})));
}

template <bool BF16, int MT>
const char* launch_tiles(const WeightOnlyParams& p, int splits, float* partial, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((p.N + block_cols(p.M) - 1) / block_cols(p.M)), static_cast<unsigned>(splits));
  weight_only_mma_kernel<BF16, MT><<<grid, kWarps * 32, 0, s>>>(p, splits > 1 ? partial : nullptr);
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess && splits > 1) {
    const int64_t n = p.M * p.N;
    weight_only_reduce_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, s>>>(p, partial, splits);
    e = cudaGetLastError();
  }
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

bool weight_only_mma_supported(const WeightOnlyParams& p) {
  return (p.x_kind == XKind::BFloat16 || p.x_kind == XKind::Float16) && p.M >= 1 &&
         p.M <= kWeightOnlyMmaMaxRows && p.K % 16 == 0 && (p.ldx * 2) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && p.ldb % 16 == 0 && reinterpret_cast<uintptr_t>(p.b) % 16 == 0;
}

size_t weight_only_mma_workspace_bytes(const WeightOnlyParams& p) {
  const int splits = splits_for(p);
  return splits > 1 ? static_cast<size_t>(splits) * static_cast<size_t>(p.M * p.N) * sizeof(float) : 0;
}

const char* launch_weight_only_mma(const WeightOnlyParams& p, void* workspace, void* stream) {
  if (p.M == 0 || p.N == 0) return nullptr;
  if (!weight_only_mma_supported(p))
    return "weight-only mma kernel: x must be bf16/fp16 with 1-64 rows, 16-byte aligned rows of K % 16 == 0 values";
  const int splits = splits_for(p);
  float* const partial = static_cast<float*>(workspace);
  if (splits > 1 && partial == nullptr) return "weight-only mma kernel: the split-K workspace is missing";
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool bf16 = p.x_kind == XKind::BFloat16;
  switch (m_tiles(p.M)) {
    case 1: return bf16 ? launch_tiles<true, 1>(p, splits, partial, s) : launch_tiles<false, 1>(p, splits, partial, s);
    case 2: return bf16 ? launch_tiles<true, 2>(p, splits, partial, s) : launch_tiles<false, 2>(p, splits, partial, s);
    default: return bf16 ? launch_tiles<true, 4>(p, splits, partial, s) : launch_tiles<false, 4>(p, splits, partial, s);
  }
}

}  // namespace cuda_kernels
}  // namespace fastinfer
