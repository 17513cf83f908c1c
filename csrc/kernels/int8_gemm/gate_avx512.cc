// The squeeze-excitation kernels (csrc/kernels/conv/gate.h) on 64-byte vectors: gate_impl.h's loops compiled
// for AVX-512 (vpmovsxbd, vcvtdq2ps, vpmovdb). The AVX-512 VNNI set (and AMX's, which copies it) holds them.
#include <cstdint>
#include <cstring>

#include <immintrin.h>

#include "params.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

#define FASTINFER_GATE_ISA 512
#include "../conv/gate_impl.h"

namespace fastinfer {
namespace kernels {

void gate_sum_avx512(const GateParams& p, int64_t i0, int64_t i1) { gate_channel_sum<16>(p, i0, i1); }
void gate_scale_avx512(const GateParams& p, int64_t r0, int64_t r1) { gate_channel_scale_any<16>(p, r0, r1); }

}  // namespace kernels
}  // namespace fastinfer

#pragma GCC pop_options
