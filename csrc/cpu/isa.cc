// CPUID + XCR0 + AMX permission, asked once. FASTINFER_ISA caps the result.
#include "isa.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace fastinfer {
namespace cpu {
namespace {

constexpr int kArchReqXcompPerm = 0x1023;   // arch_prctl: request an XSTATE component
constexpr int kXfeatureXtiledata = 18;      // AMX tile data

uint64_t read_xcr0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  const unsigned max_leaf = a;
  char vendor[13] = {};
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  f.vendor = vendor;
  __get_cpuid(1, &a, &b, &c, &d);
  const bool osxsave = c & (1u << 27);
  f.fma = c & (1u << 12);
  if (osxsave) {
    const uint64_t xcr0 = read_xcr0();
    f.os_avx = (xcr0 & 0x6) == 0x6;              // SSE + AVX state
    f.os_avx512 = (xcr0 & 0xe6) == 0xe6;         // + opmask, ZMM_Hi256, Hi16_ZMM
    const bool xcr0_amx = (xcr0 & (3ull << 17)) == (3ull << 17);  // XTILECFG + XTILEDATA
    if (max_leaf >= 7) {
      __cpuid_count(7, 0, a, b, c, d);
      f.avx2 = b & (1u << 5);
      f.avx512f = b & (1u << 16);
      f.avx512dq = b & (1u << 17);
      f.avx512bw = b & (1u << 30);
      f.avx512vl = b & (1u << 31);
      f.avx512_vnni = c & (1u << 11);
      f.avx512_vbmi = c & (1u << 1);
      f.amx_tile = d & (1u << 24);
      f.amx_int8 = d & (1u << 25);
      if (a >= 1) {  // leaf 7's subleaf count (EAX of subleaf 0)
        unsigned a1, b1, c1, d1;
        __cpuid_count(7, 1, a1, b1, c1, d1);
        f.avx_vnni = a1 & (1u << 4);
        f.avx512_bf16 = a1 & (1u << 5);
      }
    }
    if (f.amx_tile && f.amx_int8) {
      if (!xcr0_amx) {
        f.amx_note = "the OS does not enable AMX tile state (XCR0)";
      } else if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) {
        f.amx_note = "the kernel refused arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)";
      } else {
        f.os_amx = true;
      }
    } else {
      f.amx_note = "the CPU has no AMX-INT8";
    }
  }
  auto& runs = f.runs;
  runs[static_cast<int>(Isa::Ref)] = true;
  runs[static_cast<int>(Isa::Avx2)] = f.os_avx && f.avx2 && f.fma;
  runs[static_cast<int>(Isa::AvxVnni)] = runs[static_cast<int>(Isa::Avx2)] && f.avx_vnni;
  runs[static_cast<int>(Isa::Avx512Vnni)] = runs[static_cast<int>(Isa::Avx2)] && f.os_avx512 && f.avx512f &&
                                            f.avx512bw && f.avx512vl && f.avx512dq && f.avx512_vnni;
  runs[static_cast<int>(Isa::Amx)] = runs[static_cast<int>(Isa::Avx512Vnni)] && f.os_amx;
  for (int t = 0; t < kIsaCount; ++t)
    if (runs[t]) f.best = static_cast<Isa>(t);
  return f;
}

Isa env_cap() {
  const char* s = std::getenv("FASTINFER_ISA");
  Isa cap = Isa::Amx;
  if (s && *s && !parse_isa(s, &cap)) cap = Isa::Amx;  // unknown names are reported in Python
  return cap;
}

// set_isa_cap's cap is per thread, like torch.no_grad: a `with fastinfer.use_isa(...)` block caps the calls made
// in it, on its thread, and two threads' blocks cannot undo each other's (one process-wide cap did: a block
// restored what another had set, and could leave the process on the scalar kernels). The kernel set is
// chosen on the calling thread, before at::parallel_for hands the work to others.
thread_local int t_runtime_cap = static_cast<int>(Isa::Amx);

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Ref: return "ref";
    case Isa::Avx2: return "avx2";
    case Isa::AvxVnni: return "avx_vnni";
    case Isa::Avx512Vnni: return "avx512_vnni";
    case Isa::Amx: return "amx";
  }
  return "?";
}

bool parse_isa(const std::string& s, Isa* out) {
  for (Isa i : {Isa::Ref, Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni, Isa::Amx})
    if (s == isa_name(i)) {
      *out = i;
      return true;
    }
  return false;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

Isa best_implemented_isa() { return Isa::Amx; }

bool isa_runnable(Isa isa) {
  return static_cast<int>(isa) <= static_cast<int>(best_implemented_isa()) && cpu_features().runs[static_cast<int>(isa)];
}

Isa active_isa() {
  static const Isa env = env_cap();
  int t = std::min({static_cast<int>(best_implemented_isa()), static_cast<int>(env), t_runtime_cap});
  while (t > 0 && !cpu_features().runs[t]) --t;
  return static_cast<Isa>(t);
}

Isa isa_cap() { return static_cast<Isa>(t_runtime_cap); }

Isa set_isa_cap(Isa cap) {
  t_runtime_cap = static_cast<int>(cap);
  return active_isa();
}

}  // namespace cpu
}  // namespace fastinfer
