// int8 x int8 -> int32 GEMM on tensor cores for sm_80 and later (Ampere, Ada, Hopper): cp.async
// multistage loads into swizzled shared memory, ldmatrix, mma.sync m16n8k32 (s8.s8.s32), and the
// fused epilogue (epilogue.cuh). Framework-free: pointers and GemmParams only.
#include <cuda_runtime.h>

#include <cstdint>

#include "epilogue.cuh"
#include "params.h"

namespace fastinfer {
namespace cuda_kernels {
namespace {

// Tile traits. A block computes BM x BN outputs with WARPS_M x WARPS_N warps; each warp owns a
// (BM / WARPS_M) x (BN / WARPS_N) tile of m16n8 mma tiles. K advances kBK = 64 bytes per stage, and
// kStages stages are in flight (one is being multiplied while the next two load).
constexpr int kBK = 64;
constexpr int kStages = 3;

template <int BM_, int BN_, int WARPS_M_, int WARPS_N_>
struct Tile {
  static constexpr int BM = BM_, BN = BN_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
  static constexpr int kThreads = WARPS_M * WARPS_N * 32;
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
  static constexpr int MT = WM / 16, NT = WN / 8;  // mma tiles per warp
  static constexpr int kSmemBytes = kStages * (BM + BN) * kBK;
  static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tiles are whole m16 x n16 pairs");
  static_assert((BM * kBK / 16) % kThreads == 0 && (BN * kBK / 16) % kThreads == 0, "whole 16-byte copies per thread");
  static_assert(kSmemBytes <= 48 * 1024, "static shared-memory limit without opt-in");
};
using Tile128 = Tile<128, 128, 2, 4>;  // 8 warps, 64 x 32 per warp: 64 int32 accumulators per thread
using Tile64 = Tile<64, 128, 2, 4>;    // for M <= 64: 32 x 32 per warp

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses L1; ok == false zero-fills (src is then not read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void mma_s8(int32_t (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Shared memory rows are kBK = 64 bytes (four 16-byte chunks). Chunk c of row r is stored at chunk
// c ^ ((r >> 1) & 3): the 8 rows an ldmatrix reads (one chunk each) then fall in 8 different 16-byte
// bank groups instead of 2 (rows 128 bytes apart share banks), so the reads are conflict-free.
__device__ __forceinline__ int swizzle(int r, int c) { return c ^ ((r >> 1) & 3); }

template <class T>
__device__ __forceinline__ void load_stage(const GemmParams& p, uint8_t* sA, uint8_t* sB, int64_t m0, int64_t n0,
                                           int64_t k0) {
  constexpr int kChunks = kBK / 16;
#pragma unroll
  for (int i = 0; i < T::BM * kChunks / T::kThreads; ++i) {
    const int c = threadIdx.x + i * T::kThreads, r = c / kChunks, ch = c % kChunks;
    const int64_t gm = m0 + r, gk = k0 + ch * 16;
    const bool ok = gm < p.M && gk < p.K_pad;  // K_pad % 16 == 0: a chunk is wholly inside or outside
    cp_async16(sA + r * kBK + swizzle(r, ch) * 16, p.a + (ok ? gm * p.lda + gk : 0), ok);
  }
#pragma unroll
  for (int i = 0; i < T::BN * kChunks / T::kThreads; ++i) {
    const int c = threadIdx.x + i * T::kThreads, r = c / kChunks, ch = c % kChunks;
    const int64_t gn = n0 + r, gk = k0 + ch * 16;
    const bool ok = gn < p.N && gk < p.K_pad;
    cp_async16(sB + r * kBK + swizzle(r, ch) * 16, p.b + (ok ? gn * p.ldb + gk : 0), ok);
  }
}

template <class T>
__global__ void __launch_bounds__(T::kThreads) int8_gemm_kernel(const GemmParams p) {
  __shared__ __align__(128) uint8_t smem[T::kSmemBytes];
  uint8_t* const sA = smem;                              // [kStages][BM][kBK]
  uint8_t* const sB = smem + kStages * T::BM * kBK;      // [kStages][BN][kBK]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int wm = warp / T::WARPS_N, wn = warp % T::WARPS_N;
  // A 1-D grid, N tiles fastest (consecutive blocks share an A tile): gridDim.y would cap M at
  // 65535 tiles (8.4M rows), gridDim.x allows 2^31 - 1 tiles.
  const int64_t n_tiles = (p.N + T::BN - 1) / T::BN, tile = blockIdx.x;
  const int64_t m0 = tile / n_tiles * T::BM, n0 = tile % n_tiles * T::BN;
  const int ktiles = static_cast<int>((p.K_pad + kBK - 1) / kBK);

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) load_stage<T>(p, sA + s * T::BM * kBK, sB + s * T::BN * kBK, m0, n0, static_cast<int64_t>(s) * kBK);
    cp_async_commit();
  }

  int32_t acc[T::MT][T::NT][4];
#pragma unroll
  for (int i = 0; i < T::MT; ++i)
#pragma unroll
    for (int j = 0; j < T::NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0;

  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<kStages - 2>();  // stage kt has landed (for this thread) ...
    __syncthreads();               // ... for every thread, and stage kt - 1 is no longer read
    const int nk = kt + kStages - 1;
    if (nk < ktiles) {
      const int s = nk % kStages;
      load_stage<T>(p, sA + s * T::BM * kBK, sB + s * T::BN * kBK, m0, n0, static_cast<int64_t>(nk) * kBK);
    }
    cp_async_commit();
    const uint8_t* a_s = sA + (kt % kStages) * T::BM * kBK;
    const uint8_t* b_s = sB + (kt % kStages) * T::BN * kBK;
#pragma unroll
    for (int kk = 0; kk < kBK / 32; ++kk) {  // two k32 steps per stage
      uint32_t af[T::MT][4], bf[T::NT][2];
#pragma unroll
      for (int i = 0; i < T::MT; ++i) {
        // Matrices 0-3: rows 0-7 / 8-15 of the m16 tile x bytes 0-15 / 16-31 of the k32 step: the
        // a0..a3 registers of m16n8k32 (row = lane / 4, bytes 4 * (lane % 4) .. + 3 of each).
        const int r = wm * T::WM + 16 * i + (lane % 8) + 8 * ((lane / 8) % 2);
        const int ch = 2 * kk + lane / 16;
        ldmatrix_x4(af[i], a_s + r * kBK + swizzle(r, ch) * 16);
      }
#pragma unroll
      for (int j = 0; j < T::NT / 2; ++j) {
        // Two n8 tiles at once: (n 0-7, k 0-15), (n 0-7, k 16-31), (n 8-15, k 0-15), (n 8-15, k 16-31)
        // = b0, b1 of tile 2j and b0, b1 of tile 2j + 1.
        const int r = wn * T::WN + 16 * j + (lane % 8) + 8 * (lane / 16);
        const int ch = 2 * kk + (lane / 8) % 2;
        uint32_t t[4];
        ldmatrix_x4(t, b_s + r * kBK + swizzle(r, ch) * 16);
        bf[2 * j][0] = t[0];
        bf[2 * j][1] = t[1];
        bf[2 * j + 1][0] = t[2];
        bf[2 * j + 1][1] = t[3];
      }
#pragma unroll
      for (int i = 0; i < T::MT; ++i)
#pragma unroll
        for (int j = 0; j < T::NT; ++j) mma_s8(acc[i][j], af[i], bf[j][0], bf[j][1]);
    }
  }
  cp_async_wait<0>();

  // Epilogue: c0, c1 are row lane / 4, columns 2 * (lane % 4) + {0, 1} of the m16n8 tile; c2, c3 row + 8.
#pragma unroll
  for (int i = 0; i < T::MT; ++i)
#pragma unroll
    for (int j = 0; j < T::NT; ++j) {
      const int64_t row = m0 + wm * T::WM + 16 * i + lane / 4;
      const int64_t col = n0 + wn * T::WN + 8 * j + 2 * (lane % 4);
      if (col >= p.N) continue;
      if (row < p.M) store_pair(p, row, col, acc[i][j][0], acc[i][j][1]);
      if (row + 8 < p.M) store_pair(p, row + 8, col, acc[i][j][2], acc[i][j][3]);
    }
}

template <class T>
const char* launch(const GemmParams& p, cudaStream_t stream) {
  const int64_t tiles = (p.N + T::BN - 1) / T::BN * ((p.M + T::BM - 1) / T::BM);
  if (tiles > 0x7fffffff) return "int8 GEMM: more than 2^31 - 1 output tiles (split the call)";
  int8_gemm_kernel<T><<<static_cast<unsigned>(tiles), T::kThreads, 0, stream>>>(p);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

const char* launch_int8_gemm_sm80(const GemmParams& p, GemmTile tile, void* stream) {
  if (p.M == 0 || p.N == 0) return nullptr;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return tile == GemmTile::M64N128 ? launch<Tile64>(p, s) : launch<Tile128>(p, s);
}

}  // namespace cuda_kernels
}  // namespace fastinfer
