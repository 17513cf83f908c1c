// The portable squeeze-excitation kernels (gate.h): gate_impl.h's loops on 16-byte vectors (baseline flags).
#include "gate.h"

#include "gate_impl.h"

namespace fastinfer {
namespace kernels {

void channel_sum_s8(const GateParams& p, int64_t i0, int64_t i1) { gate_channel_sum<4>(p, i0, i1); }
void channel_scale_s8(const GateParams& p, int64_t r0, int64_t r1) { gate_channel_scale_any<4>(p, r0, r1); }

}  // namespace kernels
}  // namespace fastinfer
