// The weight-only kernels' weight addressing (csrc/kernels/cuda/params.h: weight_offset and its strides) on the
// CPU: for random [N, K] weights, the Tiles8x64 layout is built here by its definition (tiles[a][b][r][c] =
// W[8 a + r][64 b + c]), and every 16-byte chunk the kernels read, addressed as they address it, must hold the
// weight's own bytes, in both layouts. Built by tests/test_weight_layout.py with AddressSanitizer and UBSan.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "params.h"

using fastinfer::cuda_kernels::weight_group_stride;
using fastinfer::cuda_kernels::weight_k_mul;
using fastinfer::cuda_kernels::weight_offset;
using fastinfer::cuda_kernels::WeightLayout;

static int fail(const char* what, int64_t N, int64_t K, int64_t n, int64_t k) {
  std::printf("FAIL %s: N=%lld K=%lld n=%lld k=%lld\n", what, static_cast<long long>(N), static_cast<long long>(K),
              static_cast<long long>(n), static_cast<long long>(k));
  return 1;
}

int main() {
  std::mt19937 rng(7);
  int64_t cases = 0, chunks = 0;
  for (int it = 0; it < 300; ++it) {
    const int64_t N = 1 + rng() % 70, K = 16 * (1 + rng() % 40);  // the kernels' K: a multiple of 16
    std::vector<int8_t> w(N * K);
    for (auto& v : w) v = static_cast<int8_t>(rng());
    const int64_t n8 = (N + 7) / 8, k64 = (K + 63) / 64;
    // Rows exactly as ldb bytes each (no slack: ASan catches a chunk past the end); tiles by their definition.
    std::vector<int8_t> rows(w), tiles(n8 * k64 * 512, 0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) tiles[((n / 8 * k64 + k / 64) * 8 + n % 8) * 64 + k % 64] = w[n * K + k];
    for (const WeightLayout layout : {WeightLayout::Rows, WeightLayout::Tiles8x64}) {
      const int8_t* b = layout == WeightLayout::Rows ? rows.data() : tiles.data();
      const size_t bytes = layout == WeightLayout::Rows ? rows.size() : tiles.size();
      const int64_t ldb = layout == WeightLayout::Rows ? K : k64 * 512;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; k += 16) {
          const int64_t off = weight_offset(layout, ldb, n, k);
          if (off < 0 || static_cast<size_t>(off) + 16 > bytes) return fail("chunk outside the buffer", N, K, n, k);
          if (std::memcmp(b + off, &w[n * K + k], 16) != 0) return fail("chunk bytes", N, K, n, k);
          // the strides the kernels advance by (weight_only_mma.cu: rows 8 apart, k 64 apart; weight_only.cu: 512)
          if (n + 8 < N && weight_offset(layout, ldb, n + 8, k) != off + weight_group_stride(layout, ldb))
            return fail("group stride", N, K, n, k);
          for (int64_t u : {1, 4, 8})
            if (k + 64 * u < K && weight_offset(layout, ldb, n, k + 64 * u) != off + 64 * u * weight_k_mul(layout))
              return fail("k stride", N, K, n, k);
          ++chunks;
        }
    }
    ++cases;
  }
  std::printf("ok %lld %lld\n", static_cast<long long>(cases), static_cast<long long>(chunks));
  return 0;
}
