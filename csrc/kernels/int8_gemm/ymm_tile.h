// The 256-bit int8 tile shared by the AVX2 and AVX-VNNI kernel sets: GEMM rows or direct-convolution
// pixels x 16-column blocks of the n16k4 packing, and its epilogue (EPILOGUE.md), 8 columns per vector;
// the narrow-group convolution (ymm_gconv) on the same 4-byte step;
// and their depthwise convolutions: row quads (ymm_dwconv_quads, with a quad-step policy) and, where those do
// not serve, pairs of taps (ymm_dwconv, with a pair-step policy).
// The two sets differ only in the 4-byte dot product step, which the including file supplies as a
// policy class Dot:
//   static constexpr bool kShifted;   // the sums are of u8 = s8 + 128 (subtract 128 * colsum), else of s8
//   static constexpr int kMR;         // rows of the main tile (one 16-column block)
//   static constexpr int kWide[3];    // blocks of the 1- and 2-row tiles (kWide[1], kWide[2])
//   struct Row;                       // one row's broadcast 4-byte group, ready for step
//   template <bool S8> static Row row(__m256i group);  // group as stored: s8 (S8) or u8 = s8 + 128
//   static constexpr int kGroupBytes;  // bytes of a row's operand per 4-byte group (4; 8 prepared: avx2.cc)
//   template <bool S8> static Row load(const uint8_t* p);  // the row of the group stored at p
//   static __m256i step(__m256i acc, const Row& r, __m256i b);  // acc += 4-byte dot products per column
//   static constexpr int kProbeChains; static constexpr bool kProbeVaryB;  // ymm_peak_probe's settings
//
// Why a header with intrinsics (STYLE.md keeps intrinsics out of shared headers): as avx512_common.h, so
// that both sets use one copy of the tile and epilogue. Include it only after `#pragma GCC target` enables
// AVX2 (elsewhere the intrinsics fail to inline: a compile error); everything here has internal linkage.
// The including file includes the std and project headers listed below before that pragma, so that no
// std code is compiled for the ISA (their include guards make the includes here no-ops).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "conv_direct_rows.h"
#include "dw_row_quads.h"
#include "epilogue.h"
#include "pack.h"
#include "params.h"

namespace fastinfer {
namespace kernels {
namespace {

inline __m256i bcast_u8x4(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

inline __m256i lane_mask(int valid) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The per-column inputs of columns [col, col + 8), loaded once per tile.
struct Cols8 {
  int64_t col;
  int valid;        // columns inside N (0 for a padded vector: nothing is stored)
  __m256i mask;     // lane_mask(valid)
  __m256i comp;     // 128 * colsum[n] for sums of u8 = s8 + 128 (else 0)
  __m256 b_scale, bias;
};

inline Cols8 cols8(const Int8GemmParams& p, int64_t col, bool shifted) {
  Cols8 c;
  c.col = col;
  c.valid = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(8, p.N - col)));
  c.mask = lane_mask(c.valid);
  c.comp = shifted ? _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.b_colsum + col)), 7)
                   : _mm256_setzero_si256();  // b_colsum is N_pad long
  const bool fl = p.out_kind != OutKind::Int32;
  c.b_scale = fl ? _mm256_maskload_ps(p.b_scale + col, c.mask) : _mm256_setzero_ps();
  c.bias = fl && p.bias ? _mm256_maskload_ps(p.bias + col, c.mask) : _mm256_setzero_ps();
  return c;
}

// avx512_common.h's silu16 on 8 lanes: 2^n made in the exponent bits (n in [-126, 127] after the clamp), and
// 1 / d from vrcpps (12 bits) and one Newton step (about 2^-23). vrcpps flushes a subnormal 1 / d to 0, so
// below about -87.3 the result is -0 (silu16's mask; silu(-inf) NaN, as torch's).
inline __m256 silu8(__m256 y) {
  const __m256 yc = _mm256_min_ps(_mm256_max_ps(y, _mm256_set1_ps(-88.0f)), _mm256_set1_ps(87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(yc, _mm256_set1_ps(-1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(0.693147180559945f), yc);
  __m256 p = _mm256_set1_ps(-0.008297654800117016f);  // e^-r: the odd coefficients negated
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.04191538318991661f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(-0.16667574644088745f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.49998894333839417f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(-0.9999997019767761f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0000001192092896f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 d = _mm256_fmadd_ps(p, _mm256_castsi256_ps(e), _mm256_set1_ps(1.0f));
  const __m256 inv = _mm256_rcp_ps(d);
  return _mm256_mul_ps(y, _mm256_fmadd_ps(inv, _mm256_fnmadd_ps(d, inv, _mm256_set1_ps(1.0f)), inv));
}

// relu / relu6 / hardswish / silu with NaN kept (max/min return their second operand on NaN); Gelu is done
// per element.
// Always inline, silu out of line: avx512_common.h's act16 says why.
__attribute__((noinline)) inline __m256 silu8_outlined(__m256 y) { return silu8(y); }
__attribute__((always_inline)) inline __m256 act8(__m256 y, Act act) {
  if (act == Act::Hardswish) {  // y * min(max(y + 3, 0), 6) / 6 (avx512_common.h's act16)
    __m256 t = _mm256_max_ps(_mm256_setzero_ps(), _mm256_add_ps(y, _mm256_set1_ps(3.0f)));
    t = _mm256_min_ps(_mm256_set1_ps(6.0f), t);
    return _mm256_div_ps(_mm256_mul_ps(y, t), _mm256_set1_ps(6.0f));
  }
  if (act == Act::Silu) return silu8_outlined(y);  // NaN stays NaN (the final product)
  if (act != Act::Relu && act != Act::Relu6) return y;
  y = _mm256_max_ps(_mm256_setzero_ps(), y);
  return act == Act::Relu6 ? _mm256_min_ps(_mm256_set1_ps(6.0f), y) : y;
}

// The folded int8 rule's activation and unfolded out_inv multiply, ahead of min(y, folded_int8_hi(...)):
// the 256-bit folded_int8_act of avx512_common.h (no gelu: act8 has none).
__attribute__((always_inline)) inline __m256 folded_int8_act8(__m256 y, Act act, __m256 out_inv) {
  if (act == Act::Relu6) return _mm256_max_ps(_mm256_mul_ps(y, out_inv), _mm256_setzero_ps());
  y = act8(y, act);
  return folds_out_inv(act) ? y : _mm256_mul_ps(y, out_inv);
}

// 8 int32 -> 8 int8 (saturating) in the low 8 bytes.
inline __m128i narrow8(__m256i q) {
  const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
  return _mm_packs_epi16(w, w);
}

// Stores the low `bytes` bytes of v at dst.
inline void store_bytes(void* dst, __m128i v, int bytes) {
  if (bytes == 16) {
    _mm_storeu_si128(static_cast<__m128i*>(dst), v);
  } else if (bytes == 8) {
    _mm_storel_epi64(static_cast<__m128i*>(dst), v);
  } else {
    alignas(16) uint8_t t[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(t), v);
    std::memcpy(dst, t, static_cast<size_t>(bytes));
  }
}

// fp32 -> bf16 round to nearest even, NaN -> 0x7fc0 (epilogue.h's f32_to_bf16).
inline __m128i to_bf16x8(__m256 f) {
  const __m256i u = _mm256_castps_si256(f);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q)));
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

// y * inv rounded half to even, clamped to [-127, 127] in float; NaN -> 0 (epilogue.h's requant).
inline __m256i quant8(__m256 y, __m256 inv) {
  __m256 r = _mm256_mul_ps(y, inv);
  r = _mm256_blendv_ps(r, _mm256_setzero_ps(), _mm256_cmp_ps(r, r, _CMP_UNORD_Q));
  r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
  return _mm256_cvtps_epi32(r);  // MXCSR default: nearest even
}

// Row m, columns c: the tile's int32 sums -> the output kind.
inline void epilogue8(const Int8GemmParams& p, const Cols8& c, int64_t m, __m256i acc) {
  if (c.valid == 0) return;
  const int64_t idx = m * p.ldo + c.col;
  acc = _mm256_sub_epi32(acc, c.comp);
  if (p.out_kind == OutKind::Int32) {
    int32_t* o = static_cast<int32_t*>(p.out) + idx;
    if (c.valid == 8)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), acc);
    else
      _mm256_maskstore_epi32(o, c.mask, acc);
    return;
  }
  if (p.act == Act::Gelu) {  // std::erf per element, as the scalar epilogue
    alignas(32) int32_t t[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t), acc);
    for (int j = 0; j < c.valid; ++j)
      store_out(p.out, idx + j, p.out_kind, dequant(t[j], row_scale(p, m), p.b_scale[c.col + j], p.bias, c.col + j, p.act),
                p.out_inv_scale);
    return;
  }
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(row_scale(p, m))), c.b_scale);
  if (p.bias) y = _mm256_add_ps(y, c.bias);
  y = act8(y, p.act);
  if (p.out_kind == OutKind::Int8) {
    store_bytes(static_cast<int8_t*>(p.out) + idx, narrow8(quant8(y, _mm256_set1_ps(p.out_inv_scale))), c.valid);
  } else if (p.out_kind == OutKind::BFloat16) {
    store_bytes(static_cast<uint16_t*>(p.out) + idx, to_bf16x8(y), 2 * c.valid);
  } else if (c.valid == 8) {
    _mm256_storeu_ps(static_cast<float*>(p.out) + idx, y);
  } else {
    _mm256_maskstore_ps(static_cast<float*>(p.out) + idx, c.mask, y);
  }
}

// mr rows x nb blocks. Row i's K bytes are read in `ntaps` runs of cq 4-byte groups (Dot::kGroupBytes each
// as stored): run t at a0 + taps[t].x + i * lda against the weight from its block's taps[t].b (a GEMM: one
// run of K_pad / 4 groups at its row; a direct convolution: one run per tap of its box, pixels SW * C bytes
// apart). B advances 64 bytes per group within a run.
// S8: a0 holds s8 (an unpadded int8 input read in place); otherwise u8 = s8 + 128.
template <class Dot, int mr, int nb, bool S8>
void ymm_tile(const Int8GemmParams& p, const ConvTap* taps, int64_t ntaps, int64_t cq, const uint8_t* a0,
              int64_t lda, int64_t out_row, int64_t n) {
  __m256i acc[mr][2 * nb];
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < 2 * nb; ++j) acc[i][j] = _mm256_setzero_si256();
  const int64_t block_stride = p.K_pad * kPackNB;
  const int8_t* const b0 = p.b + (n / kPackNB) * block_stride;
  for (int64_t t = 0; t < ntaps; ++t) {
    const uint8_t* a = a0 + taps[t].x;
    const int8_t* b = b0 + taps[t].b;
    for (int64_t q = 0; q < cq; ++q, a += Dot::kGroupBytes, b += 64) {
      __m256i bv[2 * nb];
#pragma GCC unroll 8
      for (int j = 0; j < 2 * nb; ++j)
        bv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + (j / 2) * block_stride + 32 * (j % 2)));
#pragma GCC unroll 6
      for (int i = 0; i < mr; ++i) {
        const typename Dot::Row r = Dot::template load<S8>(a + i * lda);
#pragma GCC unroll 8
        for (int j = 0; j < 2 * nb; ++j) acc[i][j] = Dot::step(acc[i][j], r, bv[j]);
      }
    }
  }
  Cols8 c[2 * nb];
#pragma GCC unroll 8
  for (int j = 0; j < 2 * nb; ++j) c[j] = cols8(p, n + 8 * j, Dot::kShifted);
  if (p.folded && p.out_kind == OutKind::Int8 && p.act != Act::Gelu) {
    // The folded int8 epilogue (EPILOGUE.md, "Convolutions"): finite scales, so y is never NaN and the
    // int8 rule is folded_int8_act8, min(y, hi), convert, saturating packs, max -127; 16 columns per store.
    // act8 has no gelu (epilogue8 computes it per element), so gelu takes the general path.
    const __m256 out_inv = _mm256_set1_ps(p.out_inv_scale), hi = _mm256_set1_ps(folded_int8_hi(p.act, p.out_inv_scale));
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
#pragma GCC unroll 6
    for (int i = 0; i < mr; ++i) {
#pragma GCC unroll 4
      for (int k = 0; k < nb; ++k) {
        __m256i q[2];
        for (int h = 0; h < 2; ++h) {
          const Cols8& cc = c[2 * k + h];
          __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(acc[i][2 * k + h], cc.comp)), cc.b_scale);
          if (p.bias) y = _mm256_add_ps(y, cc.bias);
          q[h] = _mm256_cvtps_epi32(_mm256_min_ps(folded_int8_act8(y, p.act, out_inv), hi));
        }
        // The packs work per 128-bit lane: dword l of the result holds 4 columns of q[l % 2], low half
        // in lane 0 and high half in lane 1; the permute puts the 16 bytes in column order.
        const __m256i w = _mm256_packs_epi32(q[0], q[1]);
        __m256i b8 = _mm256_max_epi8(_mm256_packs_epi16(w, w), _mm256_set1_epi8(-127));
        b8 = _mm256_permutevar8x32_epi32(b8, order);
        const int valid = c[2 * k].valid + c[2 * k + 1].valid;
        if (valid > 0)
          store_bytes(static_cast<int8_t*>(p.out) + (out_row + i) * p.ldo + n + 16 * k, _mm256_castsi256_si128(b8), valid);
      }
    }
    return;
  }
#pragma GCC unroll 8
  for (int j = 0; j < 2 * nb; ++j) {
#pragma GCC unroll 6
    for (int i = 0; i < mr; ++i) epilogue8(p, c[j], out_row + i, acc[i][j]);
  }
}

using YmmTileFn = void (*)(const Int8GemmParams&, const ConvTap*, int64_t, int64_t, const uint8_t*, int64_t, int64_t,
                           int64_t);

// tile<Dot, mr, nb, S8> for mr = 1 .. sizeof(I), and for nb = 1 .. sizeof(J) at a fixed mr.
template <class Dot, int nb, bool S8, size_t... I>
constexpr std::array<YmmTileFn, sizeof...(I)> ymm_rows_table(std::index_sequence<I...>) {
  return {{&ymm_tile<Dot, static_cast<int>(I) + 1, nb, S8>...}};
}
template <class Dot, int mr, size_t... J>
constexpr std::array<YmmTileFn, sizeof...(J)> ymm_wide_table(std::index_sequence<J...>) {
  return {{&ymm_tile<Dot, mr, static_cast<int>(J) + 1, false>...}};
}

constexpr ConvTap kWholeK[1] = {{0, 0}};  // a GEMM row: one run over all of K

// The GEMM (Int8GemmFn) on the tile: blocks of kMR rows x 16 columns; a range of 1 or 2 rows takes
// the wide tiles, so it still runs several independent accumulator chains.
template <class Dot>
void ymm_gemm(const Int8GemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  static constexpr auto table = ymm_rows_table<Dot, 1, false>(std::make_index_sequence<Dot::kMR>{});
  static constexpr auto wide1 = ymm_wide_table<Dot, 1>(std::make_index_sequence<Dot::kWide[1]>{});
  static constexpr auto wide2 = ymm_wide_table<Dot, 2>(std::make_index_sequence<Dot::kWide[2]>{});
  n1 = std::min(n1, round_up(p.N, kPackNB));
  const int64_t cq = p.K_pad / kPackKB, rows = m1 - m0;
  if (rows <= 0) return;
  if (rows <= 2) {
    const int wide = Dot::kWide[rows];
    for (int64_t n = n0; n < n1; n += 16 * wide) {
      const int64_t nb = std::min<int64_t>(wide, (n1 - n) / 16);
      const YmmTileFn fn = rows == 1 ? wide1[nb - 1] : wide2[nb - 1];
      fn(p, kWholeK, 1, cq, p.a + m0 * p.lda, p.lda, m0, n);
    }
    return;
  }
  for (int64_t n = n0; n < n1; n += 16)
    for (int64_t m = m0; m < m1; m += Dot::kMR) {
      const int64_t mr = std::min<int64_t>(Dot::kMR, m1 - m);
      table[mr - 1](p, kWholeK, 1, cq, p.a + m * p.lda, p.lda, m, n);
    }
}

// The direct convolution (ConvDirectFn) on the tile: kMR pixels x 16 columns.
template <class Dot>
void ymm_conv_direct(const ConvDirectParams& cp, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
  static constexpr auto shifted = ymm_rows_table<Dot, 1, false>(std::make_index_sequence<Dot::kMR>{});
  static constexpr auto in_place = ymm_rows_table<Dot, 1, true>(std::make_index_sequence<Dot::kMR>{});
  const auto& table = cp.signed_x ? in_place : shifted;
  const int64_t cq = (cp.row_seg ? cp.row_seg : cp.C) / kPackKB, lda = cp.SW * cp.C;  // a row segment: a kernel row
  conv_direct_rows<Dot::kMR, 1>(
      cp, r0, r1, n0, n1,
      [&](int64_t w, int64_t, const ConvTap* taps, int64_t ntaps, const uint8_t* a0, int64_t out_row, int64_t n) {
        table[w - 1](cp.gemm, taps, ntaps, cq, a0, lda, out_row, n);
      });
}

// The narrow-group convolution (GroupConvFn, GroupConvParams with lanes = 8) of both sets: gconv_avx512.cc's
// scheme and ways on 256-bit vectors. Each int32 lane is one output channel; the 32 input bytes at its
// block's first group are loaded and vpermd moves each lane's group dword under it (a broadcast when the
// block's 8 channels share one group, shared by a neighbouring block of the same group). The slab holds the
// step's own encoding (KernelSet::gconv_signed_x): s8 for AVX2 (Dot::row<true>: |a| and its sign, no
// flip), u8 = s8 + 128 for AVX-VNNI (the epilogue subtracts 128 * colsum). R output pixels share each
// weight vector; the generic epilogue8 stores them. Tiles: pixels [ow, ow + R) of output row r for the
// blocks from b (c: their epilogue vectors; idx: block b's lane permutation, unused by broadcasts; k_off:
// gconv_k_offsets, unused by the 3-wide way).
using YmmGconvTileFn = void (*)(const GroupConvParams&, const Cols8* c, __m256i idx, int64_t b, int64_t r,
                                int64_t ow, const int64_t* k_off);

inline __m256i ymm_permuted(const uint8_t* px, __m256i idx) {
  return _mm256_permutevar8x32_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(px)), idx);
}

template <class Dot, bool S8X, int R>
void ymm_gconv_tile(const GroupConvParams& p, const Cols8* c, __m256i idx, int64_t b, int64_t r, int64_t ow,
                    const int64_t* k_off) {
  __m256i acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm256_setzero_si256();
  const int64_t pix = p.SW * p.C, n = p.KH * p.KW * (p.cin_g / 4);  // k steps
  const uint8_t* x0 = p.x + (r * p.SH * p.Wp + ow * p.SW) * p.C + p.block_off[b];
  const int8_t* w = p.w + b * n * 32;
  for (int64_t q = 0; q < n; ++q, w += 32) {
    const uint8_t* xt = x0 + k_off[q];
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) acc[i] = Dot::step(acc[i], Dot::template row<S8X>(ymm_permuted(xt + i * pix, idx)), wv);
  }
  for (int i = 0; i < R; ++i) epilogue8(p.gemm, c[0], r * p.OW + ow + i, acc[i]);
}

// NB (1 or 2) neighbouring blocks of one group: each broadcast row (AVX2: with its |a|) feeds the NB blocks'
// steps.
template <class Dot, bool S8X, int NB, int R>
void ymm_gconv_tile_bcast(const GroupConvParams& p, const Cols8* c, __m256i, int64_t b, int64_t r, int64_t ow,
                          const int64_t* k_off) {
  __m256i acc[NB][R];
#pragma GCC unroll 2
  for (int j = 0; j < NB; ++j)
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) acc[j][i] = _mm256_setzero_si256();
  const int64_t pix = p.SW * p.C, n = p.KH * p.KW * (p.cin_g / 4), next = n * 32;  // bytes a block
  const uint8_t* x0 = p.x + (r * p.SH * p.Wp + ow * p.SW) * p.C + p.block_off[b];
  const int8_t* w = p.w + b * next;
  for (int64_t q = 0; q < n; ++q, w += 32) {
    const uint8_t* xt = x0 + k_off[q];
    __m256i wv[NB];
#pragma GCC unroll 2
    for (int j = 0; j < NB; ++j) wv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * next));
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const typename Dot::Row row = Dot::template row<S8X>(bcast_u8x4(xt + i * pix));
#pragma GCC unroll 2
      for (int j = 0; j < NB; ++j) acc[j][i] = Dot::step(acc[j][i], row, wv[j]);
    }
  }
#pragma GCC unroll 2
  for (int j = 0; j < NB; ++j)
    for (int i = 0; i < R; ++i) epilogue8(p.gemm, c[j], r * p.OW + ow + i, acc[j][i]);
}

// Stride 1, dilation 1, a 3-wide kernel: the three taps of a kernel row read neighbouring pixels, so each
// of the R + 2 pixels is loaded and permuted once for all three (as gconv_avx512.cc's gconv_tile_w3).
template <class Dot, bool S8X, int R>
void ymm_gconv_tile_w3(const GroupConvParams& p, const Cols8* c, __m256i idx, int64_t b, int64_t r, int64_t ow,
                       const int64_t*) {
  __m256i acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm256_setzero_si256();
  const int64_t steps = p.cin_g / 4;
  const uint8_t* x0 = p.x + (r * p.SH * p.Wp + ow) * p.C + p.block_off[b];
  const int8_t* w0 = p.w + b * p.KH * 3 * steps * 32;
  for (int64_t kh = 0; kh < p.KH; ++kh) {
    const uint8_t* xr = x0 + kh * p.DH * p.Wp * p.C;
    const int8_t* wr = w0 + kh * 3 * steps * 32;
    for (int64_t s = 0; s < steps; ++s, xr += 4, wr += 32) {
      __m256i v[R + 2];
#pragma GCC unroll 8
      for (int i = 0; i < R + 2; ++i) v[i] = ymm_permuted(xr + i * p.C, idx);
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw) {
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + kw * steps * 32));
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) acc[i] = Dot::step(acc[i], Dot::template row<S8X>(v[i + kw]), wv);
      }
    }
  }
  for (int i = 0; i < R; ++i) epilogue8(p.gemm, c[0], r * p.OW + ow + i, acc[i]);
}

// The ways, as on AVX-512: 0 permutes; 1 broadcasts, one block; 2 permutes shared by a 3-wide kernel row;
// 3 broadcasts shared by a block pair. Pixels a tile: 8, or 4 where more vectors stay live (the 3-wide
// row's R + 2 inputs, the pair's 2 R accumulators).
constexpr int ymm_gconv_pixels(int way) { return way == 0 || way == 1 ? 8 : 4; }
template <class Dot, bool S8X, int WAY, size_t... I>
constexpr std::array<YmmGconvTileFn, sizeof...(I) + 1> ymm_gconv_tiles(std::index_sequence<I...>) {
  if constexpr (WAY == 0) return {{nullptr, &ymm_gconv_tile<Dot, S8X, static_cast<int>(I) + 1>...}};
  if constexpr (WAY == 1) return {{nullptr, &ymm_gconv_tile_bcast<Dot, S8X, 1, static_cast<int>(I) + 1>...}};
  if constexpr (WAY == 2) return {{nullptr, &ymm_gconv_tile_w3<Dot, S8X, static_cast<int>(I) + 1>...}};
  return {{nullptr, &ymm_gconv_tile_bcast<Dot, S8X, 2, static_cast<int>(I) + 1>...}};
}

// WAY 0, 1 or 2; with broadcasts (1), neighbouring blocks of one group go in pairs (way 3).
template <class Dot, bool S8X, int WAY>
void ymm_gconv_rows(const GroupConvParams& p, int64_t r0, int64_t r1) {
  constexpr int kMax = ymm_gconv_pixels(WAY), kPairMax = ymm_gconv_pixels(3);
  static constexpr auto kTiles = ymm_gconv_tiles<Dot, S8X, WAY>(std::make_index_sequence<kMax>{});
  static constexpr auto kPairs = ymm_gconv_tiles<Dot, S8X, 3>(std::make_index_sequence<kPairMax>{});
  const std::vector<int64_t> k_off = gconv_k_offsets(p);
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t b = 0, nb; b < p.blocks; b += nb) {
      nb = WAY == 1 && b + 1 < p.blocks && p.block_off[b + 1] == p.block_off[b] ? 2 : 1;  // the same group
      Cols8 c[2];
      for (int64_t j = 0; j < nb; ++j) c[j] = cols8(p.gemm, (b + j) * 8, Dot::kShifted);
      const __m256i idx = WAY == 1 ? _mm256_setzero_si256()
                                   : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.lane_idx + b * 8));
      const int step = nb == 2 ? kPairMax : kMax;
      for (int64_t ow = 0; ow < p.OW; ow += step) {
        const int n = static_cast<int>(std::min<int64_t>(step, p.OW - ow));
        (nb == 2 ? kPairs[n] : kTiles[n])(p, c, idx, b, r, ow, k_off.data());
      }
    }
  }
}

// S8X: the slab holds s8 (KernelSet::gconv_signed_x); by default the encoding Dot's own rows take.
template <class Dot, bool S8X = !Dot::kShifted>
void ymm_gconv(const GroupConvParams& p, int64_t r0, int64_t r1) {
  if (p.one_group_blocks)
    ymm_gconv_rows<Dot, S8X, 1>(p, r0, r1);
  else if (p.KW == 3 && p.SW == 1 && p.DW == 1)
    ymm_gconv_rows<Dot, S8X, 2>(p, r0, r1);
  else
    ymm_gconv_rows<Dot, S8X, 0>(p, r0, r1);
}

// The depthwise convolution (DwConvFn) of both sets where the row quads below do not serve (channels not a
// multiple of 32, width dilation, kernels wider than 4, GELU; on AVX2 also a weight of -128); 16 channels
// per step. The taps go in pairs: the two taps'
// inputs, widened to int16, are interleaved (vpunpck{l,h}wd) and multiplied with the pair's weights,
// interleaved the same way once per call, two products summed per int32 lane (exact for any int8
// values) by PairDot::step(acc, x_pairs, w_pairs): vpmaddwd + vpaddd on AVX2, vpdpwssd on AVX-VNNI. A tap
// outside the input (and the odd tap's partner) reads a row of zeros, so borders need no branch.
// Channels past the last whole 16 go through the scalar rule. Measured against the AVX2 kernel before it
// (8 channels, a tap at a time, per-byte copies at the channel edge, scalar epilogue): dw 3x3 on
// 8 x 256 x 28 x 28, int8 in/out, AMD Zen 5, 2 threads: 12.2 -> 0.51 ms (oneDNN AVX2: 0.60 ms).
template <class PairDot>
void ymm_dwconv(const DwConvParams& p, int64_t p0, int64_t p1) {
  const int64_t taps = p.KH * p.KW, pairs = (taps + 1) / 2, cblocks = p.C / 16, cb = cblocks * 16;
  // Interleaved weights: block (pair, cblock) is 32 int16 = two ymm (the vpunpcklwd and vpunpckhwd halves).
  std::vector<int16_t> wv(static_cast<size_t>(pairs * cblocks * 32));
  for (int64_t pr = 0; pr < pairs; ++pr)
    for (int64_t k = 0; k < cblocks; ++k) {
      const __m128i z = _mm_setzero_si128();
      const __m128i w0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p.w + 2 * pr * p.C + 16 * k));
      const __m128i w1 = 2 * pr + 1 < taps ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p.w + (2 * pr + 1) * p.C + 16 * k)) : z;
      const __m256i a = _mm256_cvtepi8_epi16(w0), b = _mm256_cvtepi8_epi16(w1);
      int16_t* dst = wv.data() + (pr * cblocks + k) * 32;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_unpacklo_epi16(a, b));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 16), _mm256_unpackhi_epi16(a, b));
    }
  const std::vector<int8_t> zeros(static_cast<size_t>(p.C + 16), 0);
  std::vector<const int8_t*> tap(static_cast<size_t>(2 * pairs), zeros.data());
  const bool vec_act = p.act != Act::Gelu;
  const __m256 a_scale = _mm256_set1_ps(p.a_scale), out_inv = _mm256_set1_ps(p.out_inv_scale);
  for (int64_t pix = p0; pix < p1; ++pix) {
    const int64_t n = pix / (p.OH * p.OW), oh = (pix / p.OW) % p.OH, ow = pix % p.OW;
    for (int64_t kh = 0, t = 0; kh < p.KH; ++kh)
      for (int64_t kw = 0; kw < p.KW; ++kw, ++t) {
        const int64_t ih = oh * p.SH - p.PH + kh * p.DH, iw = ow * p.SW - p.PW + kw * p.DW;
        tap[t] = (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) ? zeros.data() : p.x + ((n * p.H + ih) * p.W + iw) * p.C;
      }
    for (int64_t k = 0; k < cblocks; ++k) {
      __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
      const int16_t* w = wv.data() + k * 32;
      for (int64_t pr = 0; pr < pairs; ++pr, w += cblocks * 32) {
        const __m256i x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tap[2 * pr] + 16 * k)));
        const __m256i x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tap[2 * pr + 1] + 16 * k)));
        lo = PairDot::step(lo, _mm256_unpacklo_epi16(x0, x1), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
        hi = PairDot::step(hi, _mm256_unpackhi_epi16(x0, x1), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 16)));
      }
      // The unpacks work per 128-bit lane: lo holds channels 0-3 and 8-11, hi 4-7 and 12-15.
      const __m256i acc[2] = {_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31)};
      for (int h = 0; h < 2; ++h) {
        const int64_t c = 16 * k + 8 * h, idx = pix * p.C + c;
        if (!vec_act) {
          alignas(32) int32_t t[8];
          _mm256_store_si256(reinterpret_cast<__m256i*>(t), acc[h]);
          for (int j = 0; j < 8; ++j)
            store_out(p.out, idx + j, p.out_kind, dequant(t[j], p.a_scale, p.w_scale[c + j], p.bias, c + j, p.act),
                      p.out_inv_scale);
          continue;
        }
        __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[h]), a_scale), _mm256_loadu_ps(p.w_scale + c));
        if (p.bias) y = _mm256_add_ps(y, _mm256_loadu_ps(p.bias + c));
        y = act8(y, p.act);
        if (p.out_kind == OutKind::Int8)
          _mm_storel_epi64(reinterpret_cast<__m128i*>(static_cast<int8_t*>(p.out) + idx), narrow8(quant8(y, out_inv)));
        else
          _mm256_storeu_ps(static_cast<float*>(p.out) + idx, y);
      }
    }
    for (int64_t c = cb; c < p.C; ++c) {  // the channel tail
      int32_t acc = 0;
      for (int64_t t = 0; t < taps; ++t) acc += static_cast<int32_t>(tap[t][c]) * p.w[t * p.C + c];
      store_out(p.out, pix * p.C + c, p.out_kind, dequant(acc, p.a_scale, p.w_scale[c], p.bias, c, p.act), p.out_inv_scale);
    }
  }
}

// The depthwise convolution with row quads: avx512_vnni.cc's scheme on 256-bit vectors, 32 channels a block,
// for AVX-VNNI (vpdpbusd) and AVX2 (vpmaddubsw + vpmaddwd), the 4-byte dot step a policy QuadStep:
//   static constexpr bool kShiftU8;  // quads hold u8 = s8 + 128 (then 128 * sum(w) is subtracted), else s8
//   using X; static X prep(__m256i quad);             // once per quad vector loaded
//   static __m256i step(__m256i acc, X x, __m256i w);  // acc += 4-byte dot products per int32 lane, exact
// Each int32 lane takes one channel and 4 taps of one input row: quads of 4 neighbouring input pixels,
// interleaved bytewise once per input row and call range, multiplied with the weights of taps
// (kh, 0 .. 3) (weight 0 past KW). At stride 1 with KW <= 3 a quad
// holds the taps of two output pixels (the second with the weights one slot later), so quads are kept
// for even output columns only. The lanes hold channels in interleave order (vector i, 128-bit lane l,
// dword k: channel 32 cb + 16 l + 4 i + k); the epilogue works in that order, with its per-channel
// vectors arranged so once per call. int8 packs of the four vectors come out in channel order; fp32 is
// put back with 4 lane permutes. Serves DW = 1, KW <= 4 (and 4 < KW <= 16 at stride 1: the wide row quads of
// dw_row_quads.h), C % 32 == 0 and no GELU (ymm_dw_quads); the rest takes ymm_dwconv. Measured against
// ymm_dwconv (dw 3x3 at 28 x 28 x 256, batch 8, AMD Zen 5 capped to each tier, 1 thread, p10 of 60-100 calls,
// 3 alternated processes): avx_vnni int8 in/out 0.91-0.95 -> 0.36-0.37 ms,
// fp32 out 0.72-0.76 -> 0.35-0.36 ms; avx2 int8 in/out 0.92-0.99 -> 0.43-0.46 ms, fp32 out 0.70-0.75 ->
// 0.42-0.48 ms.
// The quads' bytewise interleave of 4 pixel rows (interleave4_ymm), in two steps as avx512_vnni.cc's
// interleave_pair / interleave_pairs: dw_build_quads reuses a pair.
struct PairYmm {
  __m256i lo, hi;
};
inline PairYmm interleave_pair_ymm(__m256i a, __m256i b) {
  return {_mm256_unpacklo_epi8(a, b), _mm256_unpackhi_epi8(a, b)};
}
inline void interleave_pairs_ymm(const PairYmm& ab, const PairYmm& cd, __m256i* r) {
  r[0] = _mm256_unpacklo_epi16(ab.lo, cd.lo);
  r[1] = _mm256_unpackhi_epi16(ab.lo, cd.lo);
  r[2] = _mm256_unpacklo_epi16(ab.hi, cd.hi);
  r[3] = _mm256_unpackhi_epi16(ab.hi, cd.hi);
}
inline void interleave4_ymm(__m256i a, __m256i b, __m256i c, __m256i d, __m256i* r) {
  interleave_pairs_ymm(interleave_pair_ymm(a, b), interleave_pair_ymm(c, d), r);
}

inline bool ymm_dw_quads(const DwConvParams& p) {
  return dw_quads_fit(p, 32) && p.C % 32 == 0 && p.act != Act::Gelu;
}

struct YmmDwBuffers {
  std::vector<int32_t> w;      // [cblock][group][4][8] interleaved weights (groups: KH rq, or 2 KH paired)
  std::vector<int32_t> epi;    // [cblock][3][4][8] comp, scale, bias in lane order
  std::vector<int32_t> quads;  // [slot][cblock][quad][4][8]
  std::vector<int64_t> tag;    // which input row (n * H + ih) each slot holds, -1 none
};

// WIDE: the wide row quads (dw_row_quads.h: rq quads a kernel row, stride 1, unpaired), an instantiation of
// its own and out of line, so that the 3 x 3 layers keep their code (as on AVX-512, where both variants
// inlined into one function cost every 3 x 3 layer 6%). FIXED_KH: the kernel height as a constant (3), else
// 0 (p.KH); the int8 epilogue's rule is a template argument of the pixel loop, as in
// avx512_vnni.cc's dwconv_row_quads. Measured against the kernel before both and the local copies of p's
// fields (dw 3x3, 256 channels at 28 x 28, batch 8, int8 in/out, on an Intel Xeon with AMX capped to each
// tier, 2 threads, alternated in one process): avx2 1.16-1.27x, avx_vnni 1.04-1.12x, fp32 in/out 1.10-1.17x;
// AVX-512's 32-channel layers (dw_ymm_avx512.cc) 1.28-1.31x; the wide row quads 0.97-1.03x; stride 2 0.97-1.03x,
// then with the constant height there too avx2 1.12-1.16x, avx_vnni 0.98x, AVX-512's 32 channels 0.89-1.21x.
// The row loop (dw_rows) and the rule dispatch are dw_row_quads.h's, shared with the AVX-512 kernel; each
// block's quad rows are locals (qb, qs). Against the loop of its own (3 x 3 stride 1, alternated processes):
// avx_vnni 1.15x, avx2 0.95-0.96x.
template <class QuadStep, bool INT8_OUT, bool WIDE, int FIXED_KH>
__attribute__((noinline)) void ymm_dwconv_row_quads(const DwConvParams& p, int64_t p0, int64_t p1) {
  const bool paired = !WIDE && dw_paired(p);
  const int64_t KH = FIXED_KH ? FIXED_KH : p.KH;
  const int64_t rq = WIDE ? dw_row_quad_count(p) : 1;
  const int64_t cblocks = p.C / 32, groups = paired ? 2 * KH : KH * rq, taps = KH * p.KW;
  const int64_t step = paired ? 2 : 1, nq = (p.OW + step - 1) / step + 4 * (rq - 1), slot_ints = cblocks * nq * 32;
  thread_local YmmDwBuffers buf;
  buf.w.resize(static_cast<size_t>(cblocks * groups * 32));
  buf.epi.assign(static_cast<size_t>(cblocks * 96), 0);
  buf.quads.resize(static_cast<size_t>(KH * slot_ints));
  buf.tag.assign(static_cast<size_t>(KH), -1);
  for (int64_t cb = 0; cb < cblocks; ++cb) {
    const int64_t c0 = 32 * cb;
    for (int64_t g = 0; g < groups; ++g) {
      auto wtap = [&](int64_t i) {  // slot i of group g: tap (kh, kw), paired weights B one slot later
        const int64_t kh = paired ? g % KH : g / rq;
        const int64_t kw = paired ? (g < KH ? i : i - 1) : 4 * (g % rq) + i;
        return kw >= 0 && kw < p.KW ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.w + (kh * p.KW + kw) * p.C + c0))
                                    : _mm256_setzero_si256();
      };
      __m256i r[4];
      interleave4_ymm(wtap(0), wtap(1), wtap(2), wtap(3), r);
      for (int i = 0; i < 4; ++i)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(&buf.w[((cb * groups + g) * 4 + i) * 8]), r[i]);
    }
    int32_t* e = &buf.epi[cb * 96];
    for (int i = 0; i < 4; ++i)
      for (int l = 0; l < 2; ++l)
        for (int k = 0; k < 4; ++k) {
          const int64_t c = c0 + 16 * l + 4 * i + k, at = i * 8 + l * 4 + k;
          int32_t sum = 0;
          for (int64_t t = 0; t < taps; ++t) sum += p.w[t * p.C + c];
          e[at] = QuadStep::kShiftU8 ? 128 * sum : 0;
          std::memcpy(&e[32 + at], &p.w_scale[c], 4);
          if (p.bias) std::memcpy(&e[64 + at], &p.bias[c], 4);
        }
  }
  int32_t* const quads = buf.quads.data();
  int64_t* const tag = buf.tag.data();
  const int32_t* const wq = buf.w.data();
  const int32_t* const epi = buf.epi.data();
  const __m256i shift = _mm256_set1_epi8(QuadStep::kShiftU8 ? static_cast<char>(0x80) : 0);
  const int8_t* const x = p.x;
  int32_t pad[32];  // the quad of 4 padding pixels (s8 0, as u8: 0x80 bytes)
  for (int i = 0; i < 32; ++i) pad[i] = QuadStep::kShiftU8 ? static_cast<int32_t>(0x80808080u) : 0;
  auto build = [&](int32_t* q, int64_t n, int64_t ih) {
    const int8_t* const row = x + (n * p.H + ih) * p.W * p.C;
    const int64_t W = p.W, C = p.C, count = nq;
    for (int64_t cb = 0; cb < cblocks; ++cb) {
      const int8_t* const rc = row + 32 * cb;
      int32_t* const d = q + cb * nq * 32;
      auto px = [rc, W, C, shift](int64_t iw) {  // outside the row: s8 0
        return iw >= 0 && iw < W ? _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rc + iw * C)), shift)
                                 : shift;
      };
      dw_build_quads(count, step * p.SW, -p.PW, px, interleave_pair_ymm, [d](int64_t j, const PairYmm& a, const PairYmm& b) {
        __m256i r[4];
        interleave_pairs_ymm(a, b, r);
        for (int i = 0; i < 4; ++i) _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + j * 32 + 8 * i), r[i]);
      });
    }
  };
  // p's fields as locals: an int8 store may alias p as far as the compiler knows, so a field read through p
  // is loaded again after every store.
  char* const out = static_cast<char*>(p.out);
  const int64_t C = p.C;
  const Act act = p.act;
  const bool folded = p.folded, bias = p.bias != nullptr;
  // int8 with the folded scales (finite): folded_int8_act8, min(y, hi), the convert, the saturating packs;
  // the plain rules (dw_row_quads.h) without the activation's branch.
  const bool fast_int8 = INT8_OUT && folded && act != Act::Gelu;
  const __m256 a_scale = _mm256_set1_ps(p.a_scale), out_inv = _mm256_set1_ps(p.out_inv_scale);
  const __m256 hi = _mm256_set1_ps(folded_int8_hi(act, p.out_inv_scale));
  const __m256i floor = _mm256_set1_epi8(relu_on_bytes(act) ? 0 : -127);
  auto finish = [&](auto rule_tag, const __m256i acc[4], int64_t pix, int64_t cb) {
    constexpr int RULE = decltype(rule_tag)::value;
    const int32_t* e = epi + cb * 96;
    __m256 y[4];
    for (int i = 0; i < 4; ++i) {
      y[i] = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[i], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e + 8 * i))));
      if (RULE == kDwGeneral && !folded) y[i] = _mm256_mul_ps(y[i], a_scale);
      y[i] = _mm256_mul_ps(y[i], _mm256_loadu_ps(reinterpret_cast<const float*>(e + 32 + 8 * i)));
      if (bias) y[i] = _mm256_add_ps(y[i], _mm256_loadu_ps(reinterpret_cast<const float*>(e + 64 + 8 * i)));
      if (RULE == kDwGeneral && !fast_int8) y[i] = act8(y[i], act);
    }
    if (!INT8_OUT) {  // channels 8 l .. 8 l + 7: the low (l < 2) or high lanes of y[2 (l % 2)] and its successor
      float* o = reinterpret_cast<float*>(out) + pix * C + 32 * cb;
      _mm256_storeu_ps(o, _mm256_permute2f128_ps(y[0], y[1], 0x20));
      _mm256_storeu_ps(o + 8, _mm256_permute2f128_ps(y[2], y[3], 0x20));
      _mm256_storeu_ps(o + 16, _mm256_permute2f128_ps(y[0], y[1], 0x31));
      _mm256_storeu_ps(o + 24, _mm256_permute2f128_ps(y[2], y[3], 0x31));
      return;
    }
    __m256i q[4];
    for (int i = 0; i < 4; ++i) {
      if (RULE == kDwPlain6) y[i] = _mm256_mul_ps(y[i], out_inv);
      q[i] = RULE != kDwGeneral ? _mm256_cvtps_epi32(_mm256_min_ps(y[i], hi))
             : fast_int8        ? _mm256_cvtps_epi32(_mm256_min_ps(folded_int8_act8(y[i], act, out_inv), hi))
                                : quant8(y[i], out_inv);
    }
    const __m256i b = _mm256_max_epi8(_mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3])),
                                      RULE != kDwGeneral ? floor : _mm256_set1_epi8(-127));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + pix * C + 32 * cb), b);
  };
  dw_run_rule<INT8_OUT && !WIDE>(p, [&](auto rule_tag) {
    dw_rows(p, p0, p1, quads, slot_ints, pad, 32, tag, build, [&](int64_t out_row, int64_t ow0, int64_t ow1,
                                                                   const int32_t* const* qrow, const int64_t* qstride) {
      for (int64_t cb = 0; cb < cblocks; ++cb) {
        const int32_t* wa = wq + cb * groups * 32;  // weights A (and B after them when paired)
        const int32_t* wb = wa + KH * 32;
        // This block's quads of each kernel row: quad j at qb[kh] + j * qs[kh] (locals: no store aliases them)
        const int32_t* qb[16];
        int64_t qs[16];
        for (int64_t kh = 0; kh < KH; ++kh) qb[kh] = qrow[kh] + cb * nq * qstride[kh], qs[kh] = qstride[kh];
        // One pixel: quad j (and j + 4, j + 8, .. for wide row quads), with weights B when `second` (an odd
        // column of paired quads).
        auto one = [&](int64_t ow, int64_t j, bool second) {
          const int32_t* w = second ? wb : wa;
          __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
          for (int64_t kh = 0; kh < KH; ++kh) {
            for (int64_t r = 0; r < rq; ++r) {
              const int32_t* q = qb[kh] + (j + 4 * r) * qs[kh];
              const int32_t* wr = w + (kh * rq + r) * 32;
              for (int i = 0; i < 4; ++i)
                acc[i] = QuadStep::step(acc[i], QuadStep::prep(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 8 * i))),
                                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + 8 * i)));
            }
          }
          finish(rule_tag, acc, out_row + ow, cb);
        };
        auto pair = [&](int64_t ow) {  // pixels ow and ow + 1 from quad ow / 2
          __m256i a0[4], a1[4];
          for (int i = 0; i < 4; ++i) a0[i] = a1[i] = _mm256_setzero_si256();
          for (int64_t kh = 0; kh < KH; ++kh) {
            const int32_t* q = qb[kh] + (ow / 2) * qs[kh];
            for (int i = 0; i < 4; ++i) {
              const typename QuadStep::X v = QuadStep::prep(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 8 * i)));
              a0[i] = QuadStep::step(a0[i], v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wa + kh * 32 + 8 * i)));
              a1[i] = QuadStep::step(a1[i], v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + kh * 32 + 8 * i)));
            }
          }
          finish(rule_tag, a0, out_row + ow, cb);
          finish(rule_tag, a1, out_row + ow + 1, cb);
        };
        dw_row_columns(ow0, ow1, paired, one, pair);
      }
    });
  });
}

// The row-quad depthwise kernel of a tier's quad step (where ymm_dw_quads serves): the instantiation for the
// output kind, the kernel width and (3 rows) the height.
template <class QuadStep>
void ymm_dwconv_quads(const DwConvParams& p, int64_t p0, int64_t p1) {
  const bool wide = dw_row_quad_count(p) > 1, int8_out = p.out_kind == OutKind::Int8;
  const bool kh3 = !wide && p.KH == 3;
  if (int8_out && wide) return ymm_dwconv_row_quads<QuadStep, true, true, 0>(p, p0, p1);
  if (int8_out && kh3) return ymm_dwconv_row_quads<QuadStep, true, false, 3>(p, p0, p1);
  if (int8_out) return ymm_dwconv_row_quads<QuadStep, true, false, 0>(p, p0, p1);
  if (wide) return ymm_dwconv_row_quads<QuadStep, false, true, 0>(p, p0, p1);
  if (kh3) return ymm_dwconv_row_quads<QuadStep, false, false, 3>(p, p0, p1);
  ymm_dwconv_row_quads<QuadStep, false, false, 0>(p, p0, p1);
}

// The GEMM's inner step on registers only (PeakProbeFn): Dot::kProbeChains chains of Dot::step hide its
// latency. Where the step's products do not read the accumulator (AVX2: vpsignb, vpmaddubsw, vpmaddwd, then
// vpaddd; Dot::kProbeVaryB), each step takes another b (one vpaddb more a step): with one b for all steps GCC
// computed the products once per iteration, and the probe reported several times the real rate (0.41 TOPS
// on a Zen 3, 2 threads). Returns the integer ops done (2 per product, 32 products a step).
template <class Dot>
int64_t ymm_peak_probe(int64_t iters) {
  constexpr int kChains = Dot::kProbeChains;
  __m256i acc[kChains];
#pragma GCC unroll 12
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_setzero_si256();
  __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-5);
  for (int64_t t = 0; t < iters; ++t) {
    const typename Dot::Row r = Dot::template row<true>(a);
    __m256i bt = b;
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) {
      acc[i] = Dot::step(acc[i], r, bt);
      if (Dot::kProbeVaryB) bt = _mm256_add_epi8(bt, a);
    }
    __asm__ volatile("" : "+x"(a), "+x"(b));
  }
  __m256i s = acc[0];
#pragma GCC unroll 12
  for (int i = 1; i < kChains; ++i) s = _mm256_add_epi32(s, acc[i]);
  volatile int sink = _mm256_extract_epi32(s, 0);
  (void)sink;
  return iters * kChains * 32 * 2;
}

}  // namespace
}  // namespace kernels
}  // namespace fastinfer
