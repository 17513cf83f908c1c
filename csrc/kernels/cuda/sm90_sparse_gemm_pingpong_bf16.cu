// The Hopper 2:4 sparse GEMM (sm90_sparse_gemm.cuh) in its pingpong composition (params.h, Sm90Variant), bf16
// output: one composition and output type per unit (sm90_units.h).
#if defined(FASTINFER_WITH_CUTLASS)
#include "sm90_sparse_gemm.cuh"
#if defined(CUTLASS_ARCH_MMA_SPARSE_SM90_SUPPORTED)  // (sm90_sparse_gemm.cuh)
namespace fastinfer::cuda_kernels {
FASTINFER_SM90_UNIT_V(, BFloat16, Sparse24Params, Pingpong)
}  // namespace fastinfer::cuda_kernels
#endif
#endif
