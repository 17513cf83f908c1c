// The Hopper W8A8 GEMM (sm90_int8_gemm.cuh) with bf16 output: one output type per unit (sm90_units.h).
#if defined(FASTINFER_WITH_CUTLASS)
#include "sm90_int8_gemm.cuh"
namespace fastinfer::cuda_kernels {
FASTINFER_SM90_UNIT(, BFloat16, GemmParams)
}  // namespace fastinfer::cuda_kernels
#endif
