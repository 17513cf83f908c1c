// The CPU ops' activation outputs come from a cache of freed blocks (output_pool.cc says why).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/MemoryFormat.h>
#include <c10/core/ScalarType.h>

#include <cstdint>

namespace fastinfer {
namespace cpu {

// An uninitialised CPU tensor, as at::empty(sizes, dtype, memory_format); storage of kMinPooledBytes or more
// comes from the output cache and goes back to it when the tensor dies.
at::Tensor output_empty(at::IntArrayRef sizes, at::ScalarType dtype,
                        at::MemoryFormat format = at::MemoryFormat::Contiguous);

// The bytes the cache holds (freed blocks waiting for a request of their size).
int64_t output_cache_bytes();
// Sets the most bytes the cache may hold (0: it keeps nothing, and outputs are allocated and freed as
// at::empty's); blocks over the new limit are freed at once. Returns the old limit.
int64_t set_output_cache_limit(int64_t bytes);

}  // namespace cpu
}  // namespace fastinfer
