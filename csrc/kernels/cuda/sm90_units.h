// The Hopper CUTLASS kernels, one output type per translation unit (sm90_<family>_<type>.cu).
//
// ptxas spends 30-40 s on each instantiation of a warp-specialized CUTLASS kernel; with all output types in one
// file, that file alone set the length of a parallel build (the 2:4 GEMM: 122 s). Each family's kernel is
// composed in its .cuh (which also declares every instantiation extern, so no other unit compiles one by
// accident), instantiated for one OutKind in each sm90_<family>_<type>.cu, and dispatched on OutKind by
// its sm90_<family>.cu, which sees only these declarations. Framework-free: pointers + params.h structs.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "params.h"

namespace fastinfer {
namespace cuda_kernels {

// W8A8 GEMM (sm90_int8_gemm.cuh): Float32, BFloat16, Float16.
template <OutKind kOut>
size_t sm90_gemm_workspace(const GemmParams& p);
template <OutKind kOut>
const char* sm90_gemm_run(const GemmParams& p, void* workspace, cudaStream_t stream);

// 2:4 sparse GEMM (sm90_sparse_gemm.cuh): Float32, BFloat16, Float16.
template <OutKind kOut>
size_t sm90_sparse24_workspace(const Sparse24Params& p);
template <OutKind kOut>
const char* sm90_sparse24_run(const Sparse24Params& p, void* workspace, cudaStream_t stream);

// Implicit-GEMM convolution (sm90_conv.cuh): Float32, Int8.
template <OutKind kOut>
size_t sm90_conv_workspace(const Sm90ConvParams& p);
template <OutKind kOut>
const char* sm90_conv_run(const Sm90ConvParams& p, void* workspace, cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace fastinfer
