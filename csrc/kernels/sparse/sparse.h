// Sparse weight x dense activations (unstructured sparsity), framework-free.
//
// Layout ("csr16"): for output channel n, entries [row_ptr[n], row_ptr[n + 1]) of `cols` (uint16
// column index) and `vals` (fp32, or int8 with a per-channel scale). Every row's run is padded
// to a multiple of 16 entries with (col 0, value 0), so the vector kernels never handle a tail.
#pragma once
#include <cstdint>

namespace fastinfer {
namespace kernels {

struct SparseParams {
  int64_t M = 0, N = 0, K = 0;
  const float* x = nullptr;        // [M, K] row-major (used when M == 1 and by ref)
  int64_t ldx = 0;
  const float* xt = nullptr;       // [K, M_pad] x transposed, M_pad = round_up(M, 16) (M > 1 vector path)
  int64_t ldxt = 0;
  const int32_t* row_ptr = nullptr;  // [N + 1]
  const uint16_t* cols = nullptr;    // [nnz_padded]; indices >= K are clamped (never read out of bounds)
  const void* vals = nullptr;        // fp32 or int8 [nnz_padded]
  bool int8_vals = false;
  const float* w_scale = nullptr;    // [N] for int8 values
  const float* bias = nullptr;       // [N] or null
  float* out = nullptr;              // [M, N] row-major
  int64_t ldo = 0;
};

// Computes out[:, n] for n in [n0, n1).
using SparseFn = void (*)(const SparseParams&, int64_t n0, int64_t n1);

void sparse_linear_ref(const SparseParams& p, int64_t n0, int64_t n1);
void sparse_linear_avx512(const SparseParams& p, int64_t n0, int64_t n1);

}  // namespace kernels
}  // namespace fastinfer
