// Running a CUTLASS device-level operator (a GemmUniversalAdapter or TransformUniversalAdapter): the one
// place that checks, initializes, launches and reports. Included only by the .cu files that use CUTLASS.
#pragma once
#include <cuda_runtime.h>

#include "cutlass/cutlass.h"

namespace fastinfer {
namespace cuda_kernels {

// nullptr on success, else why not (the entry layer names the op around it).
template <class Op>
const char* run_cutlass(const typename Op::Arguments& args, void* workspace, cudaStream_t stream) {
  Op op;
  if (op.can_implement(args) != cutlass::Status::kSuccess) return "CUTLASS: shape not supported";
  if (op.initialize(args, workspace, stream) != cutlass::Status::kSuccess) return "CUTLASS: initialization failed";
  if (op.run(stream) != cutlass::Status::kSuccess) return "CUTLASS: launch failed";
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace cuda_kernels
}  // namespace fastinfer
