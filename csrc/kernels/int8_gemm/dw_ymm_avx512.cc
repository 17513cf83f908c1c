// The depthwise row-quad kernel of ymm_tile.h (32 channels a block) on AVX-512 VNNI CPUs, for 32 channels
// (the first depthwise layer of MobileNetV2 and EfficientNet-B0, at 112 x 112), where the AVX-512 kernel's one
// 64-channel block is half empty: it would compute, interleave and finish 32 empty lanes per pixel, which on
// AMD Zen 4 (512-bit operations in two passes of its 256-bit units) cost as much as full ones. This runs
// vpdpbusd on 256-bit vectors (EVEX: AVX512_VNNI + AVX512VL). Measured on Zen 4 (3 x 3, batch 8, 2 threads,
// relu, int8 in/out, alternated processes): 32 channels at 56 x 56 0.17-0.20 -> 0.13-0.14 ms. Other channel
// counts with a half block (C % 64 == 32) stay on the AVX-512 kernel: 96 was even, and 160, 224 and 480 were
// 10-30% slower here (more blocks, each with its loop and epilogue overheads).
// Its own translation unit: ymm_tile.h's helpers share names with avx512_common.h's.
#include <algorithm>
#include <array>
#include <cstdint>
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
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")

#include "ymm_tile.h"  // (with dw_row_quads.h)

namespace fastinfer {
namespace kernels {
namespace {

// ymm_dwconv_quads' step: vpdpbusd on u8 = s8 + 128 quads (exact for every weight; 128 * sum(w) undoes
// the shift), EVEX-encoded as AVX-512 VNNI CPUs without AVX-VNNI (AMD Zen 4) have it.
struct DpbusdQuadEvex {
  static constexpr bool kShiftU8 = true;
  using X = __m256i;
  static X prep(__m256i x) { return x; }
  static __m256i step(__m256i acc, X x, __m256i w) { return _mm256_dpbusd_epi32(acc, x, w); }
};

}  // namespace

const char* dwconv_ymm_path_avx512(const DwConvParams& p) {
  if (p.C != 32 || p.KW > 4 || !ymm_dw_quads(p)) return nullptr;  // wider: the AVX-512 wide row quads
  return dw_paired(p) ? "ymm_row_quads_paired" : "ymm_row_quads";
}

void dwconv_ymm_avx512(const DwConvParams& p, int64_t p0, int64_t p1) { ymm_dwconv_quads<DpbusdQuadEvex>(p, p0, p1); }

}  // namespace kernels
}  // namespace fastinfer

#pragma GCC pop_options
