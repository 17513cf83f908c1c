// int8 x int8 GEMM with the fused dequantize/bias epilogue for Hopper (sm_90a), composed from CUTLASS
// 3.x: TMA loads, wgmma, warp-specialized persistent kernel (cooperative, or a candidate composition:
// GemmConfig), and an epilogue visitor tree
//   D = ((float(acc) * a_scale[m]) * b_scale[n]) + bias[n]      (bias null: no add)
// in that order, one rounding each (this file is built with --fmad=false, so no step is contracted:
// EPILOGUE.md's algebra, the CPU kernels' and fastinfer.reference's). fp32 / bf16 / fp16 out. The entry
// layer uses it for those outputs without an activation when the shape meets TMA's alignment (see
// sm90_gemm_supported); everything else takes the sm_80 kernel. Framework-free: pointers + GemmParams.
// The kernel's composition; one output type is instantiated per unit, sm90_int8_gemm_<type>.cu (sm90_units.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>

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

namespace fastinfer {
namespace cuda_kernels {
namespace sm90_gemm {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;

// The compositions (cutlass_launch.cuh, Sm90GemmComposition), all in clusters of 2 along M (the B tile is
// multicast to both CTAs of a cluster).
template <Sm90Variant kVariant>
using GemmConfig = Sm90GemmComposition<kVariant, Shape<_2, _1, _1>>;

constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

// The persistent scheduler's tile swizzle (1, 2, 4 or 8 tiles; 1, CUTLASS's default, unless
// FASTINFER_SM90_SWIZZLE says otherwise, read at each launch): a tuning knob, swept by
// benchmarks/bench_linear_cuda.py at the large shapes, where the order tiles visit A and B decides the L2 hits.
inline int sm90_swizzle() {
  const char* s = std::getenv("FASTINFER_SM90_SWIZZLE");
  const int v = s ? std::atoi(s) : 1;
  return v == 2 || v == 4 || v == 8 ? v : 1;
}

template <class ElementD, Sm90Variant kVariant>
struct Sm90Gemm {
  using TileShape = typename GemmConfig<kVariant>::TileShape;
  using ClusterShape = typename GemmConfig<kVariant>::ClusterShape;
  using MainloopSchedule = typename GemmConfig<kVariant>::MainloopSchedule;
  using EpilogueSchedule = typename GemmConfig<kVariant>::EpilogueSchedule;
  using ElementA = int8_t;
  using ElementB = int8_t;
  using ElementAcc = int32_t;
  using LayoutA = cutlass::layout::RowMajor;     // A [M, K_pad]
  using LayoutB = cutlass::layout::ColumnMajor;  // B [N, K_pad] row-major is K x N column-major
  using LayoutD = cutlass::layout::RowMajor;
  static constexpr int kAlignAB = 16;                      // 16 bytes: TMA
  static constexpr int kAlignD = 16 / sizeof(ElementD);

  using Acc = fusion::Sm90AccFetch;
  using AScale = fusion::Sm90ColBroadcast<0, TileShape, float, float>;  // one value per row m
  using BScale = fusion::Sm90RowBroadcast<0, TileShape, float, float>;  // one value per column n
  using Bias = fusion::Sm90RowBroadcast<0, TileShape, float, float>;    // null -> 0
  using ByA = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::multiplies, float, float, kRound>, Acc, AScale>;
  using ByB = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::multiplies, float, float, kRound>, ByA, BScale>;
  using Epilogue = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::plus, ElementD, float, kRound>, ByB, Bias>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, float, void, LayoutD, kAlignD, ElementD, LayoutD,
      kAlignD, EpilogueSchedule, Epilogue>::CollectiveOp;
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, LayoutA, kAlignAB, ElementB, LayoutB, kAlignAB,
      ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      MainloopSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue,
                                                      cutlass::gemm::PersistentScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using Op = Gemm;  // what sm90_workspace / sm90_run (cutlass_launch.cuh) run

  static typename Gemm::Arguments arguments(const GemmParams& p) {
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    using StrideD = typename Kernel::StrideD;
    const int M = static_cast<int>(p.M), N = static_cast<int>(p.N), K = static_cast<int>(p.K_pad);
    const StrideA sa = cutlass::make_cute_packed_stride(StrideA{}, make_shape(M, K, 1));
    const StrideB sb = cutlass::make_cute_packed_stride(StrideB{}, make_shape(N, K, 1));
    const StrideD sd = cutlass::make_cute_packed_stride(StrideD{}, make_shape(M, N, 1));
    typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                  {M, N, K, 1},
                                  {p.a, sa, p.b, sb},
                                  {{}, nullptr, sd, static_cast<ElementD*>(p.out), sd}};
    // The tree's arguments nest as {children..., op}: ((acc * a) * b) + bias.
    args.epilogue.thread = {
        {                                   // (acc * a_scale) * b_scale
         {{}, {p.a_scale}, {}},             // acc * a_scale
         {p.b_scale},                       // b_scale
         {}},                               // multiplies
        {p.bias, -0.0f},                    // bias (null -> -0: y + -0 == y for every y, as with no add)
        {}};                                // plus
    cudaGetDevice(&args.hw_info.device_id);  // the persistent grid is sized for the current device's SMs
    args.scheduler.max_swizzle_size = sm90_swizzle();
    return args;
  }
};

}  // namespace sm90_gemm

template <class ElementD, Sm90Variant kVariant>
struct Sm90Kernel<GemmParams, ElementD, kVariant> : sm90_gemm::Sm90Gemm<ElementD, kVariant> {};

// Instantiated only in sm90_int8_gemm_<type>.cu and sm90_int8_gemm_{pingpong,wide}_bf16.cu.
FASTINFER_SM90_UNIT(extern, Float32, GemmParams)
FASTINFER_SM90_UNIT(extern, BFloat16, GemmParams)
FASTINFER_SM90_UNIT(extern, Float16, GemmParams)
FASTINFER_SM90_UNIT_V(extern, BFloat16, GemmParams, Pingpong)
FASTINFER_SM90_UNIT_V(extern, BFloat16, GemmParams, Wide)

}  // namespace cuda_kernels
}  // namespace fastinfer
