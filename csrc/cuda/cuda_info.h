// What the CUDA entry layer reports to registration.cpp (compiled only in CUDA builds).
#pragma once
#include <string>

namespace fastinfer {
namespace cuda {

// The kernel that served this thread's latest call of a family on a GPU: "gemm" (the int8 GEMM family:
// "sm90_cutlass", "sm80_mma", "weight_only", ..., the conv kernels) or "quantize" (the activation
// quantization of the w8a8 ops and of int8_conv2d's static float input: "quantize_vec" or "quantize_rows");
// "" before the first (registration.cpp's cuda_last_kernel checks the family).
std::string last_kernel(const std::string& family);
// Whether the Hopper CUTLASS kernel is in this build (the CUTLASS headers were found).
bool sm90_built();
// Whether the Hopper 2:4 sparse kernels are in this build.
bool sparse24_built();

}  // namespace cuda
}  // namespace fastinfer
