// The Hopper implicit-GEMM convolution (sm90_conv.cuh) with fp32 output: one output type per unit (sm90_units.h).
#if defined(FASTINFER_WITH_CUTLASS)
#include "sm90_conv.cuh"

namespace fastinfer {
namespace cuda_kernels {

template size_t sm90_conv_workspace<OutKind::Float32>(const Sm90ConvParams&);
template const char* sm90_conv_run<OutKind::Float32>(const Sm90ConvParams&, void*, cudaStream_t);

}  // namespace cuda_kernels
}  // namespace fastinfer
#endif
