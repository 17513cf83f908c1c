// Dispatch of the Hopper (sm_90a) W8A8 GEMM: when it serves a call (sm90_gemm_supported) and which output
// type's (and, for bf16, which composition's: GemmParams::sm90_variant) unit runs it. The kernel is composed in
// sm90_int8_gemm.cuh and instantiated per output type in sm90_int8_gemm_{f32,bf16,f16}.cu and
// sm90_int8_gemm_{pingpong,wide}_bf16.cu (sm90_units.h says why); this unit includes no CUTLASS header.
#include <cuda_runtime.h>

#include <cstdint>

#include "params.h"
#include "sm90_units.h"

namespace fastinfer {
namespace cuda_kernels {

#if defined(FASTINFER_WITH_CUTLASS)
bool sm90_gemm_built() { return true; }

bool sm90_gemm_supported(const GemmParams& p) {
  const int64_t elem = p.out_kind == OutKind::Float32 ? 4 : 2;
  const bool float_out = p.out_kind == OutKind::Float32 || p.out_kind == OutKind::BFloat16 ||
                         p.out_kind == OutKind::Float16;
  // TMA: 16-byte aligned bases and row strides (a misaligned base would make the TMA descriptor's
  // encoding fail, and CUTLASS only asserts on that); packed (contiguous) operands and output; int sizes.
  const auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  return float_out && p.act == Act::None && !p.a_scale_per_tensor && p.lda == p.K_pad && p.ldb == p.K_pad &&
         p.ldo == p.N && (p.N * elem) % 16 == 0 && aligned(p.a) && aligned(p.b) && aligned(p.out) &&
         p.M < (int64_t{1} << 31) && p.N < (int64_t{1} << 31) && p.K_pad < (int64_t{1} << 31);
}

size_t sm90_gemm_workspace_bytes(const GemmParams& p) {
  return sm90_gemm_unit(p.out_kind, p.sm90_variant,
                        [&](auto kind, auto variant) { return sm90_workspace<kind(), GemmParams, variant()>(p); });
}

const char* launch_int8_gemm_sm90(const GemmParams& p, void* workspace, void* stream) {
  if (p.M == 0 || p.N == 0) return nullptr;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return sm90_gemm_unit(p.out_kind, p.sm90_variant, [&](auto kind, auto variant) {
    return sm90_run<kind(), GemmParams, variant()>(p, workspace, s);
  });
}

#else  // built without the CUTLASS headers: the sm_80 kernel serves Hopper too

bool sm90_gemm_built() { return false; }
bool sm90_gemm_supported(const GemmParams&) { return false; }
size_t sm90_gemm_workspace_bytes(const GemmParams&) { return 0; }
const char* launch_int8_gemm_sm90(const GemmParams&, void*, void*) { return "built without CUTLASS (sm90 path)"; }

#endif

}  // namespace cuda_kernels
}  // namespace fastinfer
