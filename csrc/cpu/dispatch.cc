// The ISA -> kernel table, the only place kernels are chosen.
#include "dispatch.h"

#include <atomic>
#include <sstream>
#include <stdexcept>

namespace fastinfer {
namespace cpu {
namespace {

std::atomic<int> g_last[static_cast<int>(Family::kCount)] = {{-1}, {-1}, {-1}, {-1}, {-1}};

const kernels::KernelSet& table(Isa isa) {
  switch (isa) {
    case Isa::Amx:          // no AMX kernels yet: VNNI serves (best_implemented_isa caps this)
    case Isa::Avx512Vnni: return kernels::kernels_avx512_vnni();
    case Isa::Avx2: return kernels::kernels_avx2();
    case Isa::Ref: break;
  }
  return kernels::kernels_ref();
}

const char* family_name(Family f) {
  switch (f) {
    case Family::Int8Gemm: return "int8_gemm";
    case Family::W8Gemm: return "w8_gemm";
    case Family::Quantize: return "quantize";
    case Family::DwConv: return "dwconv";
    case Family::Sparse: return "sparse";
    default: return "?";
  }
}

}  // namespace

const kernels::KernelSet& kernels_for(Family family) {
  const Isa isa = active_isa();
  g_last[static_cast<int>(family)].store(static_cast<int>(isa));
  return table(isa);
}

void record_kernel(Family family, Isa isa) { g_last[static_cast<int>(family)].store(static_cast<int>(isa)); }

std::string last_kernel(const std::string& family) {
  for (int i = 0; i < static_cast<int>(Family::kCount); ++i)
    if (family == family_name(static_cast<Family>(i))) {
      const int v = g_last[i].load();
      return v < 0 ? std::string() : table(static_cast<Isa>(v)).name;
    }
  throw std::invalid_argument("last_kernel: family must be int8_gemm, w8_gemm, quantize, dwconv or sparse, got '" + family + "'");
}

std::string capabilities_json() {
  const CpuFeatures& f = cpu_features();
  std::ostringstream o;
  auto b = [](bool v) { return v ? "true" : "false"; };
  o << "{\"vendor\": \"" << f.vendor << "\", \"avx2\": " << b(f.avx2) << ", \"fma\": " << b(f.fma)
    << ", \"avx512f\": " << b(f.avx512f) << ", \"avx512bw\": " << b(f.avx512bw)
    << ", \"avx512vl\": " << b(f.avx512vl) << ", \"avx512dq\": " << b(f.avx512dq)
    << ", \"avx512_vnni\": " << b(f.avx512_vnni) << ", \"amx_tile\": " << b(f.amx_tile)
    << ", \"amx_int8\": " << b(f.amx_int8) << ", \"os_avx\": " << b(f.os_avx)
    << ", \"os_avx512\": " << b(f.os_avx512) << ", \"os_amx\": " << b(f.os_amx)
    << ", \"amx_note\": \"" << f.amx_note << "\", \"detected\": \"" << isa_name(f.best)
    << "\", \"implemented\": \"" << isa_name(best_implemented_isa()) << "\", \"active\": \""
    << isa_name(active_isa()) << "\"}";
  return o.str();
}

}  // namespace cpu
}  // namespace fastinfer
