// CUDA entry layer for the int8 linear ops, the 2:4 sparse int8 linear and the int8 convolution: every tensor check, then params, then the one arch and
// shape-bucket decision (run_gemm). Compiled only in CUDA builds (setup.py); the kernels it calls
// (csrc/kernels/cuda) see no torch. The schemas are registration.cpp's; this file adds CUDA kernels.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "../kernels/cuda/params.h"
#include "../op_args.h"
#include "cuda_info.h"

namespace fastinfer {
namespace cuda {
namespace {

namespace ck = fastinfer::cuda_kernels;

// Which kernel served the latest GEMM-family call (tests assert it): see last_kernel().
enum class Served : int {
  None = 0, Sm80 = 1, Sm90 = 2, WeightOnly = 3, WeightOnlyCublas = 4, Sparse24 = 5,
  ConvSm90 = 6, ConvGathered = 7, DwConv = 8, ConvGrouped = 9, WeightOnlyMma = 10, ConvGroupedDirect = 11,
  DwConvStrip = 12, DwConvStrip4 = 13
};
thread_local int t_served = 0;  // per calling thread, as the CPU side's last_kernel
thread_local ck::Sm90Variant t_variant = ck::Sm90Variant::Cooperative;  // the composition of Sm90 / Sparse24 / ConvSm90
thread_local int t_round_k = 64;  // the k per round of the latest WeightOnlyMma call
thread_local bool t_weight_tiles = false;  // the latest weight-only call's weight was in the Tiles8x64 layout
thread_local int t_quantize = 0;  // the activation quantization: 1 the scalar kernel, 2 the vectorized one

// Compute capability and multiprocessor count of a device, asked once per device (cudaGetDeviceProperties
// is slow).
struct DeviceInfo {
  int major = 0, minor = 0, sms = 0;
};
DeviceInfo device_info(int device) {
  static std::mutex mu;
  static std::array<DeviceInfo, 64> cache{};
  std::lock_guard<std::mutex> lock(mu);
  TORCH_CHECK(device >= 0 && device < 64, "fastinfer: CUDA device index ", device, " out of range");
  if (cache[device].major == 0) {
    cudaDeviceProp prop;
    const cudaError_t e = cudaGetDeviceProperties(&prop, device);
    TORCH_CHECK(e == cudaSuccess, "fastinfer: cudaGetDeviceProperties failed: ", cudaGetErrorString(e));
    cache[device] = {prop.major, prop.minor, prop.multiProcessorCount};
  }
  return cache[device];
}
std::pair<int, int> capability(int device) {
  const DeviceInfo d = device_info(device);
  return {d.major, d.minor};
}

cudaStream_t current_stream(const at::Device& dev) { return c10::cuda::getCurrentCUDAStream(dev.index()).stream(); }

void check_device(const at::Tensor& t, const at::Device& dev, const char* op, const char* arg) {
  TORCH_CHECK(t.device() == dev, "fastinfer.", op, ": ", arg, " must be on ", dev, " (where x is), got a tensor on ",
              t.device());
}

void check_launch(const char* err, const char* op) {
  TORCH_CHECK(err == nullptr, "fastinfer.", op, ": CUDA kernel launch failed: ", err);
}

ck::XKind x_kind(at::ScalarType t, const char* op) {
  if (t == at::kFloat) return ck::XKind::Float32;
  if (t == at::kBFloat16) return ck::XKind::BFloat16;
  TORCH_CHECK(t == at::kHalf, "fastinfer.", op, ": x must be float32, bfloat16 or float16, got ", t);
  return ck::XKind::Float16;
}

ck::OutKind out_kind(at::ScalarType t, const char* op) {
  if (t == at::kFloat) return ck::OutKind::Float32;
  if (t == at::kBFloat16) return ck::OutKind::BFloat16;
  TORCH_CHECK(t == at::kHalf, "fastinfer.", op, ": out_dtype must be float32, bfloat16 or float16, got ", t);
  return ck::OutKind::Float16;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Device scratch of `bytes` on dev for one launch, and its pointer: none (null) for 0 bytes, so that the
// calls whose kernels need no workspace (most) allocate nothing for it.
struct Scratch {
  at::Tensor t;
  void* ptr() const { return t.defined() ? t.data_ptr() : nullptr; }
};
Scratch scratch(size_t bytes, const at::Device& dev) {
  if (bytes == 0) return {};
  return {at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).device(dev))};
}

// The CUDA packed weight: int8 [N, round_up(K, 16)], contiguous (pack_int8_weight on the GPU).
void check_packed(const at::Tensor& w, int64_t K, const at::Device& dev, const char* op) {
  check_device(w, dev, op, "packed_w");
  TORCH_CHECK(w.scalar_type() == at::kChar && w.dim() == 2 && w.is_contiguous(), "fastinfer.", op,
              ": packed_w must be a CUDA packed weight (int8 [N, round_up(K, 16)] from fastinfer.ops.pack_int8_weight on "
              "the GPU; a buffer packed on the CPU must be repacked on the device, as Int8Linear.to('cuda') does), got ",
              w.scalar_type(), " of shape ", w.sizes());
  TORCH_CHECK(w.size(1) == ck::round_up(K, ck::kKAlign), "fastinfer.", op, ": packed_w holds rows of ", w.size(1),
              " bytes, expected round_up(K=", K, ", 16) = ", ck::round_up(K, ck::kKAlign), " (x.shape[-1] must equal the "
              "weight's in_features)");
  TORCH_CHECK(w.size(0) >= 1, "fastinfer.", op, ": packed_w has no rows");
  TORCH_CHECK(aligned16(w.data_ptr()), "fastinfer.", op, ": packed_w must start on a 16-byte boundary (the kernels "
              "copy 16-byte pieces of its rows), as pack_int8_weight's own tensors do; got a view at an offset");
}

// Per-channel vectors (scales, bias): 1-D of length n on dev, converted to contiguous fp32.
at::Tensor channel_vector(const at::Tensor& t, int64_t n, const at::Device& dev, const char* op, const char* arg,
                          bool any_float) {
  check_device(t, dev, op, arg);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, "fastinfer.", op, ": ", arg, " must be 1-D of length ", n, ", got shape ",
              t.sizes());
  if (any_float) {
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastinfer.", op, ": ", arg, " must be floating point, got ",
                t.scalar_type());
  } else {
    TORCH_CHECK(t.scalar_type() == at::kFloat, "fastinfer.", op, ": ", arg, " must have dtype float32, got ",
                t.scalar_type());
  }
  return t.to(at::kFloat).contiguous();
}

// int8 [M, K] -> the GEMM's A operand [M, K_pad] (16-byte aligned rows): the tensor itself when it
// already is one, else a zero-padded copy.
at::Tensor int8_operand(const at::Tensor& a, int64_t K_pad) {
  if (a.is_contiguous() && a.size(1) == K_pad && aligned16(a.data_ptr())) return a;
  at::Tensor out = at::zeros({a.size(0), K_pad}, a.options());
  out.narrow(1, 0, a.size(1)).copy_(a);
  return out;
}

// The Hopper GEMMs' composition for a call (params.h, Sm90Variant). bf16 outputs, the type all three are built
// for, run the family's `fastest` (measured on an H200, 2026-12-04, bench_linear / bench_sparse --device cuda:
// the dense GEMM's pingpong 1.04-1.19x its cooperative one in 17 of 20 comparisons from 2048 rows, 1-6% behind
// in three; the 2:4 GEMM's wide 1.14-1.3x from 512) unless FASTINFER_SM90_VARIANT = cooperative, pingpong or
// wide says otherwise (read at each call: the benchmarks time each); the other outputs run Cooperative.
ck::Sm90Variant sm90_variant(ck::OutKind out, ck::Sm90Variant fastest, const char* op) {
  if (out != ck::OutKind::BFloat16) return ck::Sm90Variant::Cooperative;
  const char* v = std::getenv("FASTINFER_SM90_VARIANT");
  if (v == nullptr || *v == 0) return fastest;
  if (std::strcmp(v, "cooperative") == 0) return ck::Sm90Variant::Cooperative;
  if (std::strcmp(v, "pingpong") == 0) return ck::Sm90Variant::Pingpong;
  TORCH_CHECK(std::strcmp(v, "wide") == 0, "fastinfer.", op, ": the environment variable FASTINFER_SM90_VARIANT "
              "must be 'cooperative', 'pingpong' or 'wide' (or unset: the fastest measured), got '", v, "'");
  return ck::Sm90Variant::Wide;
}

// The one arch and shape-bucket decision of the int8 GEMM family.
void run_gemm(const ck::GemmParams& params, const at::Device& dev, const char* op) {
  ck::GemmParams p = params;
  const auto [major, minor] = capability(dev.index());
  TORCH_CHECK(major >= 8, "fastinfer.", op, ": the int8 kernels need a GPU of compute capability 8.0 or newer "
              "(int8 tensor-core mma), this one is ", major, ".", minor);
  const cudaStream_t stream = current_stream(dev);
  // Hopper: the CUTLASS TMA + wgmma kernel for float outputs (its 128-row tiles only pay from a few
  // hundred rows; below, the sm_80 kernel's 64-row tiles waste less).
  if (major == 9 && ck::sm90_gemm_built() && p.M > 64 && ck::sm90_gemm_supported(p)) {
    p.sm90_variant = sm90_variant(p.out_kind, ck::Sm90Variant::Pingpong, op);
    const Scratch workspace = scratch(ck::sm90_gemm_workspace_bytes(p), dev);
    check_launch(ck::launch_int8_gemm_sm90(p, workspace.ptr(), stream), op);
    t_served = static_cast<int>(Served::Sm90);
    t_variant = p.sm90_variant;
    return;
  }
  check_launch(ck::launch_int8_gemm_sm80(p, p.M <= 64 ? ck::GemmTile::M64N128 : ck::GemmTile::M128N128, stream), op);
  t_served = static_cast<int>(Served::Sm80);
}

void fill_b(ck::GemmParams& p, const at::Tensor& packed) {
  p.N = packed.size(0);
  p.K_pad = packed.size(1);
  p.b = packed.data_ptr<int8_t>();
  p.ldb = packed.size(1);
}

void fill_a(ck::GemmParams& p, const at::Tensor& a) {
  p.M = a.size(0);
  p.a = a.data_ptr<int8_t>();
  p.lda = a.stride(0);
}

void fill_out(ck::GemmParams& p, at::Tensor& out, ck::OutKind kind) {
  p.out = out.data_ptr();
  p.ldo = out.size(1);
  p.out_kind = kind;
}

// x [..., K] float -> contiguous [M, K].
at::Tensor activation_2d(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.is_cuda(), "fastinfer.", op, ": x must be a CUDA tensor here, got ", x.device());
  TORCH_CHECK(x.dim() >= 1, "fastinfer.", op, ": x must have at least 1 dimension [..., K], got a scalar");
  x_kind(x.scalar_type(), op);
  int64_t M = 1;  // the leading dimensions' product (reshape's -1 cannot be inferred when K == 0)
  for (int64_t d = 0; d + 1 < x.dim(); ++d) M *= x.size(d);
  return x.reshape({M, x.size(-1)}).contiguous();
}

// Quantizes x2 [M, K] into q [M, K_pad] (zero tail) and scale [M] (dynamic), or with a static inverse.
// col_shift / relu: quantize_channel_affine's steps after the per-column scale (QuantizeParams).
void quantize_into(const at::Tensor& x2, at::Tensor& q, at::Tensor* scale, float static_inv, const at::Tensor& col_scale,
                   const char* op, const at::Tensor& col_shift = at::Tensor(), bool relu = false) {
  ck::QuantizeParams qp;
  qp.M = x2.size(0);
  qp.K = x2.size(1);
  qp.K_pad = q.size(1);
  qp.x = x2.data_ptr();
  qp.x_kind = x_kind(x2.scalar_type(), op);
  qp.ldx = x2.stride(0);
  qp.q = q.data_ptr<int8_t>();
  qp.ldq = q.stride(0);
  qp.scale = scale ? scale->data_ptr<float>() : nullptr;
  qp.static_inv = static_inv;
  qp.col_scale = col_scale.defined() ? col_scale.data_ptr<float>() : nullptr;
  qp.col_shift = col_shift.defined() ? col_shift.data_ptr<float>() : nullptr;
  qp.relu = relu;
  bool vectorized = false;
  check_launch(ck::launch_quantize_rows(qp, current_stream(x2.device()), &vectorized), op);
  t_quantize = vectorized ? 2 : 1;
}

// ---------------------------------------------------------------- ops

std::tuple<at::Tensor, at::Tensor> quantize_per_token(const at::Tensor& x) {
  const char* op = "quantize_per_token";
  TORCH_CHECK(x.dim() == 2, "fastinfer.quantize_per_token: x must be 2-D [M, K], got shape ", x.sizes());
  const at::Tensor x2 = activation_2d(x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor q = at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  if (x.size(0) > 0) {
    if (x.size(1) == 0)
      scale.zero_();
    else
      quantize_into(x2, q, &scale, 0.0f, at::Tensor(), op);
  }
  return {q, scale};
}

at::Tensor pack_int8_weight(const at::Tensor& w) {
  TORCH_CHECK(w.scalar_type() == at::kChar, "fastinfer.pack_int8_weight: weight must have dtype torch.int8, got ",
              w.scalar_type());
  TORCH_CHECK(w.dim() == 2 && w.size(0) >= 1 && w.size(1) >= 1,
              "fastinfer.pack_int8_weight: weight must be 2-D [N, K] with N, K >= 1, got shape ", w.sizes());
  check_max_k(w.size(1), "pack_int8_weight", "weight's K (in_features)");
  const c10::cuda::CUDAGuard guard(w.device());
  at::Tensor out = at::zeros({w.size(0), ck::round_up(w.size(1), ck::kKAlign)}, w.options());
  out.narrow(1, 0, w.size(1)).copy_(w);
  return out;
}

at::Tensor unpack_int8_weight(const at::Tensor& packed) {
  TORCH_CHECK(packed.scalar_type() == at::kChar && packed.dim() == 2,
              "fastinfer.unpack_int8_weight: packed must be a CUDA packed weight (int8 [N, round_up(K, 16)]), got ",
              packed.scalar_type(), " of shape ", packed.sizes());
  return packed.clone();  // the padded rows: K itself is not stored (Int8Linear slices in_features)
}

at::Tensor int8_mm(const at::Tensor& a, const at::Tensor& packed_b, int64_t n) {
  const char* op = "int8_mm";
  TORCH_CHECK(a.is_cuda(), "fastinfer.int8_mm: a must be a CUDA tensor here, got ", a.device());
  TORCH_CHECK(a.scalar_type() == at::kChar && a.dim() == 2, "fastinfer.int8_mm: a must be int8 [M, K], got ",
              a.scalar_type(), " of shape ", a.sizes());
  check_packed(packed_b, a.size(1), a.device(), op);
  TORCH_CHECK(n == packed_b.size(0), "fastinfer.int8_mm: n=", n, " does not match the packed weight's N=",
              packed_b.size(0));
  const c10::cuda::CUDAGuard guard(a.device());
  at::Tensor out = at::empty({a.size(0), n}, a.options().dtype(at::kInt));
  if (a.size(0) == 0) return out;
  const at::Tensor ap = int8_operand(a, packed_b.size(1));
  ck::GemmParams p;
  fill_a(p, ap);
  fill_b(p, packed_b);
  fill_out(p, out, ck::OutKind::Int32);
  run_gemm(p, a.device(), op);
  return out;
}

at::Tensor int8_scaled_mm(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& packed_b,
                          const at::Tensor& b_scale, const std::optional<at::Tensor>& bias,
                          std::optional<at::ScalarType> out_dtype) {
  const char* op = "int8_scaled_mm";
  TORCH_CHECK(a.is_cuda(), "fastinfer.int8_scaled_mm: a must be a CUDA tensor here, got ", a.device());
  TORCH_CHECK(a.scalar_type() == at::kChar && a.dim() == 2, "fastinfer.int8_scaled_mm: a must be int8 [M, K], got ",
              a.scalar_type(), " of shape ", a.sizes());
  const at::Device dev = a.device();
  check_packed(packed_b, a.size(1), dev, op);
  const int64_t M = a.size(0), N = packed_b.size(0);
  const at::ScalarType odt = out_dtype.value_or(at::kFloat);
  const ck::OutKind kind = out_kind(odt, op);
  const c10::cuda::CUDAGuard guard(dev);
  const at::Tensor as = channel_vector(a_scale, M, dev, op, "a_scale", false);
  const at::Tensor bs = channel_vector(b_scale, N, dev, op, "b_scale", false);
  const at::Tensor bi = bias ? channel_vector(*bias, N, dev, op, "bias", true) : at::Tensor();
  at::Tensor out = at::empty({M, N}, a.options().dtype(odt));
  if (M == 0) return out;
  const at::Tensor ap = int8_operand(a, packed_b.size(1));
  ck::GemmParams p;
  fill_a(p, ap);
  fill_b(p, packed_b);
  fill_out(p, out, kind);
  p.a_scale = as.data_ptr<float>();
  p.b_scale = bs.data_ptr<float>();
  p.bias = bi.defined() ? bi.data_ptr<float>() : nullptr;
  run_gemm(p, dev, op);
  return out;
}

// Shared body of the w8a8 linear ops: quantize x (per token, or per tensor with x_scale) into the padded
// operand, then the GEMM with the fused epilogue. Output: x's dtype, or int8 with out_scale.
at::Tensor w8a8_linear(const char* op, const at::Tensor& x, const at::Tensor& packed_w, const at::Tensor& w_scale,
                       const std::optional<at::Tensor>& bias, const std::string& activation,
                       std::optional<double> x_scale, std::optional<double> out_scale,
                       const std::optional<at::Tensor>& x_channel_scale) {
  const at::Tensor x2 = activation_2d(x, op);
  const at::Device dev = x.device();
  const int64_t M = x2.size(0), K = x2.size(1);
  check_packed(packed_w, K, dev, op);
  const int64_t N = packed_w.size(0);
  const ck::Act act = parse_act(activation, op);
  const c10::cuda::CUDAGuard guard(dev);
  const at::Tensor bs = channel_vector(w_scale, N, dev, op, "w_scale", false);
  const at::Tensor bi = bias ? channel_vector(*bias, N, dev, op, "bias", true) : at::Tensor();
  const at::Tensor cs = x_channel_scale ? channel_vector(*x_channel_scale, K, dev, op, "x_channel_scale", false)
                                        : at::Tensor();
  check_scale(x_scale, op, "x_scale");
  check_scale(out_scale, op, "out_scale");
  at::Tensor out = at::empty({M, N}, x.options().dtype(out_scale ? at::kChar : x.scalar_type()));
  if (M > 0) {
    at::Tensor q = at::empty({M, packed_w.size(1)}, x.options().dtype(at::kChar));
    at::Tensor a_scale;
    if (x_scale) {
      a_scale = at::full({1}, static_cast<float>(*x_scale), x.options().dtype(at::kFloat));
      quantize_into(x2, q, nullptr, 1.0f / static_cast<float>(*x_scale), cs, op);
    } else {
      a_scale = at::empty({M}, x.options().dtype(at::kFloat));
      quantize_into(x2, q, &a_scale, 0.0f, cs, op);
    }
    ck::GemmParams p;
    fill_a(p, q);
    fill_b(p, packed_w);
    fill_out(p, out, out_scale ? ck::OutKind::Int8 : out_kind(x.scalar_type(), op));
    p.a_scale = a_scale.data_ptr<float>();
    p.a_scale_per_tensor = x_scale.has_value();
    p.b_scale = bs.data_ptr<float>();
    p.bias = bi.defined() ? bi.data_ptr<float>() : nullptr;
    p.act = act;
    p.out_inv_scale = out_scale ? 1.0f / static_cast<float>(*out_scale) : 1.0f;
    run_gemm(p, dev, op);
  }
  return out.view(out_shape(x, N));
}

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

// The tensor-core weight-only kernel's k per round (WeightOnlyParams::round_k): 64, or 256 with
// FASTINFER_WEIGHT_ONLY_ROUND_K=256, a candidate that reads 256 contiguous bytes of each weight row a round
// (read at each call: bench_linear --device cuda times both; not yet run on a GPU).
int weight_only_round_k(const char* op) {
  const char* v = std::getenv("FASTINFER_WEIGHT_ONLY_ROUND_K");
  if (v == nullptr || *v == 0 || std::strcmp(v, "64") == 0) return 64;
  TORCH_CHECK(std::strcmp(v, "256") == 0, "fastinfer.", op, ": the environment variable "
              "FASTINFER_WEIGHT_ONLY_ROUND_K must be '64' or '256' (or unset: 64), got '", v, "'");
  return 256;
}

// A weight in the Tiles8x64 layout (fastinfer.ops.pack_weight_only_tiles; params.h, WeightLayout): int8
// [ceil(N / 8), ceil(K / 64), 8, 64], contiguous, 16-byte aligned; N is w_scale's length. A candidate for the
// weight-only kernels (benchmarks/bench_linear.py --device cuda times it beside the rows layout).
void check_tiles(const at::Tensor& w, int64_t N, int64_t K, const at::Device& dev, const char* op) {
  check_device(w, dev, op, "packed_w");
  TORCH_CHECK(w.scalar_type() == at::kChar && w.is_contiguous() && w.size(0) == (N + 7) / 8 &&
              w.size(1) == (K + 63) / 64 && w.size(2) == 8 && w.size(3) == 64, "fastinfer.", op, ": a 4-D packed_w "
              "must be the int8 tiles of fastinfer.ops.pack_weight_only_tiles for an [N, K] = [", N, ", ", K, "] weight "
              "(N from w_scale, K from x): shape [", (N + 7) / 8, ", ", (K + 63) / 64, ", 8, 64], contiguous; got ",
              w.scalar_type(), " of shape ", w.sizes());
  TORCH_CHECK(aligned16(w.data_ptr()), "fastinfer.", op, ": packed_w must start on a 16-byte boundary, got a view "
              "at an offset");
}

// Weight-only int8, bound by reading the weight once while the rows are few: the CUDA-core kernel up to
// kWeightOnlyMmaMinRows rows (and up to kWeightOnlyMaxRows for fp32 x), the tensor-core one for bf16/fp16 x
// up to kWeightOnlyMmaMaxRows; above, the product is compute-bound and the weight is widened once per call
// for cuBLAS (at::linear).
at::Tensor int8_linear_weight_only(const at::Tensor& x, const at::Tensor& packed_w, const at::Tensor& w_scale,
                                   const std::optional<at::Tensor>& bias) {
  const char* op = "int8_linear_weight_only";
  const at::Tensor x2 = activation_2d(x, op);
  const at::Device dev = x.device();
  const int64_t M = x2.size(0), K = x2.size(1), K_pad = ck::round_up(K, ck::kKAlign);
  const bool tiles = packed_w.dim() == 4;
  if (tiles) {
    TORCH_CHECK(w_scale.dim() == 1 && w_scale.size(0) >= 1, "fastinfer.", op, ": w_scale must be 1-D [N], got shape ",
                w_scale.sizes());
    check_tiles(packed_w, w_scale.size(0), K, dev, op);
  } else {
    check_packed(packed_w, K, dev, op);
  }
  const int64_t N = tiles ? w_scale.size(0) : packed_w.size(0);
  const c10::cuda::CUDAGuard guard(dev);
  const at::Tensor bs = channel_vector(w_scale, N, dev, op, "w_scale", false);
  const at::Tensor bi = bias ? channel_vector(*bias, N, dev, op, "bias", true) : at::Tensor();
  const bool half_x = x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf;
  const bool mma = half_x && M > ck::kWeightOnlyMmaMinRows && M <= ck::kWeightOnlyMmaMaxRows;
  t_weight_tiles = tiles;
  if (M > (half_x ? ck::kWeightOnlyMmaMaxRows : ck::kWeightOnlyMaxRows)) {
    // [N, K] int8 of either layout (tiles back to rows: the permute's copy is the widening's own)
    const at::Tensor w8 = tiles ? packed_w.permute({0, 2, 1, 3}).reshape({packed_w.size(0) * 8, packed_w.size(1) * 64})
                                      .narrow(0, 0, N).narrow(1, 0, K)
                                : packed_w.narrow(1, 0, K);
    const at::Tensor w = w8.to(x.scalar_type()) * bs.to(x.scalar_type()).unsqueeze(1);
    at::Tensor y = at::linear(x2, w, bi.defined() ? std::optional<at::Tensor>(bi.to(x.scalar_type())) : std::nullopt);
    t_served = static_cast<int>(Served::WeightOnlyCublas);
    return y.view(out_shape(x, N));
  }
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0) return out.view(out_shape(x, N));
  at::Tensor xp = x2;  // 16-byte aligned rows of K_pad values (zeros past K) unless x already has them
  const int64_t elem = x.element_size();
  if (K != K_pad || (x2.stride(0) * elem) % 16 != 0 || !aligned16(x2.data_ptr())) {
    xp = at::zeros({M, K_pad}, x2.options());
    xp.narrow(1, 0, K).copy_(x2);
  }
  ck::WeightOnlyParams p;
  p.M = M;
  p.N = N;
  p.K = K_pad;
  p.x = xp.data_ptr();
  p.x_kind = x_kind(x.scalar_type(), op);
  p.ldx = xp.stride(0);
  p.b = packed_w.data_ptr<int8_t>();
  p.ldb = tiles ? packed_w.size(1) * 512 : K_pad;
  p.b_layout = tiles ? ck::WeightLayout::Tiles8x64 : ck::WeightLayout::Rows;
  p.b_scale = bs.data_ptr<float>();
  p.bias = bi.defined() ? bi.data_ptr<float>() : nullptr;
  p.out = out.data_ptr();
  p.ldo = N;
  if (mma) {
    p.sms = device_info(dev.index()).sms;
    p.round_k = weight_only_round_k(op);
    const Scratch workspace = scratch(ck::weight_only_mma_workspace_bytes(p), dev);
    check_launch(ck::launch_weight_only_mma(p, workspace.ptr(), current_stream(dev)), op);
    t_served = static_cast<int>(Served::WeightOnlyMma);
    t_round_k = p.round_k;
    return out.view(out_shape(x, N));
  }
  check_launch(ck::launch_weight_only_gemm(p, current_stream(dev)), op);
  t_served = static_cast<int>(Served::WeightOnly);
  return out.view(out_shape(x, N));
}

// ---------------------------------------------------------------- 2:4 sparse (Hopper)

void check_sparse24_device(const at::Device& dev, const char* op) {
  const auto [major, minor] = capability(dev.index());
  TORCH_CHECK(ck::sparse24_built(), "fastinfer.", op, ": this build has no 2:4 sparse CUDA kernels (it needs the "
              "CUTLASS headers of the nvidia-cutlass package and a CUDA toolkit with sm_90a sparse MMA)");
  TORCH_CHECK(major == 9, "fastinfer.", op, ": the 2:4 sparse kernels need a Hopper GPU (compute capability 9.x), "
              "this one is ", major, ".", minor);
}

// A dense 2:4 int8 weight [N, K] on the GPU -> (values, metadata) in CUTLASS's compressed layout, of the
// weight padded with zeros to N_pad = round_up(N, 8) rows (16-byte rows of every output type) and
// K_pad = round_up(K, 128) columns. Refuses a weight with more than 2 nonzeros in some
// group of 4 consecutive columns (compression would drop them).
std::tuple<at::Tensor, at::Tensor> pack_sparse24(const at::Tensor& w) {
  const char* op = "pack_sparse24";
  TORCH_CHECK(w.is_cuda(), "fastinfer.pack_sparse24: weight must be a CUDA tensor, got ", w.device());
  TORCH_CHECK(w.scalar_type() == at::kChar && w.dim() == 2 && w.size(0) >= 1 && w.size(1) >= 1,
              "fastinfer.pack_sparse24: weight must be int8 [N, K] with N, K >= 1, got ", w.scalar_type(), " of shape ",
              w.sizes());
  const at::Device dev = w.device();
  const c10::cuda::CUDAGuard guard(dev);
  check_sparse24_device(dev, op);
  check_max_k(w.size(1), op, "weight's K (in_features)");
  const int64_t N = w.size(0), K = w.size(1), K_pad = ck::round_up(K, ck::kSparse24KAlign);
  const int64_t N_pad = ck::round_up(N, ck::kSparse24NAlign);
  at::Tensor wp = at::zeros({N_pad, K_pad}, w.options());
  wp.narrow(0, 0, N).narrow(1, 0, K).copy_(w);
  const int64_t most = wp.ne(0).view({N_pad, K_pad / 4, 4}).sum(-1).max().item<int64_t>();
  TORCH_CHECK(most <= 2, "fastinfer.pack_sparse24: weight is not 2:4 sparse: a group of 4 consecutive columns holds ",
              most, " nonzeros (at most 2 allowed; fastinfer.prune(model, pattern='2:4') makes such weights)");
  const ck::Sparse24Sizes sz = ck::sparse24_sizes(N_pad, K_pad);
  at::Tensor values = at::empty({sz.values_bytes}, w.options());
  at::Tensor meta = at::empty({sz.meta_bytes}, w.options().dtype(at::kByte));
  ck::Sparse24PackParams p;
  p.N = N_pad;
  p.K = K_pad;
  p.w = wp.data_ptr<int8_t>();
  p.values = values.data_ptr<int8_t>();
  p.meta = meta.data_ptr<uint8_t>();
  const Scratch workspace = scratch(ck::sparse24_compress_workspace_bytes(p), dev);
  check_launch(ck::launch_sparse24_compress(p, workspace.ptr(), current_stream(dev)), op);
  return {values, meta};
}

// Dynamic W8A8 on a pack_sparse24 weight: x quantized per token into [M, K_pad], the sparse GEMM with the
// fused epilogue, out in x's dtype.
at::Tensor sparse24_linear_int8(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                const at::Tensor& w_scale, const std::optional<at::Tensor>& bias, int64_t in_features) {
  const char* op = "sparse24_linear_int8";
  const at::Tensor x2 = activation_2d(x, op);
  const at::Device dev = x.device();
  const int64_t M = x2.size(0), K = x2.size(1);
  TORCH_CHECK(K == in_features, "fastinfer.", op, ": x.shape[-1] must equal in_features=", in_features, ", got x of "
              "shape ", x.sizes());
  TORCH_CHECK(w_scale.dim() == 1 && w_scale.size(0) >= 1, "fastinfer.", op, ": w_scale must be 1-D [N], got shape ",
              w_scale.sizes());
  const int64_t N = w_scale.size(0), K_pad = ck::round_up(K, ck::kSparse24KAlign);
  const int64_t N_pad = ck::round_up(N, ck::kSparse24NAlign);
  const c10::cuda::CUDAGuard guard(dev);
  check_sparse24_device(dev, op);
  const ck::Sparse24Sizes sz = ck::sparse24_sizes(N_pad, K_pad);
  check_device(values, dev, op, "values");
  check_device(meta, dev, op, "meta");
  TORCH_CHECK(values.scalar_type() == at::kChar && values.dim() == 1 && values.is_contiguous() &&
              values.numel() == sz.values_bytes, "fastinfer.", op, ": values must be the contiguous int8 tensor of ",
              sz.values_bytes, " bytes pack_sparse24 makes for a [", N, ", ", K, "] weight, got ", values.scalar_type(),
              " of shape ", values.sizes());
  TORCH_CHECK(meta.scalar_type() == at::kByte && meta.dim() == 1 && meta.is_contiguous() &&
              meta.numel() == sz.meta_bytes, "fastinfer.", op, ": meta must be the contiguous uint8 tensor of ",
              sz.meta_bytes, " bytes pack_sparse24 makes for a [", N, ", ", K, "] weight, got ", meta.scalar_type(),
              " of shape ", meta.sizes());
  TORCH_CHECK(aligned16(values.data_ptr()) && aligned16(meta.data_ptr()), "fastinfer.", op, ": values and meta "
              "must start on 16-byte boundaries (the TMA loads' requirement), as pack_sparse24's own tensors do; got "
              "a view at an offset");
  const at::Tensor ws = channel_vector(w_scale, N, dev, op, "w_scale", false);
  const at::Tensor bi = bias ? channel_vector(*bias, N, dev, op, "bias", true) : at::Tensor();
  const ck::OutKind kind = out_kind(x.scalar_type(), op);
  // No rows: an empty [..., N] of the fake kernel's strides (a narrowed [0, N_pad] would keep N_pad as its
  // row stride: contiguous() leaves an empty tensor as it is).
  if (M == 0) return at::empty({0, N}, x.options()).view(out_shape(x, N));
  // The GEMM computes all N_pad rows of the padded weight (16-byte rows of out for TMA); the padding
  // columns of out are dropped below.
  at::Tensor out = at::empty({M, N_pad}, x.options());
  {
    at::Tensor q = at::empty({M, K_pad}, x.options().dtype(at::kChar));
    at::Tensor a_scale = at::empty({M}, x.options().dtype(at::kFloat));
    quantize_into(x2, q, &a_scale, 0.0f, at::Tensor(), op);
    at::Tensor ws_pad = ws, bi_pad = bi;
    if (N_pad != N) {  // the epilogue reads its vectors over the padded rows: zero-extend them
      ws_pad = at::zeros({N_pad}, ws.options());
      ws_pad.narrow(0, 0, N).copy_(ws);
      if (bi.defined()) {
        bi_pad = at::zeros({N_pad}, bi.options());
        bi_pad.narrow(0, 0, N).copy_(bi);
      }
    }
    ck::Sparse24Params p;
    p.M = M;
    p.N = N_pad;
    p.K = K_pad;
    p.x = q.data_ptr<int8_t>();
    p.w_values = values.data_ptr<int8_t>();
    p.w_meta = meta.data_ptr<uint8_t>();
    p.x_scale = a_scale.data_ptr<float>();
    p.w_scale = ws_pad.data_ptr<float>();
    p.bias = bi_pad.defined() ? bi_pad.data_ptr<float>() : nullptr;
    p.out = out.data_ptr();
    p.out_kind = kind;
    p.variant = sm90_variant(kind, ck::Sm90Variant::Wide, op);
    const Scratch workspace = scratch(ck::sparse24_gemm_workspace_bytes(p), dev);
    check_launch(ck::launch_sparse24_gemm(p, workspace.ptr(), current_stream(dev)), op);
    t_served = static_cast<int>(Served::Sparse24);
    t_variant = p.variant;
  }
  if (N_pad != N) out = out.narrow(1, 0, N).contiguous();
  return out.view(out_shape(x, N));
}

}  // namespace

// ---------------------------------------------------------------- int8 convolution

// The CUDA conv weight (pack_conv_weight on the GPU): int8 [Cout, round_up(KH*KW*Cin/groups, 16)], each
// row ordered (kh, kw, c) over its group's channels (groups 1: KRSC, with C % 16 == 0 exactly the filter
// the implicit GEMM reads; groups > 1: group g's GEMM weight is rows [g * Cout/groups, (g+1) * Cout/groups));
// depthwise -> int8 [KH*KW, C], as on the CPU.
at::Tensor pack_conv_weight(const at::Tensor& w, int64_t groups) {
  const char* op = "pack_conv_weight";
  TORCH_CHECK(w.scalar_type() == at::kChar, "fastinfer.pack_conv_weight: weight must have dtype torch.int8, got ",
              w.scalar_type());
  TORCH_CHECK(w.dim() == 4 && w.numel() > 0, "fastinfer.pack_conv_weight: weight must be 4-D [Cout, Cin/groups, KH, "
              "KW] and not empty, got shape ", w.sizes());
  TORCH_CHECK(groups >= 1 && w.size(0) % groups == 0, "fastinfer.pack_conv_weight: groups must be >= 1 and divide "
              "Cout=", w.size(0), ", got groups=", groups);
  const c10::cuda::CUDAGuard guard(w.device());
  const int64_t cout = w.size(0), cin_g = w.size(1), kh = w.size(2), kw = w.size(3);
  if (is_depthwise(groups, cin_g * groups, cout) && cin_g == 1) return w.reshape({cout, kh * kw}).t().contiguous();
  const int64_t K = kh * kw * cin_g;
  check_max_k(K, op, "KH*KW*Cin/groups");
  at::Tensor out = at::zeros({cout, ck::round_up(K, ck::kKAlign)}, w.options());
  out.narrow(1, 0, K).copy_(w.permute({0, 2, 3, 1}).reshape({cout, K}));
  return out;
}

// The widest groups (input and output channels a group) the direct grouped kernel takes.
constexpr int64_t kDirectGroupChannels = 32;

// The Hopper convolution's composition (params.h, Sm90Variant): Narrow (128 x 64 tiles, two CTAs a
// multiprocessor), as fast as Cooperative or faster on every ResNet-50 layer the H200 timed at batch 32
// (2026-12-04, bench_conv --device cuda, CUDA-graph times: 2.4-2.5x on layer 1's 64 output channels, 1.35x on
// layer 4, 1.1x on the stride-2 layer and layer 2, within 2% on layer 3). FASTINFER_SM90_CONV_VARIANT =
// cooperative, narrow or small (64 x 64 tiles, a candidate not yet run on a GPU) overrides it (read at each
// call: the benchmark times each).
ck::Sm90Variant sm90_conv_variant(const char* op) {
  const char* v = std::getenv("FASTINFER_SM90_CONV_VARIANT");
  if (v == nullptr || *v == 0 || std::strcmp(v, "narrow") == 0) return ck::Sm90Variant::Narrow;
  if (std::strcmp(v, "small") == 0) return ck::Sm90Variant::Small;
  TORCH_CHECK(std::strcmp(v, "cooperative") == 0, "fastinfer.", op, ": the environment variable "
              "FASTINFER_SM90_CONV_VARIANT must be 'cooperative', 'narrow' or 'small' (or unset: narrow), got '", v,
              "'");
  return ck::Sm90Variant::Cooperative;
}

// The depthwise kernel (DwConvParams::strip): 0, the per-output kernel, unless FASTINFER_DWCONV_KERNEL = strip
// (the strip kernel, 8 outputs a strip at column stride 1) or strip4 (4 outputs), candidates until a GPU has
// timed them (read at each call: bench_conv --device cuda times each).
int dwconv_strip(const char* op) {
  const char* v = std::getenv("FASTINFER_DWCONV_KERNEL");
  if (v == nullptr || *v == 0 || std::strcmp(v, "loop") == 0) return 0;
  if (std::strcmp(v, "strip") == 0) return 8;
  TORCH_CHECK(std::strcmp(v, "strip4") == 0, "fastinfer.", op, ": the environment variable "
              "FASTINFER_DWCONV_KERNEL must be 'loop', 'strip' or 'strip4' (or unset: loop), got '", v, "'");
  return 4;
}

ck::ConvGeometry conv_geometry(const ConvArgs& a) {
  ck::ConvGeometry g;
  g.N = a.N; g.H = a.H; g.W = a.W; g.C = a.C; g.K = a.Cout; g.R = a.KH; g.S = a.KW; g.P = a.OH; g.Q = a.OW;
  g.pad_h = a.PH; g.pad_w = a.PW; g.stride_h = a.SH; g.stride_w = a.SW; g.dil_h = a.DH; g.dil_w = a.DW;
  return g;
}

// Per-tensor int8 activations, NHWC, on the device, and their scale. int8 x: x itself, scale x_scale. A static
// x_scale: the quantize kernel's static rule (the CPU's and the reference's), scale x_scale as a host value.
// Dynamic: amax / 127 (NaN when x holds NaN/Inf) by the per-tensor kernels (launch_quantize_tensor: the rule of
// fastinfer.reference.int8_conv2d), the scale a [1] fp32 tensor on the device (never read back to the host).
struct ConvInput {
  at::Tensor q;             // int8, channels_last
  at::Tensor scale;         // the dynamic scale [1] on the device, or undefined
  float scale_value = 1.0f; // the static scale otherwise
};
ConvInput conv_quantize(const at::Tensor& x, std::optional<double> x_scale, const char* op) {
  if (x.scalar_type() == at::kChar)
    return {x.contiguous(at::MemoryFormat::ChannelsLast), at::Tensor(), static_cast<float>(*x_scale)};
  // NHWC values; float64 is read as fp32, as the reference reads it
  const at::ScalarType t = x.scalar_type();
  const at::Tensor xs = (t == at::kFloat || t == at::kBFloat16 || t == at::kHalf ? x : x.to(at::kFloat))
                            .contiguous(at::MemoryFormat::ChannelsLast);
  if (x_scale) {
    at::Tensor q = at::empty_like(xs, xs.options().dtype(at::kChar));  // channels_last like xs
    const int64_t C = x.size(1);
    at::Tensor q_rows = q.permute({0, 2, 3, 1}).reshape({-1, C});  // views: NHWC rows, no copy
    quantize_into(xs.permute({0, 2, 3, 1}).reshape({-1, C}), q_rows, nullptr, 1.0f / static_cast<float>(*x_scale),
                  at::Tensor(), op);
    return {q, at::Tensor(), static_cast<float>(*x_scale)};
  }
  at::Tensor q = at::empty_like(xs, xs.options().dtype(at::kChar));
  at::Tensor scratch = at::empty({2}, x.options().dtype(at::kFloat));  // [0]: amax bits, [1]: the scale
  ck::TensorQuantizeParams p;
  p.n = xs.numel();
  p.x = xs.data_ptr();
  p.x_kind = x_kind(xs.scalar_type(), op);
  p.q = q.data_ptr<int8_t>();
  p.amax_bits = reinterpret_cast<uint32_t*>(scratch.data_ptr<float>());
  p.scale = scratch.data_ptr<float>() + 1;
  check_launch(ck::launch_quantize_tensor(p, current_stream(x.device())), op);
  return {q, scratch.narrow(0, 1, 1), 1.0f};
}

at::Tensor int8_conv2d(const at::Tensor& x, const at::Tensor& packed_w, const at::Tensor& w_scale,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                       std::optional<double> x_scale, std::optional<double> out_scale, const std::string& activation) {
  const char* op = "int8_conv2d";
  TORCH_CHECK(x.is_cuda(), "fastinfer.int8_conv2d: x must be a CUDA tensor here, got ", x.device());
  const at::Device dev = x.device();
  const c10::cuda::CUDAGuard guard(dev);
  TORCH_CHECK(x.scalar_type() == at::kChar || at::isFloatingType(x.scalar_type()), "fastinfer.int8_conv2d: x must be "
              "float32/bfloat16/float16 (quantized here) or int8 (with x_scale), got ", x.scalar_type());
  if (x.scalar_type() == at::kChar)
    TORCH_CHECK(x_scale.has_value(), "fastinfer.int8_conv2d: an int8 x needs its x_scale");
  TORCH_CHECK(w_scale.dim() == 1, "fastinfer.int8_conv2d: w_scale must be 1-D [Cout], got shape ", w_scale.sizes());
  const ConvArgs a = conv_args(x, w_scale.size(0), kernel_size, stride, padding, dilation, groups);
  const ck::Act act = parse_act(activation, op);
  TORCH_CHECK(act != ck::Act::Gelu, "fastinfer.int8_conv2d: activation 'gelu' is CPU only for convolutions");
  check_scale(x_scale, op, "x_scale");
  check_scale(out_scale, op, "out_scale");
  check_device(packed_w, dev, op, "packed_w");
  const at::Tensor ws = channel_vector(w_scale, a.Cout, dev, op, "w_scale", false);
  const at::Tensor bi = bias ? channel_vector(*bias, a.Cout, dev, op, "bias", true) : at::Tensor();
  const bool dw = is_depthwise(groups, a.C, a.Cout);
  const int64_t cin_g = a.C / groups, cout_g = a.Cout / groups, K = a.KH * a.KW * cin_g;
  if (dw) {
    TORCH_CHECK(packed_w.scalar_type() == at::kChar && packed_w.dim() == 2 && packed_w.size(0) == a.KH * a.KW &&
                packed_w.size(1) == a.C && packed_w.is_contiguous(), "fastinfer.int8_conv2d: packed_w for this "
                "depthwise conv must be int8 [KH*KW=", a.KH * a.KW, ", C=", a.C, "] from pack_conv_weight on the GPU, "
                "got ", packed_w.scalar_type(), " ", packed_w.sizes());
  }
  // Both layouts are read in vector pieces (the depthwise kernel's 4-byte taps, the GEMMs' 16-byte rows).
  TORCH_CHECK(aligned16(packed_w.data_ptr()), "fastinfer.int8_conv2d: packed_w must start on a 16-byte boundary "
              "(the kernels read it in vector pieces), as pack_conv_weight's own tensors do; got a view at an offset");
  if (!dw) {
    TORCH_CHECK(packed_w.scalar_type() == at::kChar && packed_w.dim() == 2 && packed_w.size(0) == a.Cout &&
                packed_w.size(1) == ck::round_up(K, ck::kKAlign) && packed_w.is_contiguous(), "fastinfer.int8_conv2d: "
                "packed_w must be the CUDA conv weight int8 [Cout=", a.Cout, ", round_up(KH*KW*Cin/groups=", K,
                ", 16)] from "
                "pack_conv_weight on the GPU (Int8Conv2d.to('cuda') repacks), got ", packed_w.scalar_type(), " ",
                packed_w.sizes());
  }
  const bool int8_out = out_scale.has_value();
  at::Tensor out = at::empty({a.N, a.Cout, a.OH, a.OW},
                             x.options().dtype(int8_out ? at::kChar : at::kFloat).memory_format(at::MemoryFormat::ChannelsLast));
  if (a.N == 0 || a.OH == 0 || a.OW == 0) return out;

  ConvInput in = conv_quantize(x, x_scale, op);
  at::Tensor xq = in.q;
  // An int8 input can be a view that starts off a 16-byte boundary: the kernels' vector loads (TMA, im2row's
  // 16-byte pieces, depthwise's 4-byte ones) need an aligned base, so such a view is copied once.
  if (!aligned16(xq.data_ptr())) xq = xq.clone(at::MemoryFormat::ChannelsLast);
  const float out_inv = int8_out ? 1.0f / static_cast<float>(*out_scale) : 1.0f;
  const bool fold_inv = int8_out && folds_out_inv(act);
  const cudaStream_t stream = current_stream(dev);
  // The folded epilogue (EPILOGUE.md, "Convolutions"): scale = a_scale * w_scale, and for an int8 output with
  // none/relu also * out_inv (as the bias), folded by each kernel from these ingredients (params.h, ConvScales).
  ck::ConvEpilogueParams e;
  e.s.w_scale = ws.data_ptr<float>();
  e.s.bias = bi.defined() ? bi.data_ptr<float>() : nullptr;
  e.s.a_scale = in.scale_value;
  e.s.a_scale_ptr = in.scale.defined() ? in.scale.data_ptr<float>() : nullptr;
  e.s.fold = fold_inv ? out_inv : 1.0f;
  e.out = out.data_ptr();
  e.out_kind = int8_out ? ck::OutKind::Int8 : ck::OutKind::Float32;
  e.act = act;
  e.out_inv_scale = fold_inv ? 1.0f : out_inv;
  const ck::ConvGeometry g = conv_geometry(a);

  if (dw) {
    ck::DwConvParams p;
    p.g = g;
    p.x = xq.data_ptr<int8_t>();
    p.w = packed_w.data_ptr<int8_t>();
    p.e = e;
    p.strip = dwconv_strip(op);
    const Served served = p.strip == 0 || !ck::dwconv_strip_supported(p) ? Served::DwConv
                          : p.strip == 8                                   ? Served::DwConvStrip
                                                                           : Served::DwConvStrip4;
    check_launch(ck::launch_dwconv(p, stream), op);
    t_served = static_cast<int>(served);
    return out;
  }
  // Narrow groups (at most kDirectGroupChannels input and output channels a group: ResNeXt's 4, RegNet's 16):
  // the direct kernel. Per-group GEMMs (below) would leave most of each 128-column tile empty and launch two
  // kernels a group; they keep the wider groups, where tensor cores pay.
  if (groups > 1 && cin_g <= kDirectGroupChannels && cout_g <= kDirectGroupChannels) {
    ck::GroupedConvParams gp;
    gp.g = g;
    gp.groups = groups;
    gp.x = xq.data_ptr<int8_t>();
    gp.w = packed_w.data_ptr<int8_t>();
    gp.K_pad = packed_w.size(1);
    gp.e = e;
    const Scratch workspace = scratch(ck::grouped_conv_workspace_bytes(gp), dev);
    check_launch(ck::launch_grouped_conv(gp, workspace.ptr(), stream), op);
    t_served = static_cast<int>(Served::ConvGroupedDirect);
    return out;
  }
  const auto [major, minor] = capability(dev.index());
  TORCH_CHECK(major >= 8, "fastinfer.int8_conv2d: the int8 kernels need a GPU of compute capability 8.0 or newer, "
              "this one is ", major, ".", minor);
  ck::Sm90ConvParams sp;
  sp.g = g;
  sp.x = xq.data_ptr<int8_t>();
  sp.w = packed_w.data_ptr<int8_t>();
  sp.e = e;
  // Hopper, groups 1: the implicit GEMM (no gathered copy).
  if (groups == 1 && major == 9 && ck::sm90_conv_built() && ck::sm90_conv_supported(sp)) {
    sp.variant = sm90_conv_variant(op);
    const Scratch workspace = scratch(ck::sm90_conv_workspace_bytes(sp), dev);
    check_launch(ck::launch_conv_sm90(sp, workspace.ptr(), stream), op);
    t_served = static_cast<int>(Served::ConvSm90);
    t_variant = sp.variant;
    return out;
  }
  // Gathered rows in chunks of at most ~64 MiB, each through the int8 GEMM with a_scale = 1; a grouped
  // convolution gathers and multiplies one group at a time (its GEMM writes Cout/groups columns of out,
  // ldo = Cout: the sm_80 kernel, whose epilogue stores any column offset).
  const int64_t K_pad = packed_w.size(1), M = a.N * a.OH * a.OW;
  const int64_t chunk = std::max<int64_t>(128, (int64_t{64} << 20) / K_pad);
  at::Tensor rows = at::empty({std::min(M, chunk), K_pad}, x.options().dtype(at::kChar));
  // The GEMM's epilogue takes per-channel vectors: the folded ones in one buffer, by one small kernel
  // (scale [Cout], bias [Cout], then 1.0 for its a_scale).
  at::Tensor folded = at::empty({2 * a.Cout + 1}, x.options().dtype(at::kFloat));
  ck::ConvFoldParams fp;
  fp.K = a.Cout;
  fp.s = e.s;
  fp.out = folded.data_ptr<float>();
  check_launch(ck::launch_conv_fold(fp, stream), op);
  const float* const f_scale = fp.out;
  const float* const f_bias = e.s.bias ? fp.out + a.Cout : nullptr;
  const int64_t elem = int8_out ? 1 : 4;
  for (int64_t m0 = 0; m0 < M; m0 += chunk) {
    for (int64_t grp = 0; grp < groups; ++grp) {
      ck::Im2RowParams ip;
      ip.g = g;
      ip.x = xq.data_ptr<int8_t>();
      ip.rows = rows.data_ptr<int8_t>();
      ip.m0 = m0;
      ip.M = std::min(chunk, M - m0);
      ip.K_pad = K_pad;
      ip.c0 = grp * cin_g;
      ip.Cg = cin_g;
      check_launch(ck::launch_im2row(ip, stream), op);
      ck::GemmParams p;
      p.M = ip.M;
      p.a = rows.data_ptr<int8_t>();
      p.lda = K_pad;
      p.N = cout_g;
      p.K_pad = K_pad;
      p.b = packed_w.data_ptr<int8_t>() + grp * cout_g * K_pad;
      p.ldb = K_pad;
      p.a_scale = fp.out + 2 * a.Cout;  // 1.0 (the scales are folded into b_scale)
      p.a_scale_per_tensor = true;
      p.b_scale = f_scale + grp * cout_g;
      p.bias = f_bias ? f_bias + grp * cout_g : nullptr;
      p.out = static_cast<char*>(out.data_ptr()) + (m0 * a.Cout + grp * cout_g) * elem;
      p.ldo = a.Cout;
      p.out_kind = e.out_kind;
      p.act = act;
      p.out_inv_scale = e.out_inv_scale;
      run_gemm(p, dev, op);
    }
  }
  t_served = static_cast<int>(groups == 1 ? Served::ConvGathered : Served::ConvGrouped);
  return out;
}

// int8 max pooling on the GPU: through fp16, which holds every int8 value exactly (max is exact in any
// dtype that represents its inputs), so the result equals the CPU kernel's. Memory-bound either way.
at::Tensor int8_max_pool2d(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  TORCH_CHECK(x.scalar_type() == at::kChar, "fastinfer.int8_max_pool2d: x must have dtype Char (int8), got ",
              x.scalar_type());
  pool_args(x, kernel_size, stride, padding, dilation, ceil_mode);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xh = x.contiguous(at::MemoryFormat::ChannelsLast).to(at::kHalf);
  return at::max_pool2d(xh, kernel_size, stride, padding, dilation, ceil_mode)
      .to(at::kChar)
      .contiguous(at::MemoryFormat::ChannelsLast);
}

// int8 average pooling on the GPU: torch's avg_pool2d on the fp32 values (sums of int8 values are exact in fp32,
// and the kernel divides each by its divisor once, as the CPU kernel does), rounded half to even. Memory-bound.
at::Tensor int8_avg_pool2d(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                           std::optional<int64_t> divisor_override) {
  const char* op = "int8_avg_pool2d";
  TORCH_CHECK(x.scalar_type() == at::kChar, "fastinfer.int8_avg_pool2d: x must have dtype Char (int8), got ",
              x.scalar_type());
  const std::vector<int64_t> one{1, 1};
  pool_args(x, kernel_size, stride.empty() ? kernel_size : stride, padding, one, ceil_mode, op);
  TORCH_CHECK(!divisor_override || *divisor_override > 0, "fastinfer.", op,
              ": divisor_override must be a positive integer (or None), got ", divisor_override.value_or(0));
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xf = x.contiguous(at::MemoryFormat::ChannelsLast).to(at::kFloat);
  return at::avg_pool2d(xf, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
      .round()
      .clamp(-127, 127)
      .to(at::kChar)
      .contiguous(at::MemoryFormat::ChannelsLast);
}

// The residual add on the GPU, composed of ATen ops with the CPU kernel's arithmetic (fp32 products and
// sum, ReLU, then the requantization rule of every int8 output). Memory-bound; not fused.
at::Tensor int8_add(const at::Tensor& a, const at::Tensor& b, std::optional<double> a_scale,
                    std::optional<double> b_scale, bool relu, std::optional<double> out_scale) {
  const at::MemoryFormat fmt = add_operands(a, b, a_scale, b_scale, out_scale);
  const c10::cuda::CUDAGuard guard(a.device());
  auto value = [&](const at::Tensor& t, const std::optional<double>& scale) {
    const at::Tensor c = t.contiguous(fmt);
    return scale ? c.to(at::kFloat).mul(static_cast<float>(*scale)) : c;
  };
  at::Tensor y = value(a, a_scale).add(value(b, b_scale));
  if (relu) y = at::where(y < 0, at::zeros_like(y), y);  // NaN stays NaN
  if (!out_scale) return y.contiguous(fmt);
  const float inv = 1.0f / static_cast<float>(*out_scale);
  return at::nan_to_num(y.mul(inv), 0.0).clamp(-127, 127).round().to(at::kChar).contiguous(fmt);
}

// The CPU op's contract (conv_ops.cpp): an eval BatchNorm (+ ReLU) quantized for the static conv behind it, by the
// quantize kernel's static rule with its per-column scale, shift and ReLU; rows are the NHWC pixels.
// An int8 x is widened to fp32 first (exact), which the kernel then reads with s = fl(x_scale * scale[c]).
at::Tensor quantize_channel_affine(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                                   double out_scale, bool relu, std::optional<double> x_scale) {
  const char* op = "quantize_channel_affine";
  TORCH_CHECK(x.is_cuda(), "fastinfer.", op, ": x must be a CUDA tensor here, got ", x.device());
  TORCH_CHECK(x.dim() == 4, "fastinfer.", op, ": x must be 4-D [N, C, H, W], got shape ", x.sizes());
  const bool s8 = x.scalar_type() == at::kChar;
  if (!s8) x_kind(x.scalar_type(), op);
  TORCH_CHECK(s8 == x_scale.has_value(), "fastinfer.", op, ": x_scale must be given exactly when x is int8 (its "
              "value is x * x_scale), got x of dtype ", x.scalar_type(), " and x_scale ", x_scale ? "given" : "None");
  const at::Device dev = x.device();
  const int64_t C = x.size(1);
  const c10::cuda::CUDAGuard guard(dev);
  at::Tensor sc = channel_vector(scale, C, dev, op, "scale", false);
  const at::Tensor sh = channel_vector(shift, C, dev, op, "shift", false);
  check_scale(x_scale, op, "x_scale");
  check_scale(out_scale, op, "out_scale");
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kChar).memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  if (x_scale) sc = sc.mul(static_cast<float>(*x_scale));
  at::Tensor q_rows = out.permute({0, 2, 3, 1}).reshape({-1, C});  // views: NHWC rows, no copy
  const at::Tensor rows = (s8 ? x.to(at::kFloat) : x).contiguous(at::MemoryFormat::ChannelsLast)
                              .permute({0, 2, 3, 1}).reshape({-1, C});
  quantize_into(rows, q_rows, nullptr, 1.0f / static_cast<float>(out_scale), sc, op, sh, relu);
  return out;
}

// A Hopper kernel's name and its composition's suffix (none for Cooperative).
std::string with_variant(const char* kernel) {
  if (t_variant == ck::Sm90Variant::Pingpong) return std::string(kernel) + "_pingpong";
  if (t_variant == ck::Sm90Variant::Wide) return std::string(kernel) + "_wide";
  if (t_variant == ck::Sm90Variant::Narrow) return std::string(kernel) + "_narrow";
  if (t_variant == ck::Sm90Variant::Small) return std::string(kernel) + "_small";
  return kernel;
}

std::string last_kernel(const std::string& family) {
  if (family == "quantize") return t_quantize == 2 ? "quantize_vec" : t_quantize == 1 ? "quantize_rows" : "";
  switch (static_cast<Served>(t_served)) {
    case Served::Sm80: return "sm80_mma";
    case Served::Sm90: return with_variant("sm90_cutlass");
    // the weight-only kernels: "_tiles" when they read a Tiles8x64 weight
    case Served::WeightOnly: return t_weight_tiles ? "weight_only_tiles" : "weight_only";
    case Served::WeightOnlyCublas: return "weight_only_cublas";
    case Served::WeightOnlyMma:
      return std::string(t_round_k == 64 ? "weight_only_mma" : "weight_only_mma_k256") + (t_weight_tiles ? "_tiles" : "");
    case Served::Sparse24: return with_variant("sm90_sparse24");
    case Served::ConvSm90: return with_variant("sm90_conv");
    case Served::ConvGathered: return "conv_gathered";
    case Served::DwConv: return "dwconv";
    case Served::DwConvStrip: return "dwconv_strip";
    case Served::DwConvStrip4: return "dwconv_strip4";
    case Served::ConvGrouped: return "conv_grouped";
    case Served::ConvGroupedDirect: return "conv_grouped_direct";
    case Served::None: break;
  }
  return "";
}

bool sm90_built() { return ck::sm90_gemm_built(); }
bool sparse24_built() { return ck::sparse24_built(); }

TORCH_LIBRARY_IMPL(fastinfer, CUDA, m) {
  m.impl("quantize_per_token", &quantize_per_token);
  m.impl("pack_int8_weight", &pack_int8_weight);
  m.impl("unpack_int8_weight", &unpack_int8_weight);
  m.impl("int8_mm", &int8_mm);
  m.impl("int8_scaled_mm", &int8_scaled_mm);
  m.impl("int8_linear_dynamic", &int8_linear_dynamic);
  m.impl("int8_linear_static", &int8_linear_static);
  m.impl("int8_linear_weight_only", &int8_linear_weight_only);
  m.impl("pack_sparse24", &pack_sparse24);
  m.impl("sparse24_linear_int8", &sparse24_linear_int8);
  m.impl("pack_conv_weight", &pack_conv_weight);
  m.impl("int8_conv2d", &int8_conv2d);
  m.impl("int8_max_pool2d", &int8_max_pool2d);
  m.impl("int8_avg_pool2d", &int8_avg_pool2d);
  m.impl("int8_add", &int8_add);
  m.impl("quantize_channel_affine", &quantize_channel_affine);
}

}  // namespace cuda
}  // namespace fastinfer
