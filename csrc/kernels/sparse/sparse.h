// Sparse weight x dense activations, framework-free. Stored layouts (why these: LAYOUTS.md):
//
// csr16 / csr8 (fp32 values): output channel n owns entries [row_ptr[n], row_ptr[n + 1]) of `vals`
//   (fp32); every row's run is padded to a multiple of 16 entries with value 0, so the vector kernels
//   never handle a tail. Entry i's column is cols[i] (csr16: uint16 per entry), or
//   group_base[i / 16] + offsets[i] (csr8: the 16 entries of a group lie in a 64-column window, one
//   byte each, so batch 1 picks them from four registers of x instead of gathering).
// slot128 (int8 weights x int8 activations): output channels in blocks of 16, input columns in
//   segments of 128. Block b x segment s owns the 64-byte groups [grp_ptr[b * segs + s], grp_ptr[...+1]);
//   byte 4r + j of a group is slot j of row 16b + r: `idx` holds its column within the segment (bits
//   0-6; bit 7 ignored), `vals` its int8 weight (0 for padding). Four slots of one row fill one VNNI
//   dword, so one vpdpbusd multiplies 64 weights of 16 rows (AVX-512 VBMI; AVX2 picks the bytes with
//   vpshufb tables instead).
#pragma once
#include <cstdint>

namespace fastinfer {
namespace kernels {

constexpr int64_t kCsrPad = 16;       // csr rows are padded to multiples of this (one group)
constexpr int64_t kSlotRows = 16;     // slot128: output channels per block
constexpr int64_t kSlotSeg = 128;     // slot128: input columns per segment
constexpr int64_t kSlotGroup = 64;    // slot128: bytes per group (16 rows x 4 slots)

struct CsrParams {
  int64_t M = 0, N = 0, K = 0;
  // [M, ldx] row-major (batch-1 rows and ref). csr8, vector path: ldx >= K + 64, zero from K on (a
  // group's 64-column window starts at a column <= K).
  const float* x = nullptr;
  int64_t ldx = 0;
  // M > 2 vector path: x transposed, [xt_rows, ldxt] with ldxt = 8 (M <= 8) or round_up(M, 16), rows
  // >= K zero. csr16: xt_rows a power of two >= K (columns are masked with xt_rows - 1); csr8: K + 256
  // (group bases are clamped to K, offsets are bytes). Either way every read is in bounds.
  const float* xt = nullptr;
  int64_t ldxt = 0, xt_rows = 0;
  const int32_t* row_ptr = nullptr;  // [N + 1], multiples of 16
  const float* vals = nullptr;       // [entries]
  // Columns: csr16 sets cols; csr8 sets group_base and offsets. Columns >= K are clamped (a corrupt
  // buffer gives a wrong answer, never an out-of-bounds read).
  const uint16_t* cols = nullptr;        // [entries]
  const uint16_t* group_base = nullptr;  // [entries / 16]
  const uint8_t* offsets = nullptr;      // [entries], < 64 (higher bits are ignored)
  const float* bias = nullptr;       // [N] or null
  float* out = nullptr;              // [M, N] row-major
  int64_t ldo = 0;
};

// y[m, n] = float(sum_k (xq[m, k] + 128) * w[n, k] - 128 * w_sum[n]) * x_scale[m] * w_scale[n] (+ bias[n]),
// i.e. the dense int8 epilogue (int8_gemm/EPILOGUE.md) on the sparse product, bit-exact across kernels when
// w_sum[n] is the sum of row n's stored values (as pack_slot128 writes it and SparseLinear's load recomputes
// it): the AVX2 kernel sums q * w and never reads w_sum, the others correct (q + 128) * w with it.
struct Slot128Params {
  int64_t M = 0, N = 0, K = 0;
  int64_t segs = 0;                  // ceil(K / 128)
  const uint8_t* xq = nullptr;       // [M, ldxq] u8 = q + 128, 128 * segs bytes per row (128 from K on)
  int64_t ldxq = 0;
  const float* x_scale = nullptr;    // [M]
  const int32_t* grp_ptr = nullptr;  // [ceil(N / 16) * segs + 1]
  const uint8_t* idx = nullptr;      // [groups * 64]
  const int8_t* vals = nullptr;      // [groups * 64]
  const int32_t* w_sum = nullptr;    // [N]: sum of the row's weights (the +128 compensation)
  const float* w_scale = nullptr;    // [N]
  const float* bias = nullptr;       // [N] or null
  float* out = nullptr;              // [M, N]
  int64_t ldo = 0;
};

// csr kernels compute out[:, n] for n in [n0, n1) (csr8 when p.offsets is set, else csr16); slot128
// kernels compute the output channels of row blocks [b0, b1).
using CsrFn = void (*)(const CsrParams&, int64_t n0, int64_t n1);
using Slot128Fn = void (*)(const Slot128Params&, int64_t b0, int64_t b1);
void csr_linear_ref(const CsrParams& p, int64_t n0, int64_t n1);
void csr_linear_avx512(const CsrParams& p, int64_t n0, int64_t n1);
void csr_linear_avx2(const CsrParams& p, int64_t n0, int64_t n1);  // AVX2 + FMA
void slot128_linear_ref(const Slot128Params& p, int64_t b0, int64_t b1);
void slot128_linear_avx512(const Slot128Params& p, int64_t b0, int64_t b1);  // needs AVX-512 VBMI + VNNI
// AVX2: xq must come from the quantizer (no q = -128) and w_sum must be the packed values' row sums.
void slot128_linear_avx2(const Slot128Params& p, int64_t b0, int64_t b1);

// Packing, once per layer (pack_sparse.cc). Each layout in two passes: the first fills the offsets
// array (row_ptr [N + 1] or grp_ptr [ceil(N / 16) * segs + 1]) and returns the total entries/groups,
// the second writes the arrays sized from it. Weights are [N, K] row-major.
int64_t csr16_plan(const float* w, int64_t N, int64_t K, int32_t* row_ptr);
void csr16_fill(const float* w, int64_t N, int64_t K, const int32_t* row_ptr, uint16_t* cols, float* vals);
// csr8 groups are cut greedily: a group starts at a row's next nonzero and takes up to 16 nonzeros
// within 64 columns of it.
int64_t csr8_plan(const float* w, int64_t N, int64_t K, int32_t* row_ptr);
void csr8_fill(const float* w, int64_t N, int64_t K, const int32_t* row_ptr, uint8_t* offsets, uint16_t* group_base,
               float* vals);
int64_t slot128_plan(const int8_t* w, int64_t N, int64_t K, int32_t* grp_ptr);
void slot128_fill(const int8_t* w, int64_t N, int64_t K, const int32_t* grp_ptr, uint8_t* idx, int8_t* vals,
                  int32_t* w_sum);

}  // namespace kernels
}  // namespace fastinfer
