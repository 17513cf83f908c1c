// The scalar skeleton of the row-quad depthwise kernels (avx512_vnni.cc, avx_vnni.cc): which input rows an
// output row reads, and in which order its pixels are computed.
//
// Slots: a call range keeps the quads of KH input rows in KH slots, tagged with the row they hold (n * H + ih, -1 none). For each
// output row, the rows it reads are looked up by tag; a missing one is built (by the kernel's own `build`)
// into a slot that this output row does not need. Rows outside the image read the padding quad (stride 0).
// Scalar code, no intrinsics. Include it after the ISA's `#pragma GCC target` (as ymm_tile.h), so that
// these templates, instantiated with the kernel's lambdas, inline into it: a call per pixel would also
// push the epilogue vectors the kernel holds in registers back to memory. The including file includes
// <cstdint> and params.h before the pragma.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "params.h"

namespace fastinfer {
namespace kernels {
namespace {

// For output row (n, oh): qrow[kh] and qstride[kh] (quad_ints, or 0 for the padding quad) for every kh.
// build(slot_base, n, ih) writes input row ih's quads at slot_base.
template <class Build>
void dw_row_slots(const DwConvParams& p, int64_t n, int64_t oh, int32_t* quads, int64_t slot_ints, const int32_t* pad,
                  int64_t quad_ints, int64_t* tag, const int32_t** qrow, int64_t* qstride, Build&& build) {
  int64_t need[16];
  for (int64_t kh = 0; kh < p.KH; ++kh) {
    const int64_t ih = oh * p.SH - p.PH + kh * p.DH;
    need[kh] = ih >= 0 && ih < p.H ? n * p.H + ih : -1;
  }
  for (int64_t kh = 0; kh < p.KH; ++kh) {
    if (need[kh] < 0) {
      qrow[kh] = pad;
      qstride[kh] = 0;
      continue;
    }
    int64_t slot = -1;
    for (int64_t s = 0; s < p.KH && slot < 0; ++s)
      if (tag[s] == need[kh]) slot = s;
    if (slot < 0) {  // a slot holding no row this output row needs
      for (int64_t s = 0; s < p.KH && slot < 0; ++s) {
        bool needed = false;
        for (int64_t k = 0; k < p.KH; ++k) needed = needed || (tag[s] >= 0 && tag[s] == need[k]);
        if (!needed) slot = s;
      }
      build(quads + slot * slot_ints, n, need[kh] - n * p.H);
      tag[slot] = need[kh];
    }
    qrow[kh] = quads + slot * slot_ints;
    qstride[kh] = quad_ints;
  }
}

// Quads a kernel row takes: 1 (KW <= 4), or ceil(KW / 4) for the wide row quads (stride 1, 4 < KW <= 16, e.g.
// ConvNeXt's 7 x 7): group (kh, r) holds the taps (kh, 4 r .. 4 r + 3), weight 0 past KW, and its quad for output
// column ow is the row's quad ow + 4 r (one set of quads per input row serves every r; 7 x 7: 49 of 56
// products used).
inline int64_t dw_row_quad_count(const DwConvParams& p) { return p.KW <= 4 ? 1 : (p.KW + 3) / 4; }

// Row quads fit when every group's 4 taps are 4 neighbouring input pixels of one row (width dilation 1; a
// kernel wider than 4 only at stride 1, where one set of quads serves all of a row's groups), and the quads of
// KH input rows (OW + 4 (rq - 1) a row, 4 bytes a channel each, channels in blocks of `block`) stay cache-sized.
constexpr int64_t kMaxQuadBytes = int64_t{4} << 20;
inline bool dw_quads_fit(const DwConvParams& p, int64_t block) {
  const int64_t rq = dw_row_quad_count(p), nq = p.OW + 4 * (rq - 1);
  return p.DW == 1 && p.KW <= 16 && (rq == 1 || p.SW == 1) && p.KH <= 16 &&
         p.KH * ((p.C + block - 1) / block) * nq * 4 * block <= kMaxQuadBytes;
}

// Paired quads: a quad of 4 input pixels holds the taps of two neighbouring output pixels.
inline bool dw_paired(const DwConvParams& p) { return p.SW == 1 && p.KW <= 3; }

// Output columns [ow0, ow1) of one output row. Unpaired: one(ow, ow, false) each (quad ow). Paired (a quad
// j holds the inputs of columns 2 j and 2 j + 1): pair(ow) for ow and ow + 1 from quad ow / 2, an odd first
// column as one(ow, ow / 2, true) (the second weights), an even last one as one(ow, ow / 2, false).
template <class One, class Pair>
inline void dw_row_columns(int64_t ow0, int64_t ow1, bool paired, One&& one, Pair&& pair) {
  if (!paired) {
    for (int64_t ow = ow0; ow < ow1; ++ow) one(ow, ow, false);
    return;
  }
  int64_t ow = ow0;
  if (ow % 2 == 1) one(ow, ow / 2, true), ++ow;
  for (; ow + 1 < ow1; ow += 2) pair(ow);
  if (ow < ow1) one(ow, ow / 2, false);
}

// The quads of one channel block of an input row: quad j holds the 4 pixels from iw0 + adv j, built as
// quad(j, first, second) from two pairs, pair(px(iw), px(iw + 1)) (two pixels' bytes interleaved). With
// adv == 2 (paired quads, and every stride-2 kernel) quad j's second pair is quad j + 1's first, so each pair
// is built once: two pixel loads a quad instead of four. The lambdas should capture by value: the quads'
// vector stores may alias anything a reference reaches, which the compiler then reloads after every store.
// Against the build before (four loads a quad, captured references: ~64 instructions a quad with reloads;
// AMD Zen 4, 2 threads, batch 8, int8 in/out, alternated in one process): AVX-512 dw 3x3 256 ch at 28 x 28
// 1.08x, 144 ch at 56 x 56 1.12x, stride 2 96 ch at 112 x 112 1.24x, 144 ch at 56 x 56 1.37x; 5 x 5 1.01x;
// the 256-bit kernels at 32 channels 1.11x (stride 2: 1.39x), the AVX2 tier 1.07x (stride 2: 1.29x).
template <class Px, class Pair, class Quad>
inline void dw_build_quads(int64_t nq, int64_t adv, int64_t iw0, Px&& px, Pair&& pair, Quad&& quad) {
  if (adv == 2) {
    auto first = pair(px(iw0), px(iw0 + 1));
    for (int64_t j = 0; j < nq; ++j) {
      const auto second = pair(px(iw0 + 2 * j + 2), px(iw0 + 2 * j + 3));
      quad(j, first, second);
      first = second;
    }
    return;
  }
  for (int64_t j = 0; j < nq; ++j) {
    const int64_t iw = iw0 + adv * j;
    quad(j, pair(px(iw), px(iw + 1)), pair(px(iw + 2), px(iw + 3)));
  }
}

// Output pixels [p0, p1) row by row: each output row's slots (dw_row_slots), then
// row(out_row, ow0, ow1, qrow, qstride) for its columns [ow0, ow1), out_row = (n * OH + oh) * OW.
template <class Build, class Row>
void dw_rows(const DwConvParams& p, int64_t p0, int64_t p1, int32_t* quads, int64_t slot_ints, const int32_t* pad,
             int64_t quad_ints, int64_t* tag, Build&& build, Row&& row) {
  const int32_t* qrow[16];
  int64_t qstride[16];
  for (int64_t pix = p0; pix < p1;) {
    const int64_t n = pix / (p.OH * p.OW), oh = (pix / p.OW) % p.OH, ow0 = pix % p.OW;
    const int64_t ow1 = std::min(p.OW, ow0 + (p1 - pix));
    dw_row_slots(p, n, oh, quads, slot_ints, pad, quad_ints, tag, qrow, qstride, build);
    row((n * p.OH + oh) * p.OW, ow0, ow1, qrow, qstride);
    pix += ow1 - ow0;
  }
}

// The epilogue rules of the row-quad kernels' pixel loops, a template argument there so that the common
// ones run without a branch per pixel: kDwPlain, int8 with the folded scales and no activation or relu;
// kDwPlain6, the same with relu6 (its out_inv is not folded: a multiply first); kDwGeneral, the rest.
// Both plain rules take their max against 0 (relu) or -127 on the packed bytes (relu_on_bytes).
constexpr int kDwGeneral = 0, kDwPlain = 1, kDwPlain6 = 2;

// run(std::integral_constant<int, rule>) with p's rule; PLAIN_RULES false: kDwGeneral always (an fp32
// output, or a kernel that keeps one instantiation).
template <bool PLAIN_RULES, class Run>
void dw_run_rule(const DwConvParams& p, Run&& run) {
  if constexpr (PLAIN_RULES) {
    if (p.out_kind == OutKind::Int8 && p.folded) {
      if (p.act == Act::Relu6) return run(std::integral_constant<int, kDwPlain6>{});
      if (p.act == Act::None || p.act == Act::Relu) return run(std::integral_constant<int, kDwPlain>{});
    }
  }
  run(std::integral_constant<int, kDwGeneral>{});
}

}  // namespace
}  // namespace kernels
}  // namespace fastinfer
