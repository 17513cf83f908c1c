// 2:4 sparse int8 GEMM for Hopper (sm_90a) with the dense W8A8 path's fused epilogue, composed from
// CUTLASS 3.x: sparse wgmma (mma.sp) fed by TMA, warp-specialized cooperative persistent kernel, and
// CUTLASS's structured-sparse compressor (run once, when a layer is converted).
//
// The sparse operand of the tensor cores is A, so the layer is computed transposed: A = W [N, K] (2:4
// along K, compressed), B = x_q [M, K] (row-major = K x M column-major), D = Y^T [N, M] column-major,
// which is Y [M, N] row-major. Epilogue (EPILOGUE.md order, --fmad=false: one rounding per step):
//   Y[m, n] = ((float(acc) * x_scale[m]) * w_scale[n]) + bias[n]
// Framework-free: pointers + Sparse24Params (params.h).
#include <cuda_runtime.h>

#include <cstdint>

#include "params.h"

#if defined(FASTINFER_WITH_CUTLASS)
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/transform/device/transform_universal_adapter.hpp"
#include "cutlass/transform/kernel/sparse_gemm_compressor.hpp"
#include "cutlass/util/packed_stride.hpp"
#include "cutlass_launch.cuh"
#endif

namespace fastinfer {
namespace cuda_kernels {

#if defined(FASTINFER_WITH_CUTLASS) && defined(CUTLASS_ARCH_MMA_SPARSE_SM90_SUPPORTED)
namespace {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;

// 128 x 128 output tiles, 128 bytes of (dense) K per stage, clusters of 1 x 2 (the A tile - the
// compressed weight - is multicast along N to both CTAs); cooperative schedule.
using TileShape = Shape<_128, _128, _128>;
using ClusterShape = Shape<_1, _2, _1>;
using MainloopSchedule = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;
using ProblemShape = Shape<int, int, int, int>;
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

using ElementA = int8_t;
using ElementB = int8_t;
using ElementAcc = int32_t;
using LayoutTagA = cutlass::layout::RowMajor;     // W [N, K]
using LayoutTagB = cutlass::layout::ColumnMajor;  // x_q [M, K] row-major is K x M column-major
using LayoutTagD = cutlass::layout::ColumnMajor;  // Y^T [N, M] column-major is Y [M, N] row-major
constexpr int kAlignAB = 16;                      // elements: 16 bytes (TMA)

template <class ElementD>
struct Sm90Sparse24 {
  static constexpr int kAlignD = 16 / sizeof(ElementD);

  using Acc = fusion::Sm90AccFetch;
  using XScale = fusion::Sm90RowBroadcast<0, TileShape, float, float>;  // one value per column of D (token m)
  using WScale = fusion::Sm90ColBroadcast<0, TileShape, float, float>;  // one value per row of D (channel n)
  using Bias = fusion::Sm90ColBroadcast<0, TileShape, float, float>;    // null -> 0
  using ByX = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::multiplies, float, float, kRound>, Acc, XScale>;
  using ByW = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::multiplies, float, float, kRound>, ByX, WScale>;
  using Epilogue = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::plus, ElementD, float, kRound>, ByW, Bias>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, float, void, LayoutTagD, kAlignD, ElementD,
      LayoutTagD, kAlignD, EpilogueSchedule, Epilogue>::CollectiveOp;
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, ElementA, LayoutTagA, kAlignAB, ElementB,
      LayoutTagB, kAlignAB, ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      MainloopSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue,
                                                      cutlass::gemm::PersistentScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using SparseConfig = typename CollectiveMainloop::SparseConfig;

  static typename Gemm::Arguments arguments(const Sparse24Params& p) {
    using StrideB = typename Kernel::StrideB;
    using StrideD = typename Kernel::StrideD;
    const int N = static_cast<int>(p.N), M = static_cast<int>(p.M), K = static_cast<int>(p.K);
    const ProblemShape shape{N, M, K, 1};
    const StrideB sb = cutlass::make_cute_packed_stride(StrideB{}, make_shape(M, K, 1));
    const StrideD sd = cutlass::make_cute_packed_stride(StrideD{}, make_shape(N, M, 1));
    typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                  shape,
                                  {p.w_values, SparseConfig::fill_layoutA(shape), p.x, sb,
                                   reinterpret_cast<const typename CollectiveMainloop::ElementE*>(p.w_meta),
                                   SparseConfig::fill_layoutE(shape)},
                                  {{}, nullptr, sd, static_cast<ElementD*>(p.out), sd}};
    // The tree's arguments nest as {children..., op}: ((acc * x_scale) * w_scale) + bias.
    args.epilogue.thread = {
        {                                   // (acc * x_scale) * w_scale
         {{}, {p.x_scale}, {}},             // acc * x_scale
         {p.w_scale},                       // w_scale
         {}},                               // multiplies
        {p.bias, -0.0f},                    // bias (null -> -0: y + -0 == y for every y, as with no add)
        {}};                                // plus
    cudaGetDevice(&args.hw_info.device_id);  // the persistent grid is sized for the current device's SMs
    return args;
  }

  static size_t workspace(const Sparse24Params& p) { return Gemm::get_workspace_size(arguments(p)); }

  static const char* run(const Sparse24Params& p, void* workspace_ptr, cudaStream_t stream) {
    return run_cutlass<Gemm>(arguments(p), workspace_ptr, stream);
  }
};

// The compressed layout depends only on A's type, layout and the tile's K: one instantiation serves
// every output type.
using Config = typename Sm90Sparse24<float>::SparseConfig;
using StrideA = cutlass::gemm::TagToStrideA_t<LayoutTagA>;
using CompressorUtility =
    cutlass::transform::kernel::StructuredSparseCompressorUtility<ProblemShape, ElementA, LayoutTagA, Config>;
using CompressorKernel = cutlass::transform::kernel::StructuredSparseCompressor<ProblemShape, ElementA, LayoutTagA,
                                                                                Config, cutlass::arch::Sm90>;
using Compressor = cutlass::transform::device::TransformUniversalAdapter<CompressorKernel>;

ProblemShape weight_shape(int64_t N, int64_t K) {
  return ProblemShape{static_cast<int>(N), 1, static_cast<int>(K), 1};
}

CompressorUtility utility(int64_t N, int64_t K) {
  const StrideA sa = cutlass::make_cute_packed_stride(StrideA{}, make_shape(static_cast<int>(N), static_cast<int>(K), 1));
  return CompressorUtility(weight_shape(N, K), sa);
}

typename Compressor::Arguments compressor_args(const Sparse24PackParams& p) {
  cutlass::KernelHardwareInfo hw;
  cudaGetDevice(&hw.device_id);
  hw.sm_count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(hw.device_id);
  const StrideA sa =
      cutlass::make_cute_packed_stride(StrideA{}, make_shape(static_cast<int>(p.N), static_cast<int>(p.K), 1));
  return typename Compressor::Arguments{weight_shape(p.N, p.K), {p.w, sa, p.values, p.meta}, {hw}};
}

}  // namespace

bool sparse24_built() { return true; }

Sparse24Sizes sparse24_sizes(int64_t N, int64_t K) {
  CompressorUtility u = utility(N, K);
  Sparse24Sizes s;
  s.values_bytes = static_cast<int64_t>(N) * u.get_tensorA_k_physical();
  s.meta_bytes = static_cast<int64_t>(u.get_metadata_m_physical()) * u.get_metadata_k_physical();
  return s;
}

size_t sparse24_compress_workspace_bytes(const Sparse24PackParams& p) {
  return Compressor::get_workspace_size(compressor_args(p));
}

const char* launch_sparse24_compress(const Sparse24PackParams& p, void* workspace, void* stream) {
  return run_cutlass<Compressor>(compressor_args(p), workspace, static_cast<cudaStream_t>(stream));
}

size_t sparse24_gemm_workspace_bytes(const Sparse24Params& p) {
  switch (p.out_kind) {
    case OutKind::BFloat16: return Sm90Sparse24<cutlass::bfloat16_t>::workspace(p);
    case OutKind::Float16: return Sm90Sparse24<cutlass::half_t>::workspace(p);
    default: return Sm90Sparse24<float>::workspace(p);
  }
}

const char* launch_sparse24_gemm(const Sparse24Params& p, void* workspace, void* stream) {
  if (p.M == 0 || p.N == 0) return nullptr;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.out_kind) {
    case OutKind::BFloat16: return Sm90Sparse24<cutlass::bfloat16_t>::run(p, workspace, s);
    case OutKind::Float16: return Sm90Sparse24<cutlass::half_t>::run(p, workspace, s);
    default: return Sm90Sparse24<float>::run(p, workspace, s);
  }
}

#else  // no CUTLASS headers, or a CUDA toolkit without sm_90 sparse MMA: no 2:4 kernel in this build

bool sparse24_built() { return false; }
Sparse24Sizes sparse24_sizes(int64_t, int64_t) { return {}; }
size_t sparse24_compress_workspace_bytes(const Sparse24PackParams&) { return 0; }
const char* launch_sparse24_compress(const Sparse24PackParams&, void*, void*) {
  return "built without the CUTLASS sm_90 sparse kernels";
}
size_t sparse24_gemm_workspace_bytes(const Sparse24Params&) { return 0; }
const char* launch_sparse24_gemm(const Sparse24Params&, void*, void*) {
  return "built without the CUTLASS sm_90 sparse kernels";
}

#endif

}  // namespace cuda_kernels
}  // namespace fastinfer
