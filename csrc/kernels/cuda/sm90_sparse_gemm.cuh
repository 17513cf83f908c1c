// 2:4 sparse int8 GEMM for Hopper (sm_90a) with the dense W8A8 path's fused epilogue, composed from
// CUTLASS 3.x: sparse wgmma (mma.sp) fed by TMA, warp-specialized persistent kernel (cooperative, or a
// candidate composition: SparseGemmConfig), and
// CUTLASS's structured-sparse compressor (run once, when a layer is converted).
//
// The sparse operand of the tensor cores is A, so the layer is computed transposed: A = W [N, K] (2:4
// along K, compressed), B = x_q [M, K] (row-major = K x M column-major), D = Y^T [N, M] column-major,
// which is Y [M, N] row-major. Epilogue (EPILOGUE.md order, --fmad=false: one rounding per step):
//   Y[m, n] = ((float(acc) * x_scale[m]) * w_scale[n]) + bias[n]
// Framework-free: pointers + Sparse24Params (params.h).
// The kernel's composition; one output type is instantiated per unit, sm90_sparse_gemm_<type>.cu (sm90_units.h);
// the compressor and the dispatch are in sm90_sparse_gemm.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"
#include "cutlass_launch.cuh"
#include "params.h"
#include "sm90_units.h"

#if defined(CUTLASS_ARCH_MMA_SPARSE_SM90_SUPPORTED)  // a toolkit with sm_90 sparse MMA (CUDA 12.2 on)
namespace fastinfer {
namespace cuda_kernels {
namespace sm90_sparse {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;

// The compositions (cutlass_launch.cuh, Sm90GemmComposition; K counted dense): the cooperative ones in
// clusters of 1 x 2 (the A tile - the compressed weight - is multicast along N to both CTAs), Pingpong's 2 x 1
// (the activations' tile multicast). The compressed layout (SparseConfig) depends only on A's type and layout
// and on min(tile K, 128): the same for all three.
template <Sm90Variant kVariant>
using SparseGemmConfig = Sm90GemmComposition<kVariant, Shape<_1, _2, _1>>;

using ProblemShape = Shape<int, int, int, int>;
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

using ElementA = int8_t;
using ElementB = int8_t;
using ElementAcc = int32_t;
using LayoutTagA = cutlass::layout::RowMajor;     // W [N, K]
using LayoutTagB = cutlass::layout::ColumnMajor;  // x_q [M, K] row-major is K x M column-major
using LayoutTagD = cutlass::layout::ColumnMajor;  // Y^T [N, M] column-major is Y [M, N] row-major
constexpr int kAlignAB = 16;                      // elements: 16 bytes (TMA)

template <class ElementD, Sm90Variant kVariant = Sm90Variant::Cooperative>
struct Sm90Sparse24 {
  using TileShape = typename SparseGemmConfig<kVariant>::TileShape;
  using ClusterShape = typename SparseGemmConfig<kVariant>::ClusterShape;
  using MainloopSchedule = typename SparseGemmConfig<kVariant>::MainloopSchedule;
  using EpilogueSchedule = typename SparseGemmConfig<kVariant>::EpilogueSchedule;
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
  using Op = Gemm;  // what sm90_workspace / sm90_run (cutlass_launch.cuh) run
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
};

}  // namespace sm90_sparse

template <class ElementD, Sm90Variant kVariant>
struct Sm90Kernel<Sparse24Params, ElementD, kVariant> : sm90_sparse::Sm90Sparse24<ElementD, kVariant> {
  // One compressed weight (made with Cooperative's layout, sm90_sparse_gemm.cu) serves every composition.
  static_assert(std::is_same_v<typename sm90_sparse::Sm90Sparse24<ElementD, kVariant>::SparseConfig,
                               typename sm90_sparse::Sm90Sparse24<float>::SparseConfig>,
                "a composition with another compressed layout needs its own compressor");
};

// Instantiated only in sm90_sparse_gemm_<type>.cu and sm90_sparse_gemm_{pingpong,wide}_bf16.cu.
FASTINFER_SM90_UNIT(extern, Float32, Sparse24Params)
FASTINFER_SM90_UNIT(extern, BFloat16, Sparse24Params)
FASTINFER_SM90_UNIT(extern, Float16, Sparse24Params)
FASTINFER_SM90_UNIT_V(extern, BFloat16, Sparse24Params, Pingpong)
FASTINFER_SM90_UNIT_V(extern, BFloat16, Sparse24Params, Wide)

}  // namespace cuda_kernels
}  // namespace fastinfer
#endif
