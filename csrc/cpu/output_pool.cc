// A cache of freed output blocks for the CPU ops (entry layer).
//
// Every op call returns a new tensor. glibc's malloc serves a block above its mmap threshold (dynamic, at
// most 32 MiB on 64-bit systems) from a fresh mapping and unmaps it when it is freed, so an output that large
// is page-faulted in, 4 KiB at a time, on every call: an int8 1x1 convolution with a 38.5 MB fp32 output
// (16 -> 96 channels at 112 x 112, batch 8; AMD Zen 4, 2 threads) took 17.2 ms, 9409 faults a call, and
// 1.1 ms without them. Below the threshold the heap may also hand its top back to the system and fault it in
// again. This cache keeps freed output blocks of kMinPooledBytes or more, by exact size, for the next
// request of that size (an inference loop asks for the same sizes on every call), up to a limit in bytes,
// the least recently freed going first.
// Nothing else in the process is affected, unlike fastinfer.tune_malloc's process-wide settings.
#include "output_pool.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>

#include <cstdlib>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace fastinfer {
namespace cpu {
namespace {

constexpr size_t kMinPooledBytes = size_t{256} << 10;  // smaller outputs come from at::empty as they are
constexpr size_t kAlign = 64;                          // as torch's CPU allocator
constexpr size_t kHeader = 64;                         // the block's data size, ahead of the data

struct Cache {
  std::mutex mu;
  std::list<void*> lru;  // cached block starts, the most recently freed first
  std::unordered_map<size_t, std::vector<std::list<void*>::iterator>> by_size;  // data size -> its blocks, oldest first
  size_t held = 0;
  size_t limit = size_t{512} << 20;
};

// Never destroyed: a tensor may die after static destruction (and free its block then).
Cache& cache() {
  static Cache* c = new Cache;
  return *c;
}

size_t block_bytes(void* block) { return *static_cast<size_t*>(block); }

// Frees the least recently cached blocks until at most `keep` bytes are held; the caller holds c.mu. Shapes
// that stop coming (a new sequence length, another batch size) so leave the cache to the ones in use.
void trim_locked(Cache& c, size_t keep) {
  while (c.held > keep && !c.lru.empty()) {
    void* block = c.lru.back();
    const size_t bytes = block_bytes(block);
    std::vector<std::list<void*>::iterator>& same = c.by_size[bytes];
    same.erase(same.begin());  // the oldest of its size is the list's oldest
    if (same.empty()) c.by_size.erase(bytes);
    c.lru.pop_back();
    c.held -= bytes;
    std::free(block);
  }
}

// The DataPtr deleter: the block goes back to the cache (evicting the oldest past the limit), or to the
// system when it alone is over the limit.
void release_block(void* block) {
  const size_t bytes = block_bytes(block);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    if (bytes <= c.limit) {
      trim_locked(c, c.limit - bytes);
      c.lru.push_front(block);
      c.by_size[bytes].push_back(c.lru.begin());
      c.held += bytes;
      return;
    }
  }
  std::free(block);
}

struct CachingAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    const size_t bytes = (n + kAlign - 1) / kAlign * kAlign;
    void* block = nullptr;
    Cache& c = cache();
    {
      std::lock_guard<std::mutex> lock(c.mu);
      auto it = c.by_size.find(bytes);
      if (it != c.by_size.end()) {  // the most recently freed block of this size
        const std::list<void*>::iterator node = it->second.back();
        block = *node;
        c.lru.erase(node);
        it->second.pop_back();
        if (it->second.empty()) c.by_size.erase(it);
        c.held -= bytes;
      }
    }
    if (block == nullptr) {
      block = std::aligned_alloc(kAlign, kHeader + bytes);
      TORCH_CHECK(block != nullptr, "fastinfer: out of memory allocating an output of ", n, " bytes");
      *static_cast<size_t*>(block) = bytes;
    }
    return {static_cast<char*>(block) + kHeader, block, &release_block, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }
};

CachingAllocator& caching_allocator() {
  static CachingAllocator* a = new CachingAllocator;
  return *a;
}

}  // namespace

at::Tensor output_empty(at::IntArrayRef sizes, at::ScalarType dtype, at::MemoryFormat format) {
  if (static_cast<size_t>(c10::multiply_integers(sizes)) * c10::elementSize(dtype) < kMinPooledBytes)
    return at::empty(sizes, at::TensorOptions().dtype(dtype).memory_format(format));
  return at::detail::empty_generic(sizes, &caching_allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                   format);
}

at::Tensor channels_last(const at::Tensor& x) {
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return x;
  at::Tensor c = output_empty(x.sizes(), x.scalar_type(), at::MemoryFormat::ChannelsLast);
  c.copy_(x);
  return c;
}

int64_t output_cache_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return static_cast<int64_t>(c.held);
}

int64_t set_output_cache_limit(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "fastinfer.set_output_cache_limit: bytes must be >= 0, got ", bytes);
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  const int64_t old = static_cast<int64_t>(c.limit);
  c.limit = static_cast<size_t>(bytes);
  trim_locked(c, c.limit);
  return old;
}

}  // namespace cpu
}  // namespace fastinfer
