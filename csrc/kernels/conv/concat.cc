// Channel concatenation of int8 NHWC activations (concat.h).
#include "concat.h"

#include <algorithm>
#include <cstring>

namespace fastinfer {
namespace kernels {
namespace {

// One pixel's `bytes` channels, for short runs of a multiple of 16: fixed-size copies the compiler turns into
// 16-byte moves. A DenseNet's parts are 32 channels; a call of memcpy each would cost more than the copy. Longer
// runs take memcpy (the C library's, with the CPU's widest moves).
inline void copy_chunks(int8_t* d, const int8_t* s, int64_t bytes) {
  for (int64_t j = 0; j < bytes; j += 16) std::memcpy(d + j, s + j, 16);
}

}  // namespace

void concat_channels_s8(const ConcatParams& p, int64_t p0, int64_t p1) {
  for (int64_t b0 = p0; b0 < p1; b0 += kConcatBlock) {
    const int64_t b1 = std::min(p1, b0 + kConcatBlock);
    for (int64_t i = 0; i < p.n_parts; ++i) {
      const ConcatPart& part = p.parts[i];
      const int64_t c = part.channels;
      const int8_t* s = part.src + b0 * part.ld;
      int8_t* d = p.out + b0 * p.ldo + part.offset;
      if (c % 16 == 0 && c < 64) {
        for (int64_t px = b0; px < b1; ++px, s += part.ld, d += p.ldo) copy_chunks(d, s, c);
      } else {
        for (int64_t px = b0; px < b1; ++px, s += part.ld, d += p.ldo) std::memcpy(d, s, c);
      }
    }
  }
}

}  // namespace kernels
}  // namespace fastinfer
