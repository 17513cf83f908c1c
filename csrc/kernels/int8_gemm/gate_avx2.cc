// The squeeze-excitation kernels (csrc/kernels/conv/gate.h) on 32-byte vectors: gate_impl.h's loops compiled
// for AVX2. The AVX2 set (and AVX-VNNI's, which copies it) holds them.
#include <cstdint>
#include <cstring>

#include <immintrin.h>

#include "params.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

#define FASTINFER_GATE_ISA 256
#include "../conv/gate_impl.h"

namespace fastinfer {
namespace kernels {

void gate_sum_avx2(const GateParams& p, int64_t i0, int64_t i1) { gate_channel_sum<8>(p, i0, i1); }
void gate_scale_avx2(const GateParams& p, int64_t r0, int64_t r1) { gate_channel_scale_any<8>(p, r0, r1); }

}  // namespace kernels
}  // namespace fastinfer

#pragma GCC pop_options
