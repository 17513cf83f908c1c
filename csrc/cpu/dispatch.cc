// The ISA -> kernel table, the only place kernels are chosen.
#include "dispatch.h"

#include <atomic>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>

namespace fastinfer {
namespace cpu {
namespace {

// What served the latest call of each family on this thread (the entry layer records it on the calling
// thread): a server's other threads do not overwrite what a caller reads back.
// -1: no call yet (every family's entry: a static_assert below keeps the list as long as the enum)
thread_local int t_last[static_cast<int>(Family::kCount)] = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
static_assert(static_cast<int>(Family::kCount) == 12, "t_last: one -1 per Family");

// Below this many rows the VNNI kernel beats the tile kernel (measured at 4096 x 4096, 2 threads:
// M <= 8 VNNI 0.34-0.36 ms vs AMX 0.38-0.40; M = 12 VNNI 0.50 vs AMX 0.42): with a 16-row tile mostly
// empty, streaming the weights sets the time, and the VNNI kernel reads them once for all rows.
constexpr int64_t kDefaultAmxMinRows = 9;

int64_t env_amx_min_rows() {
  const char* s = std::getenv("FASTINFER_AMX_MIN_ROWS");
  if (!s || !*s) return kDefaultAmxMinRows;
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  return (end && *end == '\0' && v >= 1) ? v : kDefaultAmxMinRows;  // bad values: the default
}

std::atomic<int64_t> g_amx_min_rows{env_amx_min_rows()};

const kernels::KernelSet& table(Isa isa) {
  switch (isa) {
    case Isa::Amx: return kernels::kernels_amx();
    case Isa::Avx512Vnni: return kernels::kernels_avx512_vnni();
    case Isa::AvxVnni: return kernels::kernels_avx_vnni();
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
    case Family::ConvDirect: return "conv_direct";
    case Family::Add: return "add";
    case Family::GroupConv: return "gconv";
    case Family::Gate: return "gate";
    case Family::QuantizePlanes: return "quantize_planes";
    case Family::AvgPool: return "avg_pool";
    case Family::MaxPool: return "max_pool";
    default: return "?";
  }
}

}  // namespace

// Whether two kernel sets run the same code for `family` (Sparse is not in the sets).
bool same_kernel(const kernels::KernelSet& a, const kernels::KernelSet& b, Family family) {
  switch (family) {
    case Family::Int8Gemm: return a.int8_gemm == b.int8_gemm;
    case Family::W8Gemm: return a.w8_gemm == b.w8_gemm;
    case Family::Quantize: return a.quantize == b.quantize;
    case Family::DwConv: return a.dwconv == b.dwconv;
    case Family::ConvDirect: return a.conv_direct == b.conv_direct;
    case Family::Add: return a.add_act == b.add_act;
    case Family::GroupConv: return a.gconv == b.gconv;
    case Family::Gate: return a.gate_scale == b.gate_scale;
    case Family::QuantizePlanes: return a.quantize_planes == b.quantize_planes;
    case Family::AvgPool: return a.avg_pool == b.avg_pool;
    case Family::MaxPool: return a.max_pool == b.max_pool;
    default: return false;
  }
}

Isa served_tier(Isa isa, Family family) {
  // A set reuses lower tiers' kernels by copying their pointers: the lowest tier holding the same one wrote it.
  for (int t = 0; t < static_cast<int>(isa); ++t)
    if (same_kernel(table(static_cast<Isa>(t)), table(isa), family)) return static_cast<Isa>(t);
  return isa;
}

const kernels::KernelSet& kernels_for(Family family) {
  const Isa isa = active_isa();
  t_last[static_cast<int>(family)] = static_cast<int>(served_tier(isa, family));
  return table(isa);
}

const kernels::KernelSet& gemm_kernels(int64_t M) {
  Isa isa = active_isa();
  if (isa == Isa::Amx && M < g_amx_min_rows.load()) isa = Isa::Avx512Vnni;
  t_last[static_cast<int>(Family::Int8Gemm)] = static_cast<int>(isa);
  return table(isa);
}

int64_t amx_min_rows() { return g_amx_min_rows.load(); }

int64_t set_amx_min_rows(int64_t rows) {
  if (rows < 1) throw std::invalid_argument("set_amx_min_rows: rows must be >= 1, got " + std::to_string(rows));
  return g_amx_min_rows.exchange(rows);
}

Isa isa_of(const kernels::KernelSet& ks) {
  for (Isa isa : {Isa::Amx, Isa::Avx512Vnni, Isa::AvxVnni, Isa::Avx2})
    if (&table(isa) == &ks) return isa;
  return Isa::Ref;
}

void record_kernel(Family family, Isa isa) { t_last[static_cast<int>(family)] = static_cast<int>(isa); }

namespace {
thread_local const char* t_dwconv_path = "";  // static strings only
thread_local const char* t_conv_store = "";
thread_local const char* t_gemm_step = "";
thread_local const char* t_w8_step = "";
thread_local const char* t_add_path = "";
thread_local const char* t_conv_direct_mode = "";
thread_local const char* t_conv_padded_rows = "";
std::atomic<int> g_conv_padded_rows{0};
}  // namespace

void record_gemm_step(const kernels::KernelSet& ks, const kernels::Int8GemmParams* p) {
  t_gemm_step = ks.gemm_step && p ? ks.gemm_step(*p) : "";
}

void record_conv_store(bool stream) { t_conv_store = stream ? "stream" : "cached"; }

void record_w8_step(bool bf16_dot) { t_w8_step = bf16_dot ? "bf16_dot" : "fp32"; }

void record_dwconv_path(const kernels::KernelSet& ks, const kernels::DwConvParams& p) {
  t_dwconv_path = ks.dwconv_path ? ks.dwconv_path(p) : "";
}

void record_add_path(const kernels::KernelSet* ks, const kernels::AddParams& p) {
  t_add_path = ks && ks->add_path ? ks->add_path(p) : "";
}
void record_conv_direct_mode(const char* mode) { t_conv_direct_mode = mode; }
void record_conv_padded_rows(const char* how) { t_conv_padded_rows = how; }
int conv_padded_rows_mode() { return g_conv_padded_rows.load(); }
int64_t set_conv_padded_rows_mode(int64_t mode) {
  if (mode < 0 || mode > 2)
    throw std::invalid_argument("set_conv_padded_rows: mode must be 0 (auto), 1 (always) or 2 (never), got " +
                                std::to_string(mode));
  return g_conv_padded_rows.exchange(static_cast<int>(mode));
}
void clear_kernel(Family family) { t_last[static_cast<int>(family)] = -1; }

std::string last_kernel(const std::string& family) {
  if (family == "dwconv_path") return t_dwconv_path;
  if (family == "conv_store") return t_conv_store;
  if (family == "int8_gemm_step") return t_gemm_step;
  if (family == "w8_gemm_step") return t_w8_step;
  if (family == "add_path") return t_add_path;
  if (family == "conv_direct_mode") return t_conv_direct_mode;
  if (family == "conv_padded_rows") return t_conv_padded_rows;
  for (int i = 0; i < static_cast<int>(Family::kCount); ++i)
    if (family == family_name(static_cast<Family>(i))) {
      const int v = t_last[i];
      return v < 0 ? std::string() : table(static_cast<Isa>(v)).name;
    }
  throw std::invalid_argument("last_kernel: family must be int8_gemm, w8_gemm, quantize, dwconv, sparse, conv_direct, "
                              "add, gconv, gate, quantize_planes, avg_pool, max_pool, dwconv_path, conv_store, "
                              "int8_gemm_step, w8_gemm_step, add_path, conv_direct_mode or conv_padded_rows, got '" +
                              family + "'");
}

std::string capabilities_json() {
  const CpuFeatures& f = cpu_features();
  std::ostringstream o;
  auto b = [](bool v) { return v ? "true" : "false"; };
  o << "{\"vendor\": \"" << f.vendor << "\", \"avx2\": " << b(f.avx2) << ", \"fma\": " << b(f.fma)
    << ", \"avx_vnni\": " << b(f.avx_vnni)
    << ", \"avx512f\": " << b(f.avx512f) << ", \"avx512bw\": " << b(f.avx512bw)
    << ", \"avx512vl\": " << b(f.avx512vl) << ", \"avx512dq\": " << b(f.avx512dq)
    << ", \"avx512_vnni\": " << b(f.avx512_vnni) << ", \"avx512_vbmi\": " << b(f.avx512_vbmi)
    << ", \"avx512_bf16\": " << b(f.avx512_bf16)
    << ", \"amx_tile\": " << b(f.amx_tile)
    << ", \"amx_int8\": " << b(f.amx_int8) << ", \"os_avx\": " << b(f.os_avx)
    << ", \"os_avx512\": " << b(f.os_avx512) << ", \"os_amx\": " << b(f.os_amx)
    << ", \"amx_note\": \"" << f.amx_note << "\", \"detected\": \"" << isa_name(f.best)
    << "\", \"implemented\": \"" << isa_name(best_implemented_isa()) << "\", \"active\": \""
    << isa_name(active_isa()) << "\", \"runnable\": [";
  for (int t = 0, first = 1; t < kIsaCount; ++t)
    if (isa_runnable(static_cast<Isa>(t))) {
      o << (first ? "" : ", ") << "\"" << isa_name(static_cast<Isa>(t)) << "\"";
      first = 0;
    }
  o << "], \"amx_min_rows\": " << amx_min_rows() << "}";
  return o.str();
}

}  // namespace cpu
}  // namespace fastinfer
