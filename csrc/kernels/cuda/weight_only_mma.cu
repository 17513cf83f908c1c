// Weight-only int8 on tensor cores for 9-64 rows of 16-bit activations (WeightOnlyParams with x bf16 or
// fp16). The CUDA-core kernel (weight_only.cu) does 16 fp32 FMAs per weight at 16 rows and stops being
// bound by reading the weight from about 8 rows; here mma.sync m16n8k16 (fp32 accumulation) does the
// products, so up to 64 rows still cost about one pass over the int8 weight.
//
// Each lane copies 16 consecutive k of one weight row (16 bytes; a warp's copy is 8 rows x 64 bytes, one
// 512-byte run from the Tiles8x64 layout: params.h, WeightLayout) and widens them to
// 16-bit pairs in registers (exact: |w| <= 128). The mma wants lane (g, t) to hold k = 2t, 2t + 1,
// 2t + 8, 2t + 9 of its fragment; as a dot product does not care how k is numbered, logical k of mma step s
// is mapped onto the lane's own chunk instead: {2t, 2t + 1} -> chunk elements 4s, 4s + 1 and {2t + 8, 2t + 9}
// -> 4s + 2, 4s + 3, for the activations (read from shared memory) and the weights alike. Four steps use a
// chunk's 16 values; a round gives each lane C chunks of its row, 64 apart (Config: C = 1, 64 k a round, by
// default; C = 4, 256 k, a candidate). A block's four warps each own NT n8 tiles of the block's columns and
// all MT m16 tiles of rows. Both operands travel by cp.async into a shared-memory ring of 3-4 rounds: a
// round's weight chunks (each read back by the thread that copied it) and its activation tile (shared by the
// four warps), issued 2-3 rounds before the round multiplies, one barrier a round. The K rounds are split
// over gridDim.y blocks when there are too few column blocks to fill the GPU's resident blocks once: partial
// sums go to a workspace and weight_only_reduce_kernel adds them in split order (deterministic), then
// applies the epilogue. On an H200 (C = 1) it streamed the weight at 1.6-1.9 TB/s at 16-32 rows of the large
// shapes, below the one-row kernel's 2.4-3.5 (RESULTS.md); the 256-k rounds have not run on a GPU yet.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "params.h"

namespace fastinfer {
namespace cuda_kernels {
namespace {

constexpr int kWarps = 4;

// One instantiation's shape. MT: m16 tiles of rows (all of a block's rows). C: 64-k chunks per lane and weight
// row in a round, so a round covers 64 C k and reads 64 C contiguous bytes of each weight row (C = 1, the
// default; C = 4, a candidate: FASTINFER_WEIGHT_ONLY_ROUND_K=256 in the entry layer, for the DRAM's sake: with
// 64-byte pieces of rows 8 KB apart, the H200 streamed the weight at half the one-row kernel's rate). NT: n8
// tiles per warp (2 for 64 rows at C = 1, the accumulators, activation words and weight chunks in registers:
// ptxas -v, no spills; halved at C = 4, where each holds 4 chunks). S: rounds in the shared-memory ring
// (S - 1 rounds' copies in flight while a round multiplies). Shared memory: 38-41 KB at C = 1, 73-123 KB at C = 4.
template <int MT, int C>
struct Config {
  static constexpr int NT = C == 1 ? (MT >= 4 ? 2 : 4) : (MT >= 4 ? 1 : 2);
  static constexpr int S = C == 1 && MT == 1 ? 4 : 3;
  static constexpr int BM = 16 * MT, BN = kWarps * NT * 8;
  static constexpr int kRoundK = 64 * C;
  // Bytes per activation row in shared memory: with 16 of padding, the 2 rows x 4 chunks of a quarter-warp's
  // 16-byte reads hit distinct banks (the stride is 4 banks past a multiple of 32).
  static constexpr int kXStride = kRoundK * 2 + 16;
  static constexpr int kWSlot = NT * C * kWarps * 32 * 16;  // a slot's weight chunks: [NT][C][thread] x 16 bytes
  static constexpr int kXSlot = BM * kXStride;
  static constexpr int kSmem = S * (kWSlot + kXSlot);
  static constexpr int kXRowsPerStep = kWarps * 32 / (8 * C);  // activation rows a pass of the threads copies
  static_assert(BM * 8 * C == MT * C * kWarps * 32, "the activation tile is MT * C 16-byte pieces a thread");
};

// cp.async of 16 bytes from global `src` to shared `dst`, through L2 only (each weight byte is read once), or
// 16 zero bytes when !ok (src-size 0: nothing is read, `src` is then any valid address).
// `dst` is a shared-memory address (__cvta_generic_to_shared).
__device__ __forceinline__ void copy16(uint32_t dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ void copy_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void copy_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

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

template <bool BF16, int MT, int C>
__global__ void __launch_bounds__(kWarps * 32) weight_only_mma_kernel(const WeightOnlyParams p, float* partial) {
  using Cfg = Config<MT, C>;
  constexpr int NT = Cfg::NT, S = Cfg::S, kRoundK = Cfg::kRoundK, kXStride = Cfg::kXStride;
  // The ring (dynamic shared memory, Cfg::kSmem bytes): S slots of each thread's NT x C weight chunks (only the
  // thread that copies a chunk reads it), then S activation tiles [BM rows][kRoundK] (read by all four warps).
  extern __shared__ __align__(16) uint8_t smem[];
  uint8_t* const xs = smem + S * Cfg::kWSlot;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
  const int64_t n_block = static_cast<int64_t>(blockIdx.x) * Cfg::BN, n0 = n_block + warp * NT * 8;
  const int64_t rounds = (p.K + kRoundK - 1) / kRoundK;
  const int64_t r0 = rounds * blockIdx.y / gridDim.y, r1 = rounds * (blockIdx.y + 1) / gridDim.y;
  const uint8_t* const x = static_cast<const uint8_t*>(p.x);

  // Round r's copies into ring slot `slot`, one commit group (zeros past N, M or K, and for rounds past the
  // block's last): the lane's 16-byte chunks of weight rows n0 + 8 j + g (j < jn: inside N) at k = r kRoundK +
  // 64 c + 16 t, and this thread's pieces of the activation tile [BM rows][kRoundK k]: piece tid % (8 C)
  // (8 k, 16 bytes) of rows tid / (8 C) + i kXRowsPerStep (inside M for i < in). Addresses advance from
  // per-thread bases.
  const int xpiece = tid % (8 * C), xrow = tid / (8 * C);
  const int jn = static_cast<int>(std::min<int64_t>(NT, std::max<int64_t>(0, (p.N - n0 - g + 7) / 8)));
  const int in = static_cast<int>(std::min<int64_t>(
      MT * C, std::max<int64_t>(0, (p.M - xrow + Cfg::kXRowsPerStep - 1) / Cfg::kXRowsPerStep)));
  // Weight (n0 + 8 j + g, k0 + 64 c + 16 t) at w_base + j w_tile + (k0 + 64 c) w_kmul (params.h, weight_offset).
  const int8_t* const w_base = p.b + weight_offset(p.b_layout, p.ldb, n0 + g, 16 * t);
  const int64_t w_tile = weight_group_stride(p.b_layout, p.ldb), w_kmul = weight_k_mul(p.b_layout);
  const uint8_t* const x_base = x + (xrow * p.ldx + 8 * xpiece) * 2;
  const int64_t x_step = Cfg::kXRowsPerStep * p.ldx * 2;
  const uint32_t ws_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem + 16 * tid));
  const uint32_t xs_base = static_cast<uint32_t>(__cvta_generic_to_shared(xs + xrow * kXStride + 16 * xpiece));
  auto issue = [&](int64_t r, int slot) {
    const bool any = r < r1;
    const int64_t k0 = r * kRoundK;
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int c = 0; c < C; ++c) {
        const bool ok = any && j < jn && k0 + 64 * c + 16 * t < p.K;
        copy16(ws_base + static_cast<uint32_t>(((slot * NT + j) * C + c) * kWarps * 32 * 16),
               ok ? w_base + j * w_tile + (k0 + 64 * c) * w_kmul : p.b, ok);
      }
    const bool x_in = any && k0 + 8 * xpiece < p.K;
#pragma unroll
    for (int i = 0; i < MT * C; ++i) {
      const bool ok = x_in && i < in;
      copy16(xs_base + static_cast<uint32_t>(slot * Cfg::kXSlot + i * Cfg::kXRowsPerStep * kXStride),
             ok ? x_base + i * x_step + k0 * 2 : x, ok);
    }
    copy_commit();
  };

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  // The copies are asynchronous (no registers wait for them), so they stay in flight where the code issues
  // them: S - 1 rounds ahead of the products. (An earlier version loaded into registers two rounds ahead, and
  // ptxas placed those loads, and the activation tile's, late in the round: the tile's store then waited a
  // whole memory latency each round; it streamed the weight at 0.9-1.5 TB/s on an H200, this one 1.1-1.9.)
#pragma unroll
  for (int s = 0; s < S - 1; ++s) issue(r0 + s, s);
  int slot = 0;
  for (int64_t r = r0; r < r1; ++r) {  // r0 and r1 are the block's own: every thread takes the same path
    copy_wait<S - 2>();  // this thread's copies of round r have landed (later rounds' may be pending) ...
    __syncthreads();     // ... and everyone's: the activation tile is whole, and round r - 1's slot is free
    issue(r + S - 1, slot == 0 ? S - 1 : slot - 1);
    const uint4* const wslot = reinterpret_cast<const uint4*>(smem + slot * Cfg::kWSlot) + tid;
    const uint8_t* const tile = xs + slot * Cfg::kXSlot;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      uint4 cur[NT];
#pragma unroll
      for (int j = 0; j < NT; ++j) cur[j] = wslot[(j * C + c) * kWarps * 32];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        // Rows 16 i + g and 16 i + g + 8: the lane's 16 activations (k 64 c + 16 t .. + 15 of the round).
        const uint8_t* const lo = tile + (16 * i + g) * kXStride + 128 * c + 32 * t;
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
            const uint32_t ww = word(cur[j], s);  // weights 4 s .. 4 s + 3 of the chunk of row n0 + 8 j + g
            mma16816<BF16>(acc[i][j], a, widen2<BF16>(ww, 0), widen2<BF16>(ww, 16));
          }
        }
      }
    }
    slot = slot == S - 1 ? 0 : slot + 1;
  }
  copy_wait<0>();  // no copy (of the rounds past the last) outlives the block

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

// f(bf16, MT, C) with each as a compile-time constant (std::integral_constant) for the instantiation that
// serves p: x's type, its rows, the round length.
template <class F>
decltype(auto) dispatch(const WeightOnlyParams& p, F&& f) {
  auto by_rows = [&](auto bf16, auto chunks) -> decltype(auto) {
    switch (m_tiles(p.M)) {
      case 1: return f(bf16, std::integral_constant<int, 1>{}, chunks);
      case 2: return f(bf16, std::integral_constant<int, 2>{}, chunks);
      default: return f(bf16, std::integral_constant<int, 4>{}, chunks);
    }
  };
  auto by_round = [&](auto bf16) -> decltype(auto) {
    return p.round_k == 256 ? by_rows(bf16, std::integral_constant<int, 4>{})
                            : by_rows(bf16, std::integral_constant<int, 1>{});
  };
  return p.x_kind == XKind::BFloat16 ? by_round(std::true_type{}) : by_round(std::false_type{});
}

// An instantiation's kernel, with its dynamic shared memory allowed, and the blocks of it a multiprocessor holds
// at once (registers and shared memory decide; the same on every GPU of one architecture, the only kind a build
// targets): 0 when the attribute could not be set. Asked once per device: the attribute belongs to the current
// device's context, so a second GPU of the process needs its own call (the 256-k rounds' 74-126 KB are past the
// 48 KB a kernel gets without it), as run_cutlass keeps its own per device.
template <bool BF16, int MT, int C>
int allow_shared_memory() {
  const auto kernel = weight_only_mma_kernel<BF16, MT, C>;
  int b = 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Config<MT, C>::kSmem) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, kernel, kWarps * 32, Config<MT, C>::kSmem) != cudaSuccess)
    b = 0;
  cudaGetLastError();  // clear a failure: the launch below reports its own
  return b;
}

template <bool BF16, int MT, int C>
int resident_blocks() {
  constexpr int kDevices = 64;
  static std::atomic<int> asked[kDevices];  // device d: its blocks + 1, 0 until asked there (racing askers agree)
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kDevices) {
    cudaGetLastError();
    return allow_shared_memory<BF16, MT, C>();
  }
  int v = asked[device].load(std::memory_order_relaxed);
  if (v == 0) {
    v = allow_shared_memory<BF16, MT, C>() + 1;
    asked[device].store(v, std::memory_order_relaxed);
  }
  return v - 1;
}

// K split: as many splits as fill the GPU's resident block slots in one wave (the old rule, about 4 blocks a
// multiprocessor rounded up, made 528-560 blocks where 528 fit, and the few of a second wave took a whole
// block's time on an idle GPU), each split at least kWarps rounds long, at most 32.
int splits_for(const WeightOnlyParams& p) {
  return dispatch(p, [&](auto bf16, auto mt, auto chunks) {
    using Cfg = Config<mt(), chunks()>;
    const int64_t col_blocks = (p.N + Cfg::BN - 1) / Cfg::BN;
    const int64_t rounds = (p.K + Cfg::kRoundK - 1) / Cfg::kRoundK;
    const int64_t slots =
        static_cast<int64_t>(std::max(1, p.sms)) * std::max(1, resident_blocks<bf16(), mt(), chunks()>());
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({slots / col_blocks, rounds / kWarps, 32})));
  });
}

}  // namespace

bool weight_only_mma_supported(const WeightOnlyParams& p) {
  return (p.x_kind == XKind::BFloat16 || p.x_kind == XKind::Float16) && p.M >= 1 &&
         p.M <= kWeightOnlyMmaMaxRows && p.K % 16 == 0 && (p.ldx * 2) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && p.ldb % 16 == 0 &&
         reinterpret_cast<uintptr_t>(p.b) % 16 == 0 && (p.round_k == 64 || p.round_k == 256);
}

size_t weight_only_mma_workspace_bytes(const WeightOnlyParams& p) {
  const int splits = splits_for(p);
  return splits > 1 ? static_cast<size_t>(splits) * static_cast<size_t>(p.M * p.N) * sizeof(float) : 0;
}

const char* launch_weight_only_mma(const WeightOnlyParams& p, void* workspace, void* stream) {
  if (p.M == 0 || p.N == 0) return nullptr;
  if (!weight_only_mma_supported(p))
    return "weight-only mma kernel: x must be bf16/fp16 with 1-64 rows, 16-byte aligned rows of K % 16 == 0 values, "
           "round_k 64 or 256";
  const int splits = splits_for(p);
  float* const partial = static_cast<float*>(workspace);
  if (splits > 1 && partial == nullptr) return "weight-only mma kernel: the split-K workspace is missing";
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return dispatch(p, [&](auto bf16, auto mt, auto chunks) -> const char* {
    using Cfg = Config<mt(), chunks()>;
    if (resident_blocks<bf16(), mt(), chunks()>() == 0)
      return "weight-only mma kernel: its shared memory could not be set up on this GPU";
    const dim3 grid(static_cast<unsigned>((p.N + Cfg::BN - 1) / Cfg::BN), static_cast<unsigned>(splits));
    float* const out = splits > 1 ? partial : nullptr;
    weight_only_mma_kernel<bf16(), mt(), chunks()><<<grid, kWarps * 32, Cfg::kSmem, s>>>(p, out);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess && splits > 1) {
      const int64_t n = p.M * p.N;
      weight_only_reduce_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, s>>>(p, partial, splits);
      e = cudaGetLastError();
    }
    return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
  });
}

}  // namespace cuda_kernels
}  // namespace fastinfer
