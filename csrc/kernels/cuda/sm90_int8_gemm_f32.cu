// The Hopper W8A8 GEMM (sm90_int8_gemm.cuh) with fp32 output: one output type per unit (sm90_units.h).
#if defined(FASTINFER_WITH_CUTLASS)
#include "sm90_int8_gemm.cuh"

namespace fastinfer {
namespace cuda_kernels {

template size_t sm90_gemm_workspace<OutKind::Float32>(const GemmParams&);
template const char* sm90_gemm_run<OutKind::Float32>(const GemmParams&, void*, cudaStream_t);

}  // namespace cuda_kernels
}  // namespace fastinfer
#endif
