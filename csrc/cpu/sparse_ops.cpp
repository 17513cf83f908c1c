// CPU entry layer for the sparse linear op: checks of the csr16 layout, then the kernel
// (AVX-512 tier or the scalar reference).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>

#include "../kernels/sparse/sparse.h"
#include "entry.h"

namespace fastinfer {
namespace cpu {
namespace {

constexpr int64_t kMaxSparseK = 65536;  // uint16 column indices

at::Tensor sparse_linear(const at::Tensor& x, const at::Tensor& row_ptr, const at::Tensor& cols,
                         const at::Tensor& values, const std::optional<at::Tensor>& w_scale,
                         const std::optional<at::Tensor>& bias, int64_t in_features) {
  const char* op = "sparse_linear";
  check_cpu(x, op, "x");
  check_cpu(row_ptr, op, "row_ptr");
  check_cpu(cols, op, "cols");
  check_cpu(values, op, "values");
  TORCH_CHECK(in_features >= 1 && in_features <= kMaxSparseK, "fastinfer.sparse_linear: in_features must be in "
              "[1, ", kMaxSparseK, "] (uint16 column indices), got ", in_features);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "fastinfer.sparse_linear: x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "fastinfer.sparse_linear: x.shape[-1] must equal "
              "in_features=", in_features, ", got x of shape ", x.sizes());
  TORCH_CHECK(row_ptr.scalar_type() == at::kInt && row_ptr.dim() == 1 && row_ptr.numel() >= 2 &&
              row_ptr.is_contiguous(), "fastinfer.sparse_linear: row_ptr must be a contiguous 1-D int32 tensor of "
              "N + 1 >= 2 offsets, got ", row_ptr.scalar_type(), " of shape ", row_ptr.sizes());
  TORCH_CHECK(cols.scalar_type() == at::kShort && cols.dim() == 1 && cols.is_contiguous(),
              "fastinfer.sparse_linear: cols must be a contiguous 1-D int16 tensor (uint16 column indices), got ",
              cols.scalar_type(), " of shape ", cols.sizes());
  TORCH_CHECK((values.scalar_type() == at::kFloat || values.scalar_type() == at::kChar) && values.dim() == 1 &&
              values.is_contiguous() && values.numel() == cols.numel(),
              "fastinfer.sparse_linear: values must be a contiguous 1-D float32 or int8 tensor with one value per "
              "column index (", cols.numel(), "), got ", values.scalar_type(), " of shape ", values.sizes());
  const int64_t N = row_ptr.numel() - 1;
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  // The layout contract, O(N): offsets start at 0, grow by multiples of 16, end at nnz.
  TORCH_CHECK(rp[0] == 0 && rp[N] == cols.numel(), "fastinfer.sparse_linear: row_ptr must start at 0 and end at "
              "the number of entries (", cols.numel(), "), got ", rp[0], " and ", rp[N]);
  for (int64_t n = 0; n < N; ++n)
    TORCH_CHECK(rp[n + 1] >= rp[n] && (rp[n + 1] - rp[n]) % 16 == 0, "fastinfer.sparse_linear: row_ptr[", n + 1,
                "] - row_ptr[", n, "] must be a non-negative multiple of 16 (rows are padded), got ", rp[n + 1] - rp[n]);
  const bool int8_vals = values.scalar_type() == at::kChar;
  TORCH_CHECK(!int8_vals || w_scale.has_value(), "fastinfer.sparse_linear: int8 values need w_scale [N]");
  const at::Tensor ws = w_scale ? channel_vector(*w_scale, N, op, "w_scale", false) : at::Tensor();
  const at::Tensor bi = bias ? channel_vector(*bias, N, op, "bias", true) : at::Tensor();

  const at::Tensor x2 = x.reshape({-1, in_features}).to(at::kFloat).contiguous();
  const int64_t M = x2.size(0);
  at::Tensor out = at::empty({M, N}, x.options().dtype(at::kFloat));
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  if (M == 0) return out.view(shape).to(x.scalar_type());

  kernels::SparseParams p;
  p.M = M;
  p.N = N;
  p.K = in_features;
  p.x = x2.data_ptr<float>();
  p.ldx = in_features;
  p.row_ptr = rp;
  p.cols = reinterpret_cast<const uint16_t*>(cols.data_ptr<int16_t>());
  p.vals = values.data_ptr();
  p.int8_vals = int8_vals;
  p.w_scale = ws.defined() ? ws.data_ptr<float>() : nullptr;
  p.bias = bi.defined() ? bi.data_ptr<float>() : nullptr;
  p.out = out.data_ptr<float>();
  p.ldo = N;
  // The vector kernels need AVX-512 (F/BW/VL/DQ), i.e. the avx512_vnni tier; below it, the scalar path.
  const bool vec = active_isa() >= Isa::Avx512Vnni;
  record_kernel(Family::Sparse, vec ? Isa::Avx512Vnni : Isa::Ref);
  at::Tensor xt;
  if (vec && M > 1) {  // batch path: x transposed, batch padded to 16 lanes with zeros
    xt = at::zeros({in_features, kernels::round_up(M, 16)}, x2.options());
    xt.narrow(1, 0, M).copy_(x2.t());
    p.xt = xt.data_ptr<float>();
    p.ldxt = xt.size(1);
  }
  const kernels::SparseFn fn = vec ? kernels::sparse_linear_avx512 : kernels::sparse_linear_ref;
  const int64_t work_per_row = std::max<int64_t>(1, cols.numel() / N) * M;
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerTask / work_per_row);
  at::parallel_for(0, N, grain, [&](int64_t b, int64_t e) { fn(p, b, e); });
  return out.view(shape).to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastinfer, CPU, m) { m.impl("sparse_linear", &sparse_linear); }

}  // namespace cpu
}  // namespace fastinfer
