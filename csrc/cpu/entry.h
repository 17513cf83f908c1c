// Shared pieces of the CPU entry layer: argument checks with messages that name the argument,
// and the work split of the GEMM-shaped kernels. Included only by csrc/cpu/*.cpp.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <type_traits>

#include "../kernels/int8_gemm/pack.h"
#include "../kernels/int8_gemm/params.h"
#include "../op_args.h"
#include "dispatch.h"
#include "output_pool.h"

namespace fastinfer {
namespace cpu {

using kernels::OutKind;
using kernels::PackedHeader;

constexpr int64_t kMinMacsPerTask = 1 << 18;  // below this, a thread hand-off costs more than it saves

inline void check_cpu(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(t.device().is_cpu(), "fastinfer.", op, ": ", arg, " must be a CPU tensor, got a tensor on ",
              t.device(), " (this op has no kernel for that device in this build)");
}

inline void check_dtype(const at::Tensor& t, at::ScalarType want, const char* op, const char* arg) {
  TORCH_CHECK(t.scalar_type() == want, "fastinfer.", op, ": ", arg, " must have dtype ", want, ", got ",
              t.scalar_type());
}

// The header of the packed weight in bytes [data, data + nbytes) (a row of a [groups, bytes] conv weight).
inline PackedHeader checked_header(const uint8_t* data, int64_t nbytes, const char* op, const char* arg) {
  PackedHeader h;
  const char* err = kernels::validate_packed(data, nbytes, &h);
  TORCH_CHECK(err == nullptr, "fastinfer.", op, ": ", arg, " is not a valid packed weight: ", err);
  return h;
}

inline PackedHeader checked_header(const at::Tensor& packed, const char* op, const char* arg) {
  check_cpu(packed, op, arg);
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 1,
              "fastinfer.", op, ": ", arg, " must be a 1-D uint8 packed weight (from fastinfer.ops.pack_int8_weight), "
              "got dtype ", packed.scalar_type(), " with ", packed.dim(), " dims");
  TORCH_CHECK(packed.is_contiguous(), "fastinfer.", op, ": ", arg, " must be contiguous");
  return checked_header(packed.data_ptr<uint8_t>(), packed.numel(), op, arg);
}

// The packed weight's part of the GEMM parameters (shape, n16k4 blocks, column sums); base: the start
// of a buffer checked_header accepted.
inline void set_packed_weight(kernels::Int8GemmParams& p, const PackedHeader& h, const uint8_t* base) {
  p.N = h.N;
  p.K = h.K;
  p.K_pad = h.K_pad;
  p.b = reinterpret_cast<const int8_t*>(base + h.data_offset);
  p.b_colsum = reinterpret_cast<const int32_t*>(base + h.colsum_offset);
  p.b_no_min128 = kernels::packed_no_min128(h);
  p.b_s7 = kernels::packed_s7(h);
}

// Activations [..., K] of dtype fp32/bf16 -> contiguous [M, K] (x's dtype kept: the quantizers read bf16).
inline at::Tensor activation_2d(const at::Tensor& x, int64_t K, const char* op) {
  check_cpu(x, op, "x");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "fastinfer.", op,
              ": x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, "fastinfer.", op, ": x must have at least 1 dimension [..., K], got a scalar");
  TORCH_CHECK(x.size(-1) == K, "fastinfer.", op, ": x.shape[-1] must equal the weight's in_features K=", K,
              ", got x of shape ", x.sizes());
  return x.reshape({-1, K}).contiguous();
}

// Per-channel vectors (scales, bias): 1-D, length n, fp32 contiguous (other float dtypes converted).
inline at::Tensor channel_vector(const at::Tensor& t, int64_t n, const char* op, const char* arg, bool any_float) {
  check_cpu(t, op, arg);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, "fastinfer.", op, ": ", arg, " must be 1-D of length ", n,
              ", got shape ", t.sizes());
  if (any_float) {
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastinfer.", op, ": ", arg,
                " must be a floating-point tensor, got ", t.scalar_type());
  } else {
    check_dtype(t, at::kFloat, op, arg);
  }
  if (t.scalar_type() == at::kFloat && t.is_contiguous()) return t;  // the usual case, without a dispatch
  return t.to(at::kFloat).contiguous();
}

// Column panel width for N_pad columns and items_per_panel row chunks: the kernel set's panel, halved
// (in steps of 32 columns) until every thread has at least two items, so that a wide AMX panel does
// not leave a thread idle on a narrow layer (e.g. 128 x 384 x 1536: 3 panels of 512 -> 12 of 128).
// Still fewer items than that at 64 columns (few rows and few columns: a batch-1 1x1 convolution of a
// 7 x 7 image is one row item), the columns are split in panels of equal width (a multiple of 16), as
// many as make the item count a multiple of the thread count: MobileNetV2's 960 -> 160 at 7 x 7, batch 1,
// had 3 panels of 64, 64 and 32 columns, so one thread did 4/5 of the work (2 threads: 1.02x 1 thread).
inline int64_t panel_width(const kernels::KernelSet& ks, int64_t N_pad, int64_t items_per_panel) {
  const int64_t threads = at::get_num_threads(), want = 2 * threads;
  int64_t panel = ks.n_panel;
  while (panel > 64 && ((N_pad + panel - 1) / panel) * items_per_panel < want)
    panel = kernels::round_up(panel / 2, 32);
  if (threads > 1 && ((N_pad + panel - 1) / panel) * items_per_panel < want) {
    const int64_t panels = threads / std::gcd(threads, items_per_panel);
    panel = kernels::round_up((N_pad + panels - 1) / panels, kernels::kPackNB);
  }
  return panel;
}

// Splits the GEMM into (column panel, row chunk) items: consecutive items share a weight panel.
template <typename Params, typename Fn>
inline void run_gemm(const Params& p, Fn fn, const kernels::KernelSet& ks) {
  if constexpr (std::is_same_v<Params, kernels::Int8GemmParams>) record_gemm_step(ks, &p);
  const int64_t N_pad = kernels::round_up(p.N, kernels::kPackNB);
  const int64_t chunks = (p.M + ks.m_chunk - 1) / ks.m_chunk;
  const int64_t n_panel = panel_width(ks, N_pad, chunks);
  const int64_t panels = (N_pad + n_panel - 1) / n_panel;
  const int64_t macs_per_item = std::max<int64_t>(1, std::min(ks.m_chunk, p.M) * n_panel * p.K);
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerTask / macs_per_item);
  at::parallel_for(0, panels * chunks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const int64_t panel = it / chunks, chunk = it % chunks;
      const int64_t m0 = chunk * ks.m_chunk, n0 = panel * n_panel;
      fn(p, m0, std::min(p.M, m0 + ks.m_chunk), n0, std::min(N_pad, n0 + n_panel));
    }
  });
}

// Quantizes the rows of x2 (contiguous [M, K], fp32/bf16) into q ([M, K_pad]) and scale ([M]).
// static_inv > 0: fixed per-tensor scale (scale may be undefined then).
inline void quantize_rows(const at::Tensor& x2, at::Tensor& q, at::Tensor& scale, bool shift128,
                          float static_inv = 0.0f, const float* col_scale = nullptr,
                          const float* col_shift = nullptr, bool relu = false) {
  kernels::QuantizeParams p;
  p.M = x2.size(0);
  p.K = x2.size(1);
  p.x = x2.data_ptr();
  p.x_is_bf16 = x2.scalar_type() == at::kBFloat16;
  p.x_is_s8 = x2.scalar_type() == at::kChar;
  p.ldx = x2.stride(0);
  p.q = q.data_ptr();
  p.ldq = q.stride(0);
  p.K_pad = q.size(1);
  p.shift128 = shift128;
  p.scale = scale.defined() ? scale.data_ptr<float>() : nullptr;
  p.static_inv = static_inv;
  p.col_scale = col_scale;
  p.col_shift = col_shift;
  p.relu = relu;
  const auto& ks = kernels_for(Family::Quantize);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, p.K));
  at::parallel_for(0, p.M, grain, [&](int64_t b, int64_t e) { ks.quantize(p, b, e); });
}

}  // namespace cpu
}  // namespace fastinfer
