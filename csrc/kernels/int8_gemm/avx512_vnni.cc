// AVX-512 VNNI kernels (vpdpbusd: u8 x s8 -> s32). Only this file is compiled for the ISA,
// via push_options/target below; std headers come first so no inline std code is built
// with AVX-512 (the dispatcher calls in here only when CPUID + XCR0 allow it).
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
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")

#include "dw_row_quads.h"  // after the target: its templates inline into this ISA's kernels
#include "planes_nhwc.h"

#include "avx512_common.h"

namespace fastinfer {
namespace kernels {
namespace {

// Register budget (32 zmm): MR x NB int32 accumulators + NB weight vectors + 1 broadcast.
struct Int8Traits {
  static constexpr int MR = 6;   // rows per tile
  static constexpr int NB = 4;   // 16-column blocks per tile (64 columns)
  static_assert(MR * NB + NB + 1 <= 32, "tile does not fit the 32 zmm registers");
};
// Few rows (decode-like M <= 8): all rows in one tile, so each weight vector is loaded once per call
// (the 6-row tile would stream the panel twice for M = 7, 8); 8 x 2 + 2 + 1 = 19 zmm.
struct SmallMTraits {
  static constexpr int MR = 8;
  static constexpr int NB = 2;
  static constexpr int kPrefetch = 1024;  // bytes ahead in each weight stream
  static_assert(MR * NB + NB + 1 <= 32, "tile does not fit the 32 zmm registers");
};
struct W8Traits {
  static constexpr int MR = 6;   // rows per tile; each row keeps 4 fp32 accumulators per block
  static_assert(MR * 4 + 4 + 1 <= 32, "tile does not fit the 32 zmm registers");
};

// The accumulators of a register tile into out[i * nb + j] (for conv_tile_silu_int8).
template <int mr, int nb>
__attribute__((always_inline)) inline void copy_tile(const __m512i (&acc)[mr][nb], __m512i* out) {
#pragma GCC unroll 8
  for (int i = 0; i < mr; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < nb; ++j) out[i * nb + j] = acc[i][j];
}

// prefetch > 0: each weight stream is also prefetched that many bytes ahead (the small-M tiles, which
// stream the weights from L3: measured -5-10% time at 8 x 4096 x 4096; nothing for M = 1).
template <int mr, int nb, int prefetch = 0>
void int8_tile(const Int8GemmParams& p, int64_t m, int64_t n) {
  __m512i acc[mr][nb];
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nb; ++j) acc[i][j] = _mm512_setzero_si512();
  const int64_t block_stride = p.K_pad * kPackNB;
  const int8_t* b = p.b + (n / kPackNB) * block_stride;
  const uint8_t* a = p.a + m * p.lda;
  const int64_t kq = p.k_quads ? p.k_quads : p.K_pad / kPackKB;
  for (int64_t q = 0; q < kq; ++q) {
    __m512i bv[nb];
#pragma GCC unroll 4
    for (int j = 0; j < nb; ++j) bv[j] = _mm512_loadu_si512(b + j * block_stride + q * 64);
    if (prefetch > 0) {
#pragma GCC unroll 4
      for (int j = 0; j < nb; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(b + j * block_stride + q * 64 + prefetch), _MM_HINT_T0);
    }
#pragma GCC unroll 8
    for (int i = 0; i < mr; ++i) {
      const __m512i av = bcast_u8x4(a + i * p.lda + q * 4);
#pragma GCC unroll 4
      for (int j = 0; j < nb; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], av, bv[j]);
    }
  }
  // Epilogue: undo the +128 shift, then dequantize/bias/convert while storing.
#pragma GCC unroll 4
  for (int j = 0; j < nb; ++j) {
    const ColBlock16 c = col_block16_inlined(p, n + 16 * j);
#pragma GCC unroll 8
    for (int i = 0; i < mr; ++i) epilogue16(p, c, m + i, acc[i][j]);
  }
}

using Int8TileFn = void (*)(const Int8GemmParams&, int64_t, int64_t);

template <int mr, size_t... J>
constexpr std::array<Int8TileFn, sizeof...(J)> int8_row(std::index_sequence<J...>) {
  return {{&int8_tile<mr, static_cast<int>(J) + 1>...}};
}
template <size_t... I>
constexpr std::array<std::array<Int8TileFn, Int8Traits::NB>, sizeof...(I)> int8_table(std::index_sequence<I...>) {
  return {{int8_row<static_cast<int>(I) + 1>(std::make_index_sequence<Int8Traits::NB>{})...}};
}

void int8_gemm_avx512(const Int8GemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  static constexpr auto table = int8_table(std::make_index_sequence<Int8Traits::MR>{});
  static constexpr Int8TileFn small[2][SmallMTraits::NB] = {
      {int8_tile<7, 1, SmallMTraits::kPrefetch>, int8_tile<7, 2, SmallMTraits::kPrefetch>},
      {int8_tile<8, 1, SmallMTraits::kPrefetch>, int8_tile<8, 2, SmallMTraits::kPrefetch>}};
  const int64_t N_pad = round_up(p.N, kPackNB);
  n1 = std::min(n1, N_pad);
  if (m1 - m0 > Int8Traits::MR && m1 - m0 <= SmallMTraits::MR) {
    for (int64_t n = n0; n < n1; n += 16 * SmallMTraits::NB)
      small[m1 - m0 - Int8Traits::MR - 1][std::min<int64_t>(SmallMTraits::NB, (n1 - n) / 16) - 1](p, m0, n);
    return;
  }
  for (int64_t n = n0; n < n1; n += 16 * Int8Traits::NB) {
    const int64_t nb = std::min<int64_t>(Int8Traits::NB, (n1 - n) / 16);
    for (int64_t m = m0; m < m1; m += Int8Traits::MR) {
      const int64_t mr = std::min<int64_t>(Int8Traits::MR, m1 - m);
      table[mr - 1][nb - 1](p, m, n);
    }
  }
}

inline __mmask64 byte_mask(int64_t valid) { return valid >= 64 ? ~0ull : (1ull << valid) - 1ull; }

// 64 int32 (4 vectors of 16, any values) -> 64 int8 in order, saturated to [floor, 127] (floor -127, or 0
// for ReLU on the bytes): three saturating packs and one permute (the packs leave dword 4 l + j of the
// result as lane l of vector j).
inline __m512i pack_int8x64(const __m512i q[4], int8_t floor = -127) {
  const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  const __m512i b = _mm512_packs_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
  return _mm512_permutexvar_epi32(order, _mm512_max_epi8(b, _mm512_set1_epi8(floor)));
}

// conv_tile's folded int8 epilogue for SiLU, out of line, on a copy of the tile's accumulators (copy_tile;
// acc[i * nb + j]): every vector's pre-activation value, then silu16 on all of them in one loop (the
// constants loaded once, the independent vectors overlapping), then the packs. 1x1 16 -> 96 at 112 x 112,
// batch 8 (EfficientNet-B0's first expansion), 2 threads, AMD Zen 4: 1.13-1.17x against silu16 per vector
// inline in the tile. Inline in the tile, this code's live values made the compiler keep the accumulators
// in memory through the K loop (1.3-1.8x as long with any activation; passing the tile's own array
// did the same); batching the depthwise and GEMM epilogues the same way, and fp32 outputs, measured
// slower (EPILOGUE.md, "SiLU").
template <int mr, int nb>
__attribute__((noinline)) void conv_tile_silu_int8(const Int8GemmParams& p, int64_t out_row, int64_t n,
                                                   const __m512i* acc) {
  ColBlock16 c[nb];
  for (int j = 0; j < nb; ++j) c[j] = col_block16(p, n + 16 * j);
  __m512 y[mr][nb];
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nb; ++j) {
      y[i][j] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i * nb + j], c[j].comp)), c[j].b_scale);
      if (p.bias) y[i][j] = _mm512_add_ps(y[i][j], c[j].bias);
    }
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nb; ++j) y[i][j] = silu16(y[i][j]);
  // The folded int8 rule (conv_tile): finite scales, so no NaN; silu's out_inv is not folded.
  const __m512 out_inv = _mm512_set1_ps(p.out_inv_scale);
  const __m512 hi = _mm512_set1_ps(folded_int8_hi(Act::Silu, p.out_inv_scale));
  const __mmask64 mask = byte_mask(std::min<int64_t>(p.N - n, 16 * nb));
  for (int i = 0; i < mr; ++i) {
    __m512i q[4];
    for (int j = 0; j < 4; ++j)
      q[j] = j < nb ? _mm512_cvtps_epi32(_mm512_min_ps(_mm512_mul_ps(y[i][j], out_inv), hi)) : _mm512_setzero_si512();
    _mm512_mask_storeu_epi8(static_cast<int8_t*>(p.out) + (out_row + i) * p.ldo + n, mask, pack_int8x64(q));
  }
}

// ---- direct convolution: the int8 tile above with its A rows read from the padded input ----
// Register tile rows are output pixels of one output row, SW * C bytes apart in the padded input
// (u8 = s8 + 128, written by the entry layer); the K loop runs tap by tap over the call's tap box (K is
// (kh, kw, c) with C % 4 == 0, so every 4-byte step lies inside one tap), the packed B advancing as in the
// GEMM within a tap and jumping to each tap's rows.
// No row gather (measured against the gathered-rows GEMM: conv_ops.cpp, direct_mode).
// FLIP: x holds s8 (an unpadded int8 input read in place), made u8 = s8 + 128 by an xor with 0x80 as
// each 4-byte group is broadcast (one ALU op per 4 products, beside the vpdpbusd ports).
template <int mr, int nb, bool FLIP>
void conv_tile(const ConvDirectParams& cp, const ConvTap* taps, int64_t ntaps, const uint8_t* a0, int64_t out_row,
               int64_t n) {
  const Int8GemmParams& p = cp.gemm;
  __m512i acc[mr][nb];
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nb; ++j) acc[i][j] = _mm512_setzero_si512();
  const int64_t block_stride = p.K_pad * kPackNB;
  const int8_t* const b0 = p.b + (n / kPackNB) * block_stride;
  const int64_t lda = cp.SW * cp.C, cq = (cp.row_seg ? cp.row_seg : cp.C) / kPackKB;  // a row segment: a kernel row
  for (int64_t t = 0; t < ntaps; ++t) {
    const uint8_t* a = a0 + taps[t].x;
    const int8_t* b = b0 + taps[t].b;
    for (int64_t q = 0; q < cq; ++q, a += kPackKB, b += 64) {
      __m512i bv[nb];
#pragma GCC unroll 4
      for (int j = 0; j < nb; ++j) bv[j] = _mm512_loadu_si512(b + j * block_stride);
#pragma GCC unroll 8
      for (int i = 0; i < mr; ++i) {
        __m512i av = bcast_u8x4(a + i * lda);
        if (FLIP) av = _mm512_xor_si512(av, _mm512_set1_epi8(static_cast<char>(0x80)));
#pragma GCC unroll 4
        for (int j = 0; j < nb; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], av, bv[j]);
      }
    }
  }
  if (p.folded && p.out_kind == OutKind::Int8 && p.act == Act::Silu) {
    __m512i copy[mr * nb];
    copy_tile<mr, nb>(acc, copy);
    conv_tile_silu_int8<mr, nb>(p, out_row, n, copy);
    return;
  }
  ColBlock16 c[nb];
#pragma GCC unroll 4
  for (int j = 0; j < nb; ++j) c[j] = col_block16_inlined(p, n + 16 * j);
  if (p.folded && p.out_kind == OutKind::Int8) {
    // The folded int8 epilogue (EPILOGUE.md, "Convolutions"; as AMX's epilogue_folded): finite scales,
    // so y is never NaN and the int8 rule is folded_int8_act, min(y, hi), convert, saturating packs, max
    // -127. A row's 64 columns go out through three packs and one permute instead of four masked narrowing
    // stores. p's fields as locals: an int8 store may alias p, whose fields would be loaded again after it.
    const __m512 out_inv = _mm512_set1_ps(p.out_inv_scale), hi = _mm512_set1_ps(folded_int8_hi(p.act, p.out_inv_scale));
    const __mmask64 m = byte_mask(std::min<int64_t>(p.N - n, 16 * nb));
    const Act act = p.act;
    const int8_t floor = relu_on_bytes(act) ? 0 : -127;  // ReLU and ReLU6 take their max on the bytes
    const bool bias = p.bias != nullptr;
    int8_t* const out = static_cast<int8_t*>(p.out) + out_row * p.ldo + n;
    const int64_t ldo = p.ldo;
#pragma GCC unroll 8
    for (int i = 0; i < mr; ++i) {
      __m512i q[4];
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        if (j >= nb) {
          q[j] = _mm512_setzero_si512();
          continue;
        }
        __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][j], c[j].comp)), c[j].b_scale);
        if (bias) y = _mm512_add_ps(y, c[j].bias);
        q[j] = _mm512_cvtps_epi32(_mm512_min_ps(folded_int8_act_before_bytes(y, act, out_inv), hi));
      }
      _mm512_mask_storeu_epi8(out + i * ldo, m, pack_int8x64(q, floor));
    }
    return;
  }
  if (p.folded && p.out_kind == OutKind::Float32) {
    float* const out = static_cast<float*>(p.out) + out_row * p.ldo + n;
    const int64_t ldo = p.ldo;
    const Act act = p.act;
    const bool bias = p.bias != nullptr, stream = p.stream_out;
#pragma GCC unroll 8
    for (int i = 0; i < mr; ++i) {
#pragma GCC unroll 4
      for (int j = 0; j < nb; ++j)
        store_f32x16(out + i * ldo + 16 * j, c[j].mask, folded_f32(c[j], _mm512_sub_epi32(acc[i][j], c[j].comp), bias, act),
                     stream);
    }
    return;
  }
#pragma GCC unroll 4
  for (int j = 0; j < nb; ++j) {
#pragma GCC unroll 8
    for (int i = 0; i < mr; ++i) epilogue16(p, c[j], out_row + i, acc[i][j]);
  }
}

using ConvTileFn = void (*)(const ConvDirectParams&, const ConvTap*, int64_t, const uint8_t*, int64_t, int64_t);

template <int mr, bool FLIP, size_t... J>
constexpr std::array<ConvTileFn, sizeof...(J)> conv_row(std::index_sequence<J...>) {
  return {{&conv_tile<mr, static_cast<int>(J) + 1, FLIP>...}};
}
template <bool FLIP, size_t... I>
constexpr std::array<std::array<ConvTileFn, Int8Traits::NB>, sizeof...(I)> conv_table(std::index_sequence<I...>) {
  return {{conv_row<static_cast<int>(I) + 1, FLIP>(std::make_index_sequence<Int8Traits::NB>{})...}};
}

void conv_direct_avx512(const ConvDirectParams& cp, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
  static constexpr auto shifted = conv_table<false>(std::make_index_sequence<Int8Traits::MR>{});
  static constexpr auto flipped = conv_table<true>(std::make_index_sequence<Int8Traits::MR>{});
  const auto& table = cp.signed_x ? flipped : shifted;
  conv_direct_rows<Int8Traits::MR, Int8Traits::NB>(
      cp, r0, r1, n0, n1,
      [&](int64_t w, int64_t nb, const ConvTap* taps, int64_t ntaps, const uint8_t* a0, int64_t out_row, int64_t n) {
        table[w - 1][nb - 1](cp, taps, ntaps, a0, out_row, n);
      });
  if (cp.gemm.stream_out) _mm_sfence();  // the non-temporal stores are visible before the call returns
}

// ---- weight-only int8: fp32 activations, weights widened to fp32 on the fly ----
// Each accumulator holds 4 columns x 4 k (the n16k4 interleave); k is summed at the end.
template <int mr>
void w8_tile(const W8GemmParams& p, int64_t m, int64_t n) {
  __m512 acc[mr][4];
  for (int i = 0; i < mr; ++i)
    for (int c = 0; c < 4; ++c) acc[i][c] = _mm512_setzero_ps();
  const int8_t* b = p.b + (n / kPackNB) * p.K_pad * kPackNB;
  const float* a = p.a + m * p.lda;
  const int64_t kq_full = p.K / 4, kq = p.K_pad / 4;
  for (int64_t q = 0; q < kq; ++q) {
    const __m512i braw = _mm512_loadu_si512(b + q * 64);
    __m512 bf[4];
    bf[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(braw)));
    bf[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(braw, 1)));
    bf[2] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(braw, 2)));
    bf[3] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(braw, 3)));
    const __mmask8 amask = q < kq_full ? 0xf : static_cast<__mmask8>((1u << (p.K - q * 4)) - 1u);
#pragma GCC unroll 8
    for (int i = 0; i < mr; ++i) {
      const __m512 av = _mm512_broadcast_f32x4(_mm_maskz_loadu_ps(amask, a + i * p.lda + q * 4));
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) acc[i][c] = _mm512_fmadd_ps(av, bf[c], acc[i][c]);
    }
  }
  const __mmask16 mask = col_mask(p.N - n);
  const __m512 bs = _mm512_maskz_loadu_ps(mask, p.b_scale + n);
  const __m512 bias = p.bias ? _mm512_maskz_loadu_ps(mask, p.bias + n) : _mm512_setzero_ps();
  // Gather lane (col j, k) = 4j + k across the four accumulators, then add the 4 k partials.
  const __m512i idx0 = _mm512_set_epi32(60, 56, 52, 48, 44, 40, 36, 32, 28, 24, 20, 16, 12, 8, 4, 0);
#pragma GCC unroll 8
  for (int i = 0; i < mr; ++i) {
    alignas(64) float t[64];
    for (int c = 0; c < 4; ++c) _mm512_store_ps(t + 16 * c, acc[i][c]);
    __m512 k0 = _mm512_i32gather_ps(idx0, t, 4);
    __m512 k1 = _mm512_i32gather_ps(_mm512_add_epi32(idx0, _mm512_set1_epi32(1)), t, 4);
    __m512 k2 = _mm512_i32gather_ps(_mm512_add_epi32(idx0, _mm512_set1_epi32(2)), t, 4);
    __m512 k3 = _mm512_i32gather_ps(_mm512_add_epi32(idx0, _mm512_set1_epi32(3)), t, 4);
    __m512 y = _mm512_add_ps(_mm512_add_ps(k0, k1), _mm512_add_ps(k2, k3));
    y = _mm512_mul_ps(y, bs);
    if (p.bias) y = _mm512_add_ps(y, bias);
    store_row16(p.out, (m + i) * p.ldo + n, p.out_kind, mask, y);
  }
}

void w8_gemm_avx512(const W8GemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  static constexpr void (*table[W8Traits::MR])(const W8GemmParams&, int64_t, int64_t) = {
      w8_tile<1>, w8_tile<2>, w8_tile<3>, w8_tile<4>, w8_tile<5>, w8_tile<6>};
  n1 = std::min(n1, round_up(p.N, kPackNB));
  for (int64_t n = n0; n < n1; n += 16)
    for (int64_t m = m0; m < m1; m += W8Traits::MR) table[std::min<int64_t>(W8Traits::MR, m1 - m) - 1](p, m, n);
}

// ---- per-token quantization ----
// One row of x and its quantized row; p's fields are read once per row, since every byte store could
// alias them as far as the compiler knows (it reloaded them after each store).
struct QuantRow {
  const void* x;
  bool bf16;
  bool s8;
  const float* col_scale;
  const float* col_shift;
  bool relu;
  uint8_t* q;

  // The 16 values x[k ...] (valid of them; the rest read as 0). Whole vectors are plain loads: a masked
  // load that misses the cache ran at half the speed on AMD Zen 5 (a 16 MB fp32 row sweep: 1.1-1.9 ms
  // masked, 0.5-0.7 ms plain).
  __m512 load(int64_t k, int64_t valid) const {
    const bool whole = valid >= 16;
    const __mmask16 mask = col_mask(valid);
    __m512 v;
    if (s8) {
      const int8_t* xk = static_cast<const int8_t*>(x) + k;
      const __m128i b = whole ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(xk)) : _mm_maskz_loadu_epi8(mask, xk);
      v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
    } else if (bf16) {
      const uint16_t* xk = static_cast<const uint16_t*>(x) + k;
      const __m256i h = whole ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xk)) : _mm256_maskz_loadu_epi16(mask, xk);
      v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
      const float* xk = static_cast<const float*>(x) + k;
      v = whole ? _mm512_loadu_ps(xk) : _mm512_maskz_loadu_ps(mask, xk);
    }
    const auto column = [&](const float* c) {
      return whole ? _mm512_loadu_ps(c + k) : _mm512_maskz_loadu_ps(mask, c + k);
    };
    if (col_scale) v = _mm512_mul_ps(v, column(col_scale));
    if (col_shift) v = _mm512_add_ps(v, column(col_shift));
    return relu ? _mm512_max_ps(v, _mm512_setzero_ps()) : v;  // max(NaN, 0) is its second operand: 0
  }
  // The 16 bytes q[k ...] (valid of them).
  void store(int64_t k, int64_t valid, __m512i r) const { store_s8x16(q + k, col_mask(valid), r); }
};

// The static rule (quant16: x * inv rounded half to even, clamped to [-127, 127], NaN -> 0) on 64 fp32
// values at a time, [0, k64) of a row: the float clamp keeps only the top (a value past 127 would convert
// to INT_MIN), NaN lanes convert to 0 (a masked convert), two saturating packs narrow four vectors to 64
// bytes whose floor of -127 is one byte max, and one permute restores their order (packs interleave the
// vectors per 128-bit lane). About 6 vector uops per 16 values instead of 11 (quant16 + a narrowing store).
// Measured against the 16-wide loop, both alternated in one process (AMX machine, 2026-12-06): per-token
// quantization 1.35-1.39x at 128 x 4096 to 2048 x 1024, 1.06x on single rows; the calibrated fp32
// convolutions at batch 8, whose input this quantizes, l1 1x1 1.17x, l1 3x3 1.06x, s2 1.04x, l2/l3 1.01-1.02x.
// load(k): the 16 fp32 values k ... k + 15 (a plain load, or QuantRow::load's int8 / per-column steps: the
// channel-affine quantization of a BatchNormQuant2d ran 1.32-1.38x faster here than 16 values at a time with
// int8 input, 1.43-1.52x with fp32 input that fits the cache (1.0x at 25 MB); DenseNet-121's shapes at batch
// 1 and 8, AMD Zen 4, 2 threads, builds before / after, 2026-12-07).
template <class Load>
inline void quant_static64(Load&& load, uint8_t* q, int64_t k64, __m512 inv, bool shift128) {
  const __m512 hi = _mm512_set1_ps(127.0f);
  const __m512i floor8 = _mm512_set1_epi8(-127), flip = _mm512_set1_epi8(shift128 ? -128 : 0);
  // packs leave dword 4l + j of the result as dwords 4l .. 4l + 3 of vector j.
  const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  auto conv = [&](int64_t k) {
    const __m512 r = _mm512_mul_ps(load(k), inv);
    return _mm512_maskz_cvtps_epi32(_mm512_cmp_ps_mask(r, r, _CMP_ORD_Q), _mm512_min_ps(r, hi));
  };
  for (int64_t k = 0; k < k64; k += 64) {
    const __m512i w0 = _mm512_packs_epi32(conv(k), conv(k + 16)), w1 = _mm512_packs_epi32(conv(k + 32), conv(k + 48));
    const __m512i b = _mm512_max_epi8(_mm512_packs_epi16(w0, w1), floor8);
    _mm512_storeu_si512(q + k, _mm512_xor_si512(_mm512_permutexvar_epi32(order, b), flip));
  }
}

void quantize_avx512(const QuantizeParams& p, int64_t m0, int64_t m1) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const int shift = p.shift128 ? 128 : 0;
  const int64_t K = p.K, K_pad = p.K_pad, ldq = p.ldq;
  const int64_t ldx = p.ldx * (p.x_is_s8 ? 1 : p.x_is_bf16 ? 2 : 4);  // bytes
  const auto row = [&](int64_t m) {
    return QuantRow{static_cast<const char*>(p.x) + m * ldx, p.x_is_bf16, p.x_is_s8, p.col_scale, p.col_shift, p.relu,
                    static_cast<uint8_t*>(p.q) + m * ldq};
  };
  const __m512i vshift = _mm512_set1_epi32(shift);
  // fp32 rows as they are: quant_static64 on plain loads
  const bool plain = !p.x_is_bf16 && !p.x_is_s8 && !p.col_scale && !p.col_shift && !p.relu;
  const auto plain_load = [](const QuantRow& r) {
    return [x = static_cast<const float*>(r.x)](int64_t k) { return _mm512_loadu_ps(x + k); };
  };
  if (p.static_inv > 0.0f) {
    const __m512 vinv = _mm512_set1_ps(p.static_inv);
    for (int64_t m = m0; m < m1; ++m) {
      const QuantRow r = row(m);
      const int64_t k64 = K / 64 * 64;  // static: every kind of row takes the 64-value loop
      if (plain)
        quant_static64(plain_load(r), r.q, k64, vinv, p.shift128);
      else
        quant_static64([&r](int64_t k) { return r.load(k, 16); }, r.q, k64, vinv, p.shift128);
      for (int64_t k = k64; k < K; k += 16) r.store(k, K - k, _mm512_add_epi32(quant16(r.load(k, K - k), vinv), vshift));
      for (int64_t k = K; k < K_pad; ++k) r.q[k] = static_cast<uint8_t>(shift);
    }
    return;
  }
  const __m512i lo = _mm512_set1_epi32(-127 + shift), hi = _mm512_set1_epi32(127 + shift);
  for (int64_t m = m0; m < m1; ++m) {
    const QuantRow r = row(m);
    __m512i mx = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 16)
      mx = _mm512_max_epu32(mx, _mm512_and_si512(_mm512_castps_si512(r.load(k, K - k)), abs_mask));
    const float inv = quant_row_inverse(static_cast<uint32_t>(_mm512_reduce_max_epu32(mx)), &p.scale[m]);
    if (inv == 0.0f) {
      std::memset(r.q, shift, static_cast<size_t>(K_pad));
      continue;
    }
    const __m512 vinv = _mm512_set1_ps(inv);
    // |x * inv| <= 127 up to rounding here (inv = 127 / amax), so the static rule gives the same bytes.
    const int64_t k64 = plain ? K / 64 * 64 : 0;
    if (k64 > 0) quant_static64(plain_load(r), r.q, k64, vinv, p.shift128);
    for (int64_t k = k64; k < K; k += 16) {
      const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(r.load(k, K - k), vinv));  // MXCSR: nearest even
      r.store(k, K - k, _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(v, vshift), lo), hi));
    }
    for (int64_t k = K; k < K_pad; ++k) r.q[k] = static_cast<uint8_t>(shift);
  }
}

// ---- NCHW fp32 -> NHWC int8 (QuantizePlanesParams) ----
// Blocks of 16 channels x 16 pixels: each channel's 16 values (one vector load from its plane) quantized to
// 16 bytes (quant16), then the 16 x 16 byte block transposed in registers (planes_nhwc.h), so that each pixel's
// 16 channels are one 16-byte store. Partial blocks (C or HW not a multiple of 16) load and store under masks.
// Measured against the channels-last fp32 copy (torch's copy_) and the quantization the convolution ran on it,
// both in one process (AMX machine, 2 threads, 2026-12-06), whole convolutions with an NCHW fp32 input, static /
// dynamic scale: batch 8, l1 1x1 3.58x / 3.25x, l1 3x3 1.65x / 1.67x, s2 1.73x / 1.59x, l2 1.55x / 1.49x, l3
// 1.23x / 1.14x, depthwise 3x3 at 28 x 28 x 256 1.94x / 1.71x, the RGB stem 1.15x / 1.23x; batch 1: l1 3x3 1.48x,
// the stem 1.09x.
void quantize_planes_avx512(const QuantizePlanesParams& p, int64_t p0, int64_t p1) {
  const __m512 inv = _mm512_set1_ps(p.inv);
  quantize_planes_blocks(
      p, p0, p1,
      [&](const float* src, int64_t np) {
        const __m512 v = np == 16 ? _mm512_loadu_ps(src) : _mm512_maskz_loadu_ps(col_mask(np), src);
        return _mm512_cvtepi32_epi8(quant16(v, inv));
      },
      [](int8_t* dst, __m128i row, int64_t nc, int64_t) {
        if (nc == 16)
          _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), row);
        else
          _mm_mask_storeu_epi8(dst, col_mask(nc), row);
      });
}

// ---- depthwise conv: vpdpbusd over groups of 4 taps, 64 channels per block ----
// vpdpbusd sums 4 byte products per int32 lane, so each lane takes one channel and 4 taps: the 4
// taps' input rows (64 channels each, s8 + 128 as u8) are interleaved bytewise with two unpack levels
// (8 shuffles for 256 products), the weights once per call the same way. The result lanes hold the
// channels in a lane-permuted order, which the epilogue works in (DwFinish); the accumulators start at
// -128 * sum(w), which undoes the +128 (exact). Padding taps read a zero row (s8 0), so borders need no
// other case.
// Two ways to group the taps:
// - row quads (DW = 1, KW <= 4: 3x3 at any stride): group kh holds taps (kh, 0 .. 3), whose inputs are
//   4 neighbouring pixels of one input row (taps past KW get weight 0), so an input row's interleaved
//   quads are built once per call range and used by every output row that reads it (3 for a 3x3 of
//   stride 1) instead of interleaving 3 groups per output pixel; at stride 1 with KW <= 3 one quad
//   serves two output pixels (dwconv_row_quads);
// - otherwise 4 consecutive taps of (kh, kw) order per group, interleaved per output pixel.
// Measured (dw 3x3 at 28 x 28 x 256, batch 8, int8 in/out, 2 threads): on an Intel Xeon with AMX, the
// per-pixel groups against the previous kernel (16 channels per vector, widened multiplies): 0.74 ->
// 0.34 ms (oneDNN: 0.46 ms); on an AMD Zen 5, row quads against per-pixel groups: 0.31-0.38 -> 0.23-0.25 ms
// (oneDNN: 0.29-0.32 ms), and 0.49-0.55 -> 0.32-0.35 ms with fp32 in/out; then the lane-order epilogue
// and paired quads: 0.28 -> 0.145 ms (benchmarks/RESULTS.md, "Depthwise convolution on AVX-512, then the
// 256-bit tiers").
// Specialized on output kind and bias; the buffers are read through locals (a thread_local looked up
// inside the loop cost ~6% in __tls_get_addr).
// A channel block's epilogue vectors in the accumulators' lane order (vector i, 128-bit lane l, dword k:
// channel 64 cb + 16 l + 4 i + k, interleave4's order), made once per call: the epilogue runs on the
// accumulators as they are, and only an fp32 store puts them back in channel order.
struct DwBlock {
  __m512i start[4];  // the accumulators' start: -128 * sum over taps of w (undoes the +128 of the u8 input)
  __m512 scale[4], bias[4];
};
constexpr int64_t kDwBlockInts = 12 * 16;  // a DwBlock in DwBuffers::blocks: start, scale, bias

inline DwBlock load_block(const int32_t* b) {
  DwBlock k;
  for (int i = 0; i < 4; ++i) {
    k.start[i] = _mm512_loadu_si512(b + 16 * i);
    k.scale[i] = _mm512_loadu_ps(b + 16 * (4 + i));
    k.bias[i] = _mm512_loadu_ps(b + 16 * (8 + i));
  }
  return k;
}

struct DwBuffers {  // vectors of 16 int32 (unaligned loads: std::vector promises 16-byte alignment)
  std::vector<int32_t> w;           // [cblock][group][4][16] interleaved weights
  std::vector<int32_t> blocks;      // [cblock][kDwBlockInts] DwBlocks (vector<DwBlock> is not 64-byte aligned)
  std::vector<const int8_t*> tap;   // [groups * 4] the taps' input rows of one pixel
  std::vector<int32_t> quads;       // row quads: [slot][cblock][ow][4][16] interleaved input quads
  std::vector<int64_t> tag;         // row quads: which input row (n * H + ih) each slot holds, -1 none
  std::vector<int32_t> pad;         // row quads: the quad of 4 padding pixels (s8 0 as u8: 0x80 bytes)
};

// interleave4 in two steps (dw_build_quads reuses a pair): the bytes of two rows interleaved (a pair), then
// two pairs' 16-bit elements.
struct Pair512 {
  __m512i lo, hi;
};
inline Pair512 interleave_pair(__m512i a, __m512i b) { return {_mm512_unpacklo_epi8(a, b), _mm512_unpackhi_epi8(a, b)}; }
inline void interleave_pairs(const Pair512& ab, const Pair512& cd, __m512i* r) {
  r[0] = _mm512_unpacklo_epi16(ab.lo, cd.lo);
  r[1] = _mm512_unpackhi_epi16(ab.lo, cd.lo);
  r[2] = _mm512_unpacklo_epi16(ab.hi, cd.hi);
  r[3] = _mm512_unpackhi_epi16(ab.hi, cd.hi);
}
// Interleaves 4 rows of 64 bytes: r[i] lane l, dword k = bytes (a, b, c, d) of channel 16 l + 4 i + k.
inline void interleave4(__m512i a, __m512i b, __m512i c, __m512i d, __m512i* r) {
  interleave_pairs(interleave_pair(a, b), interleave_pair(c, d), r);
}

// The 4 x 4 transpose of 128-bit lanes: v[l] = channels 16 l .. 16 l + 15.
inline void lanes_to_channels(const __m512i r[4], __m512i v[4]) {
  const __m512i t0 = _mm512_shuffle_i32x4(r[0], r[1], 0x44), t1 = _mm512_shuffle_i32x4(r[0], r[1], 0xee);
  const __m512i t2 = _mm512_shuffle_i32x4(r[2], r[3], 0x44), t3 = _mm512_shuffle_i32x4(r[2], r[3], 0xee);
  v[0] = _mm512_shuffle_i32x4(t0, t2, 0x88);
  v[1] = _mm512_shuffle_i32x4(t0, t2, 0xdd);
  v[2] = _mm512_shuffle_i32x4(t1, t3, 0x88);
  v[3] = _mm512_shuffle_i32x4(t1, t3, 0xdd);
}

alignas(64) constexpr int8_t kZeroRow[64] = {};

// Row quads serve KW <= 4 at any stride and 4 < KW <= 16 at stride 1 (the wide row quads: dw_row_quads.h).
inline bool dw_row_quads(const DwConvParams& p) { return dw_quads_fit(p, 64); }

// The epilogue of one pixel's 64-channel block, on the accumulators in their lane order (compensated by
// their start): scales, bias, activation, then fp32 (put back in channel order: a 4 x 4 transpose of 128-bit lanes) or
// int8. For int8 the saturating packs of the lane-ordered vectors come out in channel order by
// themselves: packs_epi32(q0, q1) holds channels 16 l + 0..7 in lane l, packs_epi32(q2, q3) 16 l + 8..15,
// and packs_epi16 of the two puts 16 l + 0..15 in lane l. Measured (dw 3x3 at 28 x 28 x 256, batch 8,
// int8 in/out, AMD Zen 5): the epilogue took 47% of the kernel's samples when it transposed first and
// read its per-channel vectors (masked loads) at every pixel.
template <bool INT8_OUT, bool BIAS>
struct DwFinish {
  // p's fields, copied: an int8 store may alias p as far as the compiler knows, so a field read through p
  // is loaded again after every store.
  char* out;
  int64_t C;
  Act act;
  bool folded, stream_out;
  float a_scale;
  const int32_t* blocks;
  // int8 with the folded scales (finite: no NaN arises): the activation, min(y, hi), the convert, the
  // saturating packs and a max on the bytes (gelu, rare here, takes the general rule).
  bool fast_int8;
  // apply<kDwPlain> and <kDwPlain6> (dw_row_quads.h): min(y, hi) and a max on the bytes against `floor` (0 for
  // relu and relu6: relu_on_bytes; -127 else), relu6 multiplying by out_inv first.
  __m512 out_inv, hi;
  __m512i floor;

  DwFinish(const DwConvParams& p, const int32_t* block_vectors)
      : out(static_cast<char*>(p.out)), C(p.C), act(p.act), folded(p.folded), stream_out(p.stream_out),
        a_scale(p.a_scale), blocks(block_vectors), fast_int8(INT8_OUT && p.folded && p.act != Act::Gelu),
        out_inv(_mm512_set1_ps(p.out_inv_scale)), hi(_mm512_set1_ps(folded_int8_hi(p.act, p.out_inv_scale))),
        floor(_mm512_set1_epi8(relu_on_bytes(p.act) ? 0 : -127)) {}

  // acc: the accumulators, started at k.start
  template <int RULE>
  inline void apply(const __m512i acc[4], int64_t pix, int64_t cb, const DwBlock& k) const {
    const int64_t c0 = 64 * cb;
    const bool whole = C - c0 >= 64;
    __m512 y[4];
    for (int i = 0; i < 4; ++i) {
      y[i] = _mm512_cvtepi32_ps(acc[i]);
      if (RULE == kDwGeneral && !folded) y[i] = _mm512_mul_ps(y[i], _mm512_set1_ps(a_scale));
      y[i] = _mm512_mul_ps(y[i], k.scale[i]);
      if (BIAS) y[i] = _mm512_add_ps(y[i], k.bias[i]);
      if (RULE == kDwGeneral && !fast_int8) y[i] = act16(y[i], act);
    }
    if (!INT8_OUT) {
      __m512i r[4], v[4];
      for (int i = 0; i < 4; ++i) r[i] = _mm512_castps_si512(y[i]);
      lanes_to_channels(r, v);
      float* o = reinterpret_cast<float*>(out) + pix * C + c0;
      for (int l = 0; l < 4; ++l) {
        if (whole) store_f32x16(o + 16 * l, 0xffff, _mm512_castsi512_ps(v[l]), stream_out);
        else if (c0 + 16 * l < C) _mm512_mask_storeu_ps(o + 16 * l, col_mask(C - c0 - 16 * l), _mm512_castsi512_ps(v[l]));
      }
      return;
    }
    __m512i q[4];
    for (int i = 0; i < 4; ++i) {
      if (RULE == kDwPlain6) y[i] = _mm512_mul_ps(y[i], out_inv);
      q[i] = RULE != kDwGeneral ? _mm512_cvtps_epi32(_mm512_min_ps(y[i], hi))
             : fast_int8        ? _mm512_cvtps_epi32(_mm512_min_ps(folded_int8_act(y[i], act, out_inv), hi))
                                : quant16(y[i], out_inv);
    }
    const __m512i b = _mm512_max_epi8(_mm512_packs_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3])),
                                      RULE != kDwGeneral ? floor : _mm512_set1_epi8(-127));
    int8_t* o = reinterpret_cast<int8_t*>(out) + pix * C + c0;
    if (whole) _mm512_storeu_si512(o, b);
    else _mm512_mask_storeu_epi8(o, byte_mask(C - c0), b);
  }
};

// Output pixels [p0, p1) with row quads. An output row's KH input rows are looked up among KH slots by
// tag; a missing one is built (the quads of every channel block) into a slot that this output row does
// not need. Rows outside the image read the padding quad (stride 0).
// Paired quads (stride 1, KW <= 3): the quad of input pixels iw .. iw + 3 holds the taps of output ow
// (weights A: taps 0 .. KW-1 in slots 0 ..) and of ow + 1 (weights B: the same taps one slot later), so a
// slot keeps quads for even ow only: half the quads built, and each one read once for two pixels. At 28 x
// 28 x 256, batch 8, int8 in/out, AMD Zen 5, 1 thread, 3 alternated processes: 0.34 -> 0.25-0.28 ms.
// WIDE: the wide row quads (rq > 1), whose pixels go four at a time (below); a template parameter, and not
// inlined into dwconv_blocks, so that the other row-quad layers keep their code (the four-pixel step on 3 x 3
// at stride 2 was 7-17% slower; with both instantiations inlined into one function every 3 x 3 layer lost
// 6%, not inlined none: 0.97-1.01x in alternated processes).
// FIXED_KH: the kernel height as a constant (3), else 0 (p.KH): a loop over p.KH in the paired step kept its
// 8 accumulators moving between registers each row. The int8 epilogue's rule (DwFinish::apply) is
// a template argument of the pixel loop, so the common rules run without a branch per pixel. Measured with
// both and DwFinish's copied fields against the kernel before them (dw 3x3, 256 channels at 28 x 28, batch 8,
// Intel Xeon with AMX, 2 threads, alternated in one process): int8 in/out 1.29-1.50x (0.20-0.23 -> 0.15-0.16
// ms; none, relu, relu6), int8 in / fp32 out 1.25x, fp32 in/out (Int8Conv2d) 1.16x; 144 channels at 56 x 56
// 1.33x; stride 2 (unpaired) 1.00-1.30x, and 1.08-1.14x more with the constant height there too (fp32 in/out
// 1.02-1.03x); the wide row quads (5 x 5, 7 x 7) 0.92-0.96x within this machine's
// noise (their four-pixel step keeps the general rule: with the rule's instantiations their accumulators
// spilled, 0.72x).
template <bool INT8_OUT, bool BIAS, bool WIDE, int FIXED_KH>
__attribute__((noinline)) void dwconv_row_quads(const DwConvParams& p, int64_t p0, int64_t p1, DwBuffers& buf,
                                                const DwFinish<INT8_OUT, BIAS>& finish_in, bool paired) {
  // A local copy, whose fields stay in registers across the int8 stores; the wide row quads' 16 accumulators
  // leave no room for its vectors (they spilled the accumulators in the inner loop), so they read finish_in.
  const DwFinish<INT8_OUT, BIAS> local = finish_in;
  const DwFinish<INT8_OUT, BIAS>& finish = WIDE ? finish_in : local;
  const int64_t KH = FIXED_KH ? FIXED_KH : p.KH;
  const int64_t rq = WIDE ? dw_row_quad_count(p) : 1;  // quads a kernel row (wide row quads: stride 1, unpaired)
  const int64_t cblocks = (p.C + 63) / 64, step = paired ? 2 : 1, nq = (p.OW + step - 1) / step + 4 * (rq - 1);
  const int64_t groups = paired ? 2 * KH : KH * rq;
  const int64_t slot_ints = cblocks * nq * 64;
  buf.quads.resize(static_cast<size_t>(KH * slot_ints));
  buf.tag.assign(static_cast<size_t>(KH), -1);
  buf.pad.assign(64, static_cast<int32_t>(0x80808080u));
  int32_t* const quads = buf.quads.data();
  const int32_t* const pad = buf.pad.data();
  int64_t* const tag = buf.tag.data();
  const int32_t* const wq = buf.w.data();
  const __m512i k80 = _mm512_set1_epi8(static_cast<char>(0x80));
  const int8_t* const x = p.x;
  auto build = [&](int32_t* q, int64_t n, int64_t ih) {
    const int8_t* const row = x + (n * p.H + ih) * p.W * p.C;
    const int64_t W = p.W, C = p.C, count = nq;
    for (int64_t cb = 0; cb < cblocks; ++cb) {
      const int8_t* const rc = row + 64 * cb;
      const __mmask64 m = byte_mask(C - 64 * cb);
      int32_t* const d = q + cb * nq * 64;
      auto px = [rc, m, W, C, k80](int64_t iw) {  // outside the row: s8 0
        return iw >= 0 && iw < W ? _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, rc + iw * C), k80) : k80;
      };
      dw_build_quads(count, step * p.SW, -p.PW, px, interleave_pair, [d](int64_t j, const Pair512& a, const Pair512& b) {
        __m512i r[4];
        interleave_pairs(a, b, r);
        for (int i = 0; i < 4; ++i) _mm512_storeu_si512(d + j * 64 + 16 * i, r[i]);
      });
    }
  };
  dw_run_rule<INT8_OUT && !WIDE>(p, [&](auto rule_tag) {
    constexpr int RULE = decltype(rule_tag)::value;
    dw_rows(p, p0, p1, quads, slot_ints, pad, 64, tag, build, [&](int64_t out_row, int64_t ow0, int64_t ow1,
                                                                   const int32_t* const* qrow, const int64_t* qstride) {
      for (int64_t cb = 0; cb < cblocks; ++cb) {
        const int32_t* wa = wq + cb * groups * 64;  // weights A (and B after them)
        const int32_t* wb = wa + KH * 64;
        const DwBlock k = load_block(finish.blocks + cb * kDwBlockInts);  // in registers for the whole row
        // This block's quads of each kernel row: quad j at qb[kh] + j * qs[kh] (locals: no store aliases them)
        const int32_t* qb[16];
        int64_t qs[16];
        for (int64_t kh = 0; kh < KH; ++kh) qb[kh] = qrow[kh] + cb * nq * qstride[kh], qs[kh] = qstride[kh];
        // One pixel: quad j (and j + 4, j + 8, .. for wide row quads), with weights B when `second` (an odd
        // column of paired quads).
        auto one = [&](int64_t ow, int64_t j, bool second) {
          const int32_t* w = second ? wb : wa;
          __m512i acc[4] = {k.start[0], k.start[1], k.start[2], k.start[3]};
          for (int64_t kh = 0; kh < KH; ++kh) {
            for (int64_t r = 0; r < rq; ++r) {
              const int32_t* q = qb[kh] + (j + 4 * r) * qs[kh];
              const int32_t* wr = w + (kh * rq + r) * 64;
              for (int i = 0; i < 4; ++i)
                acc[i] = _mm512_dpbusd_epi32(acc[i], _mm512_loadu_si512(q + 16 * i), _mm512_loadu_si512(wr + 16 * i));
            }
          }
          finish.template apply<RULE>(acc, out_row + ow, cb, k);
        };
        auto pair = [&](int64_t ow) {  // pixels ow and ow + 1 from quad ow / 2
          __m512i a0[4], a1[4];
          for (int i = 0; i < 4; ++i) a0[i] = a1[i] = k.start[i];
          for (int64_t kh = 0; kh < KH; ++kh) {
            const int32_t* q = qb[kh] + (ow / 2) * qs[kh];
            for (int i = 0; i < 4; ++i) {
              const __m512i v = _mm512_loadu_si512(q + 16 * i);
              a0[i] = _mm512_dpbusd_epi32(a0[i], v, _mm512_loadu_si512(wa + kh * 64 + 16 * i));
              a1[i] = _mm512_dpbusd_epi32(a1[i], v, _mm512_loadu_si512(wb + kh * 64 + 16 * i));
            }
          }
          finish.template apply<RULE>(a0, out_row + ow, cb, k);
          finish.template apply<RULE>(a1, out_row + ow + 1, cb, k);
        };
        // Wide row quads: four pixels at a time, each weight vector loaded once for the four (one pixel alone
        // loads a weight vector per vpdpbusd, beside its quad vector). Pixel m reads quad j + m. Measured (7 x 7,
        // 96 channels at 56 x 56, batch 8, int8 in/out, AMD Zen 4, alternated processes): one pixel at a time
        // 1.65 ms (the tap groups before: 2.0), four at a time 1.38-1.42.
        auto four = [&](int64_t ow) {
          __m512i acc[4][4];
          for (int m = 0; m < 4; ++m)
            for (int i = 0; i < 4; ++i) acc[m][i] = _mm512_setzero_si512();
          for (int64_t kh = 0; kh < KH; ++kh) {
            for (int64_t r = 0; r < rq; ++r) {
              const int32_t* q = qb[kh] + (ow + 4 * r) * qs[kh];
              const int32_t* wr = wa + (kh * rq + r) * 64;
              for (int i = 0; i < 4; ++i) {
                const __m512i wv = _mm512_loadu_si512(wr + 16 * i);
                for (int m = 0; m < 4; ++m)
                  acc[m][i] = _mm512_dpbusd_epi32(acc[m][i], _mm512_loadu_si512(q + m * qs[kh] + 16 * i), wv);
              }
            }
          }
          for (int m = 0; m < 4; ++m) {
            for (int i = 0; i < 4; ++i) acc[m][i] = _mm512_add_epi32(acc[m][i], k.start[i]);
            finish.template apply<RULE>(acc[m], out_row + ow + m, cb, k);
          }
        };
        if constexpr (WIDE) {
          int64_t ow = ow0;
          for (; ow + 4 <= ow1; ow += 4) four(ow);
          for (; ow < ow1; ++ow) one(ow, ow, false);
        } else {
          dw_row_columns(ow0, ow1, paired, one, pair);
        }
      }
    });
  });
}

template <bool INT8_OUT, bool BIAS>
void dwconv_blocks(const DwConvParams& p, int64_t p0, int64_t p1) {
  const bool quads = dw_row_quads(p), paired = quads && dw_paired(p);
  const int64_t taps = p.KH * p.KW, cblocks = (p.C + 63) / 64, rq = dw_row_quad_count(p);
  // Weight groups: row quads take group kh rq + r = taps (kh, 4 r .. 4 r + 3), weight 0 past KW, and paired
  // quads (rq = 1) also group KH + kh = taps (kh, -1 .. 2) (weights B: weight 0 in slot 0); otherwise 4
  // consecutive taps.
  const int64_t groups = paired ? 2 * p.KH : quads ? p.KH * rq : (taps + 3) / 4;
  thread_local DwBuffers buf;
  buf.w.resize(static_cast<size_t>(cblocks * groups * 4 * 16));
  buf.blocks.resize(static_cast<size_t>(cblocks * kDwBlockInts));
  buf.tap.assign(static_cast<size_t>(groups * 4), kZeroRow);
  for (int64_t cb = 0; cb < cblocks; ++cb) {
    const __mmask64 m = byte_mask(p.C - 64 * cb);
    auto wtap = [&](int64_t g, int64_t i) {  // weight row of slot i of group g, zero where no tap
      // kh and kw of slot i (paired weights B: one slot later)
      const int64_t kh = paired ? g % p.KH : g / rq;
      const int64_t kw = paired ? (g < p.KH ? i : i - 1) : 4 * (g % rq) + i;
      const int64_t t = quads ? (kw >= 0 && kw < p.KW ? kh * p.KW + kw : taps) : 4 * g + i;
      return t < taps ? _mm512_maskz_loadu_epi8(m, p.w + t * p.C + 64 * cb) : _mm512_setzero_si512();
    };
    for (int64_t g = 0; g < groups; ++g) {
      __m512i r[4];
      interleave4(wtap(g, 0), wtap(g, 1), wtap(g, 2), wtap(g, 3), r);
      for (int i = 0; i < 4; ++i) _mm512_storeu_si512(&buf.w[((cb * groups + g) * 4 + i) * 16], r[i]);
    }
    // Channel order first (vector l: channels 16 l ..; 0 past C), then the accumulators' lane order (the
    // same 4 x 4 transpose of 128-bit lanes, its own inverse).
    __m512i start[4], scale[4], bias[4];
    for (int64_t l = 0; l < 4; ++l) {
      const int64_t c = 64 * cb + 16 * l;
      const __mmask16 cm = c < p.C ? col_mask(p.C - c) : 0;
      __m512i sum = _mm512_setzero_si512();
      for (int64_t t = 0; t < taps; ++t) sum = _mm512_add_epi32(sum, _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(cm, p.w + t * p.C + c)));
      start[l] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sum, 7));
      scale[l] = _mm512_castps_si512(_mm512_maskz_loadu_ps(cm, p.w_scale + c));
      bias[l] = BIAS ? _mm512_castps_si512(_mm512_maskz_loadu_ps(cm, p.bias + c)) : _mm512_setzero_si512();
    }
    int32_t* const blk = &buf.blocks[cb * kDwBlockInts];
    __m512i t[4];
    lanes_to_channels(start, t);
    for (int i = 0; i < 4; ++i) _mm512_storeu_si512(blk + 16 * i, t[i]);
    lanes_to_channels(scale, t);
    for (int i = 0; i < 4; ++i) _mm512_storeu_si512(blk + 16 * (4 + i), t[i]);
    lanes_to_channels(bias, t);
    for (int i = 0; i < 4; ++i) _mm512_storeu_si512(blk + 16 * (8 + i), t[i]);
  }
  const int32_t* const blocks = buf.blocks.data();
  const DwFinish<INT8_OUT, BIAS> finish{p, blocks};
  if (quads)
    return rq > 1      ? dwconv_row_quads<INT8_OUT, BIAS, true, 0>(p, p0, p1, buf, finish, false)
           : p.KH == 3 ? dwconv_row_quads<INT8_OUT, BIAS, false, 3>(p, p0, p1, buf, finish, paired)
                       : dwconv_row_quads<INT8_OUT, BIAS, false, 0>(p, p0, p1, buf, finish, paired);
  const __m512i k80 = _mm512_set1_epi8(static_cast<char>(0x80));
  // Locals: the output stores could alias the thread_local buffers (and their TLS lookups cost).
  const int8_t** const tap = buf.tap.data();
  const int32_t* const wts = buf.w.data();
  const int8_t* const x = p.x;
  for (int64_t pix = p0; pix < p1; ++pix) {
    const int64_t n = pix / (p.OH * p.OW), oh = (pix / p.OW) % p.OH, ow = pix % p.OW;
    for (int64_t kh = 0, t = 0; kh < p.KH; ++kh) {
      const int64_t ih = oh * p.SH - p.PH + kh * p.DH;
      for (int64_t kw = 0; kw < p.KW; ++kw, ++t) {
        const int64_t iw = ow * p.SW - p.PW + kw * p.DW;
        tap[t] = ih >= 0 && ih < p.H && iw >= 0 && iw < p.W ? x + ((n * p.H + ih) * p.W + iw) * p.C : kZeroRow;
      }
    }
    for (int64_t cb = 0; cb < cblocks; ++cb) {
      const int64_t c0 = 64 * cb;
      const __mmask64 m = byte_mask(p.C - c0);
      const int32_t* w = wts + cb * groups * 4 * 16;
      const DwBlock k = load_block(blocks + cb * kDwBlockInts);
      __m512i acc[4] = {k.start[0], k.start[1], k.start[2], k.start[3]};
      for (int64_t g = 0; g < groups; ++g, w += 4 * 16) {
        auto row = [&](int64_t t) {  // zero-row taps have no channel offset (their 64 bytes are zero)
          const int8_t* r = tap[t];
          return _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, r == kZeroRow ? r : r + c0), k80);
        };
        __m512i q[4];
        interleave4(row(4 * g), row(4 * g + 1), row(4 * g + 2), row(4 * g + 3), q);
        for (int i = 0; i < 4; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], q[i], _mm512_loadu_si512(w + 16 * i));
      }
      finish.template apply<kDwGeneral>(acc, pix, cb, k);
    }
  }
}

const char* dwconv_path_avx512(const DwConvParams& p) {
  if (const char* ymm = dwconv_ymm_path_avx512(p)) return ymm;
  return !dw_row_quads(p) ? "tap_groups" : dw_paired(p) ? "row_quads_paired" : "row_quads";
}

void dwconv_avx512(const DwConvParams& p, int64_t p0, int64_t p1) {
  if (p1 <= p0) return;
  // 32 channels: one block on 256-bit vectors (dw_ymm_avx512.cc), not a half-empty 64-channel one
  if (dwconv_ymm_path_avx512(p)) return dwconv_ymm_avx512(p, p0, p1);
  const bool int8_out = p.out_kind == OutKind::Int8, bias = p.bias != nullptr;
  if (int8_out)
    return bias ? dwconv_blocks<true, true>(p, p0, p1) : dwconv_blocks<true, false>(p, p0, p1);
  if (bias)
    dwconv_blocks<false, true>(p, p0, p1);
  else
    dwconv_blocks<false, false>(p, p0, p1);
  if (p.stream_out) _mm_sfence();  // the non-temporal stores are visible before the call returns
}

uint32_t absmax_avx512(const float* x, int64_t n) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  __m512i m0 = _mm512_setzero_si512(), m1 = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {  // two chains: loads, not the max, are the limit
    m0 = _mm512_max_epu32(m0, _mm512_and_si512(_mm512_loadu_si512(x + i), abs_mask));
    m1 = _mm512_max_epu32(m1, _mm512_and_si512(_mm512_loadu_si512(x + i + 16), abs_mask));
  }
  for (; i < n; i += 16)
    m0 = _mm512_max_epu32(m0, _mm512_and_si512(_mm512_castps_si512(_mm512_maskz_loadu_ps(col_mask(n - i), x + i)), abs_mask));
  return static_cast<uint32_t>(_mm512_reduce_max_epu32(_mm512_max_epu32(m0, m1)));
}

// Residual add (csrc/kernels/conv/add.h): 16 lanes, the portable kernel's arithmetic (fp32 products and
// sum, ReLU as y < 0 -> 0, requantization with NaN -> 0 and round half to even from MXCSR's default).
//
// int8 + int8 -> int8 (a ResNet block's end), 64 elements at a time, where every |y * out_inv| is below 2^30
// (add_fits_int32): the int32 convert is then exact, the saturating packs and a max against -127 give the
// clamp to [-127, 127], no NaN can arise (finite scales), and ReLU is a max against 0 on the bytes (y < 0
// gives round(y * inv) <= 0 with inv > 0, so max(q, 0) = 0 = the reference's). The same values as the
// 16-lane loop, without its NaN test, float clamps and per-vector narrowing: measured 1.44-1.60x on ResNet-50's
// four residual adds at batch 8 (2 threads), 1.04x end to end (benchmarks/RESULTS.md, session 24). Returns
// where it stopped (the 16-lane loop does the tail).
inline bool add_fits_int32(const AddParams& p) {
  // |a|, |b| <= 128; false for a NaN or infinite scale (the comparison is false)
  return 128.0f * (std::fabs(p.a_scale) + std::fabs(p.b_scale)) * p.out_inv_scale < 1073741824.0f;
}

template <bool kRelu>
int64_t add_int8_lines(const AddParams& p, int64_t i0, int64_t i1) {
  const __m512 sa = _mm512_set1_ps(p.a_scale), sb = _mm512_set1_ps(p.b_scale), inv = _mm512_set1_ps(p.out_inv_scale);
  const int8_t* const a = static_cast<const int8_t*>(p.a);
  const int8_t* const b = static_cast<const int8_t*>(p.b);
  int8_t* const o = static_cast<int8_t*>(p.out);
  auto value = [](const int8_t* x, __m512 scale) {
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)))),
                         scale);
  };
  int64_t i = i0;
  for (; i + 64 <= i1; i += 64) {
    __m512i q[4];
    for (int j = 0; j < 4; ++j)
      q[j] = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_add_ps(value(a + i + 16 * j, sa), value(b + i + 16 * j, sb)), inv));
    _mm512_storeu_si512(o + i, pack_int8x64(q, kRelu ? 0 : -127));
  }
  return i;
}

template <bool kA8, bool kB8, bool kRelu, bool kInt8Out>
void add_loop_avx512(const AddParams& p, int64_t i0, int64_t i1) {
  if constexpr (kA8 && kB8 && kInt8Out) {
    if (add_fits_int32(p)) i0 = add_int8_lines<kRelu>(p, i0, i1);
  }
  const __m512 sa = _mm512_set1_ps(p.a_scale), sb = _mm512_set1_ps(p.b_scale), inv = _mm512_set1_ps(p.out_inv_scale);
  const __m512 zero = _mm512_setzero_ps(), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  auto load = [](const void* x, bool int8, __m512 scale, int64_t i, int64_t n) {
    // whole vectors with plain loads (a masked load that misses the cache is slow on AMD), the tail masked
    const __mmask16 m = static_cast<__mmask16>(n >= 16 ? 0xffff : (1u << n) - 1);
    if (int8) {
      const int8_t* q = static_cast<const int8_t*>(x) + i;
      const __m128i v = n >= 16 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)) : _mm_maskz_loadu_epi8(m, q);
      return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)), scale);
    }
    const float* f = static_cast<const float*>(x) + i;
    return n >= 16 ? _mm512_loadu_ps(f) : _mm512_maskz_loadu_ps(m, f);
  };
  for (int64_t i = i0; i < i1; i += 16) {
    const int64_t n = i1 - i;
    __m512 y = _mm512_add_ps(load(p.a, kA8, sa, i, n), load(p.b, kB8, sb, i, n));
    if (kRelu) y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(y, zero, _CMP_LT_OQ), zero);
    const __mmask16 m = static_cast<__mmask16>(n >= 16 ? 0xffff : (1u << n) - 1);
    if (kInt8Out) {
      __m512 v = _mm512_mul_ps(y, inv);
      v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), zero);  // NaN -> 0
      const __m128i q = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(v, lo), hi)));
      int8_t* o = static_cast<int8_t*>(p.out) + i;
      if (n >= 16)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o), q);
      else
        _mm_mask_storeu_epi8(o, m, q);
    } else {
      _mm512_mask_storeu_ps(static_cast<float*>(p.out) + i, m, y);
    }
  }
}

const char* add_path_avx512(const AddParams& p) {
  return p.a_int8 && p.b_int8 && p.out_int8 && add_fits_int32(p) ? "int8_lines" : "lanes";
}

void add_act_avx512(const AddParams& p, int64_t i0, int64_t i1) {
  dispatch_add(p, [&](auto a8, auto b8, auto relu, auto out8) {
    add_loop_avx512<decltype(a8)::value, decltype(b8)::value, decltype(relu)::value, decltype(out8)::value>(p, i0, i1);
  });
}

// 12 independent accumulators cover vpdpbusd's latency; the asm keeps the operands live.
int64_t peak_probe_avx512(int64_t iters) {
  __m512i acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_epi32(i);
  __m512i a = _mm512_set1_epi32(0x01010101), b = _mm512_set1_epi32(0x02020202);
  for (int64_t t = 0; t < iters; ++t) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
    __asm__ volatile("" : "+v"(a), "+v"(b));
  }
  __m512i s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_epi32(s, acc[i]);
  volatile int sink = _mm512_reduce_add_epi32(s);
  (void)sink;
  return iters * 12 * 64 * 2;
}

}  // namespace
}  // namespace kernels
}  // namespace fastinfer

#pragma GCC pop_options

namespace fastinfer {
namespace kernels {
const KernelSet& kernels_avx512_vnni() {
  static const KernelSet s = [] {
    KernelSet k{"avx512_vnni", int8_gemm_avx512, w8_gemm_avx512, quantize_avx512, dwconv_avx512,
                absmax_avx512, peak_probe_avx512,
                16 * Int8Traits::NB, 16 * Int8Traits::MR, Int8Traits::MR, false, conv_direct_avx512,
                kPackKB, Int8Traits::MR, add_act_avx512, /*conv_direct_no_min128=*/false,
                dwconv_path_avx512, gconv_avx512};
    k.w8_gemm_bf16 = w8_gemm_bf16_avx512;
    k.add_path = add_path_avx512;
    k.quantize_planes = quantize_planes_avx512;
    k.gate_sum = gate_sum_avx512;
    k.gate_scale = gate_scale_avx512;
    k.avg_pool = avg_pool_avx512;
    k.max_pool = max_pool_avx512;
    return k;
  }();
  return s;
}
}  // namespace kernels
}  // namespace fastinfer
