// Argument parsing shared by the CPU and the CUDA entry layers (csrc/cpu, csrc/cuda): the same
// strings, checks and messages whichever device serves the op. ATen/c10 only, no kernels.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "kernels/epilogue_kinds.h"

namespace fastinfer {

inline Act parse_act(const std::string& a, const char* op) {
  if (a == "none") return Act::None;
  if (a == "relu") return Act::Relu;
  if (a == "relu6") return Act::Relu6;
  if (a == "gelu") return Act::Gelu;
  if (a == "hardswish") return Act::Hardswish;
  if (a == "silu") return Act::Silu;
  TORCH_CHECK(false, "fastinfer.", op, ": activation must be 'none', 'relu', 'relu6', 'gelu', 'hardswish' or 'silu', "
              "got '", a, "'");
  return Act::None;
}

// The reduction length of an int8 weight: |sum_k a*b| <= K * 128 * 128 must fit int32, which every
// kernel (CPU and CUDA) accumulates in exactly. `what` names K in the caller's terms.
constexpr int64_t kMaxK = (int64_t{1} << 17) - 1;
inline void check_max_k(int64_t K, const char* op, const char* what) {
  TORCH_CHECK(K <= kMaxK, "fastinfer.", op, ": ", what, " must be <= ", kMaxK, " (exact int32 accumulation), got ", K);
}

// A static quantization scale (x_scale, out_scale, a_scale, b_scale), when given, must be positive and,
// with its reciprocal, a normal float32: the kernels take the scale and 1 / scale as float32, and a scale
// that overflows or flushes to zero there would turn the static quantizer into the dynamic one (which
// needs a scale buffer the static ops do not pass).
constexpr double kMinScale = 1.1754943508222875e-38;  // FLT_MIN, the smallest normal float32
constexpr double kMaxScale = 1.0 / kMinScale;          // 8.5e37: its reciprocal is still normal
inline void check_scale(const std::optional<double>& s, const char* op, const char* arg) {
  if (s)
    TORCH_CHECK(std::isfinite(*s) && *s >= kMinScale && *s <= kMaxScale, "fastinfer.", op, ": ", arg,
                " must be a positive finite number (a calibrated quantization scale) within float32's normal range "
                "[1.2e-38, 8.5e37], got ", *s);
}

// x's shape [..., K] with the last dimension replaced by N.
inline std::vector<int64_t> out_shape(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = N;
  return s;
}

inline bool is_depthwise(int64_t groups, int64_t cin, int64_t cout) { return groups > 1 && groups == cin && cout == cin; }

// A sliding window's kernel_size, stride, padding and dilation (two values each), checked.
inline void check_window(const char* op, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef pad,
                         at::IntArrayRef dil) {
  TORCH_CHECK(k.size() == 2 && s.size() == 2 && pad.size() == 2 && dil.size() == 2, "fastinfer.", op,
              ": kernel_size, stride, padding and dilation must have 2 values each");
  TORCH_CHECK(k[0] >= 1 && k[1] >= 1, "fastinfer.", op, ": kernel_size must be >= 1, got ", k);
  TORCH_CHECK(s[0] >= 1 && s[1] >= 1, "fastinfer.", op, ": stride must be >= 1, got ", s);
  TORCH_CHECK(pad[0] >= 0 && pad[1] >= 0, "fastinfer.", op, ": padding must be >= 0, got ", pad);
  TORCH_CHECK(dil[0] >= 1 && dil[1] >= 1, "fastinfer.", op, ": dilation must be >= 1, got ", dil);
}

// Output size of a sliding window (torch's rule; ceil_mode for pooling). A window larger than the padded
// input gives <= 0 (callers check).
inline int64_t window_out_size(int64_t in, int64_t k, int64_t s, int64_t pad, int64_t d, bool ceil_mode) {
  const int64_t span = in + 2 * pad - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
  if (span < 0) return 0;
  int64_t out = span / s + 1;
  if (ceil_mode && (out - 1) * s >= in + pad) --out;  // the last window must start inside the input or left pad
  return out;
}

// A convolution's geometry from int8_conv2d's arguments, checked (the same messages on every device).
struct ConvArgs {
  int64_t N, C, H, W, Cout, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, groups;
};

inline ConvArgs conv_args(const at::Tensor& x, int64_t cout, at::IntArrayRef k, at::IntArrayRef s,
                          at::IntArrayRef pad, at::IntArrayRef dil, int64_t groups) {
  const char* op = "int8_conv2d";
  TORCH_CHECK(x.dim() == 4, "fastinfer.int8_conv2d: x must be 4-D [N, C, H, W], got shape ", x.sizes());
  check_window(op, k, s, pad, dil);
  ConvArgs a{x.size(0), x.size(1), x.size(2), x.size(3), cout, 0, 0, k[0], k[1], s[0], s[1], pad[0], pad[1],
             dil[0], dil[1], groups};
  TORCH_CHECK(groups >= 1 && a.C % groups == 0 && cout % groups == 0, "fastinfer.", op, ": groups=", groups,
              " must divide the input channels (", a.C, ") and output channels (", cout, ", the length of w_scale)");
  const int64_t eff_h = a.DH * (a.KH - 1) + 1, eff_w = a.DW * (a.KW - 1) + 1;
  a.OH = window_out_size(a.H, a.KH, a.SH, a.PH, a.DH, false);
  a.OW = window_out_size(a.W, a.KW, a.SW, a.PW, a.DW, false);
  TORCH_CHECK(a.H + 2 * a.PH >= eff_h && a.W + 2 * a.PW >= eff_w, "fastinfer.int8_conv2d: input ", a.H, "x", a.W,
              " (padded ", a.H + 2 * a.PH, "x", a.W + 2 * a.PW, ") is smaller than the dilated kernel ", eff_h, "x",
              eff_w);
  return a;
}

// A pooling op's geometry (int8_max_pool2d, int8_avg_pool2d: dilation 1), checked as torch's pooling checks it
// (output size rule included).
struct PoolArgs {
  int64_t N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW;
};

inline PoolArgs pool_args(const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef pad,
                          at::IntArrayRef dil, bool ceil_mode, const char* op = "int8_max_pool2d") {
  TORCH_CHECK(x.dim() == 4, "fastinfer.", op, ": x must be 4-D [N, C, H, W], got shape ", x.sizes());
  check_window(op, k, s, pad, dil);
  TORCH_CHECK(2 * pad[0] <= k[0] && 2 * pad[1] <= k[1],
              "fastinfer.", op, ": padding must be at most half the kernel size ", k, ", got ", pad);
  PoolArgs a{x.size(0), x.size(1), x.size(2), x.size(3), 0, 0, k[0], k[1], s[0], s[1], pad[0], pad[1],
             dil[0], dil[1]};
  a.OH = window_out_size(a.H, a.KH, a.SH, a.PH, a.DH, ceil_mode);
  a.OW = window_out_size(a.W, a.KW, a.SW, a.PW, a.DW, ceil_mode);
  TORCH_CHECK(a.OH >= 1 && a.OW >= 1, "fastinfer.", op, ": input ", a.H, "x", a.W, " (padding ", pad,
              ") is smaller than the dilated kernel ", k, " with dilation ", dil);
  // A dilated window can skip every input row or column (all its taps in the padding): torch gives -inf
  // there, which int8 cannot hold, so such a geometry is refused rather than given a made-up value.
  auto check_taps = [&](int64_t in, int64_t out, int64_t kk, int64_t st, int64_t pd, int64_t dd, const char* what) {
    for (int64_t o = 0; o < out; ++o) {
      bool any = false;
      for (int64_t t = 0; t < kk && !any; ++t) any = o * st - pd + t * dd >= 0 && o * st - pd + t * dd < in;
      TORCH_CHECK(any, "fastinfer.", op, ": the window of output ", what, " ", o, " has every tap in the padding",
                  " (kernel_size ", k, ", stride ", s, ", padding ", pad, ", dilation ", dil, ", input ", a.H, "x", a.W,
                  "); torch's max_pool2d gives -inf there, which int8 cannot hold");
    }
  };
  check_taps(a.H, a.OH, a.KH, a.SH, a.PH, a.DH, "row");
  check_taps(a.W, a.OW, a.KW, a.SW, a.PW, a.DW, "column");
  return a;
}

// int8_add's operands: each int8 with its scale or fp32 without one, the same shape (no broadcasting).
// Returns the layout the op runs in: channels_last for 4-D operands, contiguous otherwise.
inline at::MemoryFormat add_operands(const at::Tensor& a, const at::Tensor& b, const std::optional<double>& a_scale,
                                     const std::optional<double>& b_scale, const std::optional<double>& out_scale) {
  const char* op = "int8_add";
  auto check = [&](const at::Tensor& t, const std::optional<double>& scale, const char* name) {
    const bool int8 = t.scalar_type() == at::kChar;
    TORCH_CHECK(int8 || t.scalar_type() == at::kFloat, "fastinfer.int8_add: ", name,
                " must be int8 (with its scale) or float32, got ", t.scalar_type());
    TORCH_CHECK(scale.has_value() == int8, "fastinfer.int8_add: ", name, "_scale ",
                int8 ? "is needed for an int8 " : "must be None for a float32 ", name);
  };
  check(a, a_scale, "a");
  check(b, b_scale, "b");
  check_scale(a_scale, op, "a_scale");
  check_scale(b_scale, op, "b_scale");
  check_scale(out_scale, op, "out_scale");
  TORCH_CHECK(a.sizes() == b.sizes(), "fastinfer.int8_add: a and b must have the same shape (no broadcasting), got ",
              a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.device() == b.device(), "fastinfer.int8_add: a and b must be on the same device, got ", a.device(),
              " and ", b.device());
  return a.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace fastinfer
