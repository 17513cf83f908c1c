// Weight-only int8 with bf16 activations on AVX512_BF16 CPUs (Cooper Lake, Sapphire Rapids and later Xeons,
// AMD Zen 4 and 5): vdpbf16ps, two bf16 products a lane per instruction, twice the multiply rate of the fp32
// kernel (w8_gemm_avx512, which widens bf16 x to fp32 first). The int8 weights become bf16 exactly (|w| <= 128
// needs 8 significant bits), the products of two bf16 values are exact in fp32, and they are summed in fp32:
// the fp32 kernel's arithmetic in another order, except that vdpbf16ps treats subnormal inputs as zero and
// flushes subnormal results. Only this file is compiled with avx512bf16 (the dispatcher calls in here only
// when CPUID says the CPU has it), so no other kernel can pick up its instructions.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include <immintrin.h>

#include "epilogue.h"
#include "pack.h"
#include "params.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")

#include "avx512_common.h"

namespace fastinfer {
namespace kernels {
namespace {

// Register budget (32 zmm). One 16-column block (w8_bf16_tile): two accumulators a row (one a k pair, so that a
// row's two products a block do not wait on each other; one accumulator a row was 44% slower) + 2 weight
// vectors + 1 broadcast. Two blocks (w8_bf16_tile2): an accumulator a row and block + 4 weight vectors + 2
// broadcasts.
constexpr int kW8Bf16Rows = 12;
static_assert(2 * kW8Bf16Rows + 2 + 1 <= 32 && 2 * kW8Bf16Rows + 4 + 2 <= 32, "tile does not fit the 32 zmm registers");

// 16 weight bytes (4 columns x 4 k of an n16k4 block) -> 16 fp32.
inline __m512 widen16(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)); }

// An n16k4 block of 64 weight bytes (w[col][k] at 4 col + k) as bf16 pairs in 32-bit lanes, lane c =
// column c: w[0] holds (w[c][0], w[c][1]), w[1] (w[c][2], w[c][3]). Converted in byte order (cvtne2ps puts
// its second operand's 16 values in the low half), then the even and odd 32-bit lanes of the two halves.
inline void block_to_bf16(const int8_t* block, __m512i (&w)[2]) {
  const __m512i braw = _mm512_loadu_si512(block);
  const __m512i lo = (__m512i)_mm512_cvtne2ps_pbh(widen16(_mm512_extracti32x4_epi32(braw, 1)),
                                                  widen16(_mm512_castsi512_si128(braw)));
  const __m512i hi = (__m512i)_mm512_cvtne2ps_pbh(widen16(_mm512_extracti32x4_epi32(braw, 3)),
                                                  widen16(_mm512_extracti32x4_epi32(braw, 2)));
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  w[0] = _mm512_permutex2var_epi32(lo, even, hi);
  w[1] = _mm512_permutex2var_epi32(lo, _mm512_add_epi32(even, _mm512_set1_epi32(1)), hi);
}

// x[k], x[k + 1] (bf16) in every 32-bit lane; `valid` of the two inside K (the rest read as 0).
inline __m512bh x_pair(const uint16_t* x, int valid) {
  uint32_t v;
  if (valid >= 2) {
    std::memcpy(&v, x, 4);
  } else {
    v = valid == 1 ? x[0] : 0u;
  }
  return (__m512bh)_mm512_set1_epi32(static_cast<int>(v));
}

// products(v0, v1) for a k block with `left` values of x from its start: v0, v1 of its two pairs inside K (x past
// K must not be read: the weights there are 0, x may be NaN). The full blocks' call has constant counts.
template <class F>
inline void tail_or_full(int64_t left, F&& products) {
  if (left >= 4)
    products(2, 2);
  else
    products(static_cast<int>(std::min<int64_t>(left, 2)), static_cast<int>(std::max<int64_t>(left - 2, 0)));
}

// Rows [m, m + mr) x the 16 columns at n, converting the packed weight blocks as it goes (one row tile, or a
// lone last block of columns).
template <int mr>
void w8_bf16_tile(const W8GemmParams& p, int64_t m, int64_t n, const uint16_t* /*panel: unused*/) {
  __m512 acc[mr][2];
  for (int i = 0; i < mr; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  const int8_t* b = p.b + (n / kPackNB) * p.K_pad * kPackNB;
  const uint16_t* a = p.a_bf16 + m * p.lda;
  const int64_t kq = p.K_pad / 4;
  for (int64_t q = 0; q < kq; ++q) {
    __m512i w[2];
    block_to_bf16(b + q * 64, w);
    const int64_t k = 4 * q;
    auto products = [&](int v0, int v1) {
#pragma GCC unroll 16
      for (int i = 0; i < mr; ++i) {
        const uint16_t* x = a + i * p.lda + k;
        acc[i][0] = _mm512_dpbf16_ps(acc[i][0], x_pair(x, v0), (__m512bh)w[0]);
        acc[i][1] = _mm512_dpbf16_ps(acc[i][1], x_pair(x + 2, v1), (__m512bh)w[1]);
      }
    };
    tail_or_full(p.K - k, products);
  }
  const __mmask16 mask = col_mask(p.N - n);
  const __m512 bs = _mm512_maskz_loadu_ps(mask, p.b_scale + n);
  const __m512 bias = p.bias ? _mm512_maskz_loadu_ps(mask, p.bias + n) : _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int i = 0; i < mr; ++i) {
    __m512 y = _mm512_mul_ps(_mm512_add_ps(acc[i][0], acc[i][1]), bs);
    if (p.bias) y = _mm512_add_ps(y, bias);
    store_row16(p.out, (m + i) * p.ldo + n, p.out_kind, mask, y);
  }
}

// Rows [m, m + mr) x the 32 columns at n (two blocks) from a two-block panel (128 bf16 a k block: block 0's
// two pair vectors, then block 1's): each x broadcast serves two products (a row tile of one block: one),
// 1.13x at 64 x 4096 x 4096 and 1.21x at 256 rows (A/B, alternated processes), the same at 128 x 768 x 3072.
template <int mr>
void w8_bf16_tile2(const W8GemmParams& p, int64_t m, int64_t n, const uint16_t* panel) {
  __m512 acc[mr][2];
  for (int i = 0; i < mr; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  const uint16_t* a = p.a_bf16 + m * p.lda;
  const int64_t kq = p.K_pad / 4;
  for (int64_t q = 0; q < kq; ++q) {
    const __m512bh w00 = (__m512bh)_mm512_loadu_si512(panel + 128 * q);
    const __m512bh w01 = (__m512bh)_mm512_loadu_si512(panel + 128 * q + 32);
    const __m512bh w10 = (__m512bh)_mm512_loadu_si512(panel + 128 * q + 64);
    const __m512bh w11 = (__m512bh)_mm512_loadu_si512(panel + 128 * q + 96);
    const int64_t k = 4 * q, left = p.K - k;
    auto products = [&](int v0, int v1) {
#pragma GCC unroll 16
      for (int i = 0; i < mr; ++i) {
        const uint16_t* x = a + i * p.lda + k;
        const __m512bh x0 = x_pair(x, v0), x1 = x_pair(x + 2, v1);
        acc[i][0] = _mm512_dpbf16_ps(acc[i][0], x0, w00);
        acc[i][1] = _mm512_dpbf16_ps(acc[i][1], x0, w10);
        acc[i][0] = _mm512_dpbf16_ps(acc[i][0], x1, w01);
        acc[i][1] = _mm512_dpbf16_ps(acc[i][1], x1, w11);
      }
    };
    tail_or_full(left, products);
  }
  for (int j = 0; j < 2; ++j) {
    const int64_t nj = n + 16 * j;
    const __mmask16 mask = col_mask(p.N - nj);
    const __m512 bs = _mm512_maskz_loadu_ps(mask, p.b_scale + nj);
    const __m512 bias = p.bias ? _mm512_maskz_loadu_ps(mask, p.bias + nj) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int i = 0; i < mr; ++i) {
      __m512 y = _mm512_mul_ps(acc[i][j], bs);
      if (p.bias) y = _mm512_add_ps(y, bias);
      store_row16(p.out, (m + i) * p.ldo + nj, p.out_kind, mask, y);
    }
  }
}

using TileFn = void (*)(const W8GemmParams&, int64_t, int64_t, const uint16_t*);

// The tiles of 1 .. kW8Bf16Rows rows of one kernel (w8_bf16_tile or w8_bf16_tile2), by height - 1.
template <template <int> class Tile, int... I>
constexpr std::array<TileFn, sizeof...(I)> tile_table(std::integer_sequence<int, I...>) {
  return {Tile<I + 1>::run...};
}
template <int mr>
struct OneBlock {
  static constexpr TileFn run = w8_bf16_tile<mr>;
};
template <int mr>
struct TwoBlocks {
  static constexpr TileFn run = w8_bf16_tile2<mr>;
};

// A thread's converted two-block panel (128 bf16 a k block), kept between calls (unaligned loads and stores: a
// std::vector of 64-byte vectors was not 64-byte aligned here).
thread_local std::vector<uint16_t> t_panel;

}  // namespace

void w8_gemm_bf16_avx512(const W8GemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  static constexpr auto one = tile_table<OneBlock>(std::make_integer_sequence<int, kW8Bf16Rows>{});
  static constexpr auto two = tile_table<TwoBlocks>(std::make_integer_sequence<int, kW8Bf16Rows>{});
  n1 = std::min(n1, round_up(p.N, kPackNB));
  // One row tile converts each weight block as it goes; more than one would convert it again in each, so two
  // blocks' (32 columns) are converted once into the thread's panel (64 bytes a k: 256 KB at K = 4096, 896 KB
  // at 14336, in L2) and every tile reads them from there (a lone last block converts in each tile). Tiles are of even height
  // (16 rows: 8 + 8, not 12 + 4, whose 4-row tile read the panel for a third of the work).
  const bool panel = m1 - m0 > kW8Bf16Rows;
  const int64_t kq = p.K_pad / 4;
  if (panel && static_cast<int64_t>(t_panel.size()) < 128 * kq) t_panel.resize(128 * kq);
  const int64_t tiles = (m1 - m0 + kW8Bf16Rows - 1) / kW8Bf16Rows;
  const int64_t height = (m1 - m0 + tiles - 1) / tiles;
  for (int64_t n = n0; n < n1;) {
    const int blocks = panel && n + 32 <= n1 ? 2 : 1;
    for (int j = 0; blocks == 2 && j < 2; ++j) {  // the panel of this pair of blocks
      const int8_t* b = p.b + ((n + 16 * j) / kPackNB) * p.K_pad * kPackNB;
      for (int64_t q = 0; q < kq; ++q) {
        __m512i w[2];
        block_to_bf16(b + q * 64, w);
        _mm512_storeu_si512(t_panel.data() + 128 * q + 64 * j, w[0]);
        _mm512_storeu_si512(t_panel.data() + 128 * q + 64 * j + 32, w[1]);
      }
    }
    const auto& tile = blocks == 2 ? two : one;
    for (int64_t m = m0; m < m1; m += height)
      tile[std::min<int64_t>(height, m1 - m) - 1](p, m, n, t_panel.data());
    n += 16 * blocks;
  }
}

}  // namespace kernels
}  // namespace fastinfer

#pragma GCC pop_options
