// Argument parsing shared by the CPU and the CUDA entry layers (csrc/cpu, csrc/cuda): the same
// strings, checks and messages whichever device serves the op. ATen/c10 only, no kernels.
#pragma once
#include <ATen/core/Tensor.h>
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
  TORCH_CHECK(false, "fastinfer.", op, ": activation must be 'none', 'relu', 'relu6' or 'gelu', got '", a, "'");
  return Act::None;
}

// A static quantization scale (x_scale, out_scale), when given, must be a positive finite number.
inline void check_scale(const std::optional<double>& s, const char* op, const char* arg) {
  if (s)
    TORCH_CHECK(std::isfinite(*s) && *s > 0, "fastinfer.", op, ": ", arg,
                " must be a positive finite number (a calibrated quantization scale), got ", *s);
}

// x's shape [..., K] with the last dimension replaced by N.
inline std::vector<int64_t> out_shape(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = N;
  return s;
}

}  // namespace fastinfer
