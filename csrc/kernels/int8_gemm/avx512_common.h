// AVX-512 vector helpers shared by the two translation units compiled for AVX-512 (avx512_vnni.cc and
// amx.cc): epilogue (dequantize, bias, activation, fp32/bf16/int8 store) and small loads.
//
// Why a header with intrinsics (STYLE.md keeps intrinsics out of shared headers): the AMX kernel
// stores its int32 tiles and finishes them with exactly the VNNI kernel's epilogue, so both must use
// one copy of it. Include this only after `#pragma GCC target` enables AVX-512 (elsewhere the
// intrinsics fail to inline: a compile error, and g++ does not define __AVX512F__ after the pragma,
// so no #error guard is possible); the functions have internal linkage, so no out-of-line copy can be
// merged into another ISA's code.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "params.h"

namespace fastinfer {
namespace kernels {
namespace {

inline __m512i bcast_u8x4(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

inline __mmask16 col_mask(int64_t valid) {
  return valid >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << valid) - 1u);
}

// fp32 -> bf16 round-to-nearest-even, NaN -> 0x7fc0 (matches epilogue.h's scalar rule).
inline __m256i to_bf16(__m512 f) {
  __m512i u = _mm512_castps_si512(f);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
  return _mm512_cvtepi32_epi16(r);
}

// x * inv rounded half to even and clamped to [-127, 127] in float (so huge values cannot wrap
// in the int conversion); NaN -> 0. Same rule as epilogue.h's requant / quant_static.
inline __m512i quant16(__m512 v, __m512 inv) {
  __m512 r = _mm512_mul_ps(v, inv);
  r = _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(r, r, _CMP_UNORD_Q), _mm512_setzero_ps());
  r = _mm512_min_ps(_mm512_max_ps(r, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
  return _mm512_cvtps_epi32(r);  // MXCSR default: nearest even
}

// erf(x) = sign(x) * (1 - (1 + a1|x| + ... + a6|x|^6)^-16) (Abramowitz & Stegun 7.1.28,
// |error| <= 3e-7); no exp needed, and large |x| saturates cleanly to +-1 (the power overflows to inf).
inline __m512 erf16(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  __m512 t = _mm512_set1_ps(0.0000430638f);
  t = _mm512_fmadd_ps(t, ax, _mm512_set1_ps(0.0002765672f));
  t = _mm512_fmadd_ps(t, ax, _mm512_set1_ps(0.0001520143f));
  t = _mm512_fmadd_ps(t, ax, _mm512_set1_ps(0.0092705272f));
  t = _mm512_fmadd_ps(t, ax, _mm512_set1_ps(0.0422820123f));
  t = _mm512_fmadd_ps(t, ax, _mm512_set1_ps(0.0705230784f));
  t = _mm512_fmadd_ps(t, ax, _mm512_set1_ps(1.0f));
  t = _mm512_mul_ps(t, t);  // ^2
  t = _mm512_mul_ps(t, t);  // ^4
  t = _mm512_mul_ps(t, t);  // ^8
  t = _mm512_mul_ps(t, t);  // ^16
  const __m512 e = _mm512_sub_ps(_mm512_set1_ps(1.0f), _mm512_div_ps(_mm512_set1_ps(1.0f), t));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(e),
                                             _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN))));
}

// SiLU, y / (1 + e^-y) = y * (1 / d). e^-y = 2^n e^-r with n = round(-y log2(e)) and r = y + n ln(2) (one FMA
// with fl(ln 2): an error of |n| * 1.5e-9 in r, below 2e-8 relative for |y| < 17, where d depends on it);
// e^-r by a degree-5 polynomial fitted for relative error on |r| <= ln(2) / 2 (7.5e-8), times 2^n (vscalefps).
// 1 / d: vrcp14ps and one Newton step (relative error about 2^-27). y is clamped to [-88, 87] first, so e^-y
// and d are finite. A divide, and a degree-6 Taylor polynomial after a two-step reduction, made
// the SiLU convolutions of EfficientNet-B0 slower (EPILOGUE.md, "SiLU"); the whole is within 4e-7 of
// y / (1 + e^-y) in double precision (measured over [-90, 90]). NaN stays NaN (the final product).
inline __m512 silu16(__m512 y) {
  const __m512 yc = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(-88.0f)), _mm512_set1_ps(87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(yc, _mm512_set1_ps(-1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(0.693147180559945f), yc);
  __m512 p = _mm512_set1_ps(-0.008297654800117016f);  // e^-r: the odd coefficients negated
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.04191538318991661f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(-0.16667574644088745f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.49998894333839417f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(-0.9999997019767761f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0000001192092896f));
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), _mm512_scalef_ps(p, n));
  __m512 inv = _mm512_rcp14_ps(d);
  inv = _mm512_fmadd_ps(inv, _mm512_fnmadd_ps(d, inv, _mm512_set1_ps(1.0f)), inv);
  // Below -88 (and NaN) 1 / d is 0: silu(y) there is below 5e-37 in magnitude, and y / e^88 would not be (-1e38
  // gave -0.6); silu(-inf) = -inf * 0 = NaN, as torch's.
  inv = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, _mm512_set1_ps(-88.0f), _CMP_GE_OQ), inv);
  return _mm512_mul_ps(y, inv);
}

// gelu and silu for act16: out of line, so that their polynomials stay out of every tile's epilogue.
__attribute__((noinline)) inline __m512 gelu16_outlined(__m512 y) {
  const __m512 half_y = _mm512_mul_ps(_mm512_set1_ps(0.5f), y);
  return _mm512_fmadd_ps(half_y, erf16(_mm512_mul_ps(y, _mm512_set1_ps(0.70710678118654752f))), half_y);
}
__attribute__((noinline)) inline __m512 silu16_outlined(__m512 y) { return silu16(y); }

// Always inline: called from a tile's epilogue, a call clobbers every zmm register (the ABI has no
// callee-saved vector registers), so GCC saved and restored the tile's live accumulators and column
// vectors around it for every row, in the act-less epilogues too (MobileNetV2's 32 -> 16 projection at 112
// x 112, AMD Zen 4: the call and its saves were half the tile's time). The costly gelu and silu go out of
// line, where only their own layers pay for the call.
__attribute__((always_inline)) inline __m512 act16(__m512 y, Act act) {
  if (act == Act::None) return y;
  if (act == Act::Gelu) return gelu16_outlined(y);
  if (act == Act::Hardswish) {  // y * min(max(y + 3, 0), 6) / 6: a true divide, the reference's bits
    __m512 t = _mm512_max_ps(_mm512_setzero_ps(), _mm512_add_ps(y, _mm512_set1_ps(3.0f)));
    t = _mm512_min_ps(_mm512_set1_ps(6.0f), t);
    return _mm512_div_ps(_mm512_mul_ps(y, t), _mm512_set1_ps(6.0f));
  }
  if (act == Act::Silu) return silu16_outlined(y);
  y = _mm512_max_ps(_mm512_setzero_ps(), y);  // second operand wins on NaN: NaN stays NaN
  return act == Act::Relu6 ? _mm512_min_ps(_mm512_set1_ps(6.0f), y) : y;
}

// The folded int8 rule's activation and unfolded out_inv multiply (EPILOGUE.md, "Convolutions"), ahead of
// min(y, hi) with hi = folded_int8_hi(act, out_inv), the convert and the saturating packs. relu6: max(y *
// out_inv, 0), its bound in hi (folded_int8_hi says why that is the same value).
__attribute__((always_inline)) inline __m512 folded_int8_act(__m512 y, Act act, __m512 out_inv) {
  if (act == Act::Relu6) return _mm512_max_ps(_mm512_mul_ps(y, out_inv), _mm512_setzero_ps());
  y = act16(y, act);
  return folds_out_inv(act) ? y : _mm512_mul_ps(y, out_inv);
}

// folded_int8_act less the max against 0 of the relu_on_bytes activations, for kernels that take it on the
// packed bytes (with a floor of 0 instead of -127).
__attribute__((always_inline)) inline __m512 folded_int8_act_before_bytes(__m512 y, Act act, __m512 out_inv) {
  if (act == Act::Relu) return y;
  if (act == Act::Relu6) return _mm512_mul_ps(y, out_inv);
  return folded_int8_act(y, act, out_inv);
}

// The 16 floats y at o, the lanes of mask only: a plain store for a full mask (a masked store of a
// full vector took 25% longer on AMD Zen 4, storing rows of 64 floats to L2).
inline void store_f32x16(float* o, __mmask16 mask, __m512 y) {
  if (mask == 0xffff)
    _mm512_storeu_ps(o, y);
  else
    _mm512_mask_storeu_ps(o, mask, y);
}

// The 16 int32 lanes of r (in [-128, 127]) as bytes at out, the lanes of mask only. A full mask takes a
// register narrowing and a plain store: a masked narrowing store to memory cost 27% more on AMD Zen 4.
inline void store_s8x16(void* out, __mmask16 mask, __m512i r) {
  if (mask == 0xffff)
    _mm_storeu_si128(static_cast<__m128i*>(out), _mm512_cvtepi32_epi8(r));
  else
    _mm512_mask_cvtepi32_storeu_epi8(out, mask, r);
}

inline void store_row16(void* out, int64_t idx, OutKind kind, __mmask16 mask, __m512 y, float out_inv = 1.0f) {
  if (kind == OutKind::BFloat16)
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(out) + idx, mask, to_bf16(y));
  else if (kind == OutKind::Int8)
    store_s8x16(static_cast<int8_t*>(out) + idx, mask, quant16(y, _mm512_set1_ps(out_inv)));
  else
    store_f32x16(static_cast<float*>(out) + idx, mask, y);
}

// The per-column epilogue inputs of one 16-column block, loaded once per block (EPILOGUE.md).
struct ColBlock16 {
  int64_t col;
  __mmask16 mask;   // columns inside N (0 for a fully padded block: nothing is stored)
  __m512i comp;     // 128 * colsum[n]: undoes the +128 of u8 activations (0 for s8 activations)
  __m512 b_scale, bias;
};

// col_block16 for callers that must have it inlined: the direct convolution's tile (conv_tile) calls it after
// its K loop, where GCC kept col_block16 out of line for tiles of 1-2 column blocks, and a call there saves
// every live accumulator to the stack and loads it back (no zmm register survives a call). Inlined there,
// in-process A/B on AMD Zen 4 (batch 8, int8 in/out): MobileNetV2's 1x1 layers of 16-96 input channels (16 ->
// 96 at 112 x 112, 24 -> 144, 32 -> 192, 96 -> 576) 1.10-1.21x, batch 1 1.14x. The GEMM tiles (int8_tile) take
// it too, so that GCC's choice for them does not move with the tiles around them (0.97-1.02x, 5 shapes). Forced
// into every caller, the narrow-group kernel's other inlining decisions changed and its 4-channel groups ran
// 0.94x.
__attribute__((always_inline)) inline ColBlock16 col_block16_inlined(const Int8GemmParams& p, int64_t col,
                                                                     bool signed_a = false) {
  ColBlock16 c;
  c.col = col;
  c.mask = col < p.N ? col_mask(p.N - col) : 0;
  c.comp = signed_a ? _mm512_setzero_si512() : _mm512_slli_epi32(_mm512_loadu_si512(p.b_colsum + col), 7);
  const bool fl = p.out_kind != OutKind::Int32;
  c.b_scale = fl ? _mm512_maskz_loadu_ps(c.mask, p.b_scale + col) : _mm512_setzero_ps();
  c.bias = fl && p.bias ? _mm512_maskz_loadu_ps(c.mask, p.bias + col) : _mm512_setzero_ps();
  return c;
}

inline ColBlock16 col_block16(const Int8GemmParams& p, int64_t col, bool signed_a = false) {
  return col_block16_inlined(p, col, signed_a);
}

// One 16-column fp32 row piece; stream: a non-temporal store when the piece is whole and 64-byte aligned
// (Int8GemmParams::stream_out). The caller ends its work with _mm_sfence().
inline void store_f32x16(float* o, __mmask16 mask, __m512 y, bool stream) {
  if (stream && mask == 0xffff && (reinterpret_cast<uintptr_t>(o) & 63) == 0)
    _mm512_stream_ps(o, y);
  else
    store_f32x16(o, mask, y);
}

// The folded fp32 epilogue (Int8GemmParams::folded, fp32 out) of a compensated accumulator: epilogue16_f32's
// steps without its multiply by a_scale = 1, which is exact, so the bits are the same. Its callers keep
// the output pointer, row stride and flags in locals: epilogue16 reads them through p after every store
// (to the compiler a float store may alias them), about 40 instructions a vector.
__attribute__((always_inline)) inline __m512 folded_f32(const ColBlock16& c, __m512i acc, bool bias, Act act) {
  __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), c.b_scale);
  if (bias) y = _mm512_add_ps(y, c.bias);
  return act16(y, act);
}

// Row m of the block, float path: acc (raw u8 x s8 sums) -> compensated, dequantized, biased, activated.
inline __m512 epilogue16_f32(const Int8GemmParams& p, const ColBlock16& c, int64_t m, __m512i acc) {
  __m512 y = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, c.comp));
  y = _mm512_mul_ps(_mm512_mul_ps(y, _mm512_set1_ps(row_scale(p, m))), c.b_scale);
  if (p.bias) y = _mm512_add_ps(y, c.bias);
  return act16(y, p.act);
}

// Row m of the block: acc -> compensated int32, or the float path -> fp32 / bf16 / int8 out.
inline void epilogue16(const Int8GemmParams& p, const ColBlock16& c, int64_t m, __m512i acc) {
  const int64_t idx = m * p.ldo + c.col;
  if (p.out_kind == OutKind::Int32) {
    _mm512_mask_storeu_epi32(static_cast<int32_t*>(p.out) + idx, c.mask, _mm512_sub_epi32(acc, c.comp));
    return;
  }
  store_row16(p.out, idx, p.out_kind, c.mask, epilogue16_f32(p, c, m, acc), p.out_inv_scale);
}

}  // namespace
}  // namespace kernels
}  // namespace fastinfer
