// Grouped convolution with narrow groups on AVX-512 VNNI (GroupConvParams in params.h).
//
// Why not the GEMM per group: with 4 or 8 channels a group (ResNeXt, RegNet), a group's GEMM is 4-8
// columns wide and 36-72 deep, so the 16-lane blocks of the GEMM kernels are mostly empty and every
// group gathers its own rows. Here all output channels of a pixel are computed at once, 16 lanes a
// vector, each lane reading its own group's channels: the 64 input bytes at the block's first group
// are loaded and vpermd moves each group's dword under its lanes. With 16-channel groups (or wider)
// a block lies in one group and a broadcast replaces the permute.
#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include <immintrin.h>

#include "params.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")

#include "dpbusd.h"

#include "avx512_common.h"

namespace fastinfer {
namespace kernels {
namespace {

constexpr int kPixels = 8;  // output pixels of one register tile

// The epilogue of R pixels' 16 channels; acc starts at -128 * colsum, so it ends compensated.
// F < 0: epilogue16 (any output, any scales). F = an Act: int8 out with the folded scales (EPILOGUE.md,
// "Convolutions": a_scale 1, finite), epilogue16's arithmetic in fewer steps: no NaN can arise, so the
// int8 rule is a clamp and a convert, and the activation is known at compile time. F = kFoldedF32: fp32
// out with the folded scales (folded_f32).
constexpr int kFoldedF32 = 16;  // not an Act value
template <int R, int F>
inline void gconv_finish(const Int8GemmParams& p, const ColBlock16& cb, int64_t m, __m512i* acc) {
  if (F < 0) {
    for (int i = 0; i < R; ++i) epilogue16(p, cb, m + i, _mm512_add_epi32(acc[i], cb.comp));  // it subtracts comp
    return;
  }
  if (F == kFoldedF32) {
    float* const out = static_cast<float*>(p.out) + m * p.ldo + cb.col;
    const int64_t ldo = p.ldo;
    const Act act = p.act;
    const bool bias = p.bias != nullptr, stream = p.stream_out;
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) store_f32x16(out + i * ldo, cb.mask, folded_f32(cb, acc[i], bias, act), stream);
    return;
  }
  constexpr Act kAct = static_cast<Act>(F < 0 || F == kFoldedF32 ? 0 : F);
  const __m512 out_inv = _mm512_set1_ps(p.out_inv_scale), hi = _mm512_set1_ps(folded_int8_hi(kAct, p.out_inv_scale));
  const __m512 lo = _mm512_set1_ps(-127.0f);
  int8_t* out = static_cast<int8_t*>(p.out) + m * p.ldo + cb.col;
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    __m512 y = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[i]), cb.b_scale), cb.bias);  // bias 0 if none
    y = folded_int8_act(y, kAct, out_inv);
    const __m128i q = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_max_ps(_mm512_min_ps(y, hi), lo)));
    if (cb.mask == 0xffff)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i * p.ldo), q);
    else
      _mm_mask_storeu_epi8(out + i * p.ldo, cb.mask, q);
  }
}

// Every tile computes pixels [ow, ow + R) of output row r for the blocks from b (cb: their epilogue
// vectors; idx: block b's lane permutation, unused by broadcasts; k_off: gconv_k_offsets, unused by the
// 3-wide way) and finishes them with gconv_finish.
using GconvTileFn = void (*)(const GroupConvParams&, const ColBlock16* cb, __m512i idx, int64_t b, int64_t r,
                             int64_t ow, const int64_t* k_off);

// Any geometry, lanes in several groups: one load and permute per product vector.
template <int R, int F>
void gconv_tile(const GroupConvParams& p, const ColBlock16* cb, __m512i idx, int64_t b, int64_t r, int64_t ow,
                const int64_t* k_off) {
  __m512i acc[R];
  const __m512i init = _mm512_sub_epi32(_mm512_setzero_si512(), cb[0].comp);
  for (int i = 0; i < R; ++i) acc[i] = init;
  const int64_t pix = p.SW * p.C, n = p.KH * p.KW * (p.cin_g / 4);  // k steps
  const uint8_t* x0 = p.x + (r * p.SH * p.Wp + ow * p.SW) * p.C + p.block_off[b];
  const int8_t* w = p.w + b * n * 64;
  for (int64_t q = 0; q < n; ++q, w += 64) {
    const uint8_t* xt = x0 + k_off[q];
    const __m512i wv = _mm512_loadu_si512(w);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i)
      acc[i] = dpbusd(acc[i], _mm512_permutexvar_epi32(idx, _mm512_loadu_si512(xt + i * pix)), wv);
  }
  gconv_finish<R, F>(p.gemm, cb[0], r * p.OW + ow, acc);
}

// NB (1 or 2) neighbouring blocks of one group, any geometry: a broadcast of the group's 4 channels per
// pixel and step, shared by the NB blocks' products (two blocks: 32 or 48 output channels a group, one
// broadcast per two vpdpbusd instead of one).
template <int NB, int R, int F>
void gconv_tile_bcast(const GroupConvParams& p, const ColBlock16* cb, __m512i, int64_t b, int64_t r, int64_t ow,
                      const int64_t* k_off) {
  __m512i acc[NB][R];
#pragma GCC unroll 2
  for (int j = 0; j < NB; ++j) {
    const __m512i init = _mm512_sub_epi32(_mm512_setzero_si512(), cb[j].comp);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) acc[j][i] = init;
  }
  const int64_t pix = p.SW * p.C, n = p.KH * p.KW * (p.cin_g / 4), next = n * 64;  // bytes a block
  const uint8_t* x0 = p.x + (r * p.SH * p.Wp + ow * p.SW) * p.C + p.block_off[b];
  const int8_t* w = p.w + b * next;
  for (int64_t q = 0; q < n; ++q, w += 64) {
    const uint8_t* xt = x0 + k_off[q];
    __m512i wv[NB];
#pragma GCC unroll 2
    for (int j = 0; j < NB; ++j) wv[j] = _mm512_loadu_si512(w + j * next);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const __m512i xv = bcast_u8x4(xt + i * pix);
#pragma GCC unroll 2
      for (int j = 0; j < NB; ++j) acc[j][i] = dpbusd(acc[j][i], xv, wv[j]);
    }
  }
#pragma GCC unroll 2
  for (int j = 0; j < NB; ++j) gconv_finish<R, F>(p.gemm, cb[j], r * p.OW + ow, acc[j]);
}

// Stride 1, dilation 1 and a 3-wide kernel, where the three taps of a kernel row read neighbouring input
// pixels: each of the R + 2 pixels is loaded and permuted once for all three (R + 2 permutes for 3 R
// products instead of 3 R).
template <int R, int F>
void gconv_tile_w3(const GroupConvParams& p, const ColBlock16* cb, __m512i idx, int64_t b, int64_t r, int64_t ow,
                   const int64_t*) {
  __m512i acc[R];
  const __m512i init = _mm512_sub_epi32(_mm512_setzero_si512(), cb[0].comp);
  for (int i = 0; i < R; ++i) acc[i] = init;
  const int64_t steps = p.cin_g / 4;
  const uint8_t* x0 = p.x + (r * p.SH * p.Wp + ow) * p.C + p.block_off[b];
  const int8_t* w0 = p.w + b * p.KH * 3 * steps * 64;
  for (int64_t kh = 0; kh < p.KH; ++kh) {
    const uint8_t* xr = x0 + kh * p.DH * p.Wp * p.C;
    const int8_t* wr = w0 + kh * 3 * steps * 64;
    for (int64_t s = 0; s < steps; ++s, xr += 4, wr += 64) {
      __m512i v[R + 2];
#pragma GCC unroll 10
      for (int i = 0; i < R + 2; ++i) v[i] = _mm512_permutexvar_epi32(idx, _mm512_loadu_si512(xr + i * p.C));
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw) {
        const __m512i wv = _mm512_loadu_si512(wr + kw * steps * 64);
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) acc[i] = dpbusd(acc[i], v[i + kw], wv);
      }
    }
  }
  gconv_finish<R, F>(p.gemm, cb[0], r * p.OW + ow, acc);
}

// The ways: 0 permutes; 1 broadcasts, one block; 2 permutes shared by a 3-wide kernel row; 3 broadcasts
// shared by a block pair.
using GconvTiles = std::array<GconvTileFn, kPixels + 1>;  // by pixel count (entry 0 unused)
template <int WAY, int F, size_t... I>
constexpr GconvTiles gconv_tiles(std::index_sequence<I...>) {
  if constexpr (WAY == 0) return {{nullptr, &gconv_tile<static_cast<int>(I) + 1, F>...}};
  if constexpr (WAY == 1) return {{nullptr, &gconv_tile_bcast<1, static_cast<int>(I) + 1, F>...}};
  if constexpr (WAY == 2) return {{nullptr, &gconv_tile_w3<static_cast<int>(I) + 1, F>...}};
  return {{nullptr, &gconv_tile_bcast<2, static_cast<int>(I) + 1, F>...}};
}

// A way's tiles by epilogue: [0] the general one (epilogue16), [1..3] the folded int8 one for none, relu,
// relu6, [4] the folded fp32 one (epilogue_variant).
constexpr int kEpilogueVariants = 5;
template <int WAY>
constexpr std::array<GconvTiles, kEpilogueVariants> gconv_tables() {
  constexpr auto seq = std::make_index_sequence<kPixels>{};
  return {gconv_tiles<WAY, -1>(seq), gconv_tiles<WAY, static_cast<int>(Act::None)>(seq),
          gconv_tiles<WAY, static_cast<int>(Act::Relu)>(seq), gconv_tiles<WAY, static_cast<int>(Act::Relu6)>(seq),
          gconv_tiles<WAY, kFoldedF32>(seq)};
}

inline int epilogue_variant(const Int8GemmParams& e) {
  if (!e.folded) return 0;
  if (e.out_kind == OutKind::Float32) return 4;
  if (e.out_kind != OutKind::Int8) return 0;
  return e.act == Act::None ? 1 : e.act == Act::Relu ? 2 : e.act == Act::Relu6 ? 3 : 0;
}

// WAY 0, 1 or 2; with broadcasts (1), neighbouring blocks of one group go in pairs (way 3).
template <int WAY>
void gconv_rows(const GroupConvParams& p, int64_t r0, int64_t r1) {
  static constexpr std::array<GconvTiles, kEpilogueVariants> kTables = gconv_tables<WAY>();
  static constexpr std::array<GconvTiles, kEpilogueVariants> kPairs = gconv_tables<3>();
  const Int8GemmParams& e = p.gemm;
  const int v = epilogue_variant(e);
  const std::vector<int64_t> k_off = gconv_k_offsets(p);
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t b = 0, nb; b < p.blocks; b += nb) {
      nb = WAY == 1 && b + 1 < p.blocks && p.block_off[b + 1] == p.block_off[b] ? 2 : 1;  // the same group
      const GconvTiles& tiles = nb == 2 ? kPairs[v] : kTables[v];
      // Per block: the epilogue's channel vectors and the lane permutation, once per output row.
      ColBlock16 cb[2];
      for (int64_t j = 0; j < nb; ++j) cb[j] = col_block16(e, (b + j) * 16);
      const __m512i idx = WAY == 1 ? _mm512_setzero_si512() : _mm512_loadu_si512(p.lane_idx + b * 16);
      for (int64_t ow = 0; ow < p.OW; ow += kPixels)
        tiles[std::min<int64_t>(kPixels, p.OW - ow)](p, cb, idx, b, r, ow, k_off.data());
    }
  }
}

}  // namespace

void gconv_avx512(const GroupConvParams& p, int64_t r0, int64_t r1) {
  if (p.one_group_blocks)
    gconv_rows<1>(p, r0, r1);
  else if (p.KW == 3 && p.SW == 1 && p.DW == 1)
    gconv_rows<2>(p, r0, r1);
  else
    gconv_rows<0>(p, r0, r1);
  if (p.gemm.stream_out) _mm_sfence();  // the non-temporal stores are visible before the call returns
}

}  // namespace kernels
}  // namespace fastinfer

#pragma GCC pop_options
