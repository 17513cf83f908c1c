// AVX-VNNI kernels: vpdpbusd (u8 x s8 -> s32, exact) on 256-bit vectors, VEX-encoded, for CPUs with
// AVX-VNNI but no AVX-512 (Intel Alder Lake and later client cores, the E-core Xeons Sierra Forest and
// Clearwater Forest) and for any CPU that has both (Sapphire Rapids, AMD Zen 5) when capped here. The set
// adds the int8 GEMM, the direct convolution and the depthwise convolution (ymm_tile.h's row quads on
// vpdpbusd, and its pair kernel on vpdpwssd where those do not serve); its other families
// (quantization, w8_only, residual add) are the AVX2 kernels.
// The operands are VNNI's: activations u8 = s8 + 128, B in the n16k4 packing (PACKING.md), where one
// 16-column block's k-quad is 64 bytes: two ymm of 8 columns x 4 k. The tile and its epilogue are
// ymm_tile.h's, shared with the AVX2 set; this file gives them the vpdpbusd step.
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
#pragma GCC target("avx2,fma,avxvnni")

#include "ymm_tile.h"  // (with dw_row_quads.h)

namespace fastinfer {
namespace kernels {
namespace {

// vpdpbusd: u8 x s8 products summed in fours into int32, exact. Register budget (16 ymm): MR x 2 NB
// int32 accumulators + 2 NB weight vectors + 1 broadcast. The main tile is 6 rows x one 16-column block
// (15 ymm). Tiles of 1 or 2 rows take 4 or 2 blocks, so they still run 8 (4) independent accumulator
// chains: a 1-row tile of one block would wait on the vpdpbusd latency of just 2. (The 1 x 4 tile's
// weights are memory operands: 8 + 1 ymm live.)
struct VnniDot {
  static constexpr bool kShifted = true;
  static constexpr int kMR = 6;
  static constexpr int kWide[3] = {0, 4, 2};
  static_assert(kMR * 2 + 2 + 1 <= 16, "tile does not fit the 16 ymm registers");
  static constexpr int kProbeChains = 12;     // vpdpbusd reads its accumulator: one b serves every step
  static constexpr bool kProbeVaryB = false;
  struct Row {
    __m256i u8;
  };
  template <bool S8>
  static Row row(__m256i group) {  // an s8 input is flipped to u8 here: one xor per broadcast group
    return {S8 ? _mm256_xor_si256(group, _mm256_set1_epi8(static_cast<char>(0x80))) : group};
  }
  static constexpr int kGroupBytes = 4;
  template <bool S8>
  static Row load(const uint8_t* p) { return row<S8>(bcast_u8x4(p)); }
  static __m256i step(__m256i acc, const Row& r, __m256i b) { return _mm256_dpbusd_avx_epi32(acc, r.u8, b); }
};

// The depthwise kernel's pair step (ymm_tile.h, ymm_dwconv): vpdpwssd, the multiply and the add in one.
struct DpwssdPair {
  static __m256i step(__m256i acc, __m256i x, __m256i w) { return _mm256_dpwssd_avx_epi32(acc, x, w); }
};

// The row-quad depthwise step (ymm_tile.h, ymm_dwconv_quads): vpdpbusd on u8 = s8 + 128 quads, exact for
// every weight; 128 * sum(w) undoes the shift.
struct DpbusdQuad {
  static constexpr bool kShiftU8 = true;
  using X = __m256i;
  static X prep(__m256i x) { return x; }
  static __m256i step(__m256i acc, X x, __m256i w) { return _mm256_dpbusd_avx_epi32(acc, x, w); }
};

const char* dwconv_path_vnni(const DwConvParams& p) {
  return !ymm_dw_quads(p) ? "tap_pairs" : dw_paired(p) ? "row_quads_paired" : "row_quads";
}

void dwconv_vnni(const DwConvParams& p, int64_t p0, int64_t p1) {
  if (p1 <= p0) return;
  if (!ymm_dw_quads(p)) return ymm_dwconv<DpwssdPair>(p, p0, p1);
  ymm_dwconv_quads<DpbusdQuad>(p, p0, p1);
}

}  // namespace
}  // namespace kernels
}  // namespace fastinfer

#pragma GCC pop_options

namespace fastinfer {
namespace kernels {
const KernelSet& kernels_avx_vnni() {
  static const KernelSet s = [] {
    KernelSet k = kernels_avx2();  // w8 GEMM, quantize, absmax, add: AVX2 code
    k.name = "avx_vnni";
    k.dwconv = dwconv_vnni;
    k.dwconv_path = dwconv_path_vnni;
    k.int8_gemm = ymm_gemm<VnniDot>;
    k.gemm_step = nullptr;  // vpdpbusd has one step for every weight (AVX2's are its own)
    k.peak_probe = ymm_peak_probe<VnniDot>;
    k.m_chunk = 16 * VnniDot::kMR;  // n_panel, signed_a (u8 operand) and conv_c_step as AVX2's
    k.m_tile = VnniDot::kMR;
    k.conv_direct = ymm_conv_direct<VnniDot>;
    k.conv_direct_no_min128 = false;  // vpdpbusd is exact for every weight
    k.conv_tile_rows = VnniDot::kMR;
    k.gconv = ymm_gconv<VnniDot>;  // gconv_lanes 8, as AVX2's
    k.gconv_signed_x = !VnniDot::kShifted;
    return k;
  }();
  return s;
}
}  // namespace kernels
}  // namespace fastinfer
