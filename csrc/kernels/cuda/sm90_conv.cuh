// int8 implicit-GEMM convolution (fprop) for Hopper (sm_90a), composed from CUTLASS 3.x: the activation
// tiles come straight from the NHWC input through TMA's im2col mode (no gathered copy), wgmma
// multiplies them with the KRSC filter, a warp-specialized kernel (one producer warp, TMA) overlaps loads, products
// and the epilogue visitor tree (scale and bias folded per element: ConvScales, params.h)
//   y = act(float(acc) * scale[k] + bias[k])            fp32 out
//   q = cvt.rni.sat(clamp(y * out_inv, -127, 127))       int8 out (NaN passes the clamp, converts to 0)
// one rounding per operation in that order (this file is built with --fmad=false): the CPU kernels' and
// fastinfer.reference's folded convolution epilogue (EPILOGUE.md, "Convolutions"). The activation is a
// clamp to [lo, hi] with runtime bounds (none: +-inf, relu: [0, inf], relu6: [0, 6]), written with
// comparisons so NaN stays NaN. Framework-free: pointers + Sm90ConvParams.
// The kernel's composition; one output type is instantiated per unit, sm90_conv_<type>.cu (sm90_units.h).
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cute/tensor.hpp"
// Before the conv headers: CUTLASS 4.2's sm100 conv collective (which the conv builder includes) names
// cutlass::KernelHardwareInfo without including its header.
#include "cutlass/kernel_hardware_info.hpp"
#include "cutlass/conv/collective/collective_builder.hpp"
#include "cutlass/conv/convnd_problem_shape.hpp"
#include "cutlass/conv/device/conv_universal_adapter.hpp"
#include "cutlass/conv/dispatch_policy.hpp"
#include "cutlass/conv/kernel/conv_universal.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass_launch.cuh"
#include "params.h"
#include "sm90_units.h"

namespace fastinfer {
namespace cuda_kernels {
namespace sm90_conv {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;

// Runtime bounds of a clamp node (the activation, then the int8 range).
struct ClampArgs {
  float lo = -INFINITY, hi = INFINITY;
};

template <class T>
struct ClampFn {
  using Arguments = ClampArgs;
  CUTLASS_HOST_DEVICE T operator()(T const& x, Arguments const& a) const {
    T y;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < T::kElements; ++i) {
      const float v = x[i];
      y[i] = v < a.lo ? a.lo : (v > a.hi ? a.hi : v);
    }
    return y;
  }
};

struct ScaleArgs {
  float factor = 1.0f;
};

template <class T>
struct ScaleFn {  // y * factor (the int8 output's 1 / out_scale when it is not folded into scale)
  using Arguments = ScaleArgs;
  CUTLASS_HOST_DEVICE T operator()(T const& x, Arguments const& a) const {
    T y;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < T::kElements; ++i) y[i] = x[i] * a.factor;
    return y;
  }
};

// Tiles of 128 output pixels x 128 (Cooperative) or 64 (Narrow) output channels, or 64 x 64 (Small), 64 input
// channels per K step (params.h, Sm90Variant); clusters of 1 (TMA im2col tiles are not multicast here).
using CooperativeTile = Shape<_128, _128, Shape<_64>>;
using NarrowTile = Shape<_128, _64, Shape<_64>>;
using SmallTile = Shape<_64, _64, Shape<_64>>;
constexpr int kNarrowStages = 6;  // 6 x 12 KB: with the epilogue's buffers, two CTAs fit a multiprocessor
constexpr int kSmallStages = 6;   // 6 x 8 KB: four CTAs a multiprocessor
using ClusterShape = Shape<_1, _1, _1>;
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;
constexpr cutlass::conv::Operator kFprop = cutlass::conv::Operator::kFprop;

// kStages: 0 for as many as fit beside the epilogue's shared memory.
template <class ElementD, class TileShape, int kStages>
struct Sm90Conv {
  using Layout = cutlass::layout::TensorNHWC;  // activations NHWC, filter KRSC, output NPQK
  static constexpr int kAlignAB = 16;
  static constexpr int kAlignD = 16 / sizeof(ElementD);
  static constexpr bool kInt8Out = std::is_same_v<ElementD, int8_t>;

  // The folded scale and bias (params.h, ConvScales) made here, per element, from the call's ingredients:
  //   scale = (a_scale * w_scale[k]) * fold,  bias = bias[k] * fold
  // a_scale a scalar (a value, or a pointer to the device's dynamic scale), fold out_inv or 1.
  using Acc = fusion::Sm90AccFetch;
  using Scalar = fusion::Sm90ScalarBroadcast<float>;
  using Channel = fusion::Sm90RowBroadcast<0, TileShape, float, float>;  // one value per output channel
  using Times = fusion::Sm90Compute<cutlass::multiplies, float, float, kRound>;
  using AW = fusion::Sm90EVT<Times, Scalar, Channel>;                   // a_scale * w_scale[k]
  using Scale = fusion::Sm90EVT<Times, AW, Scalar>;                     // ... * fold
  using Mul = fusion::Sm90EVT<Times, Acc, Scale>;
  using Bias = fusion::Sm90EVT<Times, Channel, Scalar>;                 // bias[k] (null -> -0) * fold
  using Add = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::plus, float, float, kRound>, Mul, Bias>;
  using ActNode = fusion::Sm90EVT<fusion::Sm90Compute<ClampFn, float, float, kRound>, Add>;
  using ToInt8 = fusion::Sm90EVT<fusion::Sm90Compute<ClampFn, int8_t, float, kRound>,
                                 fusion::Sm90EVT<fusion::Sm90Compute<ScaleFn, float, float, kRound>, ActNode>>;
  using FloatOut = fusion::Sm90EVT<fusion::Sm90Compute<ClampFn, ElementD, float, kRound>, Add>;
  using Epilogue = std::conditional_t<kInt8Out, ToInt8, FloatOut>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, int32_t, float, void, Layout, kAlignD, ElementD, Layout,
      kAlignD, cutlass::epilogue::TmaWarpSpecialized, Epilogue>::CollectiveOp;
  using Stages = std::conditional_t<kStages == 0,
                                    cutlass::conv::collective::StageCountAutoCarveout<static_cast<int>(
                                        sizeof(typename CollectiveEpilogue::SharedStorage))>,
                                    cutlass::conv::collective::StageCount<kStages>>;
  using CollectiveMainloop = typename cutlass::conv::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, kFprop, int8_t, Layout, kAlignAB, int8_t, Layout, kAlignAB,
      int32_t, TileShape, ClusterShape, Stages, cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;
  using ProblemShape = cutlass::conv::ConvProblemShape<kFprop, CollectiveMainloop::DispatchPolicy::NumSpatialDimensions>;
  using Kernel = cutlass::conv::kernel::ConvUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Conv = cutlass::conv::device::ConvUniversalAdapter<Kernel>;
  using Op = Conv;  // what sm90_workspace / sm90_run (cutlass_launch.cuh) run

  static typename Conv::Arguments arguments(const Sm90ConvParams& p) {
    const ConvGeometry& g = p.g;
    auto i = [](int64_t v) { return static_cast<int>(v); };
    const ProblemShape shape(cutlass::conv::Mode::kCrossCorrelation, {i(g.N), i(g.H), i(g.W), i(g.C)},
                             {i(g.K), i(g.R), i(g.S), i(g.C)}, {i(g.pad_h), i(g.pad_w)}, {i(g.pad_h), i(g.pad_w)},
                             {i(g.stride_h), i(g.stride_w)}, {i(g.dil_h), i(g.dil_w)}, 1);
    using StrideD = typename Kernel::StrideD;
    StrideD sd;
    cute::for_each(cute::make_seq<cute::rank<0>(StrideD{})>{},
                   [&](auto r) { cute::get<0, r>(sd) = shape.stride_C[ProblemShape::RankT - 2 - r]; });
    typename Conv::Arguments args{shape, {p.x, p.w}, {{}, nullptr, sd, static_cast<ElementD*>(p.e.out), sd}};
    // The activation as a clamp: relu [0, inf], relu6 [0, 6], none (+-inf): NaN passes all three.
    ClampArgs act;
    if (p.e.act == Act::Relu || p.e.act == Act::Relu6) act.lo = 0.0f;
    if (p.e.act == Act::Relu6) act.hi = 6.0f;
    // The tree's arguments nest as {children..., op}.
    // (acc * scale) + bias; a null bias reads as -0, and -0 * fold (> 0) is -0, which leaves every y as it is
    // (+0 would turn -0 into +0).
    const ConvScales& cs = p.e.s;
    const typename Scalar::Arguments a_scale{{cs.a_scale}, {cs.a_scale_ptr}}, fold{{cs.fold}, {nullptr}};
    const typename Scale::Arguments scale{{a_scale, {cs.w_scale}, {}}, fold, {}};
    [[maybe_unused]] const auto add =
        typename Add::Arguments{{{}, scale, {}}, {{cs.bias, -0.0f}, fold, {}}, {}};
    if constexpr (kInt8Out) {
      args.epilogue.thread = {{{add, act}, ScaleArgs{p.e.out_inv_scale}}, ClampArgs{-127.0f, 127.0f}};
    } else {
      args.epilogue.thread = {add, act};
    }
    return args;
  }
};

}  // namespace sm90_conv

template <class ElementD>
struct Sm90Kernel<Sm90ConvParams, ElementD, Sm90Variant::Cooperative>
    : sm90_conv::Sm90Conv<ElementD, sm90_conv::CooperativeTile, 0> {};
template <class ElementD>
struct Sm90Kernel<Sm90ConvParams, ElementD, Sm90Variant::Narrow>
    : sm90_conv::Sm90Conv<ElementD, sm90_conv::NarrowTile, sm90_conv::kNarrowStages> {};
template <class ElementD>
struct Sm90Kernel<Sm90ConvParams, ElementD, Sm90Variant::Small>
    : sm90_conv::Sm90Conv<ElementD, sm90_conv::SmallTile, sm90_conv::kSmallStages> {};

// Instantiated only in sm90_conv_[narrow_|small_]<type>.cu.
FASTINFER_SM90_UNIT(extern, Float32, Sm90ConvParams)
FASTINFER_SM90_UNIT(extern, Int8, Sm90ConvParams)
FASTINFER_SM90_UNIT_V(extern, Float32, Sm90ConvParams, Narrow)
FASTINFER_SM90_UNIT_V(extern, Int8, Sm90ConvParams, Narrow)
FASTINFER_SM90_UNIT_V(extern, Float32, Sm90ConvParams, Small)
FASTINFER_SM90_UNIT_V(extern, Int8, Sm90ConvParams, Small)

}  // namespace cuda_kernels
}  // namespace fastinfer
