// Packing of the sparse layouts (sparse.h): plan (sizes) then fill, framework-free, once per layer.
#include <algorithm>
#include <cstring>
#include <vector>

#include "sparse.h"

namespace fastinfer {
namespace kernels {

int64_t csr16_plan(const float* w, int64_t N, int64_t K, int32_t* row_ptr) {
  int64_t total = 0;
  row_ptr[0] = 0;
  for (int64_t n = 0; n < N; ++n) {
    int64_t nnz = 0;
    for (int64_t k = 0; k < K; ++k) nnz += w[n * K + k] != 0.0f;
    total += (nnz + kCsrPad - 1) / kCsrPad * kCsrPad;
    row_ptr[n + 1] = static_cast<int32_t>(std::min<int64_t>(total, INT32_MAX));  // callers refuse > INT32_MAX
  }
  return total;
}

void csr16_fill(const float* w, int64_t N, int64_t K, const int32_t* row_ptr, uint16_t* cols, float* vals) {
  for (int64_t n = 0; n < N; ++n) {
    int64_t i = row_ptr[n];
    for (int64_t k = 0; k < K; ++k)
      if (w[n * K + k] != 0.0f) {
        cols[i] = static_cast<uint16_t>(k);
        vals[i++] = w[n * K + k];
      }
    for (; i < row_ptr[n + 1]; ++i) cols[i] = 0, vals[i] = 0.0f;  // padding: column 0, value 0
  }
}

namespace {

// Walks row n's csr8 groups: fn(base, first, last) for nonzero columns [first, last) of the row's
// column list (cols), one call per group.
template <class Fn>
void csr8_groups(const int64_t* cols, int64_t count, Fn fn) {
  int64_t i = 0;
  while (i < count) {
    const int64_t base = cols[i];
    int64_t j = i;
    while (j < count && j - i < kCsrPad && cols[j] - base < 64) ++j;
    fn(base, i, j);
    i = j;
  }
}

int64_t row_nonzeros(const float* row, int64_t K, int64_t* cols) {
  int64_t c = 0;
  for (int64_t k = 0; k < K; ++k)
    if (row[k] != 0.0f) cols[c++] = k;
  return c;
}

}  // namespace

int64_t csr8_plan(const float* w, int64_t N, int64_t K, int32_t* row_ptr) {
  std::vector<int64_t> cols(static_cast<size_t>(std::max<int64_t>(K, 1)));
  int64_t total = 0;
  row_ptr[0] = 0;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t count = row_nonzeros(w + n * K, K, cols.data());
    csr8_groups(cols.data(), count, [&](int64_t, int64_t, int64_t) { total += kCsrPad; });
    row_ptr[n + 1] = static_cast<int32_t>(std::min<int64_t>(total, INT32_MAX));
  }
  return total;
}

void csr8_fill(const float* w, int64_t N, int64_t K, const int32_t* row_ptr, uint8_t* offsets, uint16_t* group_base,
               float* vals) {
  std::vector<int64_t> cols(static_cast<size_t>(std::max<int64_t>(K, 1)));
  for (int64_t n = 0; n < N; ++n) {
    int64_t e = row_ptr[n];
    csr8_groups(cols.data(), row_nonzeros(w + n * K, K, cols.data()), [&](int64_t base, int64_t first, int64_t last) {
      group_base[e / kCsrPad] = static_cast<uint16_t>(base);
      for (int64_t j = 0; j < kCsrPad; ++j, ++e) {
        const bool real = first + j < last;
        offsets[e] = real ? static_cast<uint8_t>(cols[first + j] - base) : 0;
        vals[e] = real ? w[n * K + cols[first + j]] : 0.0f;
      }
    });
  }
}

int64_t slot128_plan(const int8_t* w, int64_t N, int64_t K, int32_t* grp_ptr) {
  const int64_t blocks = (N + kSlotRows - 1) / kSlotRows, segs = (K + kSlotSeg - 1) / kSlotSeg;
  int64_t total = 0;
  grp_ptr[0] = 0;
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t s = 0; s < segs; ++s) {
      int64_t most = 0;  // a block-segment needs as many groups as its fullest row (4 slots per group)
      for (int64_t n = b * kSlotRows; n < std::min(N, (b + 1) * kSlotRows); ++n) {
        int64_t c = 0;
        for (int64_t k = s * kSlotSeg; k < std::min(K, (s + 1) * kSlotSeg); ++k) c += w[n * K + k] != 0;
        most = std::max(most, c);
      }
      total += (most + 3) / 4;
      grp_ptr[b * segs + s + 1] = static_cast<int32_t>(std::min<int64_t>(total, INT32_MAX));
    }
  return total;
}

void slot128_fill(const int8_t* w, int64_t N, int64_t K, const int32_t* grp_ptr, uint8_t* idx, int8_t* vals,
                  int32_t* w_sum) {
  const int64_t blocks = (N + kSlotRows - 1) / kSlotRows, segs = (K + kSlotSeg - 1) / kSlotSeg;
  for (int64_t n = 0; n < N; ++n) {
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += w[n * K + k];
    w_sum[n] = s;
  }
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t s = 0; s < segs; ++s) {
      const int64_t g0 = grp_ptr[b * segs + s], groups = grp_ptr[b * segs + s + 1] - g0;
      std::memset(idx + g0 * kSlotGroup, 0, static_cast<size_t>(groups * kSlotGroup));
      std::memset(vals + g0 * kSlotGroup, 0, static_cast<size_t>(groups * kSlotGroup));
      for (int64_t r = 0; r < kSlotRows && b * kSlotRows + r < N; ++r) {
        const int64_t n = b * kSlotRows + r;
        int64_t t = 0;  // slot t of row r: group t / 4, byte 4r + t % 4
        for (int64_t k = s * kSlotSeg; k < std::min(K, (s + 1) * kSlotSeg); ++k)
          if (w[n * K + k] != 0) {
            const int64_t at = (g0 + t / 4) * kSlotGroup + 4 * r + t % 4;
            idx[at] = static_cast<uint8_t>(k - s * kSlotSeg);
            vals[at] = w[n * K + k];
            ++t;
          }
      }
    }
}

}  // namespace kernels
}  // namespace fastinfer
