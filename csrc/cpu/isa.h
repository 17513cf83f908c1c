// The one place that asks the CPU which instruction sets it and the OS support.
#pragma once
#include <string>

namespace fastinfer {
namespace cpu {

// Tiers, lowest first. A CPU runs a set of them that need not be contiguous: AVX-VNNI (VEX-encoded
// 256-bit vpdpbusd: Alder Lake, Sapphire Rapids and later Intel cores, Sierra Forest, AMD Zen 5) is
// missing on CPUs that have AVX-512 VNNI (Cascade Lake, Ice Lake, Zen 4). A cap at tier T gives the
// highest tier <= T that the CPU runs (every CPU that runs a tier above Avx2 also runs Avx2).
enum class Isa : int { Ref = 0, Avx2 = 1, AvxVnni = 2, Avx512Vnni = 3, Amx = 4 };
constexpr int kIsaCount = 5;

const char* isa_name(Isa isa);
bool parse_isa(const std::string& s, Isa* out);

struct CpuFeatures {
  bool avx2 = false, fma = false;              // CPUID bits
  bool avx_vnni = false;                       // CPUID.(7,1):EAX[4], the VEX-encoded vpdpbusd
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512_vnni = false;
  bool avx512_vbmi = false;                    // byte permutes (the int8 sparse kernel; not part of a tier)
  bool avx512_bf16 = false;                    // vdpbf16ps (weight-only int8 with bf16 x; not part of a tier)
  bool amx_tile = false, amx_int8 = false;
  bool os_avx = false, os_avx512 = false;      // XCR0 says the OS saves those registers
  bool os_amx = false;                         // arch_prctl granted the tile data permission
  std::string vendor, amx_note;                // why AMX is unusable, when it is
  bool runs[kIsaCount] = {true};               // runs[t]: the CPU and OS can run tier t
  Isa best = Isa::Ref;                         // highest tier in runs
};

// Detected once (thread-safe static), never changes.
const CpuFeatures& cpu_features();

// The ISA kernels run with: the highest tier the CPU runs that is <= min(best implemented,
// FASTINFER_ISA cap, set_isa_cap()).
Isa active_isa();
// Whether this CPU and this build can run tier `isa`.
bool isa_runnable(Isa isa);
// Caps the ISA at run time for the calls made on this thread (tests use it to exercise every path);
// returns the active ISA.
Isa set_isa_cap(Isa cap);
// This thread's run-time cap (Amx, no cap, until set_isa_cap): what a scoped cap restores.
Isa isa_cap();
// Best ISA with kernels in this build.
Isa best_implemented_isa();

}  // namespace cpu
}  // namespace fastinfer
