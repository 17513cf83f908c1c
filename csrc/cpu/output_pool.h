// The CPU ops' activation outputs come from a cache of freed blocks (output_pool.cc says why).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/MemoryFormat.h>
#include <c10/core/ScalarType.h>

#include <cstdint>

namespace fastinfer {
namespace cpu {

// An uninitialised CPU tensor, as at::empty(sizes, dtype, memory_format); storage of kMinPooledBytes or more
// comes from the output cache and goes back to it when the tensor dies. For the ops' outputs and for their
// large per-call buffers (a quantized operand, a channels-last copy of the input).
at::Tensor output_empty(at::IntArrayRef sizes, at::ScalarType dtype,
                        at::MemoryFormat format = at::MemoryFormat::Contiguous);

// x itself when it is channels-last contiguous, else a channels-last copy in a cached block (an fp32 NCHW
// batch of 64 RGB images at 224 x 224, 38.5 MB, faulted in 9411 pages a call as x.contiguous()).
at::Tensor channels_last(const at::Tensor& x);

// The bytes the cache holds (freed blocks waiting for a request of their size).
int64_t output_cache_bytes();
// Sets the most bytes the cache may hold (0: it keeps nothing, and outputs are allocated and freed as
// at::empty's); blocks over the new limit are freed at once. Returns the old limit.
int64_t set_output_cache_limit(int64_t bytes);

}  // namespace cpu
}  // namespace fastinfer
