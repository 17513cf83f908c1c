// Picks the kernel set for the active ISA and records which one served each op family.
#pragma once
#include <string>

#include "../kernels/int8_gemm/params.h"
#include "isa.h"

namespace fastinfer {
namespace cpu {

// Kernel families, for "which path served the last call" (tests assert on it). ConvDirect: the
// convolution that reads a padded input in place (AMX, AVX-512 VNNI); one that gathers rows clears it.
// GroupConv: the narrow-group convolution (KernelSet::gconv); a grouped one that gathers rows clears it.
// Gate: the squeeze-excitation pool and scale on int8 (KernelSet::gate_sum / gate_scale). QuantizePlanes: an NCHW
// fp32 convolution input quantized straight into NHWC int8 (KernelSet::quantize_planes); one copied to
// channels-last first clears it. AvgPool, MaxPool: int8 average and max pooling (KernelSet::avg_pool, max_pool;
// 'ref': the portable kernel).
enum class Family : int {
  Int8Gemm = 0, W8Gemm = 1, Quantize = 2, DwConv = 3, Sparse = 4, ConvDirect = 5, Add = 6, GroupConv = 7, Gate = 8,
  QuantizePlanes = 9, AvgPool = 10, MaxPool = 11, kCount = 12
};

// The tier whose code serves `family` in tier isa's kernel set, found from the sets themselves: AMX adds
// only the int8 GEMM and the direct convolution (its other families are the AVX-512 VNNI kernels),
// AVX-VNNI those and the depthwise convolution (the rest are AVX2's).
Isa served_tier(Isa isa, Family family);
// The kernel set for the active ISA; records the tier that serves `family` (served_tier).
const kernels::KernelSet& kernels_for(Family family);
// The shape-bucket choice for an int8 GEMM of M rows (the one place it is made): on AMX, fewer than
// amx_min_rows() rows go to the VNNI kernels, which stream the weights without tile overhead.
const kernels::KernelSet& gemm_kernels(int64_t M);
int64_t amx_min_rows();
// Sets the threshold (>= 1; tests use 1 to send every shape through the tile kernel); returns the old one.
int64_t set_amx_min_rows(int64_t rows);
// The tier whose table entry `ks` is.
Isa isa_of(const kernels::KernelSet& ks);
// For families whose kernels exist on fewer tiers than the GEMM's: records the tier that served.
void record_kernel(Family family, Isa isa);
void clear_kernel(Family family);  // last_kernel(family) == "" again
// Which way of the depthwise kernel served the latest call (KernelSet::dwconv_path; "" where the set has one):
// last_kernel("dwconv_path").
void record_dwconv_path(const kernels::KernelSet& ks, const kernels::DwConvParams& p);
// Which step of the int8 GEMM serves p (KernelSet::gemm_step; "" where the set has one, or p is null: a
// call that runs no GEMM kernel, or several weights): last_kernel("int8_gemm_step").
void record_gemm_step(const kernels::KernelSet& ks, const kernels::Int8GemmParams* p);
// Whether the latest convolution asked its kernels for non-temporal fp32 stores (Int8GemmParams::stream_out):
// last_kernel("conv_store") is "stream" or "cached".
void record_conv_store(bool stream);
// How the latest weight-only GEMM multiplied: "bf16_dot" (KernelSet::w8_gemm_bf16 on bf16 x) or "fp32" (w8_gemm;
// bf16 x widened first): last_kernel("w8_gemm_step").
void record_w8_step(bool bf16_dot);
// Which way the latest int8_add took inside its kernel (KernelSet::add_path; "" for a set with one way, or ks
// null: the portable kernel): last_kernel("add_path").
void record_add_path(const kernels::KernelSet* ks, const kernels::AddParams& p);
// How the latest convolution's direct kernel read its input (a static string: "padded_width", "rows",
// "stride_planes", "row_segments"; "" when no direct kernel served): last_kernel("conv_direct_mode").
void record_conv_direct_mode(const char* mode);
// Whether the latest one-group convolution skipped the kernel rows that read its zero padding ("skipped"),
// computed them ("computed"), or took a path that does not decide ("": depthwise, grouped, a plain 1x1 GEMM):
// last_kernel("conv_padded_rows").
void record_conv_padded_rows(const char* how);
// When convolutions skip kernel rows in the padding (conv_ops.cpp, PaddedKernelRows):
// 0 "auto" (where the estimate says it pays), 1 "always", 2 "never". Returns the old value.
int conv_padded_rows_mode();
int64_t set_conv_padded_rows_mode(int64_t mode);
std::string last_kernel(const std::string& family);  // "" before the first call
std::string capabilities_json();

// Runs the active ISA's int8 peak probe on every intra-op thread; returns the ops done.
int64_t int8_peak_probe(int64_t iters);  // defined in int8_ops.cpp (needs at::parallel_for)

}  // namespace cpu
}  // namespace fastinfer
