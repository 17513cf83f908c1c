// AVX-VNNI kernels: vpdpbusd (u8 x s8 -> s32, exact) on 256-bit vectors, VEX-encoded, for CPUs with
// AVX-VNNI but no AVX-512 (Intel Alder Lake and later client cores, the E-core Xeons Sierra Forest and
// Clearwater Forest) and for any CPU that has both (Sapphire Rapids, AMD Zen 5) when capped here. The set
// adds the int8 GEMM, the direct convolution and the depthwise convolution (row quads, below; the AVX2
// pair kernel where those do not serve); its other families
// (quantization, w8_only, residual add) are the AVX2 kernels.
// The operands are VNNI's: activations u8 = s8 + 128, B in the n16k4 packing (PACKING.md), where one
// 16-column block's k-quad is 64 bytes: two ymm of 8 columns x 4 k. The tile and its epilogue are
// ymm_tile.h's, shared with the AVX2 set; this file gives them the vpdpbusd step.
#include <algorithm>
#include <array>
#include <cstring>
#include <utility>
#include <vector>

#include <immintrin.h>

#include "conv_direct_rows.h"
#include "epilogue.h"
#include "pack.h"
#include "params.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,avxvnni")

#include "dw_row_quads.h"  // after the target: its templates inline into this ISA's kernels

#include "ymm_tile.h"

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
  struct Row {
    __m256i u8;
  };
  template <bool S8>
  static Row row(__m256i group) {  // an s8 input is flipped to u8 here: one xor per broadcast group
    return {S8 ? _mm256_xor_si256(group, _mm256_set1_epi8(static_cast<char>(0x80))) : group};
  }
  static __m256i step(__m256i acc, const Row& r, __m256i b) { return _mm256_dpbusd_avx_epi32(acc, r.u8, b); }
};

// The depthwise kernel's pair step (ymm_tile.h, ymm_dwconv): vpdpwssd, the multiply and the add in one.
struct DpwssdPair {
  static __m256i step(__m256i acc, __m256i x, __m256i w) { return _mm256_dpwssd_avx_epi32(acc, x, w); }
};

// ---- depthwise conv with row quads: avx512_vnni.cc's scheme on 256-bit vpdpbusd, 32 channels a block ----
// Each int32 lane takes one channel and 4 taps of one input row: quads of 4 neighbouring input pixels
// (u8 = s8 + 128), interleaved bytewise once per input row and call range, multiplied with the weights of
// taps (kh, 0 .. 3) (weight 0 past KW); 128 * sum(w) undoes the +128. At stride 1 with KW <= 3 a quad
// holds the taps of two output pixels (the second with the weights one slot later), so quads are kept
// for even output columns only. The lanes hold channels in interleave order (vector i, 128-bit lane l,
// dword k: channel 32 cb + 16 l + 4 i + k); the epilogue works in that order, with its per-channel
// vectors arranged so once per call. int8 packs of the four vectors come out in channel order; fp32 is
// put back with 4 lane permutes. Serves DW = 1, KW <= 4, C % 32 == 0 and no GELU; the rest takes
// ymm_dwconv. Measured against ymm_dwconv (dw 3x3 at 28 x 28 x 256, batch 8, AMD Zen 5 capped to
// avx_vnni, 1 thread, p10 of 100 calls, 3 alternated processes): int8 in/out 0.91-0.95 -> 0.36-0.37 ms,
// fp32 out 0.72-0.76 -> 0.35-0.36 ms.
inline void interleave4_ymm(__m256i a, __m256i b, __m256i c, __m256i d, __m256i* r) {
  const __m256i ab_lo = _mm256_unpacklo_epi8(a, b), ab_hi = _mm256_unpackhi_epi8(a, b);
  const __m256i cd_lo = _mm256_unpacklo_epi8(c, d), cd_hi = _mm256_unpackhi_epi8(c, d);
  r[0] = _mm256_unpacklo_epi16(ab_lo, cd_lo);
  r[1] = _mm256_unpackhi_epi16(ab_lo, cd_lo);
  r[2] = _mm256_unpacklo_epi16(ab_hi, cd_hi);
  r[3] = _mm256_unpackhi_epi16(ab_hi, cd_hi);
}

constexpr int64_t kMaxQuadBytesYmm = int64_t{4} << 20;
inline bool dw_quads_vnni(const DwConvParams& p) {
  return p.DW == 1 && p.KW <= 4 && p.KH <= 16 && p.C % 32 == 0 && p.act != Act::Gelu &&
         p.KH * (p.C / 32) * p.OW * 128 <= kMaxQuadBytesYmm;
}

struct DwVnniBuffers {
  std::vector<int32_t> w;      // [cblock][group][4][8] interleaved weights (groups: KH, or 2 KH paired)
  std::vector<int32_t> epi;    // [cblock][3][4][8] comp, scale, bias in lane order
  std::vector<int32_t> quads;  // [slot][cblock][quad][4][8]
  std::vector<int64_t> tag;    // which input row (n * H + ih) each slot holds, -1 none
};

template <bool INT8_OUT>
void dwconv_quads_vnni(const DwConvParams& p, int64_t p0, int64_t p1) {
  const bool paired = dw_paired(p);
  const int64_t cblocks = p.C / 32, groups = paired ? 2 * p.KH : p.KH, taps = p.KH * p.KW;
  const int64_t step = paired ? 2 : 1, nq = (p.OW + step - 1) / step, slot_ints = cblocks * nq * 32;
  thread_local DwVnniBuffers buf;
  buf.w.resize(static_cast<size_t>(cblocks * groups * 32));
  buf.epi.assign(static_cast<size_t>(cblocks * 96), 0);
  buf.quads.resize(static_cast<size_t>(p.KH * slot_ints));
  buf.tag.assign(static_cast<size_t>(p.KH), -1);
  for (int64_t cb = 0; cb < cblocks; ++cb) {
    const int64_t c0 = 32 * cb;
    for (int64_t g = 0; g < groups; ++g) {
      auto wtap = [&](int64_t i) {  // slot i of group g: tap (kh, kw), weights B one slot later
        const int64_t kw = g < p.KH ? i : i - 1, kh = g % p.KH;
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
          e[at] = 128 * sum;
          std::memcpy(&e[32 + at], &p.w_scale[c], 4);
          if (p.bias) std::memcpy(&e[64 + at], &p.bias[c], 4);
        }
  }
  int32_t* const quads = buf.quads.data();
  int64_t* const tag = buf.tag.data();
  const int32_t* const wq = buf.w.data();
  const int32_t* const epi = buf.epi.data();
  const __m256i k80 = _mm256_set1_epi8(static_cast<char>(0x80));
  const int8_t* const x = p.x;
  int32_t pad[32];  // the quad of 4 padding pixels (s8 0 as u8: 0x80 bytes)
  for (int i = 0; i < 32; ++i) pad[i] = static_cast<int32_t>(0x80808080u);
  auto build = [&](int32_t* q, int64_t n, int64_t ih) {
    const int8_t* row = x + (n * p.H + ih) * p.W * p.C;
    for (int64_t cb = 0; cb < cblocks; ++cb) {
      auto px = [&](int64_t iw) {  // outside the row: s8 0
        return iw >= 0 && iw < p.W
                   ? _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + iw * p.C + 32 * cb)), k80)
                   : k80;
      };
      for (int64_t j = 0; j < nq; ++j) {
        const int64_t iw = j * step * p.SW - p.PW;
        __m256i r[4];
        interleave4_ymm(px(iw), px(iw + 1), px(iw + 2), px(iw + 3), r);
        int32_t* d = q + (cb * nq + j) * 32;
        for (int i = 0; i < 4; ++i) _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 8 * i), r[i]);
      }
    }
  };
  const bool fast_int8 = p.folded && folds_out_inv(p.act);
  const __m256 a_scale = _mm256_set1_ps(p.a_scale), out_inv = _mm256_set1_ps(p.out_inv_scale);
  auto finish = [&](const __m256i acc[4], int64_t pix, int64_t cb) {
    const int32_t* e = epi + cb * 96;
    __m256 y[4];
    for (int i = 0; i < 4; ++i) {
      y[i] = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[i], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e + 8 * i))));
      if (!p.folded) y[i] = _mm256_mul_ps(y[i], a_scale);
      y[i] = _mm256_mul_ps(y[i], _mm256_loadu_ps(reinterpret_cast<const float*>(e + 32 + 8 * i)));
      if (p.bias) y[i] = _mm256_add_ps(y[i], _mm256_loadu_ps(reinterpret_cast<const float*>(e + 64 + 8 * i)));
      y[i] = act8(y[i], p.act);
    }
    if (!INT8_OUT) {  // channels 8 l .. 8 l + 7: the low (l < 2) or high lanes of y[2 (l % 2)] and its successor
      float* out = static_cast<float*>(p.out) + pix * p.C + 32 * cb;
      _mm256_storeu_ps(out, _mm256_permute2f128_ps(y[0], y[1], 0x20));
      _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(y[2], y[3], 0x20));
      _mm256_storeu_ps(out + 16, _mm256_permute2f128_ps(y[0], y[1], 0x31));
      _mm256_storeu_ps(out + 24, _mm256_permute2f128_ps(y[2], y[3], 0x31));
      return;
    }
    __m256i q[4];
    for (int i = 0; i < 4; ++i)  // folded: finite, min(y, 127), then the saturating packs and max -127
      q[i] = fast_int8 ? _mm256_cvtps_epi32(_mm256_min_ps(y[i], _mm256_set1_ps(127.0f))) : quant8(y[i], out_inv);
    const __m256i b = _mm256_max_epi8(
        _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3])), _mm256_set1_epi8(-127));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<int8_t*>(p.out) + pix * p.C + 32 * cb), b);
  };
  const int32_t* qrow[16];
  int64_t qstride[16];
  for (int64_t pix = p0; pix < p1;) {
    const int64_t n = pix / (p.OH * p.OW), oh = (pix / p.OW) % p.OH, ow0 = pix % p.OW;
    const int64_t ow1 = std::min(p.OW, ow0 + (p1 - pix));
    dw_row_slots(p, n, oh, quads, slot_ints, pad, 32, tag, qrow, qstride, build);
    const int64_t out_row = (n * p.OH + oh) * p.OW;
    for (int64_t cb = 0; cb < cblocks; ++cb) {
      const int32_t* wa = wq + cb * groups * 32;  // weights A (and B after them when paired)
      const int32_t* wb = wa + p.KH * 32;
      // One pixel: quad j, with weights B when `second` (an odd column of paired quads).
      auto one = [&](int64_t ow, int64_t j, bool second) {
        const int32_t* w = second ? wb : wa;
        __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int64_t kh = 0; kh < p.KH; ++kh) {
          const int32_t* q = qrow[kh] + (cb * nq + j) * qstride[kh];
          for (int i = 0; i < 4; ++i)
            acc[i] = _mm256_dpbusd_avx_epi32(acc[i], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 8 * i)),
                                             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + kh * 32 + 8 * i)));
        }
        finish(acc, out_row + ow, cb);
      };
      auto pair = [&](int64_t ow) {  // pixels ow and ow + 1 from quad ow / 2
        __m256i a0[4], a1[4];
        for (int i = 0; i < 4; ++i) a0[i] = a1[i] = _mm256_setzero_si256();
        for (int64_t kh = 0; kh < p.KH; ++kh) {
          const int32_t* q = qrow[kh] + (cb * nq + ow / 2) * qstride[kh];
          for (int i = 0; i < 4; ++i) {
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 8 * i));
            a0[i] = _mm256_dpbusd_avx_epi32(a0[i], v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wa + kh * 32 + 8 * i)));
            a1[i] = _mm256_dpbusd_avx_epi32(a1[i], v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + kh * 32 + 8 * i)));
          }
        }
        finish(a0, out_row + ow, cb);
        finish(a1, out_row + ow + 1, cb);
      };
      dw_row_columns(ow0, ow1, paired, one, pair);
    }
    pix += ow1 - ow0;
  }
}

const char* dwconv_path_vnni(const DwConvParams& p) {
  return !dw_quads_vnni(p) ? "tap_pairs" : dw_paired(p) ? "row_quads_paired" : "row_quads";
}

void dwconv_vnni(const DwConvParams& p, int64_t p0, int64_t p1) {
  if (p1 <= p0) return;
  if (!dw_quads_vnni(p)) return ymm_dwconv<DpwssdPair>(p, p0, p1);
  if (p.out_kind == OutKind::Int8) return dwconv_quads_vnni<true>(p, p0, p1);
  return dwconv_quads_vnni<false>(p, p0, p1);
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
    k.peak_probe = ymm_peak_probe<VnniDot>;
    k.m_chunk = 16 * VnniDot::kMR;  // n_panel, signed_a (u8 operand) and conv_c_step as AVX2's
    k.m_tile = VnniDot::kMR;
    k.conv_direct = ymm_conv_direct<VnniDot>;
    k.conv_direct_no_min128 = false;  // vpdpbusd is exact for every weight
    k.conv_tile_rows = VnniDot::kMR;
    return k;
  }();
  return s;
}
}  // namespace kernels
}  // namespace fastinfer
