// Portable scalar kernels: the C++ oracle for the vector paths and the fallback on any CPU.
#include <algorithm>
#include <cmath>

#include "epilogue.h"
#include "pack.h"
#include "params.h"

namespace fastinfer {
namespace kernels {
namespace {

inline int8_t packed_at(const int8_t* b, int64_t K_pad, int64_t n, int64_t k) {
  return b[(n / kPackNB) * K_pad * kPackNB + (k / kPackKB) * 64 + (n % kPackNB) * kPackKB + k % kPackKB];
}

void int8_gemm_ref(const Int8GemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  n1 = std::min(n1, p.N);
  for (int64_t m = m0; m < m1; ++m) {
    const uint8_t* a = p.a + m * p.lda;
    for (int64_t n = n0; n < n1; ++n) {
      int32_t acc = 0;
      for (int64_t k = 0; k < p.K; ++k) acc += static_cast<int32_t>(a[k]) * packed_at(p.b, p.K_pad, n, k);
      acc -= 128 * p.b_colsum[n];
      const int64_t idx = m * p.ldo + n;
      if (p.out_kind == OutKind::Int32)
        static_cast<int32_t*>(p.out)[idx] = acc;
      else
        store_out(p.out, idx, p.out_kind, dequant(acc, row_scale(p, m), p.b_scale[n], p.bias, n, p.act),
                  p.out_inv_scale);
    }
  }
}

void w8_gemm_ref(const W8GemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  n1 = std::min(n1, p.N);
  for (int64_t m = m0; m < m1; ++m) {
    const float* a = p.a + m * p.lda;
    for (int64_t n = n0; n < n1; ++n) {
      float acc = 0.0f;
      for (int64_t k = 0; k < p.K; ++k) acc += a[k] * static_cast<float>(packed_at(p.b, p.K_pad, n, k));
      float y = acc * p.b_scale[n];
      if (p.bias) y += p.bias[n];
      store_out(p.out, m * p.ldo + n, p.out_kind, y);
    }
  }
}

void quantize_ref(const QuantizeParams& p, int64_t m0, int64_t m1) {
  for (int64_t m = m0; m < m1; ++m) {
    auto load = [&](int64_t k) {
      const float v = p.x_is_s8     ? static_cast<float>(static_cast<const int8_t*>(p.x)[m * p.ldx + k])
                      : p.x_is_bf16 ? bf16_to_f32(static_cast<const uint16_t*>(p.x)[m * p.ldx + k])
                                    : static_cast<const float*>(p.x)[m * p.ldx + k];
      float y = p.col_scale ? v * p.col_scale[k] : v;
      if (p.col_shift) y = y + p.col_shift[k];
      return p.relu ? (y > 0.0f ? y : 0.0f) : y;  // NaN -> 0 (as the vector kernels' max)
    };
    if (p.static_inv > 0.0f) {
      const int32_t shift = p.shift128 ? 128 : 0;
      uint8_t* q = static_cast<uint8_t*>(p.q) + m * p.ldq;
      for (int64_t k = 0; k < p.K; ++k) q[k] = static_cast<uint8_t>(quant_static(load(k), p.static_inv) + shift);
      for (int64_t k = p.K; k < p.K_pad; ++k) q[k] = static_cast<uint8_t>(shift);
      continue;
    }
    uint32_t amax_bits = 0;
    for (int64_t k = 0; k < p.K; ++k) {
      float v = load(k);
      uint32_t u;
      std::memcpy(&u, &v, 4);
      amax_bits = std::max(amax_bits, u & 0x7fffffffu);
    }
    const float inv = quant_row_inverse(amax_bits, &p.scale[m]);
    const int32_t shift = p.shift128 ? 128 : 0;
    uint8_t* q = static_cast<uint8_t*>(p.q) + m * p.ldq;
    for (int64_t k = 0; k < p.K && inv != 0.0f; ++k) {
      float r = std::nearbyint(load(k) * inv);  // default rounding mode: half to even
      int32_t v = static_cast<int32_t>(std::min(127.0f, std::max(-127.0f, r)));
      q[k] = static_cast<uint8_t>(v + shift);
    }
    for (int64_t k = inv != 0.0f ? p.K : 0; k < p.K_pad; ++k) q[k] = static_cast<uint8_t>(shift);
  }
}

void dwconv_ref(const DwConvParams& p, int64_t p0, int64_t p1) {
  for (int64_t pix = p0; pix < p1; ++pix) {
    const int64_t n = pix / (p.OH * p.OW), oh = (pix / p.OW) % p.OH, ow = pix % p.OW;
    for (int64_t c = 0; c < p.C; ++c) {
      int32_t acc = 0;
      for (int64_t kh = 0; kh < p.KH; ++kh) {
        const int64_t ih = oh * p.SH - p.PH + kh * p.DH;
        if (ih < 0 || ih >= p.H) continue;
        for (int64_t kw = 0; kw < p.KW; ++kw) {
          const int64_t iw = ow * p.SW - p.PW + kw * p.DW;
          if (iw < 0 || iw >= p.W) continue;
          acc += static_cast<int32_t>(p.x[((n * p.H + ih) * p.W + iw) * p.C + c]) * p.w[(kh * p.KW + kw) * p.C + c];
        }
      }
      store_out(p.out, pix * p.C + c, p.out_kind, dequant(acc, p.a_scale, p.w_scale[c], p.bias, c, p.act),
                p.out_inv_scale);
    }
  }
}

uint32_t absmax_ref(const float* x, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    m = std::max(m, u & 0x7fffffffu);
  }
  return m;
}

}  // namespace

const KernelSet& kernels_ref() {
  static const KernelSet s{"ref", int8_gemm_ref, w8_gemm_ref, quantize_ref, dwconv_ref, absmax_ref, nullptr, 16, 16, 1, false, nullptr};
  return s;
}

}  // namespace kernels
}  // namespace fastinfer
