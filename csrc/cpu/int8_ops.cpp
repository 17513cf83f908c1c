// CPU entry layer for the int8 GEMM ops: every tensor check, then Params, then the kernel table.
// (csrc/cpu/*.cpp and registration.cpp are the only files that see at::Tensor.)
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "../kernels/int8_gemm/pack.h"
#include "../kernels/int8_gemm/params.h"
#include "dispatch.h"
#include "entry.h"
#include "ops.h"

namespace fastinfer {
namespace cpu {
namespace {

void fill_int8_params(kernels::Int8GemmParams& p, const PackedHeader& h, const at::Tensor& packed,
                      const at::Tensor& a_u8, int64_t M) {
  set_packed_weight(p, h, packed.data_ptr<uint8_t>());
  p.M = M;
  p.a = a_u8.data_ptr<uint8_t>();
  p.lda = a_u8.stride(0);
}

// The float epilogue's inputs: per-row and per-column scales, optional bias, a contiguous [M, N] output.
void fill_epilogue(kernels::Int8GemmParams& p, const at::Tensor& a_scale, const at::Tensor& b_scale,
                   const at::Tensor& bias, at::Tensor& out, OutKind kind) {
  p.a_scale = a_scale.data_ptr<float>();
  p.b_scale = b_scale.data_ptr<float>();
  p.bias = bias.defined() ? bias.data_ptr<float>() : nullptr;
  p.out = out.data_ptr();
  p.ldo = out.size(1);
  p.out_kind = kind;
}

// int8 activations [M, K] -> the operand [M, K_pad] the kernel set reads: u8 (a + 128) for the VNNI
// kernels; for AMX (signed_a) the s8 rows themselves when they can be read in place (contiguous, K a
// multiple of 4, a row stride that does not alias in L1: operand_stride), else a padded copy.
at::Tensor gemm_operand(const at::Tensor& a, const PackedHeader& h, const kernels::KernelSet& ks, const char* op) {
  check_cpu(a, op, "a");
  check_dtype(a, at::kChar, op, "a");
  TORCH_CHECK(a.dim() == 2, "fastinfer.", op, ": a must be 2-D [M, K], got shape ", a.sizes());
  TORCH_CHECK(a.size(1) == h.K, "fastinfer.", op, ": a.shape[1] must equal the weight's K=", h.K,
              ", got a of shape ", a.sizes());
  const int64_t M = a.size(0), K = h.K, ld = kernels::operand_stride(h.K_pad);
  if (ks.signed_a && a.is_contiguous() && K == h.K_pad && ld == h.K_pad) return a.view(at::kByte);
  const at::Tensor ac = a.contiguous();
  at::Tensor u = output_empty({M, ld}, at::kByte);
  at::parallel_for(0, M, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, K)), [&](int64_t b, int64_t e) {
    kernels::copy_operand_rows(ac.data_ptr<int8_t>() + b * K, K, e - b, K, u.data_ptr<uint8_t>() + b * ld, ld,
                               h.K_pad, !ks.signed_a);
  });
  return u.narrow(1, 0, h.K_pad);  // row stride ld, K_pad valid columns
}

// ---------------------------------------------------------------- ops

std::tuple<at::Tensor, at::Tensor> quantize_per_token(const at::Tensor& x) {
  check_cpu(x, "quantize_per_token", "x");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "fastinfer.quantize_per_token: x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 2, "fastinfer.quantize_per_token: x must be 2-D [M, K], got shape ", x.sizes());
  const at::Tensor xc = x.contiguous();
  at::Tensor q = output_empty({x.size(0), x.size(1)}, at::kChar);
  at::Tensor scale = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  if (x.numel() > 0) quantize_rows(xc, q, scale, /*shift128=*/false);
  else if (x.size(0) > 0) scale.zero_();
  return {q, scale};
}

at::Tensor pack_int8_weight(const at::Tensor& w) {
  check_cpu(w, "pack_int8_weight", "weight");
  check_dtype(w, at::kChar, "pack_int8_weight", "weight");
  TORCH_CHECK(w.dim() == 2, "fastinfer.pack_int8_weight: weight must be 2-D [N, K], got shape ", w.sizes());
  TORCH_CHECK(w.size(0) >= 1 && w.size(1) >= 1,
              "fastinfer.pack_int8_weight: weight must have N >= 1 and K >= 1, got shape ", w.sizes());
  check_max_k(w.size(1), "pack_int8_weight", "weight's K (in_features)");
  const at::Tensor wc = w.contiguous();
  at::Tensor out = at::empty({kernels::packed_nbytes(w.size(0), w.size(1))}, w.options().dtype(at::kByte));
  kernels::pack_int8_weight(wc.data_ptr<int8_t>(), wc.stride(0), w.size(0), w.size(1), out.data_ptr<uint8_t>());
  return out;
}

at::Tensor unpack_int8_weight(const at::Tensor& packed) {
  const PackedHeader h = checked_header(packed, "unpack_int8_weight", "packed");
  at::Tensor w = at::empty({h.N, h.K}, packed.options().dtype(at::kChar));
  kernels::unpack_int8_weight(packed.data_ptr<uint8_t>(), w.data_ptr<int8_t>(), h.K);
  return w;
}

at::Tensor int8_mm(const at::Tensor& a, const at::Tensor& packed_b, int64_t n) {
  const PackedHeader h = checked_header(packed_b, "int8_mm", "packed_b");
  TORCH_CHECK(n == h.N, "fastinfer.int8_mm: n=", n, " does not match the packed weight's N=", h.N);
  const int64_t M = a.dim() == 2 ? a.size(0) : 0;
  const auto& ks = gemm_kernels(M);
  const at::Tensor u = gemm_operand(a, h, ks, "int8_mm");
  at::Tensor out = output_empty({M, h.N}, at::kInt);
  if (M == 0) return out;
  kernels::Int8GemmParams p;
  fill_int8_params(p, h, packed_b, u, M);
  p.out = out.data_ptr();
  p.ldo = h.N;
  p.out_kind = OutKind::Int32;
  run_gemm(p, ks.int8_gemm, ks);
  return out;
}

OutKind out_kind_of(at::ScalarType t, const char* op) {
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16, "fastinfer.", op,
              ": out_dtype must be torch.float32 or torch.bfloat16, got ", t);
  return t == at::kFloat ? OutKind::Float32 : OutKind::BFloat16;
}

at::Tensor int8_scaled_mm(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& packed_b,
                          const at::Tensor& b_scale, const std::optional<at::Tensor>& bias,
                          std::optional<at::ScalarType> out_dtype) {
  const char* op = "int8_scaled_mm";
  const PackedHeader h = checked_header(packed_b, op, "packed_b");
  const at::ScalarType odt = out_dtype.value_or(at::kFloat);
  const OutKind kind = out_kind_of(odt, op);
  const int64_t M = a.dim() == 2 ? a.size(0) : 0;
  const auto& ks = gemm_kernels(M);
  const at::Tensor u = gemm_operand(a, h, ks, op);
  const at::Tensor as = channel_vector(a_scale, M, op, "a_scale", false);
  const at::Tensor bs = channel_vector(b_scale, h.N, op, "b_scale", false);
  const at::Tensor bi = bias ? channel_vector(*bias, h.N, op, "bias", true) : at::Tensor();
  at::Tensor out = output_empty({M, h.N}, odt);
  if (M == 0) return out;
  kernels::Int8GemmParams p;
  fill_int8_params(p, h, packed_b, u, M);
  fill_epilogue(p, as, bs, bi, out, kind);
  run_gemm(p, ks.int8_gemm, ks);
  return out;
}

// Shared body of the w8a8 linear ops: quantize x (per token, or per tensor with static_inv), GEMM,
// fused epilogue. Output: x's dtype, or int8 when out_scale is given.
at::Tensor w8a8_linear(const char* op, const at::Tensor& x, const at::Tensor& packed_w, const at::Tensor& w_scale,
                       const std::optional<at::Tensor>& bias, const std::string& activation,
                       std::optional<double> x_scale, std::optional<double> out_scale,
                       const std::optional<at::Tensor>& x_channel_scale) {
  const PackedHeader h = checked_header(packed_w, op, "packed_w");
  const at::Tensor cs = x_channel_scale ? channel_vector(*x_channel_scale, h.K, op, "x_channel_scale", false)
                                        : at::Tensor();
  const kernels::Act act = parse_act(activation, op);
  const at::Tensor x2 = activation_2d(x, h.K, op);
  const at::Tensor bs = channel_vector(w_scale, h.N, op, "w_scale", false);
  const at::Tensor bi = bias ? channel_vector(*bias, h.N, op, "bias", true) : at::Tensor();
  check_scale(x_scale, op, "x_scale");
  check_scale(out_scale, op, "out_scale");
  const int64_t M = x2.size(0);
  at::Tensor out = output_empty({M, h.N}, out_scale ? at::kChar : x.scalar_type());
  if (M > 0) {
    const auto& ks = gemm_kernels(M);
    const bool shift = !ks.signed_a;
    // The GEMM operand, written by the quantizer (no separate pass); row stride from operand_stride.
    at::Tensor q = output_empty({M, kernels::operand_stride(h.K_pad)}, at::kByte).narrow(1, 0, h.K_pad);
    // Static: one scale for every row (a_scale_per_tensor); dynamic: the quantizer's per-row scales.
    at::Tensor a_scale = at::empty({x_scale ? 1 : M}, x.options().dtype(at::kFloat));
    if (x_scale) {
      a_scale.fill_(static_cast<float>(*x_scale));
      at::Tensor none;
      quantize_rows(x2, q, none, shift, 1.0f / static_cast<float>(*x_scale),
                    cs.defined() ? cs.data_ptr<float>() : nullptr);
    } else {
      quantize_rows(x2, q, a_scale, shift, 0.0f, cs.defined() ? cs.data_ptr<float>() : nullptr);
    }
    kernels::Int8GemmParams p;
    fill_int8_params(p, h, packed_w, q, M);
    fill_epilogue(p, a_scale, bs, bi, out,
                  out_scale ? OutKind::Int8 : (x.scalar_type() == at::kFloat ? OutKind::Float32 : OutKind::BFloat16));
    p.a_scale_per_tensor = x_scale.has_value();
    p.act = act;
    p.out_inv_scale = out_scale ? 1.0f / static_cast<float>(*out_scale) : 1.0f;
    run_gemm(p, ks.int8_gemm, ks);
  }
  return out.view(out_shape(x, h.N));
}

}  // namespace

at::Tensor int8_linear_dynamic(const at::Tensor& x, const at::Tensor& packed_w, const at::Tensor& w_scale,
                               const std::optional<at::Tensor>& bias, const std::string& activation,
                               const std::optional<at::Tensor>& x_channel_scale) {
  return w8a8_linear("int8_linear_dynamic", x, packed_w, w_scale, bias, activation, std::nullopt, std::nullopt,
                     x_channel_scale);
}

at::Tensor int8_linear_static(const at::Tensor& x, double x_scale, const at::Tensor& packed_w, const at::Tensor& w_scale,
                              const std::optional<at::Tensor>& bias, const std::string& activation,
                              std::optional<double> out_scale, const std::optional<at::Tensor>& x_channel_scale) {
  return w8a8_linear("int8_linear_static", x, packed_w, w_scale, bias, activation, x_scale, out_scale,
                     x_channel_scale);
}

namespace {

at::Tensor int8_linear_weight_only(const at::Tensor& x, const at::Tensor& packed_w, const at::Tensor& w_scale,
                                   const std::optional<at::Tensor>& bias) {
  const char* op = "int8_linear_weight_only";
  const PackedHeader h = checked_header(packed_w, op, "packed_w");
  const at::Tensor xr = activation_2d(x, h.K, op);
  const at::Tensor bs = channel_vector(w_scale, h.N, op, "w_scale", false);
  const at::Tensor bi = bias ? channel_vector(*bias, h.N, op, "bias", true) : at::Tensor();
  const int64_t M = xr.size(0);
  at::Tensor out = output_empty({M, h.N}, x.scalar_type());
  if (M > 0) {
    const auto& ks = kernels_for(Family::W8Gemm);
    // bf16 x of 2 rows or more on a CPU with AVX512_BF16: the bf16 dot-product kernel reads it as it is; else
    // an fp32 copy. (One row is bound by the weight's stream, where the bf16 kernel's wider conversion of each
    // weight block cost 10-20% on a Zen 4: 0.49 against 0.41 ms at 4096 x 4096; from 2 rows it is ahead.)
    const bool bf16_dot = M >= 2 && x.scalar_type() == at::kBFloat16 && ks.w8_gemm_bf16 != nullptr &&
                          cpu_features().avx512_bf16;
    const at::Tensor x2 = bf16_dot ? xr : xr.to(at::kFloat);
    kernels::W8GemmParams p;
    p.M = M;
    p.N = h.N;
    p.K = h.K;
    p.K_pad = h.K_pad;
    if (bf16_dot)
      p.a_bf16 = reinterpret_cast<const uint16_t*>(x2.data_ptr<at::BFloat16>());
    else
      p.a = x2.data_ptr<float>();
    p.lda = x2.stride(0);
    p.b = reinterpret_cast<const int8_t*>(packed_w.data_ptr<uint8_t>() + h.data_offset);
    p.b_scale = bs.data_ptr<float>();
    p.bias = bi.defined() ? bi.data_ptr<float>() : nullptr;
    p.out = out.data_ptr();
    p.ldo = h.N;
    p.out_kind = x.scalar_type() == at::kFloat ? OutKind::Float32 : OutKind::BFloat16;
    run_gemm(p, bf16_dot ? ks.w8_gemm_bf16 : ks.w8_gemm, ks);
    record_w8_step(bf16_dot);
  }
  return out.view(out_shape(x, h.N));
}

}  // namespace

int64_t int8_peak_probe(int64_t iters) {
  TORCH_CHECK(iters >= 1, "fastinfer.int8_peak_probe: iters must be >= 1, got ", iters);
  const auto& ks = kernels_for(Family::Int8Gemm);
  TORCH_CHECK(ks.peak_probe != nullptr, "fastinfer.int8_peak_probe: the active ISA (", ks.name,
              ") has no vector int8 instruction to probe");
  const int64_t threads = at::get_num_threads();
  std::vector<int64_t> done(threads, 0);
  at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) done[t] = ks.peak_probe(iters);
  });
  int64_t total = 0;
  for (int64_t d : done) total += d;
  return total;
}

TORCH_LIBRARY_IMPL(fastinfer, CPU, m) {
  m.impl("quantize_per_token", &quantize_per_token);
  m.impl("pack_int8_weight", &pack_int8_weight);
  m.impl("unpack_int8_weight", &unpack_int8_weight);
  m.impl("int8_mm", &int8_mm);
  m.impl("int8_scaled_mm", &int8_scaled_mm);
  m.impl("int8_linear_dynamic", &int8_linear_dynamic);
  m.impl("int8_linear_static", &int8_linear_static);
  m.impl("int8_linear_weight_only", &int8_linear_weight_only);
}

}  // namespace cpu
}  // namespace fastinfer
