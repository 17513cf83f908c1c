// The Hopper implicit-GEMM convolution (sm90_conv.cuh) in its small composition (params.h, Sm90Variant; a
// candidate), int8 output: one composition and output type per unit (sm90_units.h).
#if defined(FASTINFER_WITH_CUTLASS)
#include "sm90_conv.cuh"
namespace fastinfer::cuda_kernels {
FASTINFER_SM90_UNIT_V(, Int8, Sm90ConvParams, Small)
}  // namespace fastinfer::cuda_kernels
#endif
