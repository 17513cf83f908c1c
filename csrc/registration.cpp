// Every fastinfer op schema, defined once. Backend files only add TORCH_LIBRARY_IMPL kernels.
#include <Python.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <stdexcept>
#include <string>

#include "cpu/dispatch.h"
#include "cpu/isa.h"
#include "cpu/output_pool.h"
#include "cpu/python_fast.h"
#include "op_args.h"
#ifdef FASTINFER_WITH_CUDA
#include "cuda/cuda_info.h"
#endif

namespace {

// Which device kernels this build holds, and the int8 kernels' K limit (JSON).
std::string build_info() {
  const std::string max_k = ", \"max_k\": " + std::to_string(fastinfer::kMaxK) + "}";
#ifdef FASTINFER_WITH_CUDA
  return std::string("{\"cuda\": true, \"cutlass_sm90\": ") + (fastinfer::cuda::sm90_built() ? "true" : "false") +
         ", \"sparse24\": " + (fastinfer::cuda::sparse24_built() ? "true" : "false") + max_k;
#else
  return "{\"cuda\": false, \"cutlass_sm90\": false, \"sparse24\": false" + max_k;
#endif
}

std::string cuda_last_kernel(const std::string& family) {
  if (family != "gemm" && family != "quantize")
    throw std::invalid_argument("cuda_last_kernel: family must be 'gemm' or 'quantize', got '" + family + "'");
#ifdef FASTINFER_WITH_CUDA
  return fastinfer::cuda::last_kernel(family);
#else
  return "";
#endif
}

std::string set_isa_cap(const std::string& name) {
  fastinfer::cpu::Isa isa;
  if (!fastinfer::cpu::parse_isa(name, &isa))
    throw std::invalid_argument("set_isa_cap: isa must be one of ref, avx2, avx_vnni, avx512_vnni, amx; got '" + name + "'");
  return fastinfer::cpu::isa_name(fastinfer::cpu::set_isa_cap(isa));
}

std::string isa_cap() { return fastinfer::cpu::isa_name(fastinfer::cpu::isa_cap()); }

}  // namespace

TORCH_LIBRARY(fastinfer, m) {
  // Activations: per-token symmetric int8 (one fp32 scale per row).
  m.def("quantize_per_token(Tensor x) -> (Tensor, Tensor)");
  // Weights: int8 [N, K] -> packed uint8 buffer (header + column sums + n16k4 blocks).
  m.def("pack_int8_weight(Tensor weight) -> Tensor");
  m.def("unpack_int8_weight(Tensor packed) -> Tensor");
  // Raw int8 x int8 -> int32 product, A [M, K] times the packed B [N, K] transposed.
  m.def("int8_mm(Tensor a, Tensor packed_b, int n) -> Tensor");
  // Y = (A . B^T) * a_scale[m] * b_scale[n] + bias[n], fp32 or bf16 out.
  m.def("int8_scaled_mm(Tensor a, Tensor a_scale, Tensor packed_b, Tensor b_scale, Tensor? bias=None, "
        "ScalarType? out_dtype=None) -> Tensor");
  // Linear layers: x [..., K] fp32/bf16 -> [..., N] of x's dtype.
  // x_channel_scale: optional per-input-channel multiplier applied before quantization (SmoothQuant).
  m.def("int8_linear_dynamic(Tensor x, Tensor packed_w, Tensor w_scale, Tensor? bias=None, "
        "str activation=\"none\", Tensor? x_channel_scale=None) -> Tensor");
  // Static (calibrated) activation scale; int8 output (requantized with out_scale) when given.
  m.def("int8_linear_static(Tensor x, float x_scale, Tensor packed_w, Tensor w_scale, Tensor? bias=None, "
        "str activation=\"none\", float? out_scale=None, Tensor? x_channel_scale=None) -> Tensor");
  m.def("int8_linear_weight_only(Tensor x, Tensor packed_w, Tensor w_scale, Tensor? bias=None) -> Tensor");
  // Convolution: weights [Cout, Cin/groups, KH, KW] int8 packed once; x [N, C, H, W] (channels_last
  // in memory; NCHW input is converted once), fp32 or int8 (with x_scale); out fp32 or int8 (out_scale).
  m.def("pack_conv_weight(Tensor weight, int groups) -> Tensor");
  m.def("int8_conv2d(Tensor x, Tensor packed_w, Tensor w_scale, Tensor? bias, int[2] kernel_size, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups, float? x_scale=None, float? out_scale=None, "
        "str activation=\"none\") -> Tensor");
  // The same, written into out: a channel slice of a wider channels_last buffer (a concatenation's, whose other
  // channels stay as they are), or any channels_last tensor of the output's shape and dtype.
  m.def("int8_conv2d_into(Tensor(a!) out, Tensor x, Tensor packed_w, Tensor w_scale, Tensor? bias, int[2] kernel_size, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups, float? x_scale=None, float? out_scale=None, "
        "str activation=\"none\") -> ()");
  // Max pooling of int8 activations (channels_last out; what an int8 hand-off between convs passes through).
  m.def("int8_max_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
        "bool ceil_mode=False) -> Tensor");
  // Average pooling of int8 activations at one scale (torch's avg_pool2d arguments; the average rounded half to
  // even): a DenseNet transition's pool between an int8 conv and the next block's int8 concatenations.
  m.def("int8_avg_pool2d(Tensor x, int[2] kernel_size, int[2] stride=[], int[2] padding=0, bool ceil_mode=False, "
        "bool count_include_pad=True, int? divisor_override=None) -> Tensor");
  // Residual add: a and b each int8 (with its scale) or fp32, same shape; optional ReLU; fp32 out, or int8
  // requantized with out_scale (channels_last for 4-D operands). Ends an int8 ResNet block.
  m.def("int8_add(Tensor a, Tensor b, float? a_scale=None, float? b_scale=None, bool relu=False, "
        "float? out_scale=None) -> Tensor");
  // Squeeze-excitation on an int8 activation x [N, C, H, W] (channels_last; csrc/kernels/conv/gate.h): the global
  // average pool -> fp32 [N, C, 1, 1], and the gate's multiply by gate [N, C] (or [N, C, 1, 1]) fp32 -> fp32, or
  // int8 requantized with out_scale. What keeps a MobileNetV3 / EfficientNet block's activations int8.
  m.def("int8_channel_mean(Tensor x, float x_scale) -> Tensor");
  m.def("int8_channel_scale(Tensor x, float x_scale, Tensor gate, float? out_scale=None) -> Tensor");
  // An eval BatchNorm (+ ReLU) as the int8 input of a static conv: x [N, C, H, W] fp32 (or int8 with x_scale) ->
  // int8 channels_last, round(act(x * scale[c] + shift[c]) / out_scale) clamped to [-127, 127].
  m.def("quantize_channel_affine(Tensor x, Tensor scale, Tensor shift, float out_scale, bool relu=False, "
        "float? x_scale=None) -> Tensor");
  // Channel concatenation of int8 activations: parts (int8 [N, C_i, H, W]) written one after another into out's
  // channels from channel_offset on; out channels_last, or a channel slice of a channels_last buffer.
  m.def("int8_cat_channels_into(Tensor(a!) out, Tensor[] parts, int channel_offset=0) -> ()");
  // Sparse weights (layouts in csrc/kernels/sparse/sparse.h), packed once from a dense [N, K] weight:
  // csr16 / csr8 from fp32 -> (row_ptr, cols, values) / (row_ptr, offsets, group_base, values);
  // slot128 from int8 -> (grp_ptr, idx, values, w_sum).
  m.def("pack_csr16(Tensor weight) -> (Tensor, Tensor, Tensor)");
  m.def("pack_csr8(Tensor weight) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("pack_slot128(Tensor weight) -> (Tensor, Tensor, Tensor, Tensor)");
  // fp32 sparse weight x dense x [..., in_features]: csr16 (cols int16), or csr8 (cols = uint8 offsets
  // and group_base given).
  m.def("sparse_linear(Tensor x, Tensor row_ptr, Tensor cols, Tensor values, Tensor? bias, int in_features, "
        "Tensor? group_base=None) -> Tensor");
  // 2:4 sparse int8 on Hopper (CUDA only): a dense 2:4 int8 [N, K] weight on the GPU -> (values, meta) in
  // CUTLASS's compressed layout; dynamic W8A8 on it with the dense path's fused epilogue.
  m.def("pack_sparse24(Tensor weight) -> (Tensor, Tensor)");
  m.def("sparse24_linear_int8(Tensor x, Tensor values, Tensor meta, Tensor w_scale, Tensor? bias, int in_features) "
        "-> Tensor");
  // Dynamic W8A8 on a slot128 int8 weight: x quantized per token, sparse int8 product, dense epilogue.
  m.def("sparse_linear_int8(Tensor x, Tensor grp_ptr, Tensor idx, Tensor values, Tensor w_sum, Tensor w_scale, "
        "Tensor? bias, int in_features) -> Tensor");
  // Introspection (no tensors: registered catch-all right here).
  m.def("cpu_capabilities() -> str", &fastinfer::cpu::capabilities_json);
  m.def("set_isa_cap(str isa) -> str", &set_isa_cap);
  m.def("isa_cap() -> str", &isa_cap);
  m.def("last_kernel(str family) -> str", &fastinfer::cpu::last_kernel);
  // Shape bucket of the int8 GEMM: on AMX, fewer rows than this run on the VNNI kernels. Returns the old value.
  m.def("set_amx_min_rows(int rows) -> int", &fastinfer::cpu::set_amx_min_rows);
  // When one-group convolutions skip kernel rows in the zero padding (conv_ops.cpp, PaddedKernelRows): 0 auto,
  // 1 always, 2 never. Returns the old value.
  m.def("set_conv_padded_rows(int mode) -> int", &fastinfer::cpu::set_conv_padded_rows_mode);
  m.def("build_info() -> str", &build_info);
  // The CPU ops' output cache (cpu/output_pool.cc): the bytes it holds; its limit (returns the old one).
  m.def("output_cache_bytes() -> int", &fastinfer::cpu::output_cache_bytes);
  m.def("set_output_cache_limit(int bytes) -> int", &fastinfer::cpu::set_output_cache_limit);
  m.def("cuda_last_kernel(str family=\"gemm\") -> str", &cuda_last_kernel);
  // Benchmarks: the int8 instruction's peak rate (registers only) on all intra-op threads.
  m.def("int8_peak_probe(int iters) -> int", &fastinfer::cpu::int8_peak_probe);
}

// The ops are inference-only. For the ones that take float tensors (which may require grad), the Autograd
// key gets torch's not-implemented kernel: a forward still runs, and a backward through the output raises
// "derivative for fastinfer::<op> is not implemented" instead of torch's default (a deprecation warning
// and no gradient at all, x.grad left None: training through a quantized layer silently learned nothing).
TORCH_LIBRARY_IMPL(fastinfer, Autograd, m) {
  for (const char* op : {"quantize_per_token", "int8_scaled_mm", "int8_linear_dynamic", "int8_linear_static",
                         "int8_linear_weight_only", "int8_conv2d", "int8_conv2d_into", "int8_add", "int8_channel_scale",
                         "quantize_channel_affine", "sparse_linear",
                         "sparse_linear_int8",
                         "sparse24_linear_int8"})
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
}

// `import fastinfer._C` runs the static registrations above; the module holds the eager layers' direct calls
// (cpu/python_fast.cpp).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "fastinfer ops (see torch.ops.fastinfer)", -1,
                                   fastinfer::cpu::python_fast_methods()};
  return PyModule_Create(&def);
}
