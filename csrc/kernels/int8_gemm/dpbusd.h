// vpdpbusd (u8 x s8 dword products added to int32 lanes) through inline asm, for the AVX-512 VNNI kernels.
//
// Why not the intrinsic: in a loop nest with run-time trip counts, GCC 12 keeps _mm512_dpbusd_epi32's
// accumulators moving between registers (objdump of the narrow-group convolution's broadcast tile: 45
// vmovdqa around every 8 vpdpbusd), which takes issue slots from the products. The asm's "+v" ties the
// accumulator to the instruction's destination, so it stays in one register. Used where it measured faster
// (the narrow-group tiles, gconv_avx512.cc); elsewhere the intrinsic stays: in the GEMM tiles, the direct
// convolution and the depthwise row quads the asm measured 0.86-1.00x (GCC then reloads operands it had
// kept in registers; benchmarks/RESULTS.md, session 27). Include after `#pragma GCC target` enables AVX-512
// VNNI; internal linkage, as avx512_common.h's helpers.
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

}  // namespace
}  // namespace kernels
}  // namespace fastinfer
