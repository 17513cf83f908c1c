// What the CUDA entry layer reports to registration.cpp (compiled only in CUDA builds).
#pragma once
#include <string>

namespace fastinfer {
namespace cuda {

// The kernel that served the latest int8 GEMM-family call on a GPU: "sm90_cutlass", "sm80_mma",
// "weight_only", "weight_only_cublas", "sm90_sparse24", or "" before the first.
std::string last_kernel();
// Whether the Hopper CUTLASS kernel is in this build (the CUTLASS headers were found).
bool sm90_built();
// Whether the Hopper 2:4 sparse kernels are in this build.
bool sparse24_built();

}  // namespace cuda
}  // namespace fastinfer
