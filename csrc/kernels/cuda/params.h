// POD parameters and launchers of the CUDA kernels. No torch and no CUDA headers: the C++ entry layer
// (csrc/cuda/cuda_ops.cpp) fills these from checked tensors; the .cu files beside this one hold the
// kernels and compile on their own (the CI compile check builds each for sm_80 and sm_90a).
#pragma once
#include <cstddef>
#include <cstdint>

#include "../epilogue_kinds.h"

// Functions that run on both sides (kernels and their host-side checks: tests/*_host.cc build them with g++).
#if defined(__CUDACC__)
#define FI_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FI_HOST_DEVICE inline
#endif

namespace fastinfer {
namespace cuda_kernels {

using fastinfer::Act;
using fastinfer::OutKind;
enum class XKind : int32_t { Float32 = 0, BFloat16 = 1, Float16 = 2 };  // float activations

// K of the CUDA operands is padded to a multiple of kKAlign bytes (zeros): every 16-byte copy of a
// row is then aligned and whole. The packed CUDA weight is int8 [N, round_up(K, 16)], row-major.
constexpr int64_t kKAlign = 16;
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// The compositions of the Hopper CUTLASS GEMMs (the dense W8A8 GEMM and the 2:4 sparse one), all persistent
// and warp-specialized with 128 bytes of (dense) K per stage:
//   Cooperative  128 x 128 tiles (two consumer warpgroups share a tile); clusters 2 x 1 (dense), 1 x 2
//                (sparse);
//   Pingpong     128 x 128 tiles, clusters 2 x 1, each consumer warpgroup owns a tile, so one's epilogue
//                overlaps the other's main loop;
//   Wide         cooperative 256 x 128 tiles, clusters as Cooperative (half the epilogues and B loads per
//                product).
// Pingpong and Wide are built for bf16 outputs only; the other output types always run Cooperative. The entry
// layer picks per family (measured on an H200, 2026-12-04: the dense GEMM is fastest as Pingpong, the 2:4 one
// as Wide); FASTINFER_SM90_VARIANT overrides it, and the GPU benchmarks time each.
// The implicit-GEMM convolution (sm90_conv.cuh; CUTLASS has no persistent schedule for it) has two:
//   Cooperative  128 x 128 tiles, one consumer warpgroup, as many stages as fit (one CTA a multiprocessor);
//   Narrow       the default: 128 x 64 tiles and 6 stages: half the accumulators and shared memory, so that
//                two CTAs share a multiprocessor (one's epilogue and start beside the other's products), and
//                no empty half tile for 64 output channels (ResNet's layer 1: 2.4x faster on an H200).
//   Small        a candidate (not yet run on a GPU): 64 x 64 tiles, so that a layer with few output pixels
//                (ResNet's layer 4 at batch 32: 104 tiles of 128 x 64 on 132 multiprocessors) spreads over
//                every multiprocessor, several CTAs on each.
enum class Sm90Variant : int32_t { Cooperative = 0, Pingpong = 1, Wide = 2, Narrow = 3, Small = 4 };

// Y[m, n] for m < M, n < N, from A int8 [M, K_pad] (row stride lda) and B int8 [N, K_pad] (ldb),
// both row-major (B as nn.Linear stores its weight: the "TN" product):
//   acc = sum_k A[m, k] * B[n, k]                                  (exact, int32)
//   Int32: Y = acc
//   float: y = act(float(acc) * a_scale[m] * b_scale[n] (+ bias[n])) in fp32, one rounding per
//          operation in this order (EPILOGUE.md), stored as fp32 / bf16 / fp16 (round to nearest even),
//          or as int8: clamp(rint(y * out_inv_scale), -127, 127), NaN -> 0.
// K_pad % 16 == 0, lda % 16 == 0, ldb % 16 == 0 and 16-byte aligned A and B (the entry layer pads).
struct GemmParams {
  int64_t M = 0, N = 0, K_pad = 0;
  const int8_t* a = nullptr;
  int64_t lda = 0;
  const int8_t* b = nullptr;
  int64_t ldb = 0;
  const float* a_scale = nullptr;   // [M], or [1] with a_scale_per_tensor
  bool a_scale_per_tensor = false;
  const float* b_scale = nullptr;   // [N]
  const float* bias = nullptr;      // [N] or null
  void* out = nullptr;
  int64_t ldo = 0;                  // elements between rows of out
  OutKind out_kind = OutKind::Int32;
  Act act = Act::None;
  float out_inv_scale = 1.0f;       // Int8 output: 1 / output scale
  Sm90Variant sm90_variant = Sm90Variant::Cooperative;  // the Hopper kernel's composition (BFloat16 out)
};

// Per-token symmetric quantization of X [M, K] (fp32 / bf16 / fp16) into q int8 [M, K_pad] (ldq),
// columns [K, K_pad) written as 0; the CPU kernels' rule (params.h there):
//   x' = x * col_scale[k] (SmoothQuant, optional); amax = max |x'|; inv = 127 / amax;
//   q = clamp(rint(x' * inv), -127, 127); scale = amax / 127;
//   amax == 0 or inv not finite: q = 0, scale = 0; a NaN or Inf in the row: q = 0, scale = NaN.
// static_inv > 0: q = clamp(rint(x' * static_inv), -127, 127) (NaN -> 0) for every row, no scale.
struct QuantizeParams {
  int64_t M = 0, K = 0, K_pad = 0;
  const void* x = nullptr;
  XKind x_kind = XKind::Float32;
  int64_t ldx = 0;                  // elements between rows of x
  int8_t* q = nullptr;
  int64_t ldq = 0;
  float* scale = nullptr;           // [M] (unused with static_inv)
  float static_inv = 0.0f;
  const float* col_scale = nullptr; // [K] or null
  // Then x'' = max(x' + col_shift[k], 0) (quantize_channel_affine: an eval BatchNorm + ReLU), each step
  // rounded on its own, NaN -> 0 by the ReLU; the CPU kernels' rule.
  const float* col_shift = nullptr; // [K] or null
  bool relu = false;
};

// Dynamic per-tensor quantization of a whole tensor (int8_conv2d's float input without x_scale), the rule of
// fastinfer.reference.int8_conv2d: amax = max |x| over all n values; scale = amax / 127 (NaN when x holds NaN
// or Inf); inv = 1 / scale; q = clamp(rint(x * inv), -127, 127) (NaN -> 0) when scale is finite and > 0, else
// 0. Two kernels (the max by atomics into a zeroed word, then the quantization), no read back to the host;
// *scale receives the scale on the device.
struct TensorQuantizeParams {
  int64_t n = 0;
  const void* x = nullptr;          // n values, any order (q gets the same order)
  XKind x_kind = XKind::Float32;
  int8_t* q = nullptr;              // [n]
  uint32_t* amax_bits = nullptr;    // [1] scratch: max |x| as ordered bits (NaN and Inf above every finite)
  float* scale = nullptr;           // [1]
};
const char* launch_quantize_tensor(const TensorQuantizeParams& p, void* stream);

// Weight-only int8 for few rows (decode-like, bound by reading the weight once):
//   Y[m, n] = (sum_k x[m, k] * float(B[n, k])) * b_scale[n] (+ bias[n]), fp32 accumulation,
//   stored in x's type. M <= kWeightOnlyMaxRows; K % 16 == 0 with 16-byte aligned rows of x, B int8 in one
//   of the layouts below, 16-byte aligned (the entry layer pads x to the weight's K_pad when needed).
constexpr int64_t kWeightOnlyMaxRows = 16;
// The tensor-core version (weight_only_mma.cu) for bf16/fp16 x: up to 64 rows, the same arithmetic with the
// products on mma.sync (fp32 accumulation, in another order); it serves rows above kWeightOnlyMmaMinRows.
constexpr int64_t kWeightOnlyMmaMaxRows = 64;
constexpr int64_t kWeightOnlyMmaMinRows = 8;
// The weight-only kernels' weight layouts (WeightOnlyParams::b_layout), both read through weight_offset:
//   Rows       int8 [N, ldb] row-major (pack_int8_weight: ldb = round_up(K, 16)): byte (n, k) at n ldb + k.
//   Tiles8x64  int8 [ceil(N / 8)][ldb / 512][8][64] (fastinfer.ops.pack_weight_only_tiles; a candidate): tiles
//              of 8 rows x 64 k, each 512 contiguous bytes, a group of 8 rows' tiles in k order (ldb = the
//              bytes of a group: 512 ceil(K / 64)). The tensor-core kernel's lanes copy 16 k of 8 rows per
//              instruction: from Rows that is 8 pieces of 64 bytes, ldb apart; from Tiles one 512-byte run, and
//              a row group's rounds stream one contiguous region (as the one-row kernel's warps do on Rows).
enum class WeightLayout : int32_t { Rows = 0, Tiles8x64 = 1 };
// Byte offset of weight (n, k) for k % 16 == 0 (a 16-byte chunk starts there). Both layouts satisfy
//   weight_offset(n + 8 v, k) = weight_offset(n, k) + v * weight_group_stride(.)    (n % 8 kept)
//   weight_offset(n, k + 64 u) = weight_offset(n, k) + 64 u * weight_k_mul(.)
// which the kernels use to advance their addresses (tests/weight_layout_host.cc checks all three).
FI_HOST_DEVICE int64_t weight_offset(WeightLayout layout, int64_t ldb, int64_t n, int64_t k) {
  if (layout == WeightLayout::Rows) return n * ldb + k;
  return (n / 8) * ldb + (k / 64) * 512 + (n % 8) * 64 + k % 64;
}
FI_HOST_DEVICE int64_t weight_group_stride(WeightLayout layout, int64_t ldb) {
  return layout == WeightLayout::Rows ? 8 * ldb : ldb;
}
FI_HOST_DEVICE int64_t weight_k_mul(WeightLayout layout) { return layout == WeightLayout::Rows ? 1 : 8; }

struct WeightOnlyParams {
  int64_t M = 0, N = 0, K = 0;
  int sms = 0;                      // the GPU's multiprocessors (the mma kernel's K split fills them)
  int round_k = 64;                 // the mma kernel's k per round: 64, or 256 (a candidate; weight_only_mma.cu)
  const void* x = nullptr;
  XKind x_kind = XKind::Float32;
  int64_t ldx = 0;
  const int8_t* b = nullptr;
  int64_t ldb = 0;                  // Rows: bytes per row; Tiles8x64: bytes per group of 8 rows
  WeightLayout b_layout = WeightLayout::Rows;
  const float* b_scale = nullptr;
  const float* bias = nullptr;
  void* out = nullptr;              // [M, N] of x's type
  int64_t ldo = 0;
};

// 2:4 sparse int8 GEMM (Hopper, sm90_sparse_gemm.cuh), the dense W8A8 epilogue on a weight that keeps
// at most 2 nonzeros in every 4 consecutive columns:
//   Y[m, n] = float(sum_k x[m, k] * W[n, k]) * x_scale[m] * w_scale[n] (+ bias[n])   (EPILOGUE.md order)
// W is stored compressed in CUTLASS's structured-sparse layout (values + metadata, sizes from
// sparse24_sizes), made once by launch_sparse24_compress from the dense int8 W [N, K] on the GPU.
// The entry layer pads W with zero rows and columns to N % 8 == 0 (16-byte rows of out, which TMA
// stores need) and K % 128 == 0, and drops the padding columns of out.
struct Sparse24PackParams {
  int64_t N = 0, K = 0;
  const int8_t* w = nullptr;        // dense [N, K], row-major
  int8_t* values = nullptr;         // sparse24_sizes(N, K).values_bytes
  uint8_t* meta = nullptr;          // sparse24_sizes(N, K).meta_bytes
};
struct Sparse24Sizes {
  int64_t values_bytes = 0, meta_bytes = 0;
};
struct Sparse24Params {
  int64_t M = 0, N = 0, K = 0;
  const int8_t* x = nullptr;        // [M, K] quantized activations, row-major (ldx == K)
  const int8_t* w_values = nullptr;
  const uint8_t* w_meta = nullptr;
  const float* x_scale = nullptr;   // [M]
  const float* w_scale = nullptr;   // [N]
  const float* bias = nullptr;      // [N] or null
  void* out = nullptr;              // [M, N] row-major
  OutKind out_kind = OutKind::Float32;  // Float32, BFloat16 or Float16
  Sm90Variant variant = Sm90Variant::Cooperative;  // the kernel's composition (BFloat16 out)
};
constexpr int64_t kSparse24KAlign = 128;  // K of the compressed weight: whole tiles
constexpr int64_t kSparse24NAlign = 8;    // N of the compressed weight: 16-byte rows of any output type

// int8 convolution, NHWC (channels_last) int8 activations, the folded epilogue of the CPU kernels
// (EPILOGUE.md, "Convolutions"): per output channel k
//   y = act(float(acc) * scale[k] + bias[k])      (scale = x_scale * w_scale[k], and for an int8 output
//                                                  with act none/relu also * out_inv, as bias)
//   Float32 out: y;  Int8 out: clamp(rint(y * out_inv), -127, 127), NaN -> 0.
// act: none, relu (y < 0 -> 0) or relu6 (then y > 6 -> 6); NaN stays NaN.
// The kernels fold scale and bias themselves from ConvScales (no per-call vectors, no extra launch), one fp32
// rounding per product in the reference's order: scale = (a_scale * w_scale[k]) * fold, bias = bias[k] * fold,
// fold = out_inv where it folds, else 1 (a product with 1 is exact, so the unfolded case rounds the same).
struct ConvGeometry {
  int64_t N = 0, H = 0, W = 0, C = 0, K = 0;     // input [N, H, W, C], K output channels
  int64_t R = 1, S = 1;                          // filter height, width
  int64_t P = 0, Q = 0;                          // output height, width
  int64_t pad_h = 0, pad_w = 0, stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1;
};
struct ConvScales {
  const float* w_scale = nullptr;      // [K]
  const float* bias = nullptr;         // [K] or null
  float a_scale = 1.0f;                // the activations' per-tensor scale, unless a_scale_ptr
  const float* a_scale_ptr = nullptr;  // the same on the device (a dynamic scale, never read back to the host)
  float fold = 1.0f;                   // out_inv for an int8 output with act none/relu, else 1
};
struct ConvEpilogueParams {
  ConvScales s;
  void* out = nullptr;              // [N, P, Q, K]
  OutKind out_kind = OutKind::Float32;  // Float32 or Int8
  Act act = Act::None;
  float out_inv_scale = 1.0f;       // the int8 output's multiplier: out_inv, or 1 where it is folded
};
// Implicit GEMM on Hopper (sm90_conv.cuh, CUTLASS 3.x: TMA im2col loads of the activations, wgmma,
// warp-specialized): groups 1, filter int8 [K, R, S, C] (KRSC), C % 16 == 0 and K % 16 == 0 (TMA's
// 16-byte rows; the entry layer takes the gathered path otherwise).
struct Sm90ConvParams {
  ConvGeometry g;
  const int8_t* x = nullptr;        // [N, H, W, C]
  const int8_t* w = nullptr;        // [K, R, S, C]
  ConvEpilogueParams e;
  Sm90Variant variant = Sm90Variant::Cooperative;  // Cooperative, Narrow or Small (Sm90Variant)
};
// The folded epilogue vectors above for the gathered path, whose int8 GEMM takes per-channel vectors: made on
// the device in one launch, out [2 K + 1]: scale, bias (written only with a bias), then 1.0 (the per-tensor
// a_scale the GEMM multiplies by). The other paths fold in their own epilogues (ConvScales).
struct ConvFoldParams {
  int64_t K = 0;
  ConvScales s;
  float* out = nullptr;             // [2 K + 1]
};
const char* launch_conv_fold(const ConvFoldParams& p, void* stream);
bool sm90_conv_built();
bool sm90_conv_supported(const Sm90ConvParams& p);
size_t sm90_conv_workspace_bytes(const Sm90ConvParams& p);
const char* launch_conv_sm90(const Sm90ConvParams& p, void* workspace, void* stream);
// The gathered path (any arch, any shape; grouped convolutions one group at a time): rows m = (n, p, q)
// of the GEMM's A operand [M, K_pad] int8 for the group whose channels are [c0, c0 + Cg), K ordered
// (r, s, c) like the packed weight, zero for padding taps and for the columns [R*S*Cg, K_pad); the int8
// GEMM (its folded epilogue given a_scale = 1) runs on them. Groups 1: c0 = 0, Cg = C.
struct Im2RowParams {
  ConvGeometry g;
  const int8_t* x = nullptr;        // [N, H, W, C]
  int8_t* rows = nullptr;           // [M, K_pad] for output pixels [m0, m0 + M)
  int64_t m0 = 0, M = 0, K_pad = 0;
  int64_t c0 = 0, Cg = 0;           // the group's input channels
};
const char* launch_im2row(const Im2RowParams& p, void* stream);
// Depthwise (groups == C == K): w int8 [R * S, C], exact int32 sums, the epilogue above. Any arch.
// strip 8 or 4: the strip kernel (dwconv_strip.cuh: a strip of that many outputs along a row a thread at column
// stride 1, 4 at stride 2; a filter row's taps by dp4a) where dwconv_strip_supported, the per-output kernel
// elsewhere; 0: the per-output kernel. A candidate until timed on a GPU.
struct DwConvParams {
  ConvGeometry g;
  const int8_t* x = nullptr;        // [N, H, W, C]
  const int8_t* w = nullptr;        // [R * S, C]
  ConvEpilogueParams e;
  int strip = 0;
};
// strip 8 or 4, C % 4 == 0, dil_w == 1, S in {3, 5, 7}, stride_w in {1, 2}, 32-bit indices.
bool dwconv_strip_supported(const DwConvParams& p);
const char* launch_dwconv(const DwConvParams& p, void* stream);
// Grouped with narrow groups (the entry layer's choice): a direct convolution on CUDA cores, one thread per
// output pixel and 4 output channels, exact int32 sums, the epilogue above. Output channel k belongs to group
// k / (K / groups) and reads its input channels; w is pack_conv_weight's [K, K_pad] (row k: (r, s, c) over the
// group's Cg channels). With Cg % 4 == 0 and C % 4 == 0, 4 input channels a step by dp4a, the weight first
// copied per call into the workspace as 4-byte words [R*S*Cg/4][K] (a warp's 32 quads of channels then read
// 512 contiguous bytes a step, where rows K_pad apart took 32 cache lines); single bytes from w otherwise.
// Any arch.
struct GroupedConvParams {
  ConvGeometry g;
  int64_t groups = 1;
  const int8_t* x = nullptr;        // [N, H, W, C]
  const int8_t* w = nullptr;        // [K, K_pad]
  int64_t K_pad = 0;
  ConvEpilogueParams e;
};
size_t grouped_conv_workspace_bytes(const GroupedConvParams& p);  // the words, or 0 (bytes from w)
const char* launch_grouped_conv(const GroupedConvParams& p, void* workspace, void* stream);

// Launchers: stream is a cudaStream_t. Each returns nullptr, or the CUDA error of its launch.
// The int8 GEMM on tensor cores with cp.async multistage loads and mma.sync (sm_80 and later).
// Tile shapes: the one shape-bucket decision is in the entry layer (gemm_config below).
enum class GemmTile : int32_t { M128N128 = 0, M64N128 = 1 };
const char* launch_int8_gemm_sm80(const GemmParams& p, GemmTile tile, void* stream);
// Hopper (sm_90a): CUTLASS 3.x TMA + wgmma, warp-specialized persistent kernel (built where the CUTLASS
// headers are found: FASTINFER_WITH_CUTLASS). Float outputs without activation, packed operands.
bool sm90_gemm_built();
bool sm90_gemm_supported(const GemmParams& p);
size_t sm90_gemm_workspace_bytes(const GemmParams& p);  // device scratch the launch needs
const char* launch_int8_gemm_sm90(const GemmParams& p, void* workspace, void* stream);
// *vectorized (if given): whether p ran on the vectorized kernel (rows of aligned 16-byte pieces, up to 32768
// bf16/fp16 or 16384 fp32 values) rather than the scalar one.
const char* launch_quantize_rows(const QuantizeParams& p, void* stream, bool* vectorized = nullptr);
// 2:4 sparse (sm90_sparse_gemm.cu + .cuh; built with the CUTLASS headers and a toolkit with sm_90 sparse MMA).
bool sparse24_built();
Sparse24Sizes sparse24_sizes(int64_t N, int64_t K);
size_t sparse24_compress_workspace_bytes(const Sparse24PackParams& p);
const char* launch_sparse24_compress(const Sparse24PackParams& p, void* workspace, void* stream);
size_t sparse24_gemm_workspace_bytes(const Sparse24Params& p);
const char* launch_sparse24_gemm(const Sparse24Params& p, void* workspace, void* stream);
const char* launch_weight_only_gemm(const WeightOnlyParams& p, void* stream);
bool weight_only_mma_supported(const WeightOnlyParams& p);
size_t weight_only_mma_workspace_bytes(const WeightOnlyParams& p);  // split-K partial sums, 0 without a split
const char* launch_weight_only_mma(const WeightOnlyParams& p, void* workspace, void* stream);

}  // namespace cuda_kernels
}  // namespace fastinfer
