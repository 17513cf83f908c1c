// Direct calls from the eager modules' forwards into the CPU ops, past torch.ops (fastinfer._C.int8_conv2d,
// int8_conv2d_into, int8_add, int8_channel_mean, int8_channel_scale, int8_linear_static, int8_linear_dynamic;
// Python side: fastinfer/nn/_common.py, fast_or_dispatch, and fastinfer/nn/concat.py).
//
// Why: a call through torch.ops costs about 8 us before the op's own code runs (measured on an AMD Zen 4, a
// 1-pixel int8 conv: the Python OpOverload frame, the argument parse into IValues, the boxed autograd
// fallback, the __torch_function__ scans, and the garbage collections their allocations start), against
// about 2 us for the op's body. MobileNetV2 at batch 1 makes 62 such calls in a 2.5 ms forward.
//
// Each function takes the schema's arguments in order and returns the op's result, or NotImplemented where
// the dispatcher must decide: a tensor that is not a plain dense CPU tensor (subclasses, functorch wrappers,
// other devices), one that needs grad while grad mode is on, an active TorchDispatchMode or torch function
// mode, a tracer (torch.jit.trace) or another dispatch key switched on for the thread, RecordFunction
// callbacks (the profiler, which would not see the op), an argument of an unexpected Python type, or any
// error (the dispatcher's call raises it with the usual type and message). The caller then makes the
// torch.ops call. The ops check their arguments before they compute and write only their
// fresh output, so a fallback after an error repeats no work and finds its inputs as they were.
#include <Python.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/record_function.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/python_variable.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

#include "ops.h"
#include "output_pool.h"
#include "python_fast.h"

namespace fastinfer {
namespace cpu {
namespace {

std::atomic<int64_t> g_served{0};  // calls served here (fastinfer._C.fast_calls; tests assert on it)

// No mode, no RecordFunction callback, and no dispatch key switched on for this thread (torch.jit.trace's
// Tracer, functorch's transforms: without this check a trace recorded the op's output as a constant).
bool plain_context() {
  const c10::impl::LocalDispatchKeySet tls = c10::impl::tls_local_dispatch_key_set();
  return (tls.included_ - c10::default_included_set).empty() && !c10::impl::TorchDispatchModeTLS::any_modes_set() &&
         !at::impl::torch_function_mode_enabled() && !at::hasCallbacks();
}

// torch.Tensor or nn.Parameter holding a dense strided CPU tensor (keys: CPU, and autograd's and autocast's), and not
// needing grad while grad mode is on.
const at::Tensor* plain_tensor(PyObject* o) {
  if (!THPVariable_CheckExact(o)) return nullptr;
  const at::Tensor& t = THPVariable_Unpack(o);
  if (!t.defined() || t.layout() != at::kStrided) return nullptr;
  const c10::DispatchKeySet keys = t.key_set() - c10::autograd_dispatch_keyset - c10::autocast_dispatch_keyset -
                                   c10::DispatchKeySet(c10::DispatchKey::ADInplaceOrView);
  if (keys != c10::DispatchKeySet(c10::DispatchKey::CPU)) return nullptr;
  if (t.requires_grad() && c10::GradMode::is_enabled()) return nullptr;
  return &t;
}

bool optional_tensor(PyObject* o, std::optional<at::Tensor>* out) {
  if (o == Py_None) return true;
  const at::Tensor* t = plain_tensor(o);
  if (!t) return false;
  *out = *t;
  return true;
}

bool to_int(PyObject* o, int64_t* out) {
  if (!PyLong_CheckExact(o)) return false;
  const long long v = PyLong_AsLongLong(o);
  if (v == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  *out = v;
  return true;
}

// A tuple or list of 2 ints (the schemas' int[2]).
bool int_pair(PyObject* o, int64_t out[2]) {
  if (!(PyTuple_CheckExact(o) || PyList_CheckExact(o)) || PySequence_Fast_GET_SIZE(o) != 2) return false;
  PyObject** items = PySequence_Fast_ITEMS(o);
  return to_int(items[0], &out[0]) && to_int(items[1], &out[1]);
}

bool to_double(PyObject* o, double* out) {
  if (PyFloat_CheckExact(o)) {
    *out = PyFloat_AS_DOUBLE(o);
    return true;
  }
  if (!PyLong_CheckExact(o)) return false;
  *out = PyLong_AsDouble(o);
  if (*out == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  return true;
}

bool optional_double(PyObject* o, std::optional<double>* out) {
  if (o == Py_None) return true;
  double v;
  if (!to_double(o, &v)) return false;
  *out = v;
  return true;
}

bool to_string(PyObject* o, std::string* out) {
  if (!PyUnicode_CheckExact(o)) return false;
  Py_ssize_t n;
  const char* s = PyUnicode_AsUTF8AndSize(o, &n);
  if (!s) {
    PyErr_Clear();
    return false;
  }
  out->assign(s, static_cast<size_t>(n));
  return true;
}

PyObject* not_implemented() { Py_RETURN_NOTIMPLEMENTED; }

// Runs op() without the GIL (as torch.ops does) and wraps its tensor; NotImplemented on any error.
template <class Op>
PyObject* serve(const Op& op) {
  at::Tensor out;
  bool ok = true;
  Py_BEGIN_ALLOW_THREADS;
  try {
    // Below autograd and ADInplaceOrView, where torch.ops' boxed autograd fallback runs the CPU kernel too:
    // the op's internal views (the input's NHWC rows) then carry no view tracking (0.7 us of a 1-pixel conv).
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = op();
  } catch (...) {
    ok = false;
  }
  Py_END_ALLOW_THREADS;
  if (!ok) return not_implemented();
  g_served.fetch_add(1, std::memory_order_relaxed);
  return THPVariable_Wrap(std::move(out));
}

// int8_conv2d(x, packed_w, w_scale, bias, kernel_size, stride, padding, dilation, groups, x_scale, out_scale,
// activation)
PyObject* conv2d_fast(PyObject*, PyObject* const* args, Py_ssize_t n) {
  if (n != 12 || !plain_context()) return not_implemented();
  const at::Tensor *x = plain_tensor(args[0]), *w = plain_tensor(args[1]), *w_scale = plain_tensor(args[2]);
  std::optional<at::Tensor> bias;
  int64_t k[2], s[2], p[2], d[2], groups;
  std::optional<double> x_scale, out_scale;
  std::string act;
  if (!x || !w || !w_scale || !optional_tensor(args[3], &bias) || !int_pair(args[4], k) || !int_pair(args[5], s) ||
      !int_pair(args[6], p) || !int_pair(args[7], d) || !to_int(args[8], &groups) ||
      !optional_double(args[9], &x_scale) || !optional_double(args[10], &out_scale) || !to_string(args[11], &act))
    return not_implemented();
  return serve([&] { return int8_conv2d(*x, *w, *w_scale, bias, k, s, p, d, groups, x_scale, out_scale, act); });
}

// int8_conv2d_into(out, x, packed_w, ...): int8_conv2d's arguments after out. Returns None. out's version is bumped
// first, as the dispatcher's ADInplaceOrView kernel does (an inference tensor outside inference mode refuses it:
// NotImplemented, and the dispatcher raises its error).
PyObject* conv2d_into_fast(PyObject*, PyObject* const* args, Py_ssize_t n) {
  if (n != 13 || !plain_context()) return not_implemented();
  const at::Tensor *out = plain_tensor(args[0]), *x = plain_tensor(args[1]), *w = plain_tensor(args[2]),
                   *w_scale = plain_tensor(args[3]);
  std::optional<at::Tensor> bias;
  int64_t k[2], s[2], p[2], d[2], groups;
  std::optional<double> x_scale, out_scale;
  std::string act;
  if (!out || !x || !w || !w_scale || !optional_tensor(args[4], &bias) || !int_pair(args[5], k) ||
      !int_pair(args[6], s) || !int_pair(args[7], p) || !int_pair(args[8], d) || !to_int(args[9], &groups) ||
      !optional_double(args[10], &x_scale) || !optional_double(args[11], &out_scale) || !to_string(args[12], &act))
    return not_implemented();
  try {
    torch::autograd::impl::bump_version(*out);
  } catch (...) {
    return not_implemented();
  }
  PyObject* r = serve([&] {
    int8_conv2d_into(*out, *x, *w, *w_scale, bias, k, s, p, d, groups, x_scale, out_scale, act);
    return at::Tensor();
  });
  if (r == nullptr || r == Py_NotImplemented) return r;
  Py_DECREF(r);
  Py_RETURN_NONE;
}

// int8_add(a, b, a_scale, b_scale, relu, out_scale)
PyObject* add_fast(PyObject*, PyObject* const* args, Py_ssize_t n) {
  if (n != 6 || !plain_context()) return not_implemented();
  const at::Tensor *a = plain_tensor(args[0]), *b = plain_tensor(args[1]);
  std::optional<double> a_scale, b_scale, out_scale;
  if (!a || !b || !optional_double(args[2], &a_scale) || !optional_double(args[3], &b_scale) ||
      !PyBool_Check(args[4]) || !optional_double(args[5], &out_scale))
    return not_implemented();
  const bool relu = args[4] == Py_True;
  return serve([&] { return int8_add(*a, *b, a_scale, b_scale, relu, out_scale); });
}

// int8_channel_mean(x, x_scale)
PyObject* channel_mean_fast(PyObject*, PyObject* const* args, Py_ssize_t n) {
  if (n != 2 || !plain_context()) return not_implemented();
  const at::Tensor* x = plain_tensor(args[0]);
  double x_scale;
  if (!x || !to_double(args[1], &x_scale)) return not_implemented();
  return serve([&] { return int8_channel_mean(*x, x_scale); });
}

// int8_channel_scale(x, x_scale, gate, out_scale)
PyObject* channel_scale_fast(PyObject*, PyObject* const* args, Py_ssize_t n) {
  if (n != 4 || !plain_context()) return not_implemented();
  const at::Tensor *x = plain_tensor(args[0]), *gate = plain_tensor(args[2]);
  double x_scale;
  std::optional<double> out_scale;
  if (!x || !gate || !to_double(args[1], &x_scale) || !optional_double(args[3], &out_scale)) return not_implemented();
  return serve([&] { return int8_channel_scale(*x, x_scale, *gate, out_scale); });
}

// int8_linear_static(x, x_scale, packed_w, w_scale, bias, activation, out_scale, x_channel_scale)
PyObject* linear_static_fast(PyObject*, PyObject* const* args, Py_ssize_t n) {
  if (n != 8 || !plain_context()) return not_implemented();
  const at::Tensor *x = plain_tensor(args[0]), *w = plain_tensor(args[2]), *w_scale = plain_tensor(args[3]);
  double x_scale;
  std::optional<at::Tensor> bias, x_channel_scale;
  std::optional<double> out_scale;
  std::string act;
  if (!x || !w || !w_scale || !to_double(args[1], &x_scale) || !optional_tensor(args[4], &bias) ||
      !to_string(args[5], &act) || !optional_double(args[6], &out_scale) || !optional_tensor(args[7], &x_channel_scale))
    return not_implemented();
  return serve([&] { return int8_linear_static(*x, x_scale, *w, *w_scale, bias, act, out_scale, x_channel_scale); });
}

// int8_linear_dynamic(x, packed_w, w_scale, bias, activation, x_channel_scale)
PyObject* linear_dynamic_fast(PyObject*, PyObject* const* args, Py_ssize_t n) {
  if (n != 6 || !plain_context()) return not_implemented();
  const at::Tensor *x = plain_tensor(args[0]), *w = plain_tensor(args[1]), *w_scale = plain_tensor(args[2]);
  std::optional<at::Tensor> bias, x_channel_scale;
  std::string act;
  if (!x || !w || !w_scale || !optional_tensor(args[3], &bias) || !to_string(args[4], &act) ||
      !optional_tensor(args[5], &x_channel_scale))
    return not_implemented();
  return serve([&] { return int8_linear_dynamic(*x, *w, *w_scale, bias, act, x_channel_scale); });
}

PyObject* fast_calls(PyObject*, PyObject*) { return PyLong_FromLongLong(g_served.load()); }

// int8_buffer(n, c, h, w): an uninitialised int8 [n, c, h, w] channels_last CPU tensor whose storage comes from the
// ops' output cache, for fastinfer.nn.concat's buffers; NotImplemented under a mode or tracer (plain_context) or for
// sizes that are not ints. torch.empty's multi-MB blocks may be mapped afresh each call and every page faulted in
// by the first write: an Inception block's 2.5 MB concatenation at batch 8 took 0.66 ms for a conv written into a
// new buffer against 0.14 ms into one used before.
PyObject* int8_buffer(PyObject*, PyObject* const* args, Py_ssize_t n) {
  int64_t size[4];
  if (n != 4) {
    PyErr_SetString(PyExc_TypeError, "int8_buffer takes 4 ints (n, c, h, w)");
    return nullptr;
  }
  // A mode or tracer (fake tensors, torch.jit.trace: whose sizes are not Python ints either) makes its own buffer
  // with torch.empty.
  if (!plain_context()) return not_implemented();
  for (int i = 0; i < 4; ++i) {
    if (!to_int(args[i], &size[i])) return not_implemented();
    if (size[i] < 0) {
      PyErr_SetString(PyExc_ValueError, "int8_buffer: sizes must be >= 0");
      return nullptr;
    }
  }
  at::Tensor out;
  try {
    out = output_empty(size, at::kChar, at::MemoryFormat::ChannelsLast);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  return THPVariable_Wrap(std::move(out));
}

// A METH_FASTCALL entry: `name`, the direct call of torch.ops.fastinfer.<name>'s CPU op.
PyMethodDef fastcall(const char* name, _PyCFunctionFast fn) {
  return {name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fn)), METH_FASTCALL,
          "torch.ops.fastinfer's CPU op of this name called directly, or NotImplemented (csrc/cpu/python_fast.cpp)"};
}

PyMethodDef g_methods[] = {
    fastcall("int8_conv2d", conv2d_fast),
    fastcall("int8_conv2d_into", conv2d_into_fast),
    fastcall("int8_add", add_fast),
    fastcall("int8_channel_mean", channel_mean_fast),
    fastcall("int8_channel_scale", channel_scale_fast),
    fastcall("int8_linear_static", linear_static_fast),
    fastcall("int8_linear_dynamic", linear_dynamic_fast),
    {"int8_buffer", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&int8_buffer)), METH_FASTCALL,
     "int8_buffer(n, c, h, w): an uninitialised int8 channels_last tensor from the ops' output cache"},
    {"fast_calls", fast_calls, METH_NOARGS, "How many calls the direct functions have served in this process"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMethodDef* python_fast_methods() { return g_methods; }

}  // namespace cpu
}  // namespace fastinfer
