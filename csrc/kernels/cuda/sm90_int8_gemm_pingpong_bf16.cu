// The Hopper W8A8 GEMM (sm90_int8_gemm.cuh) in its pingpong composition (params.h, Sm90Variant), bf16 output: one
// composition and output type per unit (sm90_units.h).
#if defined(FASTINFER_WITH_CUTLASS)
#include "sm90_int8_gemm.cuh"
namespace fastinfer::cuda_kernels {
FASTINFER_SM90_UNIT_V(, BFloat16, GemmParams, Pingpong)
}  // namespace fastinfer::cuda_kernels
#endif
