// 2:4 sparse int8 GEMM for Hopper (sm_90a): CUTLASS's structured-sparse compressor (run once, when a layer is
// converted: the compressed weight and its metadata) and the dispatch of the GEMM on the output type. The GEMM
// is composed in sm90_sparse_gemm.cuh and instantiated per output type in sm90_sparse_gemm_{f32,bf16,f16}.cu,
// and per candidate composition for bf16 in sm90_sparse_gemm_{pingpong,wide}_bf16.cu (sm90_units.h says why).
// Framework-free: pointers + Sparse24Params / Sparse24PackParams (params.h).
#include <cuda_runtime.h>

#include <cstdint>

#include "params.h"
#include "sm90_units.h"

#if defined(FASTINFER_WITH_CUTLASS)
#include "cutlass/transform/device/transform_universal_adapter.hpp"
#include "cutlass/transform/kernel/sparse_gemm_compressor.hpp"
#include "sm90_sparse_gemm.cuh"
#endif

namespace fastinfer {
namespace cuda_kernels {

#if defined(FASTINFER_WITH_CUTLASS) && defined(CUTLASS_ARCH_MMA_SPARSE_SM90_SUPPORTED)
namespace {

using namespace cute;
using sm90_sparse::ElementA;
using sm90_sparse::LayoutTagA;
using sm90_sparse::ProblemShape;

// The compressed layout depends only on A's type, layout and the tile's K: one instantiation serves
// every output type.
using Config = typename sm90_sparse::Sm90Sparse24<float>::SparseConfig;
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
  return sm90_gemm_unit(p.out_kind, p.variant,
                        [&](auto kind, auto variant) { return sm90_workspace<kind(), Sparse24Params, variant()>(p); });
}

const char* launch_sparse24_gemm(const Sparse24Params& p, void* workspace, void* stream) {
  if (p.M == 0 || p.N == 0) return nullptr;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return sm90_gemm_unit(p.out_kind, p.variant, [&](auto kind, auto variant) {
    return sm90_run<kind(), Sparse24Params, variant()>(p, workspace, s);
  });
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
