// The loops of gate.h, written once with GCC vector extensions of L int32/float lanes; each translation unit
// that includes this compiles them for its own target (L = 4 under the baseline flags, 8 in the AVX2 unit,
// 16 in the AVX-512 one). Everything here has internal linkage: the same names are compiled for different ISAs.
#pragma once
#include <cstdint>
#include <cstring>

// The including unit sets FASTINFER_GATE_ISA to 512 or 256 after its `#pragma GCC target` (the pragma does not
// define __AVX512F__ / __AVX2__), having included <immintrin.h> before the pragma as the other kernel units do;
// or leaves it unset for the baseline flags.

#include "float_bits.h"
#include "gate.h"

namespace fastinfer {
namespace kernels {
namespace {

template <int L>
struct GateVec {
  typedef int8_t B __attribute__((vector_size(L)));
  typedef int32_t I __attribute__((vector_size(4 * L)));
  typedef float F __attribute__((vector_size(4 * L)));
};

// The L int8 values at x sign-extended to int32 lanes. GCC 12 scalarizes __builtin_convertvector from a 16- or
// 8-byte int8 vector (a byte extract and insert per lane), so the AVX2 and AVX-512 widths use vpmovsxbd.
template <int L>
inline typename GateVec<L>::I gate_widen(const int8_t* x) {
#if defined(FASTINFER_GATE_ISA) && FASTINFER_GATE_ISA == 512
  if constexpr (L == 16) return (typename GateVec<L>::I)_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)x));
#endif
#if defined(FASTINFER_GATE_ISA) && FASTINFER_GATE_ISA == 256
  if constexpr (L == 8) return (typename GateVec<L>::I)_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)x));
#endif
  typename GateVec<L>::B b;
  std::memcpy(&b, x, L);
  return __builtin_convertvector(b, typename GateVec<L>::I);
}

// Stores L int32 lanes holding values in [-127, 127] as bytes at o (AVX-512: vpmovdb; AVX2: two packs).
template <int L>
inline void gate_narrow_store(int8_t* o, typename GateVec<L>::I q) {
#if defined(FASTINFER_GATE_ISA) && FASTINFER_GATE_ISA == 256
  if constexpr (L == 8) {
    const __m256i w = _mm256_packs_epi16(_mm256_packs_epi32((__m256i)q, (__m256i)q), _mm256_setzero_si256());
    _mm_storel_epi64((__m128i*)o, _mm_unpacklo_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
    return;
  }
#endif
  const typename GateVec<L>::B b = __builtin_convertvector(q, typename GateVec<L>::B);
  std::memcpy(o, &b, L);
}

// Item i: image i / blocks, channels [b * 64, b * 64 + 64) (fewer in the last block), all pixels.
template <int L>
void gate_channel_sum(const GateParams& p, int64_t i0, int64_t i1) {
  using V = GateVec<L>;
  const int64_t blocks = (p.C + kGateSumBlock - 1) / kGateSumBlock;
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t n = item / blocks, c0 = (item % blocks) * kGateSumBlock;
    const int64_t cn = p.C - c0 < kGateSumBlock ? p.C - c0 : kGateSumBlock, vec = cn / L * L;
    typename V::I acc[kGateSumBlock / L] = {};
    int32_t tail[kGateSumBlock] = {};
    const int8_t* x = p.x + n * p.P * p.C + c0;
    for (int64_t px = 0; px < p.P; ++px, x += p.C) {
      if (cn == kGateSumBlock) {  // a whole block: the accumulators stay in registers
#pragma GCC unroll 16
        for (int j = 0; j < kGateSumBlock / L; ++j) acc[j] += gate_widen<L>(x + j * L);
      } else {
        for (int64_t j = 0; j < vec; j += L) acc[j / L] += gate_widen<L>(x + j);
      }
      for (int64_t j = vec; j < cn; ++j) tail[j] += x[j];
    }
    int32_t* s = p.sums + n * p.C + c0;
    for (int64_t j = 0; j < vec; j += L) std::memcpy(s + j, &acc[j / L], 4 * L);
    for (int64_t j = vec; j < cn; ++j) s[j] = tail[j];
  }
}

template <int L, bool INT8_OUT>
void gate_channel_scale(const GateParams& p, int64_t r0, int64_t r1) {
  using V = GateVec<L>;
  const int64_t C = p.C, vec = C / L * L;
  const float inv = p.out_inv_scale;
  int64_t n = r0 / p.P, px = r0 % p.P;  // row r's image and pixel, advanced without a division a row
  for (int64_t r = r0; r < r1; ++r, px = px + 1 == p.P ? 0 : px + 1, n += px == 0) {
    const int8_t* x = p.x + r * C;
    const float* f = p.f + n * C;
    int64_t c = 0;
    for (; c < vec; c += L) {
      typename V::F fv;
      std::memcpy(&fv, f + c, 4 * L);
      const typename V::F v = __builtin_convertvector(gate_widen<L>(x + c), typename V::F) * fv;
      if (INT8_OUT) {
        gate_narrow_store<L>(static_cast<int8_t*>(p.out) + r * C + c,
                             requant_bits<typename V::F, typename V::I>(v * inv));
      } else {
        std::memcpy(static_cast<float*>(p.out) + r * C + c, &v, 4 * L);
      }
    }
    for (; c < C; ++c) {
      const float v = static_cast<float>(x[c]) * f[c];
      if (INT8_OUT)
        static_cast<int8_t*>(p.out)[r * C + c] = static_cast<int8_t>(requant_bits<float, int32_t>(v * inv));
      else
        static_cast<float*>(p.out)[r * C + c] = v;
    }
  }
}

template <int L>
void gate_channel_scale_any(const GateParams& p, int64_t r0, int64_t r1) {
  if (p.out_int8)
    gate_channel_scale<L, true>(p, r0, r1);
  else
    gate_channel_scale<L, false>(p, r0, r1);
}

}  // namespace
}  // namespace kernels
}  // namespace fastinfer
