// Channel concatenation of int8 NHWC activations: each part's pixels copied into a channel range of an
// output whose pixels are `ldo` bytes apart (a DenseNet's growing feature buffer, or a plain [N, H, W, C]).
// Framework-free and portable: a memory copy, bound by bandwidth, with no ISA-specific variant.
#pragma once
#include <cstdint>

namespace fastinfer {
namespace kernels {

struct ConcatPart {
  const int8_t* src = nullptr;  // pixel p's channels at src + p * ld
  int64_t ld = 0;               // bytes between pixels (>= channels)
  int64_t channels = 0;
  int64_t offset = 0;           // first output channel
};

struct ConcatParams {
  const ConcatPart* parts = nullptr;
  int64_t n_parts = 0;
  int8_t* out = nullptr;  // pixel p's channels at out + p * ldo
  int64_t ldo = 0;
};

// Pixels per work item: items copy their pixels part by part (each part's rows read in order).
constexpr int64_t kConcatBlock = 128;

// Copies pixels [p0, p1) of every part.
void concat_channels_s8(const ConcatParams& p, int64_t p0, int64_t p1);

}  // namespace kernels
}  // namespace fastinfer
