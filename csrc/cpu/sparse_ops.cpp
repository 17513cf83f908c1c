// CPU entry layer of the sparse ops: packing (csr16, csr8, slot128) and the two linear ops, with the
// checks of each layout's contract (csrc/kernels/sparse/sparse.h), then the kernel (AVX-512, AVX2 for the fp32
// layouts, or scalar).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../kernels/sparse/sparse.h"
#include "entry.h"

namespace fastinfer {
namespace cpu {
namespace {

constexpr int64_t kMaxSparseK = 65536;  // uint16 columns; int32 sums of int8 x u8 products stay exact

void check_in_features(int64_t in_features, const char* op) {
  TORCH_CHECK(in_features >= 1 && in_features <= kMaxSparseK, "fastinfer.", op, ": in_features must be in [1, ",
              kMaxSparseK, "], got ", in_features);
}

// A weight to pack: [N, K] on the CPU, K <= 65536, contiguous copy of dtype `want`.
at::Tensor pack_input(const at::Tensor& w, at::ScalarType want, const char* op) {
  check_cpu(w, op, "weight");
  TORCH_CHECK(w.dim() == 2 && w.size(0) >= 1, "fastinfer.", op, ": weight must be 2-D [out_features, in_features] "
              "with out_features >= 1, got shape ", w.sizes());
  check_in_features(w.size(1), op);
  if (want == at::kChar) {
    check_dtype(w, at::kChar, op, "weight");
  } else {
    TORCH_CHECK(at::isFloatingType(w.scalar_type()), "fastinfer.", op, ": weight must be a floating-point tensor, "
                "got ", w.scalar_type());
  }
  return w.to(want).contiguous();
}

void check_total(int64_t total, const char* op, const char* what) {
  TORCH_CHECK(total <= INT32_MAX, "fastinfer.", op, ": the layout would hold ", total, " ", what,
              "; its offsets are int32 (at most ", INT32_MAX, ")");
}

// The tier serving a sparse op, recorded for last_kernel("sparse"): the AVX-512 kernels (F/BW/VL/DQ; the int8
// layout's also needs VBMI byte permutes) from the avx512_vnni tier, the AVX2 ones from the avx2 tier
// (avx_vnni included, and AVX-512 CPUs without VBMI for int8), the scalar path below.
Isa sparse_tier(bool byte_permutes) {
  const Isa isa = active_isa();
  const Isa tier = isa >= Isa::Avx512Vnni && (!byte_permutes || cpu_features().avx512_vbmi) ? Isa::Avx512Vnni
                   : isa >= Isa::Avx2                                                      ? Isa::Avx2
                                                                                           : Isa::Ref;
  record_kernel(Family::Sparse, tier);
  return tier;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pack_csr16(const at::Tensor& weight) {
  const at::Tensor w = pack_input(weight, at::kFloat, "pack_csr16");
  const int64_t N = w.size(0), K = w.size(1);
  at::Tensor row_ptr = at::empty({N + 1}, w.options().dtype(at::kInt));
  const int64_t total = kernels::csr16_plan(w.data_ptr<float>(), N, K, row_ptr.data_ptr<int32_t>());
  check_total(total, "pack_csr16", "entries");
  at::Tensor cols = at::empty({total}, w.options().dtype(at::kShort));
  at::Tensor vals = at::empty({total}, w.options());
  kernels::csr16_fill(w.data_ptr<float>(), N, K, row_ptr.data_ptr<int32_t>(),
                      reinterpret_cast<uint16_t*>(cols.data_ptr<int16_t>()), vals.data_ptr<float>());
  return {row_ptr, cols, vals};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pack_csr8(const at::Tensor& weight) {
  const at::Tensor w = pack_input(weight, at::kFloat, "pack_csr8");
  const int64_t N = w.size(0), K = w.size(1);
  at::Tensor row_ptr = at::empty({N + 1}, w.options().dtype(at::kInt));
  const int64_t total = kernels::csr8_plan(w.data_ptr<float>(), N, K, row_ptr.data_ptr<int32_t>());
  check_total(total, "pack_csr8", "entries");
  at::Tensor offsets = at::empty({total}, w.options().dtype(at::kByte));
  at::Tensor base = at::empty({total / kernels::kCsrPad}, w.options().dtype(at::kShort));
  at::Tensor vals = at::empty({total}, w.options());
  kernels::csr8_fill(w.data_ptr<float>(), N, K, row_ptr.data_ptr<int32_t>(), offsets.data_ptr<uint8_t>(),
                     reinterpret_cast<uint16_t*>(base.data_ptr<int16_t>()), vals.data_ptr<float>());
  return {row_ptr, offsets, base, vals};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pack_slot128(const at::Tensor& weight) {
  const at::Tensor w = pack_input(weight, at::kChar, "pack_slot128");
  const int64_t N = w.size(0), K = w.size(1);
  const int64_t blocks = (N + kernels::kSlotRows - 1) / kernels::kSlotRows;
  const int64_t segs = (K + kernels::kSlotSeg - 1) / kernels::kSlotSeg;
  at::Tensor grp_ptr = at::empty({blocks * segs + 1}, w.options().dtype(at::kInt));
  const int64_t groups = kernels::slot128_plan(w.data_ptr<int8_t>(), N, K, grp_ptr.data_ptr<int32_t>());
  check_total(groups, "pack_slot128", "groups");
  at::Tensor idx = at::empty({groups * kernels::kSlotGroup}, w.options().dtype(at::kByte));
  at::Tensor vals = at::empty({groups * kernels::kSlotGroup}, w.options());
  at::Tensor w_sum = at::empty({N}, w.options().dtype(at::kInt));
  kernels::slot128_fill(w.data_ptr<int8_t>(), N, K, grp_ptr.data_ptr<int32_t>(), idx.data_ptr<uint8_t>(),
                        vals.data_ptr<int8_t>(), w_sum.data_ptr<int32_t>());
  return {grp_ptr, idx, vals, w_sum};
}

// An offsets array: contiguous int32 [count + 1], starting at 0, non-decreasing in steps that are
// multiples of `step` (a power of two), ending at `total`. O(count), a plain scan (this runs per call).
void check_offsets(const at::Tensor& t, int64_t count, int64_t total, int32_t step, const char* op, const char* arg) {
  check_cpu(t, op, arg);
  TORCH_CHECK(t.scalar_type() == at::kInt && t.dim() == 1 && t.numel() == count + 1 && t.is_contiguous(),
              "fastinfer.", op, ": ", arg, " must be a contiguous 1-D int32 tensor of ", count + 1, " offsets, got ",
              t.scalar_type(), " of shape ", t.sizes());
  const int32_t* p = t.data_ptr<int32_t>();
  TORCH_CHECK(p[0] == 0 && p[count] == total, "fastinfer.", op, ": ", arg, " must start at 0 and end at ", total,
              ", got ", p[0], " and ", p[count]);
  bool bad = false;
  for (int64_t i = 0; i < count; ++i) bad |= (p[i + 1] < p[i]) | (((int64_t{p[i + 1]} - p[i]) & (step - 1)) != 0);
  if (!bad) return;
  for (int64_t i = 0; i < count; ++i)
    TORCH_CHECK(p[i + 1] >= p[i] && (int64_t{p[i + 1]} - p[i]) % step == 0, "fastinfer.", op, ": ", arg, "[", i + 1,
                "] - ", arg, "[", i, "] must be a non-negative multiple of ", step, ", got ", int64_t{p[i + 1]} - p[i]);
}

void check_array(const at::Tensor& t, at::ScalarType dtype, int64_t numel, const char* op, const char* arg,
                 const char* what) {
  check_cpu(t, op, arg);
  TORCH_CHECK(t.scalar_type() == dtype && t.dim() == 1 && t.is_contiguous() && t.numel() == numel, "fastinfer.", op,
              ": ", arg, " must be a contiguous 1-D ", dtype, " tensor of ", numel, " ", what, ", got ", t.scalar_type(),
              " of shape ", t.sizes());
}

int64_t next_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// y = x W^T + bias with W in csr16 (cols int16 per entry) or csr8 (cols = uint8 offsets, group_base
// int16 per group of 16 entries).
at::Tensor sparse_linear(const at::Tensor& x, const at::Tensor& row_ptr, const at::Tensor& cols,
                         const at::Tensor& values, const std::optional<at::Tensor>& bias, int64_t in_features,
                         const std::optional<at::Tensor>& group_base) {
  const char* op = "sparse_linear";
  check_in_features(in_features, op);
  check_cpu(values, op, "values");
  TORCH_CHECK(values.scalar_type() == at::kFloat && values.dim() == 1 && values.is_contiguous(), "fastinfer.", op,
              ": values must be a contiguous 1-D float32 tensor, got ", values.scalar_type(), " of shape ",
              values.sizes());
  const int64_t entries = values.numel();
  TORCH_CHECK(row_ptr.dim() == 1 && row_ptr.numel() >= 2, "fastinfer.", op, ": row_ptr must hold N + 1 >= 2 "
              "offsets, got shape ", row_ptr.sizes());
  const int64_t N = row_ptr.numel() - 1;
  check_offsets(row_ptr, N, entries, kernels::kCsrPad, op, "row_ptr");
  const bool csr8 = group_base.has_value();
  if (csr8) {
    check_array(cols, at::kByte, entries, op, "cols", "uint8 column offsets (csr8: one per value)");
    check_array(*group_base, at::kShort, entries / kernels::kCsrPad, op, "group_base",
                "group columns (csr8: one per 16 values)");
  } else {
    check_array(cols, at::kShort, entries, op, "cols", "uint16 columns (csr16: one per value)");
  }
  const at::Tensor bi = bias ? channel_vector(*bias, N, op, "bias", true) : at::Tensor();
  const at::Tensor x2 = activation_2d(x, in_features, op).to(at::kFloat);
  const int64_t M = x2.size(0), K = in_features;
  at::Tensor out = output_empty({M, N}, x2.scalar_type());
  if (M == 0) return out.view(out_shape(x, N)).to(x.scalar_type());

  kernels::CsrParams p;
  p.M = M;
  p.N = N;
  p.K = K;
  p.row_ptr = row_ptr.data_ptr<int32_t>();
  p.vals = values.data_ptr<float>();
  if (csr8) {
    p.offsets = cols.data_ptr<uint8_t>();
    p.group_base = reinterpret_cast<const uint16_t*>(group_base->data_ptr<int16_t>());
  } else {
    p.cols = reinterpret_cast<const uint16_t*>(cols.data_ptr<int16_t>());
  }
  p.bias = bi.defined() ? bi.data_ptr<float>() : nullptr;
  p.out = out.data_ptr<float>();
  p.ldo = N;
  const Isa tier = sparse_tier(/*byte_permutes=*/false);
  const bool vec = tier != Isa::Ref;
  at::Tensor xin = x2, xt;
  if (csr8 && vec) {  // the window kernels read 64 columns from a group's base (<= K): zero tail
    xin = at::zeros({M, K + 64}, x2.options());
    xin.narrow(1, 0, K).copy_(x2);
  }
  p.x = xin.data_ptr<float>();
  p.ldx = xin.size(1);
  if (vec && M > 2) {  // batch path: x transposed, zero rows from K on (row count: sparse.h)
    p.ldxt = M <= 8 ? 8 : kernels::round_up(M, 16);
    p.xt_rows = csr8 ? K + 256 : next_pow2(K);
    xt = at::zeros({p.xt_rows, p.ldxt}, x2.options());
    xt.narrow(0, 0, K).narrow(1, 0, M).copy_(x2.t());
    p.xt = xt.data_ptr<float>();
  }
  const kernels::CsrFn fn = tier == Isa::Avx512Vnni ? kernels::csr_linear_avx512
                            : tier == Isa::Avx2      ? kernels::csr_linear_avx2
                                                     : kernels::csr_linear_ref;
  const int64_t work_per_row = std::max<int64_t>(1, entries / N) * M;
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerTask / work_per_row);
  at::parallel_for(0, N, grain, [&](int64_t b, int64_t e) { fn(p, b, e); });
  return out.view(out_shape(x, N)).to(x.scalar_type());
}

// Dynamic W8A8 with W in slot128: x quantized per token (q + 128 written straight into the padded
// operand), the sparse int8 product, the dense int8 epilogue.
at::Tensor sparse_linear_int8(const at::Tensor& x, const at::Tensor& grp_ptr, const at::Tensor& idx,
                              const at::Tensor& values, const at::Tensor& w_sum, const at::Tensor& w_scale,
                              const std::optional<at::Tensor>& bias, int64_t in_features) {
  const char* op = "sparse_linear_int8";
  check_in_features(in_features, op);
  check_cpu(w_sum, op, "w_sum");
  TORCH_CHECK(w_sum.scalar_type() == at::kInt && w_sum.dim() == 1 && w_sum.numel() >= 1 && w_sum.is_contiguous(),
              "fastinfer.", op, ": w_sum must be a contiguous 1-D int32 tensor of N >= 1 row sums, got ",
              w_sum.scalar_type(), " of shape ", w_sum.sizes());
  const int64_t N = w_sum.numel(), K = in_features;
  const int64_t blocks = (N + kernels::kSlotRows - 1) / kernels::kSlotRows;
  const int64_t segs = (K + kernels::kSlotSeg - 1) / kernels::kSlotSeg;
  check_cpu(values, op, "values");
  TORCH_CHECK(values.scalar_type() == at::kChar && values.dim() == 1 && values.is_contiguous() &&
              values.numel() % kernels::kSlotGroup == 0, "fastinfer.", op, ": values must be a contiguous 1-D int8 "
              "tensor of 64-byte groups, got ", values.scalar_type(), " of shape ", values.sizes());
  const int64_t groups = values.numel() / kernels::kSlotGroup;
  check_offsets(grp_ptr, blocks * segs, groups, 1, op, "grp_ptr");
  check_array(idx, at::kByte, values.numel(), op, "idx", "column indices (one per value)");
  const at::Tensor ws = channel_vector(w_scale, N, op, "w_scale", false);
  const at::Tensor bi = bias ? channel_vector(*bias, N, op, "bias", true) : at::Tensor();
  const at::Tensor x2 = activation_2d(x, in_features, op);  // bf16 stays bf16: the quantizer reads it
  const int64_t M = x2.size(0);
  at::Tensor out = output_empty({M, N}, at::kFloat);
  if (M == 0) return out.view(out_shape(x, N)).to(x.scalar_type());

  at::Tensor xq = output_empty({M, segs * kernels::kSlotSeg}, at::kByte);
  at::Tensor xs = at::empty({M}, x2.options().dtype(at::kFloat));
  quantize_rows(x2, xq, xs, /*shift128=*/true);
  kernels::Slot128Params p;
  p.M = M;
  p.N = N;
  p.K = K;
  p.segs = segs;
  p.xq = xq.data_ptr<uint8_t>();
  p.ldxq = xq.size(1);
  p.x_scale = xs.data_ptr<float>();
  p.grp_ptr = grp_ptr.data_ptr<int32_t>();
  p.idx = idx.data_ptr<uint8_t>();
  p.vals = values.data_ptr<int8_t>();
  p.w_sum = w_sum.data_ptr<int32_t>();
  p.w_scale = ws.data_ptr<float>();
  p.bias = bi.defined() ? bi.data_ptr<float>() : nullptr;
  p.out = out.data_ptr<float>();
  p.ldo = N;
  const Isa tier = sparse_tier(/*byte_permutes=*/true);
  const kernels::Slot128Fn fn = tier == Isa::Avx512Vnni ? kernels::slot128_linear_avx512
                                : tier == Isa::Avx2      ? kernels::slot128_linear_avx2
                                                         : kernels::slot128_linear_ref;
  const int64_t work_per_block = std::max<int64_t>(1, groups / blocks) * kernels::kSlotGroup * M;
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerTask / work_per_block);
  at::parallel_for(0, blocks, grain, [&](int64_t b, int64_t e) { fn(p, b, e); });
  return out.view(out_shape(x, N)).to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastinfer, CPU, m) {
  m.impl("pack_csr16", &pack_csr16);
  m.impl("pack_csr8", &pack_csr8);
  m.impl("pack_slot128", &pack_slot128);
  m.impl("sparse_linear", &sparse_linear);
  m.impl("sparse_linear_int8", &sparse_linear_int8);
}

}  // namespace cpu
}  // namespace fastinfer
