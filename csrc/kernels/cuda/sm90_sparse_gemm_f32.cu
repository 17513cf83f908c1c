// The Hopper 2:4 sparse GEMM (sm90_sparse_gemm.cuh) with fp32 output: one output type per unit (sm90_units.h).
#if defined(FASTINFER_WITH_CUTLASS)
#include "sm90_sparse_gemm.cuh"

#if defined(CUTLASS_ARCH_MMA_SPARSE_SM90_SUPPORTED)
namespace fastinfer {
namespace cuda_kernels {

template size_t sm90_sparse24_workspace<OutKind::Float32>(const Sparse24Params&);
template const char* sm90_sparse24_run<OutKind::Float32>(const Sparse24Params&, void*, cudaStream_t);

}  // namespace cuda_kernels
}  // namespace fastinfer
#endif
#endif
