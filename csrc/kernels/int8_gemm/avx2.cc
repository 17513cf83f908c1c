// AVX2 + FMA kernels: the fallback for x86-64 CPUs without AVX-512 VNNI or AVX-VNNI.
// AVX2 has no exact u8 x s8 dot product (vpmaddubsw saturates at int16). The int8 GEMM and the direct
// convolution run ymm_tile.h's tile with an exact maddubs step when no weight is -128 (SignDot below);
// the GEMM and the convolutions of a weight in [-64, 63] (7-bit) drop the sign step (ShiftedDot); a GEMM
// whose weight holds -128 widens both operands to int16 and uses vpmaddwd, exact into int32.
#include <algorithm>
#include <array>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include <immintrin.h>

#include "conv_direct_rows.h"
#include "epilogue.h"
#include "pack.h"
#include "params.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

#include "planes_nhwc.h"
#include "ymm_tile.h"

namespace fastinfer {
namespace kernels {
namespace {

// Exact when no weight is -128 (the pack header's flag, p.b_no_min128): vpmaddubsw multiplies u8 x s8
// into int16 pairs, exact here because the activation is made non-negative (|a| <= 128, -128 read as
// u8 128) and its sign moved onto b (|b| <= 127): a pair sums to at most 2 * 128 * 127 = 32512 < 32767.
// vpmaddwd(., 1) then finishes each column's 4-product sum in int32: 4 instructions per 32 products. The
// sums are over s8 activations (u8 = s8 + 128 is flipped back with a xor), so no column-sum compensation.
// 16 ymm: 4 rows x 2 accumulators + 2 weights + |a| and a + ones + the maddubs temporary.
struct SignDot {
  static constexpr bool kShifted = false;
  static constexpr int kMR = 4;
  static constexpr int kWide[3] = {0, 4, 2};
  static_assert(kMR * 2 + 2 + 2 + 2 <= 16, "tile does not fit the 16 ymm registers");
  // The peak probe: 8 chains beside |a|, a, two b, ones and a temporary (more spilled accumulators); the
  // products do not read the accumulator, so each step needs another b.
  static constexpr int kProbeChains = 8;
  static constexpr bool kProbeVaryB = true;
  struct Row {
    __m256i abs, sign;  // |a| (as u8) and a (s8)
  };
  template <bool S8>
  static Row row(__m256i group) {
    const __m256i a = S8 ? group : _mm256_xor_si256(group, _mm256_set1_epi8(static_cast<char>(0x80)));
    return {_mm256_abs_epi8(a), a};
  }
  static constexpr int kGroupBytes = 4;
  template <bool S8>
  static Row load(const uint8_t* p) { return row<S8>(bcast_u8x4(p)); }
  static __m256i step(__m256i acc, const Row& r, __m256i b) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(r.abs, _mm256_sign_epi8(b, r.sign)),
                                                   _mm256_set1_epi16(1)));
  }
};

// Weights in [-64, 63] (the pack header's 7-bit flag, p.b_s7; fastinfer's weight_bits=7): the activation
// stays u8 = s8 + 128 as stored, and vpmaddubsw of u8 x b cannot saturate, a pair summing to at most
// 2 * 255 * 64 = 32640. The epilogue subtracts 128 * colsum, as VNNI's. No sign step: 3 instructions per
// 32 products against SignDot's 4. (SignDot's 4-row k-step measured about 12 cycles on Zen 3: its 3 x 8
// vpsignb, vpmaddubsw and vpmaddwd at 2 a cycle, as if vpsignb shared the multiply ports; this one's 2 x 8
// would take 8.) Measured on AMD Zen 3, 1 thread, int8_mm at 128x4096x4096,
// 512x1024x1024 and 1024x512x2048, best of 30 calls: 0.128-0.135 TOPS (SignDot, prepared rows) ->
// 0.181-0.191 (this step). 5- and 6-row tiles measured 0.163-0.185: 4 rows it is.
// 12 ymm: 4 rows x 2 accumulators + 2 weights + the row + ones.
struct ShiftedDot {
  static constexpr bool kShifted = true;
  static constexpr int kMR = 4;
  static constexpr int kWide[3] = {0, 4, 2};
  static_assert(kMR * 2 + 2 + 1 <= 16, "tile does not fit the 16 ymm registers");
  static constexpr int kProbeChains = 8;
  static constexpr bool kProbeVaryB = true;
  struct Row {
    __m256i u;  // u8 = s8 + 128
  };
  template <bool S8>
  static Row row(__m256i group) {
    return {S8 ? _mm256_xor_si256(group, _mm256_set1_epi8(static_cast<char>(0x80))) : group};
  }
  static constexpr int kGroupBytes = 4;
  template <bool S8>
  static Row load(const uint8_t* p) { return row<S8>(bcast_u8x4(p)); }
  static __m256i step(__m256i acc, const Row& r, __m256i b) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(r.u, b), _mm256_set1_epi16(1)));
  }
};

// SignDot on rows prepared once per call range (prepare_rows): each 4-byte group stored as 8 bytes, |a| then
// a (s8), so a row costs two broadcast loads and no arithmetic. In SignDot's 4-row tile the xor and abs of
// each row are 8 of the 40 vector instructions of a k-step. Measured on AMD Zen 3 (EPYC Milan), 1 thread,
// int8_mm at 128x4096x4096, 512x1024x1024 and 1024x512x2048, best of 30 calls, 3 alternated processes:
// 0.119-0.124 TOPS -> 0.129-0.134. (Both operands widened to int16 for vpmaddwd, two multiply
// instructions per 32 products instead of three, measured 0.088-0.090 there: slower.)
struct PreparedSignDot : SignDot {
  static constexpr int kGroupBytes = 8;
  template <bool>
  static Row load(const uint8_t* p) { return {bcast_u8x4(p), bcast_u8x4(p + 4)}; }
};

// Rows [m0, m1) of p.a (u8 = s8 + 128, K_pad bytes a row) -> dst, 2 K_pad bytes a row: per 4-byte group,
// |a| (4 bytes) then a (4 bytes).
void prepare_rows(const Int8GemmParams& p, int64_t m0, int64_t m1, uint8_t* dst) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  for (int64_t m = m0; m < m1; ++m) {
    const uint8_t* a = p.a + m * p.lda;
    uint8_t* d = dst + (m - m0) * 2 * p.K_pad;
    int64_t k = 0;
    for (; k + 32 <= p.K_pad; k += 32) {
      const __m256i v = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + k)), flip);
      const __m256i abs = _mm256_abs_epi8(v);
      // (|a| group, a group) dword pairs: unpacked per 128-bit lane, the lanes then put in order
      const __m256i lo = _mm256_unpacklo_epi32(abs, v), hi = _mm256_unpackhi_epi32(abs, v);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 2 * k), _mm256_permute2x128_si256(lo, hi, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 2 * k + 32), _mm256_permute2x128_si256(lo, hi, 0x31));
    }
    for (; k < p.K_pad; ++k) {  // byte t of group k / 4 is at 8 (k / 4) + t = 2 k - t
      const int8_t v = static_cast<int8_t>(a[k] ^ 0x80);
      d[2 * k - k % 4] = static_cast<uint8_t>(v < 0 ? -v : v);
      d[2 * k - k % 4 + 4] = static_cast<uint8_t>(v);
    }
  }
}

// A weight with -128: 2 rows x 16 columns, both operands widened to int16 (vpmaddwd is exact into int32).
// 16 ymm: 2 rows x 4 accumulators (16 columns as int32 pairs) + 4 widened weights + 1 row.
constexpr int kWidenMR = 2;
static_assert(kWidenMR * 4 + 4 + 1 <= 16, "widening tile does not fit 16 ymm registers");
// w8: MR rows x 4 fp32 accumulators (8 columns x 4 k) + 4 widened weights + 1 row.
constexpr int kW8MR = 2;
static_assert(kW8MR * 4 + 4 + 1 <= 16, "w8 tile does not fit 16 ymm registers");

template <int mr>
void widen_tile(const Int8GemmParams& p, int64_t m, int64_t n) {
  __m256i acc[mr][4];
  for (int i = 0; i < mr; ++i)
    for (int c = 0; c < 4; ++c) acc[i][c] = _mm256_setzero_si256();
  const int8_t* b = p.b + (n / kPackNB) * p.K_pad * kPackNB;
  const uint8_t* a = p.a + m * p.lda;
  const int64_t kq = p.K_pad / kPackKB;
  for (int64_t q = 0; q < kq; ++q) {
    __m256i bw[4];  // bw[c]: columns 4c..4c+3, their 4 k values as int16
    for (int c = 0; c < 4; ++c)
      bw[c] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + q * 64 + 16 * c)));
    for (int i = 0; i < mr; ++i) {
      int32_t a4;
      std::memcpy(&a4, a + i * p.lda + q * 4, 4);
      const __m256i av = _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(a4)));
      for (int c = 0; c < 4; ++c) acc[i][c] = _mm256_add_epi32(acc[i][c], _mm256_madd_epi16(av, bw[c]));
    }
  }
  const Cols8 lo_cols = cols8(p, n, /*shifted=*/true), hi_cols = cols8(p, n + 8, /*shifted=*/true);
  for (int i = 0; i < mr; ++i) {
    // Each accumulator holds two k-partials per column; pair-add and restore column order.
    epilogue8(p, lo_cols, m + i, _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[i][0], acc[i][1]), 0xd8));
    epilogue8(p, hi_cols, m + i, _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[i][2], acc[i][3]), 0xd8));
  }
}

// Ranges of at least kMR rows and kPrepMinCols columns prepare their rows (PreparedSignDot): one pass over
// the rows, small next to the product (<= 1/64 of its vector instructions). kPrepChunk rows at a time:
// 2 K_pad bytes a row, kept in L2 while the chunk sweeps the columns; each weight block is read once a chunk.
constexpr int64_t kPrepMinCols = 64, kPrepChunk = 128;

void gemm_prepared(const Int8GemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  static constexpr auto table = ymm_rows_table<PreparedSignDot, 1, false>(std::make_index_sequence<SignDot::kMR>{});
  thread_local std::vector<uint8_t> rows;
  const int64_t ld = 2 * p.K_pad, cq = p.K_pad / kPackKB;
  rows.resize(static_cast<size_t>(std::min(kPrepChunk, m1 - m0) * ld));
  n1 = std::min(n1, round_up(p.N, kPackNB));
  for (int64_t c0 = m0; c0 < m1; c0 += kPrepChunk) {
    const int64_t c1 = std::min(m1, c0 + kPrepChunk);
    prepare_rows(p, c0, c1, rows.data());
    for (int64_t n = n0; n < n1; n += 16)
      for (int64_t m = c0; m < c1; m += SignDot::kMR) {
        const int64_t mr = std::min<int64_t>(SignDot::kMR, c1 - m);
        table[mr - 1](p, kWholeK, 1, cq, rows.data() + (m - c0) * ld, ld, m, n);
      }
  }
}

// Which step int8_gemm_avx2 takes for p (KernelSet::gemm_step; last_kernel("int8_gemm_step")).
constexpr const char* kStepShifted = "shifted";
constexpr const char* kStepSign = "sign";
const char* gemm_step_avx2(const Int8GemmParams& p) {
  return p.b_s7 ? kStepShifted : p.b_no_min128 ? kStepSign : "widen";
}

void int8_gemm_avx2(const Int8GemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const char* step = gemm_step_avx2(p);
  if (step == kStepShifted) {
    ymm_gemm<ShiftedDot>(p, m0, m1, n0, n1);
    return;
  }
  if (step == kStepSign) {
    if (m1 - m0 >= SignDot::kMR && n1 - n0 >= kPrepMinCols)
      gemm_prepared(p, m0, m1, n0, n1);
    else
      ymm_gemm<SignDot>(p, m0, m1, n0, n1);
    return;
  }
  n1 = std::min(n1, round_up(p.N, kPackNB));
  for (int64_t n = n0; n < n1; n += 16)
    for (int64_t m = m0; m < m1; m += kWidenMR) {
      if (m1 - m >= 2)
        widen_tile<2>(p, m, n);
      else
        widen_tile<1>(p, m, n);
    }
}

// The direct convolution needs the SignDot step, or ShiftedDot for a 7-bit weight (gemm_step_avx2): the entry
// layer takes it only for weights without -128 (KernelSet::conv_direct_no_min128).
void conv_direct_avx2(const ConvDirectParams& cp, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
  if (gemm_step_avx2(cp.gemm) == kStepShifted)
    ymm_conv_direct<ShiftedDot>(cp, r0, r1, n0, n1);
  else
    ymm_conv_direct<SignDot>(cp, r0, r1, n0, n1);
}

// The narrow-group convolution on its s8 slab (gconv_signed_x): ShiftedDot flips each row to u8 for a 7-bit
// weight (the entry sets gemm.b_s7 when every group's weight is one).
void gconv_avx2(const GroupConvParams& p, int64_t r0, int64_t r1) {
  if (gemm_step_avx2(p.gemm) == kStepShifted)
    ymm_gconv<ShiftedDot, /*S8X=*/true>(p, r0, r1);
  else
    ymm_gconv<SignDot>(p, r0, r1);
}

// Weight-only: half h of a 16-column block (8 columns); acc[c] lanes = 2 columns x 4 k.
template <int mr>
void w8_tile(const W8GemmParams& p, int64_t m, int64_t n, int half) {
  __m256 acc[mr][4];  // every loop over it unrolled (w8_panel_tile)
#pragma GCC unroll 2
  for (int i = 0; i < mr; ++i)
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) acc[i][c] = _mm256_setzero_ps();
  const int8_t* b = p.b + (n / kPackNB) * p.K_pad * kPackNB + 32 * half;
  const float* a = p.a + m * p.lda;
  const int64_t kq_full = p.K / 4, kq = p.K_pad / 4;
  const int64_t rem = p.K - kq_full * 4;
  const __m128i tail_mask = _mm_setr_epi32(rem > 0 ? -1 : 0, rem > 1 ? -1 : 0, rem > 2 ? -1 : 0, 0);
  for (int64_t q = 0; q < kq; ++q) {
    __m256 bf[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      int64_t w8;
      std::memcpy(&w8, b + q * 64 + 8 * c, 8);
      bf[c] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(w8)));
    }
#pragma GCC unroll 2
    for (int i = 0; i < mr; ++i) {
      const float* ap = a + i * p.lda + q * 4;
      const __m128 a4 = q < kq_full ? _mm_loadu_ps(ap) : _mm_maskload_ps(ap, tail_mask);
      const __m256 av = _mm256_set_m128(a4, a4);
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) acc[i][c] = _mm256_fmadd_ps(av, bf[c], acc[i][c]);
    }
  }
  const int64_t col0 = n + 8 * half;
  const int64_t valid = std::min<int64_t>(8, p.N - col0);
#pragma GCC unroll 2
  for (int i = 0; i < mr; ++i) {
    alignas(32) float t[32];  // t[4 * col + k]
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) _mm256_store_ps(t + 8 * c, acc[i][c]);
    for (int64_t j = 0; j < valid; ++j) {
      const float* s = t + 4 * j;
      float y = ((s[0] + s[1]) + (s[2] + s[3])) * p.b_scale[col0 + j];
      if (p.bias) y += p.bias[col0 + j];
      store_out(p.out, (m + i) * p.ldo + col0 + j, p.out_kind, y);
    }
  }
}

// Weight-only on a float panel: a 16-column block's weights converted to fp32 once per call range, k-major
// (panel[k][16]), then tiles of kW8PanelMR rows x 16 columns, one broadcast activation per row and k times
// two panel vectors: 12 FMAs per 8 loads, no conversion in the loop. (w8_tile converts each weight in its
// loop for 1 or 2 rows.) Ranges of kW8PanelRows rows and more take the panel.
// 15 ymm: 6 rows x 2 accumulators + 2 weight vectors + 1 broadcast.
constexpr int kW8PanelMR = 6;
constexpr int64_t kW8PanelRows = 4;
static_assert(kW8PanelMR * 2 + 2 + 1 <= 16, "w8 panel tile does not fit 16 ymm registers");

// Block n / 16 of the packed weight -> panel[k * 16 + j] = W[n + j, k] as float, k < K_pad.
void w8_panel(const W8GemmParams& p, int64_t n, float* panel) {
  // In a 16-byte quarter (4 columns x 4 k), bytes c * 4 + t -> t * 4 + c: dword t of the quarter holds k = t.
  const __m128i kmajor = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const int8_t* b = p.b + (n / kPackNB) * p.K_pad * kPackNB;
  for (int64_t q = 0; q < p.K_pad / kPackKB; ++q, b += 64, panel += 64) {
    __m128i v[4];
    for (int c = 0; c < 4; ++c)
      v[c] = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16 * c)), kmajor);
    // 4 x 4 transpose of dwords: row t = (quarter 0's k = t, quarter 1's, quarter 2's, quarter 3's)
    const __m128i t01 = _mm_unpacklo_epi32(v[0], v[1]), t23 = _mm_unpacklo_epi32(v[2], v[3]);
    const __m128i h01 = _mm_unpackhi_epi32(v[0], v[1]), h23 = _mm_unpackhi_epi32(v[2], v[3]);
    const __m128i rows[4] = {_mm_unpacklo_epi64(t01, t23), _mm_unpackhi_epi64(t01, t23), _mm_unpacklo_epi64(h01, h23),
                             _mm_unpackhi_epi64(h01, h23)};
    for (int t = 0; t < 4; ++t) {
      _mm256_storeu_ps(panel + 16 * t, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(rows[t])));
      _mm256_storeu_ps(panel + 16 * t + 8, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(rows[t], 8))));
    }
  }
}

// Every loop over acc is unrolled: one indexed at run time puts the array in memory, and GCC then stored all
// 12 accumulators every k (2.3x slower).
template <int mr>
void w8_panel_tile(const W8GemmParams& p, const float* panel, int64_t m, int64_t n) {
  __m256 acc[mr][2];
#pragma GCC unroll 6
  for (int i = 0; i < mr; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  const float* a = p.a + m * p.lda;
  const int64_t K = p.K, lda = p.lda;
  for (int64_t k = 0; k < K; ++k, panel += 16) {
    const __m256 b0 = _mm256_loadu_ps(panel), b1 = _mm256_loadu_ps(panel + 8);
#pragma GCC unroll 6
    for (int i = 0; i < mr; ++i) {
      const __m256 av = _mm256_broadcast_ss(a + i * lda + k);
      acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
    }
  }
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    const int64_t col = n + 8 * h;
    const int valid = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(8, p.N - col)));
    if (valid == 0) continue;
    const __m256i mask = lane_mask(valid);
    const __m256 scale = _mm256_maskload_ps(p.b_scale + col, mask);
    const __m256 bias = p.bias ? _mm256_maskload_ps(p.bias + col, mask) : _mm256_setzero_ps();
#pragma GCC unroll 6
    for (int i = 0; i < mr; ++i) {
      __m256 y = _mm256_mul_ps(acc[i][h], scale);
      if (p.bias) y = _mm256_add_ps(y, bias);
      const int64_t idx = (m + i) * p.ldo + col;
      if (p.out_kind == OutKind::BFloat16)
        store_bytes(static_cast<uint16_t*>(p.out) + idx, to_bf16x8(y), 2 * valid);
      else if (valid == 8)
        _mm256_storeu_ps(static_cast<float*>(p.out) + idx, y);
      else
        _mm256_maskstore_ps(static_cast<float*>(p.out) + idx, mask, y);
    }
  }
}

template <size_t... I>
constexpr std::array<void (*)(const W8GemmParams&, const float*, int64_t, int64_t), sizeof...(I)> w8_panel_tiles(
    std::index_sequence<I...>) {
  return {{&w8_panel_tile<static_cast<int>(I) + 1>...}};
}

void w8_gemm_avx2(const W8GemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  n1 = std::min(n1, round_up(p.N, kPackNB));
  if (m1 - m0 >= kW8PanelRows) {
    static constexpr auto tiles = w8_panel_tiles(std::make_index_sequence<kW8PanelMR>{});
    thread_local std::vector<float> panel;
    panel.resize(static_cast<size_t>(p.K_pad * 16));
    for (int64_t n = n0; n < n1; n += 16) {
      w8_panel(p, n, panel.data());
      for (int64_t m = m0; m < m1; m += kW8PanelMR)
        tiles[std::min<int64_t>(kW8PanelMR, m1 - m) - 1](p, panel.data(), m, n);
    }
    return;
  }
  for (int64_t n = n0; n < n1; n += 16)
    for (int half = 0; half < 2 && n + 8 * half < p.N; ++half)
      for (int64_t m = m0; m < m1; m += kW8MR) {
        if (m1 - m >= 2)
          w8_tile<2>(p, m, n, half);
        else
          w8_tile<1>(p, m, n, half);
      }
}

inline float load1(const QuantizeParams& p, int64_t m, int64_t k) {
  const float v = p.x_is_s8     ? static_cast<float>(static_cast<const int8_t*>(p.x)[m * p.ldx + k])
                  : p.x_is_bf16 ? bf16_to_f32(static_cast<const uint16_t*>(p.x)[m * p.ldx + k])
                                : static_cast<const float*>(p.x)[m * p.ldx + k];
  float y = p.col_scale ? v * p.col_scale[k] : v;
  if (p.col_shift) y = y + p.col_shift[k];
  return p.relu ? (y > 0.0f ? y : 0.0f) : y;  // NaN -> 0, as _mm256_max_ps(y, 0) in load8
}

inline __m256 load8(const QuantizeParams& p, int64_t m, int64_t k) {
  __m256 v;
  if (p.x_is_s8) {
    const auto* x = static_cast<const int8_t*>(p.x) + m * p.ldx + k;
    v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(x))));
  } else if (p.x_is_bf16) {
    const auto* x = static_cast<const uint16_t*>(p.x) + m * p.ldx + k;
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
    v = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  } else {
    v = _mm256_loadu_ps(static_cast<const float*>(p.x) + m * p.ldx + k);
  }
  if (p.col_scale) v = _mm256_mul_ps(v, _mm256_loadu_ps(p.col_scale + k));
  if (p.col_shift) v = _mm256_add_ps(v, _mm256_loadu_ps(p.col_shift + k));
  return p.relu ? _mm256_max_ps(v, _mm256_setzero_ps()) : v;  // max(NaN, 0) is its second operand: 0
}

// quant8's rule on 32 fp32 values a step, [0, k32) of a row (the 256-bit form of avx512_vnni.cc's
// quant_static64): NaN lanes and'ed to 0 and the top clamped in float before the convert, two saturating
// packs to 32 bytes with a floor of -127 as one byte max, one permute to restore their order (packs work
// per 128-bit lane); shift128 flips the sign bit (q + 128 as u8). Measured against the 8-wide loop, both
// alternated in one process on the AMX machine with this tier forced (2026-12-06): per-token quantization
// 1.41-1.66x at 25088 x 256, 2048 x 1024 and 128 x 4096 (not yet timed on an AVX2-only machine).
inline void quant_static32(const float* x, uint8_t* q, int64_t k32, __m256 inv, bool shift128) {
  const __m256 hi = _mm256_set1_ps(127.0f);
  const __m256i floor8 = _mm256_set1_epi8(-127), flip = _mm256_set1_epi8(shift128 ? -128 : 0);
  // After the packs, dword 4h + j holds values 4h .. 4h + 3 of vector j.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  auto conv = [&](int64_t k) {
    const __m256 r = _mm256_mul_ps(_mm256_loadu_ps(x + k), inv);
    return _mm256_cvtps_epi32(_mm256_and_ps(_mm256_min_ps(r, hi), _mm256_cmp_ps(r, r, _CMP_ORD_Q)));
  };
  for (int64_t k = 0; k < k32; k += 32) {
    const __m256i w0 = _mm256_packs_epi32(conv(k), conv(k + 8)), w1 = _mm256_packs_epi32(conv(k + 16), conv(k + 24));
    const __m256i b = _mm256_max_epi8(_mm256_packs_epi16(w0, w1), floor8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + k), _mm256_xor_si256(_mm256_permutevar8x32_epi32(b, order), flip));
  }
}

// NCHW fp32 -> NHWC int8 (QuantizePlanesParams), avx512_vnni.cc's quantize_planes_avx512 at 256 bits: a channel's
// 16 pixels as two vectors (quant8), packed to 16 bytes (the values are within [-127, 127]: the saturating packs
// only narrow), the 16 x 16 block transposed in registers. Without byte-masked stores, a partial channel block
// (C < 16, or the last of C) is stored as whole 16 bytes too: the bytes past its channels land in the next
// pixels' lower channels, which the pixels' own stores (C < 16: ascending pixels) or the lower channel blocks
// (which run after it: blocks go from the last down) write later. Only a store that would reach past this
// call's pixels copies its bytes alone (a copy per pixel made a 3-channel input 8% slower than torch's copy).
// Measured as the AVX-512 kernel's note says, this tier forced on the AMX machine (whose AVX2 convolutions are
// slow, so the input's share is small): batch 8, l1 1x1 1.87x, depthwise 3x3 1.44x, l1 3x3 1.04x, the stem 0.99x;
// a cheap 1x1 (-> 16 channels) at 56 x 56 with 64 / 13 channels in 1.59x / 1.19x, at 224 x 224 with 3 1.02x.
void quantize_planes_avx2(const QuantizePlanesParams& p, int64_t p0, int64_t p1) {
  const __m256 inv = _mm256_set1_ps(p.inv);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  quantize_planes_blocks(
      p, p0, p1,
      [&](const float* src, int64_t np) {
        __m256 v0, v1;
        if (np == 16) {
          v0 = _mm256_loadu_ps(src);
          v1 = _mm256_loadu_ps(src + 8);
        } else {
          v0 = _mm256_maskload_ps(src, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(np)), lane));
          v1 = _mm256_maskload_ps(src + 8, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(np) - 8), lane));
        }
        // packs per 128-bit lane: [v0 0-3, v1 0-3 | v0 4-7, v1 4-7] -> qwords 0, 2, 1, 3 in pixel order.
        const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(quant8(v0, inv), quant8(v1, inv)), 0xd8);
        return _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
      },
      [](int8_t* dst, __m128i row, int64_t nc, int64_t room) {
        if (room >= 16) {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), row);
        } else {
          alignas(16) int8_t bytes[16];
          _mm_store_si128(reinterpret_cast<__m128i*>(bytes), row);
          std::memcpy(dst, bytes, static_cast<size_t>(nc));
        }
      });
}

void quantize_avx2(const QuantizeParams& p, int64_t m0, int64_t m1) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
  // Byte 0 of each int32 to the low 4 bytes of its 128-bit lane, then join the two lanes.
  const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i join = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
  const int64_t K8 = p.K / 8 * 8;
  // fp32 rows as they are: quant_static32
  const bool plain = !p.x_is_bf16 && !p.x_is_s8 && !p.col_scale && !p.col_shift && !p.relu;
  const int64_t k32 = plain ? p.K / 32 * 32 : 0;
  if (p.static_inv > 0.0f) {
    // Static per-tensor scale: epilogue.h's quant_static, 8 values a step (quant8 clamps before it rounds,
    // which gives the same integers: anything past +-127.5 ends at +-127 either way; NaN -> 0). The
    // compiler left the scalar loop scalar: 2.5 ms of the 7.9 an fp32 ResNet stem took at batch 8.
    const int32_t shift = p.shift128 ? 128 : 0;
    const __m256 inv = _mm256_set1_ps(p.static_inv);
    const __m256i vshift = _mm256_set1_epi32(shift);
    for (int64_t m = m0; m < m1; ++m) {
      uint8_t* q = static_cast<uint8_t*>(p.q) + m * p.ldq;
      if (k32 > 0) quant_static32(static_cast<const float*>(p.x) + m * p.ldx, q, k32, inv, p.shift128);
      for (int64_t k = k32; k < K8; k += 8) {
        __m256i r = _mm256_add_epi32(quant8(load8(p, m, k), inv), vshift);
        r = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(r, pick), join);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm256_castsi256_si128(r));
      }
      for (int64_t k = K8; k < p.K; ++k) q[k] = static_cast<uint8_t>(quant_static(load1(p, m, k), p.static_inv) + shift);
      for (int64_t k = p.K; k < p.K_pad; ++k) q[k] = static_cast<uint8_t>(shift);
    }
    return;
  }
  for (int64_t m = m0; m < m1; ++m) {
    __m256i mx = _mm256_setzero_si256();
    for (int64_t k = 0; k < K8; k += 8)
      mx = _mm256_max_epu32(mx, _mm256_and_si256(_mm256_castps_si256(load8(p, m, k)), abs_mask));
    alignas(32) uint32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), mx);
    uint32_t amax_bits = *std::max_element(lanes, lanes + 8);
    for (int64_t k = K8; k < p.K; ++k) {
      const float v = load1(p, m, k);
      uint32_t u;
      std::memcpy(&u, &v, 4);
      amax_bits = std::max(amax_bits, u & 0x7fffffffu);
    }
    const float inv = quant_row_inverse(amax_bits, &p.scale[m]);
    uint8_t* q = static_cast<uint8_t*>(p.q) + m * p.ldq;
    const int shift = p.shift128 ? 128 : 0;
    if (inv == 0.0f) {
      std::memset(q, shift, static_cast<size_t>(p.K_pad));
      continue;
    }
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i lo = _mm256_set1_epi32(-127 + shift), hi = _mm256_set1_epi32(127 + shift);
    const __m256i vshift = _mm256_set1_epi32(shift);
    // |x * inv| <= 127 up to rounding here (inv = 127 / amax): the static rule gives the same bytes.
    if (k32 > 0) quant_static32(static_cast<const float*>(p.x) + m * p.ldx, q, k32, vinv, p.shift128);
    for (int64_t k = k32; k < K8; k += 8) {
      __m256i r = _mm256_cvtps_epi32(_mm256_mul_ps(load8(p, m, k), vinv));  // nearest even
      r = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(r, vshift), lo), hi);
      r = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(r, pick), join);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm256_castsi256_si128(r));
    }
    for (int64_t k = K8; k < p.K; ++k) {
      const float r = std::nearbyint(load1(p, m, k) * inv);
      q[k] = static_cast<uint8_t>(static_cast<int32_t>(std::min(127.0f, std::max(-127.0f, r))) + shift);
    }
    for (int64_t k = p.K; k < p.K_pad; ++k) q[k] = static_cast<uint8_t>(shift);
  }
}

// The depthwise kernel's pair step (ymm_tile.h, ymm_dwconv): vpmaddwd, then the add.
struct MaddPair {
  static __m256i step(__m256i acc, __m256i x, __m256i w) { return _mm256_add_epi32(acc, _mm256_madd_epi16(x, w)); }
};

// The row-quad depthwise step (ymm_tile.h, ymm_dwconv_quads) without VNNI, on s8 quads: vpmaddubsw multiplies
// |x| (as u8) by w with x's sign moved onto it (vpsignb), so each pair of products stays within int16 when
// no weight is -128 (at most 2 * 128 * 127 = 32512), and vpmaddwd by ones adds the pairs: exact, in 4
// instructions per 32 products (the pair kernel takes 8: two widenings, two unpacks, two vpmaddwd, two adds).
struct SignQuad {
  static constexpr bool kShiftU8 = false;
  struct X {
    __m256i abs, raw;
  };
  static X prep(__m256i x) { return {_mm256_abs_epi8(x), x}; }
  static __m256i step(__m256i acc, const X& x, __m256i w) {
    const __m256i pairs = _mm256_maddubs_epi16(x.abs, _mm256_sign_epi8(w, x.raw));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  }
};

bool dw_weights_no_min128(const DwConvParams& p) {
  const int64_t n = p.KH * p.KW * p.C;
  for (int64_t i = 0; i < n; ++i)
    if (p.w[i] == -128) return false;
  return true;
}

const char* dwconv_path_avx2(const DwConvParams& p) {
  return !(ymm_dw_quads(p) && dw_weights_no_min128(p)) ? "tap_pairs" : dw_paired(p) ? "row_quads_paired" : "row_quads";
}

// Row quads where they serve and no weight is -128 (a weight of -128 would overflow vpsignb); else tap pairs.
void dwconv_avx2(const DwConvParams& p, int64_t p0, int64_t p1) {
  if (p1 <= p0) return;
  if (!(ymm_dw_quads(p) && dw_weights_no_min128(p))) return ymm_dwconv<MaddPair>(p, p0, p1);
  ymm_dwconv_quads<SignQuad>(p, p0, p1);
}

uint32_t absmax_avx2(const float* x, int64_t n) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
  __m256i m = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    m = _mm256_max_epu32(m, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), abs_mask));
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), m);
  uint32_t r = *std::max_element(lanes, lanes + 8);
  for (; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    r = std::max(r, u & 0x7fffffffu);
  }
  return r;
}

// Residual add (csrc/kernels/conv/add.h): 8 lanes with the portable kernel's arithmetic (fp32 products
// and sum, ReLU as y < 0 -> 0, NaN -> 0 then a clamp before rounding half to even); the last < 8
// elements go to the portable kernel.
template <bool kA8, bool kB8, bool kRelu, bool kInt8Out>
void add_loop_avx2(const AddParams& p, int64_t i0, int64_t i1) {
  const __m256 sa = _mm256_set1_ps(p.a_scale), sb = _mm256_set1_ps(p.b_scale), inv = _mm256_set1_ps(p.out_inv_scale);
  const __m256 zero = _mm256_setzero_ps(), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  auto load = [](const void* x, bool int8, __m256 scale, int64_t i) {
    if (int8) {
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const int8_t*>(x) + i));
      return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), scale);
    }
    return _mm256_loadu_ps(static_cast<const float*>(x) + i);
  };
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8) {
    __m256 y = _mm256_add_ps(load(p.a, kA8, sa, i), load(p.b, kB8, sb, i));
    if (kRelu) y = _mm256_blendv_ps(y, zero, _mm256_cmp_ps(y, zero, _CMP_LT_OQ));
    if (kInt8Out) {
      __m256 v = _mm256_mul_ps(y, inv);
      v = _mm256_blendv_ps(v, zero, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));  // NaN -> 0
      const __m256i q32 = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi));
      const __m256i q8 = _mm256_packs_epi16(_mm256_packs_epi32(q32, q32), _mm256_setzero_si256());  // bytes 0-3 per lane
      const __m128i out8 = _mm_unpacklo_epi32(_mm256_castsi256_si128(q8), _mm256_extracti128_si256(q8, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(static_cast<int8_t*>(p.out) + i), out8);
    } else {
      _mm256_storeu_ps(static_cast<float*>(p.out) + i, y);
    }
  }
  if (i < i1) add_act(p, i, i1);
}

void add_act_avx2(const AddParams& p, int64_t i0, int64_t i1) {
  dispatch_add(p, [&](auto a8, auto b8, auto relu, auto out8) {
    add_loop_avx2<decltype(a8)::value, decltype(b8)::value, decltype(relu)::value, decltype(out8)::value>(p, i0, i1);
  });
}

}  // namespace
}  // namespace kernels
}  // namespace fastinfer

#pragma GCC pop_options

namespace fastinfer {
namespace kernels {
const KernelSet& kernels_avx2() {
  static const KernelSet s = [] {
    KernelSet k{"avx2", int8_gemm_avx2, w8_gemm_avx2, quantize_avx2, dwconv_avx2, absmax_avx2, ymm_peak_probe<SignDot>,
                64, 16 * SignDot::kMR, SignDot::kMR, false, conv_direct_avx2, kPackKB, SignDot::kMR,
                add_act_avx2, /*conv_direct_no_min128=*/true, dwconv_path_avx2,
                gconv_avx2, /*gconv_lanes=*/8, /*gconv_signed_x=*/!SignDot::kShifted,
                gemm_step_avx2};
    k.gate_sum = gate_sum_avx2;
    k.gate_scale = gate_scale_avx2;
    k.avg_pool = avg_pool_avx2;
    k.max_pool = max_pool_avx2;
    k.quantize_planes = quantize_planes_avx2;
    return k;
  }();
  return s;
}
}  // namespace kernels
}  // namespace fastinfer
