// Running a CUTLASS device-level operator (a GemmUniversalAdapter or TransformUniversalAdapter): the one
// place that checks, initializes, launches and reports; the CUTLASS element type of each OutKind; and the
// Hopper GEMMs' compositions (Sm90Composition). Included only by the .cu files that use CUTLASS.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "cutlass/cutlass.h"
#include "cutlass/epilogue/dispatch_policy.hpp"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/numeric_types.h"
#include "params.h"
#include "sm90_units.h"

namespace fastinfer {
namespace cuda_kernels {

// The kernel type under a GEMM or convolution operator (GemmUniversalAdapter::GemmKernel,
// ConvUniversalAdapter::ConvKernel); void for others (TransformUniversalAdapter: the 2:4 compressor).
template <class Op, class = void, class = void>
struct KernelOf {
  using type = void;
};
template <class Op, class C>
struct KernelOf<Op, std::void_t<typename Op::GemmKernel>, C> {
  using type = typename Op::GemmKernel;
};
template <class Op>
struct KernelOf<Op, void, std::void_t<typename Op::ConvKernel>> {
  using type = typename Op::ConvKernel;
};

// nullptr on success, else why not (the entry layer names the op around it).
// Op::initialize sets the kernel's dynamic shared-memory attribute (cudaFuncSetAttribute, a driver call) at every
// call; for the GEMMs and convolutions it runs once per device and instantiation here, and later calls initialize
// the workspace and build the kernel's params (Op::update) without it: the same params, one host driver call
// fewer a launch. (The compressor, run once per layer, always initializes.)
template <class Op>
const char* run_cutlass(const typename Op::Arguments& args, void* workspace, cudaStream_t stream) {
  using Kernel = typename KernelOf<Op>::type;
  Op op;
  if (op.can_implement(args) != cutlass::Status::kSuccess) return "CUTLASS: shape not supported";
  static std::atomic<uint64_t> attribute_set{0};  // bit d: initialize() has run on device d
  int device = -1;
  if constexpr (!std::is_void_v<Kernel>) cudaGetDevice(&device);
  const uint64_t bit = device >= 0 && device < 64 ? uint64_t{1} << device : 0;
  bool initialized = false;
  if constexpr (!std::is_void_v<Kernel>) {
    if (bit != 0 && (attribute_set.load(std::memory_order_relaxed) & bit) != 0) {
      if (Kernel::initialize_workspace(args, workspace, stream) != cutlass::Status::kSuccess ||
          op.update(args, workspace) != cutlass::Status::kSuccess)
        return "CUTLASS: initialization failed";
      initialized = true;
    }
  }
  if (!initialized) {
    if (op.initialize(args, workspace, stream) != cutlass::Status::kSuccess) return "CUTLASS: initialization failed";
    attribute_set.fetch_or(bit, std::memory_order_relaxed);
  }
  if (op.run(stream) != cutlass::Status::kSuccess) return "CUTLASS: launch failed";
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

// The element type a kernel writes for an OutKind.
template <OutKind kOut>
struct CutlassOut;
template <>
struct CutlassOut<OutKind::Float32> { using type = float; };
template <>
struct CutlassOut<OutKind::BFloat16> { using type = cutlass::bfloat16_t; };
template <>
struct CutlassOut<OutKind::Float16> { using type = cutlass::half_t; };
template <>
struct CutlassOut<OutKind::Int8> { using type = int8_t; };
template <OutKind kOut>
using CutlassOut_t = typename CutlassOut<kOut>::type;

// One composition of a Hopper GEMM (params.h, Sm90Variant), as each family's config names it: the CTA tile,
// the cluster, and the cooperative (two consumer warpgroups share a tile) or pingpong (each owns one) schedules.
template <class Tile, class Cluster, bool kPingpong>
struct Sm90Composition {
  using TileShape = Tile;
  using ClusterShape = Cluster;
  using MainloopSchedule = std::conditional_t<kPingpong, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                                              cutlass::gemm::KernelTmaWarpSpecializedCooperative>;
  using EpilogueSchedule = std::conditional_t<kPingpong, cutlass::epilogue::TmaWarpSpecialized,
                                              cutlass::epilogue::TmaWarpSpecializedCooperative>;
};

// The three compositions of a Hopper GEMM family (params.h, Sm90Variant), all with 128 bytes of K per stage:
// Cooperative (128 x 128 tiles shared by two consumer warpgroups) and Wide (cooperative on 256 x 128) in the
// family's own clusters, Pingpong (each consumer warpgroup owns a 128 x 128 tile) in clusters of 2 x 1.
template <Sm90Variant kVariant, class CooperativeCluster>
struct Sm90GemmComposition
    : Sm90Composition<cute::Shape<cute::_128, cute::_128, cute::_128>, CooperativeCluster, false> {};
template <class CooperativeCluster>
struct Sm90GemmComposition<Sm90Variant::Pingpong, CooperativeCluster>
    : Sm90Composition<cute::Shape<cute::_128, cute::_128, cute::_128>, cute::Shape<cute::_2, cute::_1, cute::_1>,
                      true> {};
template <class CooperativeCluster>
struct Sm90GemmComposition<Sm90Variant::Wide, CooperativeCluster>
    : Sm90Composition<cute::Shape<cute::_256, cute::_128, cute::_128>, CooperativeCluster, false> {};

// A Hopper kernel family's composition for one output element type (and Sm90Variant), specialized by each
// family's .cuh: `Op`, its CUTLASS device-level operator, and `static typename Op::Arguments arguments(const
// Params&)`.
template <class Params, class ElementD, Sm90Variant kVariant>
struct Sm90Kernel;

template <OutKind kOut, class Params, Sm90Variant kVariant>
size_t sm90_workspace(const Params& p) {
  using K = Sm90Kernel<Params, CutlassOut_t<kOut>, kVariant>;
  return K::Op::get_workspace_size(K::arguments(p));
}

template <OutKind kOut, class Params, Sm90Variant kVariant>
const char* sm90_run(const Params& p, void* workspace, cudaStream_t stream) {
  using K = Sm90Kernel<Params, CutlassOut_t<kOut>, kVariant>;
  return run_cutlass<typename K::Op>(K::arguments(p), workspace, stream);
}

}  // namespace cuda_kernels
}  // namespace fastinfer
