// Weight packing (run once per layer) and header validation. Plain C++, baseline ISA.
#include "pack.h"

#include <cstring>

namespace fastinfer {
namespace kernels {

static const char kMagic[8] = {'F', 'I', 'P', 'A', 'C', 'K', '8', '\0'};

int64_t packed_nbytes(int64_t N, int64_t K) {
  const int64_t N_pad = round_up(N, kPackNB), K_pad = round_up(K, kPackKB);
  return static_cast<int64_t>(sizeof(PackedHeader)) + 4 * N_pad + N_pad * K_pad;
}

void pack_int8_weight(const int8_t* w, int64_t ldw, int64_t N, int64_t K, uint8_t* dst) {
  PackedHeader h;
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  h.version = kPackVersion;
  h.format = kFormatN16K4;
  h.N = N;
  h.K = K;
  h.N_pad = round_up(N, kPackNB);
  h.K_pad = round_up(K, kPackKB);
  h.colsum_offset = sizeof(PackedHeader);
  h.data_offset = h.colsum_offset + 4 * h.N_pad;
  std::memcpy(dst, &h, sizeof(h));
  auto* colsum = reinterpret_cast<int32_t*>(dst + h.colsum_offset);
  int8_t* data = reinterpret_cast<int8_t*>(dst + h.data_offset);
  std::memset(data, 0, static_cast<size_t>(h.N_pad * h.K_pad));
  const int64_t kq_count = h.K_pad / kPackKB;
  bool has_min128 = false, s7 = true;
  for (int64_t n = 0; n < h.N_pad; ++n) {
    int32_t s = 0;
    if (n < N) {
      const int8_t* row = w + n * ldw;
      int8_t* blk = data + (n / kPackNB) * kq_count * 64 + (n % kPackNB) * kPackKB;
      for (int64_t k = 0; k < K; ++k) {
        blk[(k / kPackKB) * 64 + (k % kPackKB)] = row[k];
        s += row[k];
        has_min128 |= row[k] == -128;
        s7 &= row[k] >= -64 && row[k] <= 63;
      }
    }
    colsum[n] = s;
  }
  if (!has_min128) h.format |= kFlagNoMin128;
  if (s7) h.format |= kFlagS7;
  std::memcpy(dst, &h, sizeof(h));
}

void unpack_int8_weight(const uint8_t* src, int8_t* w, int64_t ldw) {
  PackedHeader h;
  std::memcpy(&h, src, sizeof(h));
  const int8_t* data = reinterpret_cast<const int8_t*>(src + h.data_offset);
  const int64_t kq_count = h.K_pad / kPackKB;
  for (int64_t n = 0; n < h.N; ++n) {
    const int8_t* blk = data + (n / kPackNB) * kq_count * 64 + (n % kPackNB) * kPackKB;
    for (int64_t k = 0; k < h.K; ++k) w[n * ldw + k] = blk[(k / kPackKB) * 64 + (k % kPackKB)];
  }
}

const char* validate_packed(const uint8_t* buf, int64_t nbytes, PackedHeader* out) {
  if (nbytes < static_cast<int64_t>(sizeof(PackedHeader)))
    return "buffer is shorter than the 64-byte packed header";
  PackedHeader h;
  std::memcpy(&h, buf, sizeof(h));
  if (std::memcmp(h.magic, kMagic, sizeof(kMagic)) != 0)
    return "bad magic: not a buffer made by fastinfer.ops.pack_int8_weight";
  if (h.version != kPackVersion) return "unsupported packed-weight version (repack the weight)";
  if ((h.format & kFormatLayoutMask) != kFormatN16K4 || (h.format & ~(kFormatLayoutMask | kFlagNoMin128 | kFlagS7)) != 0)
    return "unsupported packed-weight format";
  if (h.N < 1 || h.K < 1 || h.N_pad != round_up(h.N, kPackNB) || h.K_pad != round_up(h.K, kPackKB))
    return "corrupt header: inconsistent shape";
  if (h.colsum_offset != static_cast<int64_t>(sizeof(PackedHeader)) ||
      h.data_offset != h.colsum_offset + 4 * h.N_pad)
    return "corrupt header: bad offsets";
  if (nbytes != packed_nbytes(h.N, h.K)) return "buffer size does not match its header";
  *out = h;
  return nullptr;
}

// Rows of whole cache lines up to this size are copied 64 bytes at a time, inline: a stride plane's pixels
// (conv_ops.cpp, PaddedRows::write_planes, 128-512 bytes each) took 0.03 ms more with a memcpy call a pixel on
// ResNet-50's 3x3 stride 2 at 56 x 56, batch 8. Longer rows (a padded input row) take memcpy.
constexpr int64_t kInlineCopyBytes = 512;

void copy_operand_rows(const int8_t* a, int64_t lda, int64_t M, int64_t K, uint8_t* dst, int64_t ldd, int64_t K_pad,
                       bool shift128) {
  for (int64_t m = 0; m < M; ++m) {
    const int8_t* src = a + m * lda;
    uint8_t* d = dst + m * ldd;
    if (shift128) {
      for (int64_t k = 0; k < K; ++k) d[k] = static_cast<uint8_t>(src[k] ^ 0x80);  // x + 128
    } else if (K % 64 == 0 && K <= kInlineCopyBytes) {
      for (int64_t k = 0; k < K; k += 64) std::memcpy(d + k, src + k, 64);
    } else {
      std::memcpy(d, src, static_cast<size_t>(K));
    }
    if (K_pad > K) std::memset(d + K, shift128 ? 128 : 0, static_cast<size_t>(K_pad - K));
  }
}

}  // namespace kernels
}  // namespace fastinfer
