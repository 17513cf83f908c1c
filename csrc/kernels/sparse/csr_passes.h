// The ISA-independent half of the fp32 csr16 / csr8 kernels (sparse.h, LAYOUTS.md), shared by the AVX-512
// and AVX2 files: how an entry's column is decoded, the passes of the batched kernels over x^T, and the
// store of a block of output rows. Plain C++ (no intrinsics), compiled by each including file for its ISA
// with internal linkage, as int8_gemm/ymm_tile.h: include it after the file's `#pragma GCC target`, and the
// headers it includes before that pragma (so that no std code is compiled for the ISA).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "sparse.h"

namespace fastinfer {
namespace kernels {
namespace {

// How the batched kernels find an entry's row of x^T: a per-group start (start()) plus a per-entry
// row (row()); first() is the group's lowest column (entries ascend within a row).
// csr16: one uint16 column per entry, masked into the power-of-two rows of x^T.
struct CsrCols16 {
  const uint16_t* cols;
  uint64_t kmask;
  explicit CsrCols16(const CsrParams& p) : cols(p.cols), kmask(static_cast<uint64_t>(p.xt_rows - 1)) {}
  const float* start(const float* xt, int64_t, int64_t) const { return xt; }
  uint64_t row(int64_t i) const { return cols[i] & kmask; }
  uint32_t first(int64_t g) const { return cols[g]; }
};

// csr8: a uint16 base per group of 16 entries (clamped to K: x^T has K + 256 rows) plus one byte
// per entry (< 64 in a valid layout; any byte stays within the 256 rows past the base).
struct CsrCols8 {
  const uint16_t* base;
  const uint8_t* off;
  uint32_t K;
  explicit CsrCols8(const CsrParams& p) : base(p.group_base), off(p.offsets), K(static_cast<uint32_t>(p.K)) {}
  const float* start(const float* xt, int64_t ldxt, int64_t g) const {
    return xt + std::min<uint32_t>(base[g / kCsrPad], K) * ldxt;
  }
  uint64_t row(int64_t i) const { return off[i]; }
  uint32_t first(int64_t g) const { return base[g / kCsrPad]; }
};

// Stores a block's sums: tile[r * width + j] is lane j (output row m0 + j) of channel n0 + r, for `count`
// channels and `valid` lanes. Written row by row of out, each row's `count` channels one contiguous run:
// storing channel by channel walks a column of out, values ldo apart, and at ldo = 1024 or 4096 floats
// (4 KiB multiples) every store of a column lands in the same L1 set. That took 3/4 of a 64-row batch's
// time (the demo's 64 -> 1024 layer at 90% zeros, batch 64: 0.33 ms of 0.38).
inline void store_block(const CsrParams& p, const float* tile, int64_t width, int64_t count, int64_t m0,
                        int64_t valid, int64_t n0) {
  for (int64_t j = 0; j < valid; ++j) {
    float* o = p.out + (m0 + j) * p.ldo + n0;
    if (p.bias) {
      for (int64_t r = 0; r < count; ++r) o[r] = tile[r * width + j] + p.bias[n0 + r];
    } else {
      for (int64_t r = 0; r < count; ++r) o[r] = tile[r * width + j];
    }
  }
}

// Wide batches (more than 16 lanes, x^T rows of 128-256 bytes) walk x^T in passes over blocks of
// kPassRows output rows, each row resuming at its own cursor; a group belongs to the pass of its lowest
// column. Without passes each output row streamed all of x^T (1 MiB at 64 lanes) from L2: 4096^2 at 50%
// zeros, M = 128, 2 threads: 29 ms without passes, 17 ms with 16 KiB ones (AMX machine). A pass spans
// about kPassEntries stored entries of a row (columns = kPassEntries / density), at most kPassMaxBytes
// of x^T: a pass of fixed width left a row about 6 entries per pass at 90% zeros, and the per-pass work
// of a row (its cursor, its partial sums) outweighed them. Zen 5, 2 threads, M = 32-128, 4096^2: 50%
// zeros 1.5-1.8x, 90% 2.4-3.2x, 95% 3.0-4.9x faster than the 16 KiB passes. Up to 16 lanes one pass
// measured best (x^T <= 256 KiB stays in L2; passes only add overhead).
// Rows of one length (2:4, where every row holds K / 2 entries) are the exception: their passes hold
// kPassRegularBytes of x^T, an L1's worth. 128 entries a pass had made 2:4 at 64 and 128 lanes 0.7-0.8x
// the 16 KiB passes; with 32 KiB ones, 2:4 4096^2, Zen 5, 2 threads, medians of 3 interleaved processes:
// M = 64 9.6 -> 6.9 ms, M = 128 21.3 -> 13.7 ms (the 16 KiB passes: 7.4 and 14.9), M = 32 unchanged.
// Irregular rows (unstructured 50% in csr8 too) kept the entry rule: 32 KiB passes timed 1.2-1.5x
// slower there.
constexpr int64_t kPassRows = 64;
constexpr int64_t kPassEntries = 128;
constexpr int64_t kPassMaxBytes = 512 * 1024;
constexpr int64_t kPassRegularBytes = 32 * 1024;

inline int64_t pass_columns(const CsrParams& p, int64_t lanes, int64_t n0, int64_t n1) {
  bool regular = true;
  for (int64_t n = n0 + 1; n < n1 && regular; ++n)
    regular = p.row_ptr[n + 1] - p.row_ptr[n] == p.row_ptr[n0 + 1] - p.row_ptr[n0];
  if (regular) return std::max<int64_t>(64, kPassRegularBytes / (lanes * 4));
  const double density = std::max(1e-4, static_cast<double>(p.row_ptr[p.N]) / (static_cast<double>(p.N) * p.K));
  const int64_t by_work = static_cast<int64_t>(kPassEntries / density);
  return std::max<int64_t>(64, std::min(by_work, kPassMaxBytes / (lanes * 4)));
}

// Lanes [m0, m0 + CH * kLanes) of x^T for output rows [n0, n1): blocks of kPassRows rows, each walked in
// passes over x^T. pass(cols, xt, ldxt, &cursor, end, col_end, part) adds one row's groups from cursor up to
// (not including) the first group at or past col_end into part (CH vectors V of kLanes floats) and moves
// cursor past them.
template <class Cols, class V, int CH, int kLanes, class Pass>
void csr_rows(const CsrParams& p, int64_t n0, int64_t n1, int64_t m0, Pass pass) {
  static_assert(sizeof(V) == kLanes * sizeof(float), "V holds kLanes floats");
  const Cols cols(p);
  const int64_t ldxt = p.ldxt;
  const float* xt = p.xt + m0;
  const int64_t pass_cols = CH * kLanes <= 16 ? p.K : pass_columns(p, CH * kLanes, n0, n1);
  alignas(64) V part[kPassRows][CH];
  int64_t cursor[kPassRows];
  for (int64_t r0 = n0; r0 < n1; r0 += kPassRows) {
    const int64_t count = std::min(kPassRows, n1 - r0);
    for (int64_t r = 0; r < count; ++r) {
      cursor[r] = p.row_ptr[r0 + r];
      for (int c = 0; c < CH; ++c) part[r][c] = V{};
    }
    for (int64_t k0 = 0; k0 < p.K; k0 += pass_cols) {
      // The last pass takes every group left (also columns >= K of a corrupt layout: masked reads).
      const uint32_t col_end = k0 + pass_cols >= p.K ? UINT32_MAX : static_cast<uint32_t>(k0 + pass_cols);
      for (int64_t r = 0; r < count; ++r) pass(cols, xt, ldxt, &cursor[r], p.row_ptr[r0 + r + 1], col_end, part[r]);
    }
    alignas(64) float tile[kPassRows * CH * kLanes];
    std::memcpy(tile, part, count * sizeof(part[0]));
    store_block(p, tile, CH * kLanes, count, m0, std::min<int64_t>(CH * kLanes, p.M - m0), r0);
  }
}

}  // namespace
}  // namespace kernels
}  // namespace fastinfer
