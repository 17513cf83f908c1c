// vpdpbusd (u8 x s8 dword products added to int32 lanes) through inline asm, for the AVX-512 VNNI kernels.
//
// Why not the intrinsics: in a loop, GCC 12 keeps _mm512_dpbusd_epi32's and _mm256_dpbusd_epi32's
// accumulators moving between registers (objdump of the narrow-group convolution's broadcast tile: 45
// vmovdqa around every 8 vpdpbusd; of several GEMM edge tiles: 2 per product), which costs issue slots
// the products need. The asm's "+v" ties the accumulator to the instruction's destination, so it stays in
// one register. Include after `#pragma GCC target` enables AVX-512 VNNI (and VL for the 256-bit form);
// internal linkage, as avx512_common.h's helpers.
#pragma once

#include <immintrin.h>

namespace fastinfer {
namespace kernels {
namespace {

// acc + the sums of 4 products a[4i + k] (u8) * b[4i + k] (s8) in lane i
inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}
// The 256-bit form, EVEX-encoded (AVX512VL): AMD Zen 4 has it and no AVX-VNNI.
inline __m256i dpbusd(__m256i acc, __m256i a, __m256i b) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

}  // namespace
}  // namespace kernels
}  // namespace fastinfer
