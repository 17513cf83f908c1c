// Depthwise int8 convolution by strips of outputs along a row, the taps of a filter row summed by dp4a: the
// arithmetic of one thread, written for the host as well as the GPU so that a CPU test (tests/dwconv_strip_host.cc,
// built by tests/test_cuda_host.py with the system's C++ compiler) checks it bit for bit without a GPU. The
// kernel around it (dwconv_strip_kernel) and its dispatch are in conv.cu. Framework-free: params.h only.
//
// Why: the per-output kernel (dwconv_kernel) spends about 300 instructions on 4 outputs of a 3 x 3 filter (a
// byte extraction and a multiply per product, an address and two loads per tap), 0.70x cuDNN fp16 on an
// H200. Here a thread owns 4 channels (one 4-byte word of NHWC input per column: a warp's 32 threads read 128
// contiguous bytes) and a strip of QS outputs of one output row. Per filter row it loads the strip's input
// columns once, transposes each group of 4 columns x 4 channels (8 byte permutes) into words that hold 4
// consecutive columns of one channel, and then every output's S taps of that row are ceil(S / 4) dp4a: the
// window of 4 columns starting at the output's first tap is one funnel shift of two such words, and the filter
// row is the same kind of word (taps past S zero, so whatever input those bytes hold is multiplied by 0).
// About 1 instruction per multiply-add; the strip reuses each input column for up to S outputs.
//
// Preconditions (dwconv_strip_supported): C % 4 == 0 (4-byte aligned words), dil_w == 1 (a row's taps are
// adjacent columns), S and stride_w one of the instantiated pairs; any R, stride_h, dil_h and padding.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "params.h"  // FI_HOST_DEVICE

namespace fastinfer {
namespace cuda_kernels {
namespace dwstrip {

// Bytes of b:a (a the low word) picked by the selector's 4 nibbles (values 0-7: no sign-replicate mode).
FI_HOST_DEVICE uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(a, b, sel);
#else
  const uint64_t v = (static_cast<uint64_t>(b) << 32) | a;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<uint32_t>((v >> (8 * ((sel >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return r;
#endif
}

// c + the dot product of the 4 signed bytes of a and b.
FI_HOST_DEVICE int32_t dp4a(uint32_t a, uint32_t b, int32_t c) {
#if defined(__CUDA_ARCH__)
  return __dp4a(static_cast<int>(a), static_cast<int>(b), c);
#else
  for (int i = 0; i < 4; ++i) {
    const int32_t ai = static_cast<int8_t>(a >> (8 * i)), bi = static_cast<int8_t>(b >> (8 * i));
    c += ai * bi;
  }
  return c;
#endif
}

// Bytes `shift` .. `shift` + 3 of hi:lo (shift 0-3).
FI_HOST_DEVICE uint32_t bytes_from(uint32_t lo, uint32_t hi, int shift) {
  if (shift == 0) return lo;
#if defined(__CUDA_ARCH__)
  return __funnelshift_r(lo, hi, 8 * shift);
#else
  return static_cast<uint32_t>(((static_cast<uint64_t>(hi) << 32) | lo) >> (8 * shift));
#endif
}

// The 4 bytes at p (4-byte aligned) as a word.
FI_HOST_DEVICE uint32_t load4(const int8_t* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const uint32_t*>(p);
#else
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
#endif
}

// 4 words of 4 bytes (v[j] byte k) -> the transpose in place (v[k] byte j).
FI_HOST_DEVICE void transpose4(uint32_t& a, uint32_t& b, uint32_t& c, uint32_t& d) {
  const uint32_t t0 = prmt(a, b, 0x5140), t1 = prmt(a, b, 0x7362);  // a0 b0 a1 b1, a2 b2 a3 b3
  const uint32_t t2 = prmt(c, d, 0x5140), t3 = prmt(c, d, 0x7362);  // c0 d0 c1 d1, c2 d2 c3 d3
  a = prmt(t0, t2, 0x5410);
  b = prmt(t0, t2, 0x7632);
  c = prmt(t1, t3, 0x5410);
  d = prmt(t1, t3, 0x7632);
}

// One strip's shape: S taps a filter row, stride SW along the row, QS outputs.
template <int S, int SW, int QS>
struct Strip {
  static constexpr int kWindows = (S + 3) / 4;                      // dp4a per output, channel and filter row
  static constexpr int kLastByte = (QS - 1) * SW + 4 * kWindows - 1;  // the last column a window reads
  static constexpr int kGroups = kLastByte / 4 + 1;                 // groups of 4 input columns loaded
};

// The int32 sums of outputs (n, oh, ow0 + q) for q < QS, channels c0 .. c0 + 3: acc[q][k]. x int8 [N, H, W, C]
// and w int8 [R * S, C] as DwConvParams holds them; g.S == S, g.stride_w == SW, g.dil_w == 1, C % 4 == 0.
// Input columns outside [0, W) and rows outside [0, H) are padding (zero); outputs past Q get sums of whatever
// in-bounds columns their windows cover (the caller does not store them). Reads only inside x and w.
template <int S, int SW, int QS, class I>
FI_HOST_DEVICE void strip_sums(const ConvGeometry& g, const int8_t* x, const int8_t* w, I n, I oh, I ow0, I c0,
                               int32_t (&acc)[QS][4]) {
  using Sh = Strip<S, SW, QS>;
  constexpr int kW = Sh::kWindows, kG = Sh::kGroups;
  const I H = static_cast<I>(g.H), W = static_cast<I>(g.W), C = static_cast<I>(g.C);
  const I iw0 = ow0 * SW - static_cast<I>(g.pad_w);
  for (int q = 0; q < QS; ++q)
    for (int k = 0; k < 4; ++k) acc[q][k] = 0;
  for (I r = 0; r < static_cast<I>(g.R); ++r) {
    const I ih = oh * static_cast<I>(g.stride_h) - static_cast<I>(g.pad_h) + r * static_cast<I>(g.dil_h);
    if (ih < 0 || ih >= H) continue;
    // The filter row: tap words (4 channels each) transposed into per-channel words of 4 taps.
    uint32_t f[4 * kW];
#pragma unroll
    for (int s = 0; s < 4 * kW; ++s)
      f[s] = s < S ? load4(w + (r * S + s) * C + c0) : 0u;
#pragma unroll
    for (int t = 0; t < kW; ++t) transpose4(f[4 * t], f[4 * t + 1], f[4 * t + 2], f[4 * t + 3]);
    // f[4 t + k]: taps 4 t .. 4 t + 3 of channel c0 + k.
    // The row's input columns iw0 .. iw0 + 4 kG - 1 (zero outside the image), then per-channel words.
    const int8_t* const row = x + ((n * H + ih) * W) * C + c0;
    uint32_t v[4 * kG];
#pragma unroll
    for (int j = 0; j < 4 * kG; ++j) {
      const I iw = iw0 + j;
      v[j] = iw >= 0 && iw < W ? load4(row + iw * C) : 0u;
    }
#pragma unroll
    for (int t = 0; t < kG; ++t) transpose4(v[4 * t], v[4 * t + 1], v[4 * t + 2], v[4 * t + 3]);
    // v[4 t + k]: columns 4 t .. 4 t + 3 of channel c0 + k.
#pragma unroll
    for (int q = 0; q < QS; ++q)
#pragma unroll
      for (int t = 0; t < kW; ++t) {
        const int o = q * SW + 4 * t;  // the window's first column, from iw0
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const uint32_t lo = v[4 * (o / 4) + k];
          const uint32_t hi = o % 4 ? v[4 * (o / 4 + 1) + k] : 0u;
          acc[q][k] = dp4a(bytes_from(lo, hi, o % 4), f[4 * t + k], acc[q][k]);
        }
      }
  }
}

// The instantiated shapes: f(S, SW, QS) as std::integral_constant values for g's filter width and column
// stride, QS the strip length: `stride1_qs` (8 or 4) outputs at stride 1, 4 at stride 2 (the loaded columns
// stay at 8-16). False when g has none (the per-output kernel serves it). At stride 1 and S = 3, QS = 8 takes
// 108 registers (16 warps a multiprocessor) and loads 1.5 input columns an output, QS = 4 takes 64 (32 warps)
// and loads 2: both are built until a GPU has timed them (DwConvParams::strip).
template <int V>
using IntC = std::integral_constant<int, V>;
template <class F>
bool dispatch(const ConvGeometry& g, int stride1_qs, F&& f) {
  auto by_stride = [&](auto taps) {
    if (g.stride_w == 1 && (stride1_qs == 8 || stride1_qs == 4)) {
      if (stride1_qs == 8)
        f(taps, IntC<1>{}, IntC<8>{});
      else
        f(taps, IntC<1>{}, IntC<4>{});
      return true;
    }
    if (g.stride_w == 2) {
      f(taps, IntC<2>{}, IntC<4>{});
      return true;
    }
    return false;
  };
  if (g.dil_w != 1 || g.C % 4 != 0) return false;
  switch (g.S) {
    case 3: return by_stride(IntC<3>{});
    case 5: return by_stride(IntC<5>{});
    case 7: return by_stride(IntC<7>{});
    default: return false;
  }
}

}  // namespace dwstrip
}  // namespace cuda_kernels
}  // namespace fastinfer
