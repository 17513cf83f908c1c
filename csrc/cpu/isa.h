// The one place that asks the CPU which instruction sets it and the OS support.
#pragma once
#include <string>

namespace fastinfer {
namespace cpu {

// Ordered: a higher value can run every lower path.
enum class Isa : int { Ref = 0, Avx2 = 1, Avx512Vnni = 2, Amx = 3 };

const char* isa_name(Isa isa);
bool parse_isa(const std::string& s, Isa* out);

struct CpuFeatures {
  bool avx2 = false, fma = false;              // CPUID bits
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512_vnni = false;
  bool avx512_vbmi = false;                    // byte permutes (the int8 sparse kernel; not part of a tier)
  bool amx_tile = false, amx_int8 = false;
  bool os_avx = false, os_avx512 = false;      // XCR0 says the OS saves those registers
  bool os_amx = false;                         // arch_prctl granted the tile data permission
  std::string vendor, amx_note;                // why AMX is unusable, when it is
  Isa best = Isa::Ref;                         // best path this build can run on this CPU
};

// Detected once (thread-safe static), never changes.
const CpuFeatures& cpu_features();

// The ISA kernels run with: min(best implemented, FASTINFER_ISA cap, set_isa_cap()).
Isa active_isa();
// Caps the ISA at run time (tests use it to exercise every path); returns the active ISA.
Isa set_isa_cap(Isa cap);
// Best ISA with kernels in this build.
Isa best_implemented_isa();

}  // namespace cpu
}  // namespace fastinfer
