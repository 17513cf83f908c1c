// Packed int8 weight buffer: header + column sums + n16k4 data (layout in PACKING.md).
// Framework-free; packing runs once, when a layer is quantized.
#pragma once
#include <cstddef>
#include <cstdint>

namespace fastinfer {
namespace kernels {

constexpr uint32_t kPackVersion = 1;
constexpr uint32_t kFormatN16K4 = 1;   // [N_pad/16][K_pad/4][16][4] int8
// Flag bits above the layout byte of PackedHeader::format.
constexpr uint32_t kFormatLayoutMask = 0xff;
constexpr uint32_t kFlagNoMin128 = 1u << 16;  // no weight is -128: |a| * sign-adjusted b fits int8 (AVX2 fast path)
constexpr uint32_t kFlagS7 = 1u << 17;        // every weight is in [-64, 63]: maddubs of u8 x b never saturates
constexpr int64_t kPackNB = 16;        // output channels per block
constexpr int64_t kPackKB = 4;         // k values interleaved per channel (one VNNI dword)

struct PackedHeader {                  // 64 bytes, at offset 0 of the buffer
  char magic[8];                       // "FIPACK8\0"
  uint32_t version;
  uint32_t format;                     // layout (low byte) | flags
  int64_t N, K, N_pad, K_pad;
  int64_t colsum_offset;               // bytes from buffer start to int32 colsum[N_pad]
  int64_t data_offset;                 // bytes from buffer start to the int8 blocks
};
static_assert(sizeof(PackedHeader) == 64, "header must stay 64 bytes (keeps data 64B aligned)");

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Total bytes of a packed buffer for an N x K weight.
int64_t packed_nbytes(int64_t N, int64_t K);

// Packs w (N x K int8, row stride ldw) into dst (packed_nbytes(N, K) bytes).
void pack_int8_weight(const int8_t* w, int64_t ldw, int64_t N, int64_t K, uint8_t* dst);

// Inverse of pack_int8_weight: writes N x K int8 rows of stride ldw.
void unpack_int8_weight(const uint8_t* src, int8_t* w, int64_t ldw);

// Checks a buffer of nbytes bytes. Returns nullptr when valid (filling *out), else a message.
const char* validate_packed(const uint8_t* buf, int64_t nbytes, PackedHeader* out);
inline bool packed_no_min128(const PackedHeader& h) { return (h.format & kFlagNoMin128) != 0; }
inline bool packed_s7(const PackedHeader& h) { return (h.format & kFlagS7) != 0; }

// Row stride in bytes for a u8 activation operand with K_pad columns. A stride that is a multiple
// of 1 KiB puts the 16 rows of an AMX tile load into at most 4 of the 64 L1 sets (all of them into
// one at 4 KiB), so they evict each other; one extra cache line per row spreads them out.
inline int64_t operand_stride(int64_t K_pad) { return K_pad % 1024 == 0 ? K_pad + 64 : K_pad; }

// Copies int8 rows into a GEMM activation operand with K_pad columns (columns [K, K_pad) = int8 zero):
// shift128: the u8 (x + 128) operand of the VNNI kernels (padding 128); otherwise s8 as is (padding 0).
void copy_operand_rows(const int8_t* a, int64_t lda, int64_t M, int64_t K, uint8_t* dst, int64_t ldd, int64_t K_pad,
                       bool shift128);

}  // namespace kernels
}  // namespace fastinfer
