// Dispatch of the Hopper (sm_90a) implicit-GEMM convolution: when it serves a call (sm90_conv_supported: TMA's
// im2col limits) and which output type's unit runs it. The kernel is composed in sm90_conv.cuh and
// instantiated per output type in sm90_conv_{f32,int8}.cu (sm90_units.h says why); this unit includes no
// CUTLASS header.
#include <cuda_runtime.h>

#include <cstdint>

#include "params.h"
#include "sm90_units.h"

namespace fastinfer {
namespace cuda_kernels {

#if defined(FASTINFER_WITH_CUTLASS)
bool sm90_conv_built() { return true; }

bool sm90_conv_supported(const Sm90ConvParams& p) {
  const ConvGeometry& g = p.g;
  const int64_t elem = p.e.out_kind == OutKind::Int8 ? 1 : 4;
  const bool kind_ok = p.e.out_kind == OutKind::Int8 || p.e.out_kind == OutKind::Float32;
  const bool act_ok = p.e.act == Act::None || p.e.act == Act::Relu || p.e.act == Act::Relu6;
  // TMA: 16-byte rows of the activations, the filter and the output, 16-byte aligned bases; int sizes.
  const auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  // The im2col TMA's limits in 2-D (cuTensorMapEncodeIm2col; CUTLASS's can_implement checks all but the
  // stride, and a stride over 8 fails the descriptor's encoding, which CUTLASS only asserts on): traversal
  // strides 1..8, the corners -pad and pad - (taps - 1) * dil within [-128, 127], filter offsets
  // (taps - 1) * dil below 255. Anything else takes the gathered path.
  const auto im2col_ok = [](int64_t pad, int64_t taps, int64_t dil, int64_t stride) {
    const int64_t span = (taps - 1) * dil;
    return stride >= 1 && stride <= 8 && pad >= 0 && pad <= 128 && pad - span >= -128 && pad - span <= 127 &&
           span >= 0 && span < 255;
  };
  return kind_ok && act_ok && im2col_ok(g.pad_h, g.R, g.dil_h, g.stride_h) &&
         im2col_ok(g.pad_w, g.S, g.dil_w, g.stride_w) && g.C % 16 == 0 && (g.K * elem) % 16 == 0 && aligned(p.x) &&
         aligned(p.w) &&
         aligned(p.e.out) && g.N * g.H * g.W * g.C < (int64_t{1} << 31) && g.N * g.P * g.Q * g.K < (int64_t{1} << 31);
}

// The units: int8 and fp32 outputs, each in the three compositions.
template <class F>
decltype(auto) conv_unit(const Sm90ConvParams& p, F&& f) {
  if (p.e.out_kind == OutKind::Int8)
    return sm90_unit_of<OutKind::Int8, Sm90Variant::Narrow, Sm90Variant::Small, Sm90Variant::Cooperative>(
        p.variant, std::forward<F>(f));
  return sm90_unit_of<OutKind::Float32, Sm90Variant::Narrow, Sm90Variant::Small, Sm90Variant::Cooperative>(
      p.variant, std::forward<F>(f));
}

size_t sm90_conv_workspace_bytes(const Sm90ConvParams& p) {
  return conv_unit(p, [&](auto kind, auto variant) { return sm90_workspace<kind(), Sm90ConvParams, variant()>(p); });
}

const char* launch_conv_sm90(const Sm90ConvParams& p, void* workspace, void* stream) {
  if (p.g.N * p.g.P * p.g.Q == 0 || p.g.K == 0) return nullptr;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return conv_unit(p, [&](auto kind, auto variant) {
    return sm90_run<kind(), Sm90ConvParams, variant()>(p, workspace, s);
  });
}

#else  // built without the CUTLASS headers: convolutions take the gathered path

bool sm90_conv_built() { return false; }
bool sm90_conv_supported(const Sm90ConvParams&) { return false; }
size_t sm90_conv_workspace_bytes(const Sm90ConvParams&) { return 0; }
const char* launch_conv_sm90(const Sm90ConvParams&, void*, void*) { return "built without CUTLASS (sm90 conv)"; }

#endif

}  // namespace cuda_kernels
}  // namespace fastinfer
