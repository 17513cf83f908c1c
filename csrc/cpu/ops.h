// The CPU ops that python_fast.cpp calls directly (their TORCH_LIBRARY_IMPL registrations are in the same
// files). Arguments and checks as the schemas in registration.cpp.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

namespace fastinfer {
namespace cpu {

at::Tensor int8_conv2d(const at::Tensor& x, const at::Tensor& packed_w, const at::Tensor& w_scale,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                       std::optional<double> x_scale, std::optional<double> out_scale, const std::string& activation);

// int8_conv2d writing into out (its shape, dtype int8 / float32 as out_scale says; channels contiguous, pixels
// evenly spaced: channels_last, or a channel slice of a wider channels_last tensor).
void int8_conv2d_into(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed_w,
                      const at::Tensor& w_scale, const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      std::optional<double> x_scale, std::optional<double> out_scale, const std::string& activation);

at::Tensor int8_add(const at::Tensor& a, const at::Tensor& b, std::optional<double> a_scale,
                    std::optional<double> b_scale, bool relu, std::optional<double> out_scale);

at::Tensor int8_channel_mean(const at::Tensor& x, double x_scale);

at::Tensor int8_channel_scale(const at::Tensor& x, double x_scale, const at::Tensor& gate,
                              std::optional<double> out_scale);

at::Tensor int8_linear_dynamic(const at::Tensor& x, const at::Tensor& packed_w, const at::Tensor& w_scale,
                               const std::optional<at::Tensor>& bias, const std::string& activation,
                               const std::optional<at::Tensor>& x_channel_scale);

at::Tensor int8_linear_static(const at::Tensor& x, double x_scale, const at::Tensor& packed_w,
                              const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                              const std::string& activation, std::optional<double> out_scale,
                              const std::optional<at::Tensor>& x_channel_scale);

}  // namespace cpu
}  // namespace fastinfer
