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

#include <cstdint>

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

}  // namespace
}  // namespace kernels
}  // namespace fastinfer
