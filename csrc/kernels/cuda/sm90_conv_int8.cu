// The Hopper implicit-GEMM convolution (sm90_conv.cuh) with int8 output: one output type per unit (sm90_units.h).
#if defined(FASTINFER_WITH_CUTLASS)
#include "sm90_conv.cuh"
namespace fastinfer::cuda_kernels {
FASTINFER_SM90_UNIT(, Int8, Sm90ConvParams)
}  // namespace fastinfer::cuda_kernels
#endif
