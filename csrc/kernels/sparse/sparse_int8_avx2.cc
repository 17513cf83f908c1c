// AVX2 kernel of the slot128 layout (int8 weights x int8 activations; sparse.h), for CPUs without
// AVX-512 VBMI (AMD Zen 2/3, Intel client cores).
//
// AVX2 has no 128-entry byte permute, only vpshufb: a 16-entry table per 128-bit lane. So a 128-byte
// segment of the activation row is read as 8 tables of 16 bytes (each broadcast to both lanes), every
// table is looked up with the low 4 bits of the slot indices, and a 3-level blend tree on index bits
// 4, 5 and 6 keeps the right one: 8 vpshufb + 7 vpblendvb select 32 slot bytes. The masks of the blend
// tree depend on the indices alone, so rows of x that share a group share them too.
//
// The product: vpmaddubsw saturates u8 x s8 pairs past 32767, and 255 * 128 * 2 is past it, so the kernel
// does not multiply the stored u8 = q + 128. It flips each picked byte back to q (xor 0x80) and forms
// |w| (u8) x sign(q, w) (s8): pairs stay within 2 * 128 * 127 = 32512 for any int8 weight, because the
// quantizer never writes q = -128 (it clamps to [-127, 127]; padding columns hold q = 0). The sum is then
// sum q * w directly, which equals the reference's sum (q + 128) * w - 128 * w_sum whenever w_sum is the
// row sum of the packed values (pack_slot128 writes it so), so w_sum is not read.
#include <algorithm>
#include <cstdint>

#include <immintrin.h>

#include "sparse.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace fastinfer {
namespace kernels {
namespace {

// The blend-tree masks of 32 slot indices: bits 4, 5, 6 moved to bit 7 of each byte (vpblendvb reads
// bit 7; a 16-bit shift moves each byte's own bits there), and the low 4 bits for vpshufb (bit 7
// cleared: vpshufb zeroes a byte whose index has it set).
struct SlotMasks {
  __m256i lo, b4, b5, b6;
};

inline SlotMasks slot_masks(__m256i idx) {
  return {_mm256_and_si256(idx, _mm256_set1_epi8(0x0f)), _mm256_slli_epi16(idx, 3), _mm256_slli_epi16(idx, 2),
          _mm256_slli_epi16(idx, 1)};
}

inline __m256i table(const uint8_t* seg, int t) {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(seg + 16 * t)));
}

// The activation bytes of 32 slots from the 8 tables of one segment.
inline __m256i pick(const __m256i* t, const SlotMasks& k) {
  const __m256i a = _mm256_blendv_epi8(_mm256_shuffle_epi8(t[0], k.lo), _mm256_shuffle_epi8(t[1], k.lo), k.b4);
  const __m256i b = _mm256_blendv_epi8(_mm256_shuffle_epi8(t[2], k.lo), _mm256_shuffle_epi8(t[3], k.lo), k.b4);
  const __m256i c = _mm256_blendv_epi8(_mm256_shuffle_epi8(t[4], k.lo), _mm256_shuffle_epi8(t[5], k.lo), k.b4);
  const __m256i d = _mm256_blendv_epi8(_mm256_shuffle_epi8(t[6], k.lo), _mm256_shuffle_epi8(t[7], k.lo), k.b4);
  return _mm256_blendv_epi8(_mm256_blendv_epi8(a, b, k.b5), _mm256_blendv_epi8(c, d, k.b5), k.b6);
}

// sum q * w of 32 slots (4 per row) into 8 int32 row sums: |w| x sign(q, w) as u8 x s8 pairs, then pairs
// of pairs.
inline __m256i dot_slots(__m256i acc, __m256i picked, __m256i w, __m256i w_abs) {
  const __m256i q = _mm256_xor_si256(picked, _mm256_set1_epi8(static_cast<char>(0x80)));
  const __m256i pairs = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(q, w));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

// Row block b for MB rows of x from m0 (rows past M repeat row M - 1; their results are dropped). Each
// 64-byte group is two halves of 32 slots: rows 0-7 and rows 8-15 of the block, one accumulator each.
// Both halves are taken in one pass, so the layout streams through once.
template <int MB>
void slot_block(const Slot128Params& p, int64_t b, int64_t m0) {
  const uint8_t* x[MB];
  for (int m = 0; m < MB; ++m) x[m] = p.xq + std::min<int64_t>(m0 + m, p.M - 1) * p.ldxq;
  __m256i acc[MB][2];
  for (int m = 0; m < MB; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_si256();
  const int32_t* gp = p.grp_ptr + b * p.segs;
  for (int64_t s = 0; s < p.segs; ++s) {
    int64_t g = gp[s];
    const int64_t end = gp[s + 1];
    if (g == end) continue;
    __m256i t1[8];  // one row: its 8 tables stay in registers over the segment's groups
    if (MB == 1)
      for (int i = 0; i < 8; ++i) t1[i] = table(x[0] + s * kSlotSeg, i);
    for (; g < end; ++g) {
      for (int h = 0; h < 2; ++h) {
        const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.idx + g * kSlotGroup + 32 * h));
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.vals + g * kSlotGroup + 32 * h));
        const SlotMasks k = slot_masks(idx);
        const __m256i w_abs = _mm256_abs_epi8(w);
        if (MB == 1) {
          acc[0][h] = dot_slots(acc[0][h], pick(t1, k), w, w_abs);
        } else {
          for (int m = 0; m < MB; ++m) {
            __m256i t[8];
            for (int i = 0; i < 8; ++i) t[i] = table(x[m] + s * kSlotSeg, i);
            acc[m][h] = dot_slots(acc[m][h], pick(t, k), w, w_abs);
          }
        }
      }
    }
  }
  // Epilogue (EPILOGUE.md order): the exact int32 sum, then * x_scale[m] * w_scale[n] + bias[n].
  const int64_t valid = std::min<int64_t>(MB, p.M - m0);
  for (int h = 0; h < 2; ++h) {
    const int64_t n0 = b * kSlotRows + 8 * h;
    const int64_t live = std::min<int64_t>(8, p.N - n0);
    if (live <= 0) break;
    alignas(32) float ws[8] = {}, bias[8] = {}, y[8];
    std::copy(p.w_scale + n0, p.w_scale + n0 + live, ws);
    if (p.bias) std::copy(p.bias + n0, p.bias + n0 + live, bias);
    for (int m = 0; m < valid; ++m) {
      __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[m][h]), _mm256_set1_ps(p.x_scale[m0 + m])),
                               _mm256_load_ps(ws));
      if (p.bias) v = _mm256_add_ps(v, _mm256_load_ps(bias));
      float* out = p.out + (m0 + m) * p.ldo + n0;
      if (live == 8) {
        _mm256_storeu_ps(out, v);
      } else {
        _mm256_store_ps(y, v);
        std::copy(y, y + live, out);
      }
    }
  }
}

}  // namespace

void slot128_linear_avx2(const Slot128Params& p, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t m0 = 0; m0 < p.M; m0 += 4) {
      const int64_t rows = p.M - m0;
      if (rows > 2) slot_block<4>(p, b, m0);
      else if (rows > 1) slot_block<2>(p, b, m0);
      else slot_block<1>(p, b, m0);
    }
}

}  // namespace kernels
}  // namespace fastinfer

#pragma GCC pop_options
