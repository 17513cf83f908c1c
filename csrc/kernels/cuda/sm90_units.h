// The Hopper CUTLASS kernels, one output type per translation unit (sm90_<family>_<type>.cu).
//
// nvcc's device front end (cicc) spends about 25 s on each instantiation of a warp-specialized CUTLASS kernel
// for sm_90a; with all output types in one file, that file alone set the length of a parallel build (the 2:4
// GEMM: 122 s, 72 of them in cicc; split, its longest unit takes 83 s). Each family's kernel is
// composed in its .cuh (which also declares every instantiation extern, so no other unit compiles one by
// accident), instantiated for one OutKind in each sm90_<family>_<type>.cu, and dispatched on OutKind by
// its sm90_<family>.cu, which sees only these declarations. Framework-free: pointers + params.h structs.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <type_traits>
#include <utility>

#include "params.h"

namespace fastinfer {
namespace cuda_kernels {

// The workspace a kernel needs and its launch, for one family (by its params: GemmParams for the W8A8 GEMM
// in sm90_int8_gemm.cuh, Sparse24Params for the 2:4 GEMM in sm90_sparse_gemm.cuh, Sm90ConvParams for the
// convolution in sm90_conv.cuh) and one output kind. Defined in cutlass_launch.cuh.
// kVariant: the composition (params.h, Sm90Variant).
template <OutKind kOut, class Params, Sm90Variant kVariant = Sm90Variant::Cooperative>
size_t sm90_workspace(const Params& p);
template <OutKind kOut, class Params, Sm90Variant kVariant = Sm90Variant::Cooperative>
const char* sm90_run(const Params& p, void* workspace, cudaStream_t stream);

// The instantiation of one family for one output kind (and composition: FASTINFER_SM90_UNIT_V): declared
// `extern` in the family's .cuh (so no unit compiles it by accident), defined (EXTERN empty) in its
// sm90_<family>_[<variant>_]<type>.cu. Inside namespace fastinfer::cuda_kernels.
#define FASTINFER_SM90_UNIT_V(EXTERN, KIND, PARAMS, VARIANT)                                                 \
  EXTERN template size_t sm90_workspace<OutKind::KIND, PARAMS, Sm90Variant::VARIANT>(const PARAMS&); \
  EXTERN template const char* sm90_run<OutKind::KIND, PARAMS, Sm90Variant::VARIANT>(const PARAMS&, void*, \
                                                                                     cudaStream_t);
#define FASTINFER_SM90_UNIT(EXTERN, KIND, PARAMS) FASTINFER_SM90_UNIT_V(EXTERN, KIND, PARAMS, Cooperative)

// Choosing the unit that serves a call: f(kind, variant), each a compile-time constant (std::integral_constant),
// so that f names the instantiation (sm90_workspace / sm90_run) and a family's dispatch writes its choice once
// for both.
template <OutKind kOut>
using OutKindC = std::integral_constant<OutKind, kOut>;
template <Sm90Variant kVariant>
using VariantC = std::integral_constant<Sm90Variant, kVariant>;

// f(kind, kV) for the first of the listed compositions equal to v; the last listed serves any other v.
template <OutKind kOut, Sm90Variant kV, Sm90Variant... kMore, class F>
decltype(auto) sm90_unit_of(Sm90Variant v, F&& f) {
  if constexpr (sizeof...(kMore) == 0) {
    return f(OutKindC<kOut>{}, VariantC<kV>{});
  } else {
    if (v == kV) return f(OutKindC<kOut>{}, VariantC<kV>{});
    return sm90_unit_of<kOut, kMore...>(v, std::forward<F>(f));
  }
}

// The GEMM families' units (the W8A8 and the 2:4 GEMM): bf16 outputs in the three compositions, fp16 and
// fp32 in the cooperative one.
template <class F>
decltype(auto) sm90_gemm_unit(OutKind out, Sm90Variant v, F&& f) {
  switch (out) {
    case OutKind::BFloat16:
      return sm90_unit_of<OutKind::BFloat16, Sm90Variant::Pingpong, Sm90Variant::Wide, Sm90Variant::Cooperative>(
          v, std::forward<F>(f));
    case OutKind::Float16: return f(OutKindC<OutKind::Float16>{}, VariantC<Sm90Variant::Cooperative>{});
    default: return f(OutKindC<OutKind::Float32>{}, VariantC<Sm90Variant::Cooperative>{});
  }
}

}  // namespace cuda_kernels
}  // namespace fastinfer
