// Residual add (see add.h). Written with GCC/Clang vector extensions (4 lanes: one SSE register under
// the baseline flags): the autovectorizer kept a branchy scalar loop for the int8 output.
#include "add.h"

#include <cstring>

#include "float_bits.h"

namespace fastinfer {
namespace kernels {

namespace {

typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef int8_t v4b __attribute__((vector_size(4)));

template <typename T>
inline v4f load4(const T* x, int64_t i, float scale) {
  if constexpr (sizeof(T) == 1) {
    v4b q;
    std::memcpy(&q, x + i, 4);
    return __builtin_convertvector(q, v4f) * scale;
  } else {
    v4f v;
    std::memcpy(&v, x + i, 16);
    return v;
  }
}

template <typename T>
inline float load1(const T* x, int64_t i, float scale) {
  if constexpr (sizeof(T) == 1)
    return static_cast<float>(x[i]) * scale;
  else
    return x[i];
}

template <typename TA, typename TB, bool kRelu, bool kInt8Out>
void add_loop(const AddParams& p, int64_t i0, int64_t i1) {
  const TA* a = static_cast<const TA*>(p.a);
  const TB* b = static_cast<const TB*>(p.b);
  const float sa = p.a_scale, sb = p.b_scale, inv = p.out_inv_scale;
  int64_t i = i0;
  for (; i + 4 <= i1; i += 4) {
    v4f y = load4(a, i, sa) + load4(b, i, sb);
    if (kRelu) y = relu_bits<v4f, v4i>(y);
    if (kInt8Out) {
      const v4b q = __builtin_convertvector(requant_bits<v4f, v4i>(y * inv), v4b);
      std::memcpy(static_cast<int8_t*>(p.out) + i, &q, 4);
    } else {
      std::memcpy(static_cast<float*>(p.out) + i, &y, 16);
    }
  }
  for (; i < i1; ++i) {
    float y = load1(a, i, sa) + load1(b, i, sb);
    if (kRelu) y = relu_bits<float, int32_t>(y);
    if (kInt8Out)
      static_cast<int8_t*>(p.out)[i] = static_cast<int8_t>(requant_bits<float, int32_t>(y * inv));
    else
      static_cast<float*>(p.out)[i] = y;
  }
}

}  // namespace

void add_act(const AddParams& p, int64_t i0, int64_t i1) {
  dispatch_add(p, [&](auto a8, auto b8, auto relu, auto out8) {
    using TA = std::conditional_t<decltype(a8)::value, int8_t, float>;
    using TB = std::conditional_t<decltype(b8)::value, int8_t, float>;
    add_loop<TA, TB, decltype(relu)::value, decltype(out8)::value>(p, i0, i1);
  });
}

}  // namespace kernels
}  // namespace fastinfer
