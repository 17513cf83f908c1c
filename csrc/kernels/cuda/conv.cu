// int8 convolution kernels that run on any CUDA arch of the build: the folded epilogue vectors (conv_fold),
// the row gather of the implicit-GEMM fallback (im2row: the GEMM's A operand for a chunk of output pixels),
// the depthwise convolution and the direct convolution of narrow groups.
// The Hopper implicit GEMM (no gather) is sm90_conv.cuh. Framework-free: pointers + params.h structs.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "dwconv_strip.cuh"
#include "epilogue.cuh"
#include "params.h"

namespace fastinfer {
namespace cuda_kernels {
namespace {

constexpr int kThreads = 256;

// Output pixel pix of the N x P x Q order: its image n, and where its taps start in the input (tap (r, s) reads
// row ih(r), column iw(s): padding outside [0, H) x [0, W)). I: the index type (as dwconv_kernel's).
template <class I>
struct OutPixel {
  I n, ih0, iw0;
  __device__ __forceinline__ OutPixel(const ConvGeometry& g, I pix) {
    const I P = static_cast<I>(g.P), Q = static_cast<I>(g.Q);
    n = pix / (P * Q);
    const I rem = pix - n * (P * Q), oh = rem / Q, ow = rem - oh * Q;
    ih0 = oh * static_cast<I>(g.stride_h) - static_cast<I>(g.pad_h);
    iw0 = ow * static_cast<I>(g.stride_w) - static_cast<I>(g.pad_w);
  }
  __device__ __forceinline__ I ih(const ConvGeometry& g, I r) const { return ih0 + r * static_cast<I>(g.dil_h); }
  __device__ __forceinline__ I iw(const ConvGeometry& g, I s) const { return iw0 + s * static_cast<I>(g.dil_w); }
};

// One thread per 16 bytes of a gathered row: row m = output pixel m0 + m, column k = (r, s, c) with c
// fastest over the group's Cg channels. A 16-byte piece that lies inside one tap's channels (Cg % 16 == 0,
// so c0 and C are multiples of 16 too: every piece) is one vector copy; otherwise its bytes are gathered one
// by one, stepping (r, s, c) along the piece (no division per byte), and packed into one 16-byte store.
// Padding taps and columns >= R*S*Cg are zero. I: the index type (as dwconv_kernel's).
template <class I>
__global__ void __launch_bounds__(kThreads) im2row_kernel(const Im2RowParams p) {
  const ConvGeometry& g = p.g;
  const I pieces = static_cast<I>(p.K_pad / 16);
  const I i = static_cast<I>(blockIdx.x) * kThreads + static_cast<I>(threadIdx.x);
  if (i >= static_cast<I>(p.M) * pieces) return;
  const I H = static_cast<I>(g.H), W = static_cast<I>(g.W), C = static_cast<I>(g.C), S = static_cast<I>(g.S);
  const I Cg = static_cast<I>(p.Cg), K = static_cast<I>(g.R) * S * Cg;
  const I m = i / pieces, k0 = (i - m * pieces) * 16;
  const OutPixel<I> px(g, static_cast<I>(p.m0) + m);
  const int8_t* const xn = p.x + px.n * H * W * C + static_cast<I>(p.c0);  // image n, the group's channel 0
  auto tap = [&](I r, I s) -> const int8_t* {  // channel 0 of the tap's input pixel, or null (padding)
    const I ih = px.ih(g, r), iw = px.iw(g, s);
    return (ih < 0 || ih >= H || iw < 0 || iw >= W) ? nullptr : xn + (ih * W + iw) * C;
  };
  int4* const dst = reinterpret_cast<int4*>(p.rows + m * static_cast<I>(p.K_pad) + k0);
  I c = k0 % Cg, s = (k0 / Cg) % S, r = k0 / Cg / S;  // the tap and channel of column k0
  if (Cg % 16 == 0) {  // the piece is 16 channels of one tap: 16-byte aligned on both sides
    const int8_t* const src = k0 < K ? tap(r, s) : nullptr;
    *dst = src ? *reinterpret_cast<const int4*>(src + c) : make_int4(0, 0, 0, 0);
    return;
  }
  uint32_t words[4] = {0, 0, 0, 0};
  const int8_t* src = k0 < K ? tap(r, s) : nullptr;
#pragma unroll
  for (int j = 0; j < 16; ++j) {  // constant j: words stays in registers
    if (k0 + j >= K) break;       // the row's padding columns stay zero
    if (src) words[j / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(src[c])) << (8 * (j % 4));
    if (++c == Cg) {  // the next tap
      c = 0;
      if (++s == S) {
        s = 0;
        ++r;
      }
      src = k0 + j + 1 < K ? tap(r, s) : nullptr;
    }
  }
  *dst = make_int4(static_cast<int>(words[0]), static_cast<int>(words[1]), static_cast<int>(words[2]),
                   static_cast<int>(words[3]));
}

// The folded scale and bias of channel k (params.h, ConvScales), a: the activations' scale. One fp32 rounding a
// product, the reference's order.
__device__ __forceinline__ float folded_scale(const ConvScales& s, float a, int64_t k) {
  return __fmul_rn(__fmul_rn(a, s.w_scale[k]), s.fold);
}
__device__ __forceinline__ float folded_bias(const ConvScales& s, int64_t k) { return __fmul_rn(s.bias[k], s.fold); }
__device__ __forceinline__ float activation_scale(const ConvScales& s) {
  return s.a_scale_ptr ? *s.a_scale_ptr : s.a_scale;
}

// The folded epilogue's values for channels c0 .. c0 + 3 (those below K: the others' stay 0), made once by a
// thread that stores several pixels of them.
struct QuadFold {
  float scale[4] = {0.0f, 0.0f, 0.0f, 0.0f}, bias[4] = {0.0f, 0.0f, 0.0f, 0.0f};
};
template <class I>
__device__ __forceinline__ QuadFold quad_fold(const ConvEpilogueParams& e, I c0, I K) {
  QuadFold f;
  const float a = activation_scale(e.s);
#pragma unroll
  for (int j = 0; j < 4; ++j)
    if (c0 + j < K) {
      f.scale[j] = folded_scale(e.s, a, c0 + j);
      if (e.s.bias) f.bias[j] = folded_bias(e.s, c0 + j);
    }
  return f;
}

// One output of the folded epilogue: y = act(acc * scale + bias), as a float (the bias added only when there is
// one, as the reference does: -0 stays -0).
__device__ __forceinline__ float conv_value(const ConvEpilogueParams& e, const QuadFold& f, int j, int32_t acc) {
  float y = __fmul_rn(static_cast<float>(acc), f.scale[j]);
  if (e.s.bias) y = __fadd_rn(y, f.bias[j]);
  return apply_act(y, e.act);
}

// The outputs of channels c0 .. c0 + 3 (those below K) of one pixel, at out[base ..]: one 4-byte (int8) or
// 16-byte (fp32) store when K % 4 == 0 (base % 4 == 0 then), else one by one. f: quad_fold(e, c0, K).
template <class I>
__device__ __forceinline__ void store_quad(const ConvEpilogueParams& e, const QuadFold& f, I base, I c0, I K,
                                           const int32_t (&acc)[4]) {
  if (K % 4 == 0) {
    float y[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) y[j] = conv_value(e, f, j, acc[j]);
    if (e.out_kind == OutKind::Int8) {
      char4 q;
      q.x = requant(y[0], e.out_inv_scale);
      q.y = requant(y[1], e.out_inv_scale);
      q.z = requant(y[2], e.out_inv_scale);
      q.w = requant(y[3], e.out_inv_scale);
      *reinterpret_cast<char4*>(static_cast<int8_t*>(e.out) + base) = q;
    } else {
      *reinterpret_cast<float4*>(static_cast<float*>(e.out) + base) = make_float4(y[0], y[1], y[2], y[3]);
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (c0 + j >= K) continue;
    const float y = conv_value(e, f, j, acc[j]);
    if (e.out_kind == OutKind::Int8)
      static_cast<int8_t*>(e.out)[base + j] = requant(y, e.out_inv_scale);
    else
      static_cast<float*>(e.out)[base + j] = y;
  }
}

// Depthwise: one thread per (output pixel, 4 channels); the 4 channels' taps are 4-byte loads and their
// outputs one 4-byte (int8) or 16-byte (fp32) store when C % 4 == 0, else single bytes and values. Exact int32
// sums. I: the index type, int32_t when every input and output index fits (the launcher's choice: 64-bit
// division is a long instruction sequence, and the index arithmetic was most of this kernel's work). (A 3 x 3
// version with its taps unrolled and every tap's load issued before the products ran 21% slower on the H200:
// 0.0475 against 0.039 ms for a 28 x 28 x 256 layer at batch 32, so the loop stays.)
template <class I>
__global__ void __launch_bounds__(kThreads) dwconv_kernel(const DwConvParams p) {
  const ConvGeometry& g = p.g;
  const I C = static_cast<I>(g.C), quads = (C + 3) / 4, H = static_cast<I>(g.H), W = static_cast<I>(g.W);
  const I i = static_cast<I>(blockIdx.x) * kThreads + static_cast<I>(threadIdx.x);
  if (i >= static_cast<I>(g.N * g.P * g.Q) * quads) return;
  const I pix = i / quads, c0 = (i - pix * quads) * 4;
  const OutPixel<I> px(g, pix);
  const bool vec = C % 4 == 0;
  int32_t acc[4] = {0, 0, 0, 0};
  for (I r = 0; r < static_cast<I>(g.R); ++r) {
    const I ih = px.ih(g, r);
    if (ih < 0 || ih >= H) continue;
    for (I s = 0; s < static_cast<I>(g.S); ++s) {
      const I iw = px.iw(g, s);
      if (iw < 0 || iw >= W) continue;
      const int8_t* xp = p.x + ((px.n * H + ih) * W + iw) * C + c0;
      const int8_t* wp = p.w + (r * static_cast<I>(g.S) + s) * C + c0;
      if (vec) {
        const char4 xv = *reinterpret_cast<const char4*>(xp), wv = *reinterpret_cast<const char4*>(wp);
        acc[0] += xv.x * wv.x;
        acc[1] += xv.y * wv.y;
        acc[2] += xv.z * wv.z;
        acc[3] += xv.w * wv.w;
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j)  // constant indices: acc stays in registers
          if (c0 + j < C) acc[j] += xp[j] * wp[j];
      }
    }
  }
  store_quad(p.e, quad_fold(p.e, c0, C), pix * C + c0, c0, C, acc);
}

// Depthwise by strips (dwconv_strip.cuh: the arithmetic, checked on the CPU by tests/dwconv_strip_host.cc): one
// thread per (output row, strip of QS outputs along it, 4 channels); a warp's threads take consecutive quads of
// channels of one strip. 32-bit indices (dwconv_strip_supported).
template <int S, int SW, int QS>
__global__ void __launch_bounds__(kThreads) dwconv_strip_kernel(const DwConvParams p) {
  using I = int32_t;
  const ConvGeometry& g = p.g;
  const I C = static_cast<I>(g.C), quads = C / 4, Q = static_cast<I>(g.Q), strips = (Q + QS - 1) / QS;
  const I i = static_cast<I>(blockIdx.x) * kThreads + static_cast<I>(threadIdx.x);
  if (i >= static_cast<I>(g.N * g.P) * strips * quads) return;
  const I quad = i % quads, rest = i / quads, row = rest / strips;  // row: n P + oh
  const I ow0 = (rest - row * strips) * QS, n = row / static_cast<I>(g.P), oh = row - n * static_cast<I>(g.P);
  int32_t acc[QS][4];
  dwstrip::strip_sums<S, SW, QS, I>(g, p.x, p.w, n, oh, ow0, 4 * quad, acc);
  const QuadFold f = quad_fold(p.e, 4 * quad, C);
#pragma unroll
  for (int q = 0; q < QS; ++q)
    if (ow0 + q < Q) store_quad<I>(p.e, f, (row * Q + ow0 + q) * C + 4 * quad, 4 * quad, C, acc[q]);
}

// Whether a grouped conv reads 4-byte steps (dp4a from the weight words) or single bytes (GroupedConvParams).
__host__ __device__ __forceinline__ bool grouped_words(const ConvGeometry& g, int64_t groups) {
  return (g.C / groups) % 4 == 0 && g.C % 4 == 0;
}

// The weight as words [R*S*Cg/4][K]: word (t4, k) = bytes 4 t4 .. 4 t4 + 3 of row k. One thread per word.
template <class I>
__global__ void __launch_bounds__(kThreads) gconv_words_kernel(const GroupedConvParams p, int32_t* words) {
  const I K = static_cast<I>(p.g.K), T4 = static_cast<I>(p.g.R * p.g.S * (p.g.C / p.groups) / 4);
  const I i = static_cast<I>(blockIdx.x) * kThreads + static_cast<I>(threadIdx.x);
  if (i >= T4 * K) return;
  const I t4 = i / K, k = i - t4 * K;
  words[i] = *reinterpret_cast<const int32_t*>(p.w + k * static_cast<I>(p.K_pad) + 4 * t4);
}

// Grouped, narrow groups (GroupedConvParams): one thread per (output pixel, 4 output channels); a warp's
// threads take consecutive quads of one pixel. With words: per tap and 4 input channels, the quad's 4 weight
// words are one 16-byte load when its channels share a group (K / groups % 4 == 0), with one 4-byte input
// load and 4 dp4a; otherwise each channel reads its own group's input word and weight word. Without: single
// bytes from w. Exact int32 sums; the epilogue and stores as dwconv_kernel's. I: as there.
template <class I>
__global__ void __launch_bounds__(kThreads) gconv_kernel(const GroupedConvParams p, const int32_t* words) {
  const ConvGeometry& g = p.g;
  const I C = static_cast<I>(g.C), K = static_cast<I>(g.K), quads = (K + 3) / 4;
  const I H = static_cast<I>(g.H), W = static_cast<I>(g.W), S = static_cast<I>(g.S);
  const I G = static_cast<I>(p.groups), Cg = C / G, Kg = K / G, Cg4 = Cg / 4;
  const I i = static_cast<I>(blockIdx.x) * kThreads + static_cast<I>(threadIdx.x);
  if (i >= static_cast<I>(g.N * g.P * g.Q) * quads) return;
  const I pix = i / quads, c0 = (i - pix * quads) * 4;
  const OutPixel<I> px(g, pix);
  const bool same = words != nullptr && Kg % 4 == 0;  // c0 % 4 == 0 and K % 4 == 0: one group, aligned words
  // Channel c0 + j (a channel past K stands in as K - 1: never stored) and its group's first input channel.
  I kj[4], xoff[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    kj[j] = c0 + j < K ? c0 + j : K - 1;
    xoff[j] = kj[j] / Kg * Cg;
  }
  int32_t acc[4] = {0, 0, 0, 0};
  for (I r = 0; r < static_cast<I>(g.R); ++r) {
    const I ih = px.ih(g, r);
    if (ih < 0 || ih >= H) continue;
    for (I s = 0; s < S; ++s) {
      const I iw = px.iw(g, s);
      if (iw < 0 || iw >= W) continue;
      const int8_t* const xt = p.x + ((px.n * H + ih) * W + iw) * C;  // the tap's input pixel
      const I tap = r * S + s;
      if (same) {
        const int8_t* const xg = xt + xoff[0];
        for (I c4 = 0; c4 < Cg4; ++c4) {
          const int xv = *reinterpret_cast<const int*>(xg + 4 * c4);
          const int4 wv = *reinterpret_cast<const int4*>(words + (tap * Cg4 + c4) * K + c0);
          acc[0] = __dp4a(xv, wv.x, acc[0]);
          acc[1] = __dp4a(xv, wv.y, acc[1]);
          acc[2] = __dp4a(xv, wv.z, acc[2]);
          acc[3] = __dp4a(xv, wv.w, acc[3]);
        }
      } else if (words) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int8_t* const xg = xt + xoff[j];
          for (I c4 = 0; c4 < Cg4; ++c4)
            acc[j] = __dp4a(*reinterpret_cast<const int*>(xg + 4 * c4), words[(tap * Cg4 + c4) * K + kj[j]], acc[j]);
        }
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int8_t* const xg = xt + xoff[j];
          const int8_t* const wt = p.w + kj[j] * static_cast<I>(p.K_pad) + tap * Cg;
          for (I cc = 0; cc < Cg; ++cc) acc[j] += xg[cc] * wt[cc];
        }
      }
    }
  }
  store_quad(p.e, quad_fold(p.e, c0, K), pix * K + c0, c0, K, acc);
}

// One thread per output channel (ConvFoldParams); thread K also writes the trailing 1.
__global__ void __launch_bounds__(kThreads) conv_fold_kernel(const ConvFoldParams p) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (k > p.K) return;
  if (k == p.K) {
    p.out[2 * p.K] = 1.0f;
    return;
  }
  p.out[k] = folded_scale(p.s, activation_scale(p.s), k);
  if (p.s.bias) p.out[p.K + k] = folded_bias(p.s, k);
}

unsigned blocks_for(int64_t work) { return static_cast<unsigned>((work + kThreads - 1) / kThreads); }

// f(I{}) enqueues a kernel with index type I: int32_t when `fits` (fits32), else int64_t. The launch's error.
template <class F>
const char* launch_indexed(bool fits, F&& f) {
  if (fits)
    f(int32_t{});
  else
    f(int64_t{});
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

// Whether every index of a kernel over `work` threads fits in 32 bits: the thread count (whole blocks) and
// each extent of memory it indexes.
bool fits32(int64_t work, std::initializer_list<int64_t> extents) {
  const int64_t limit = int64_t{1} << 31;
  bool ok = static_cast<int64_t>(blocks_for(work)) * kThreads < limit;
  for (int64_t e : extents) ok = ok && e < limit;
  return ok;
}

// Threads of the strip kernel, and whether it takes g (dwstrip::dispatch) with 32-bit indices.
int64_t strip_work(const ConvGeometry& g, int qs) { return g.N * g.P * ((g.Q + qs - 1) / qs) * (g.C / 4); }
bool strip_takes(const DwConvParams& p) {
  const ConvGeometry& g = p.g;
  int64_t work = 0;
  const bool shape = dwstrip::dispatch(g, p.strip, [&](auto, auto, auto qs) { work = strip_work(g, qs()); });
  return shape && fits32(work, {g.N * g.H * g.W * g.C, g.N * g.P * g.Q * g.C, g.R * g.S * g.C});
}

}  // namespace

bool dwconv_strip_supported(const DwConvParams& p) { return strip_takes(p); }

const char* launch_im2row(const Im2RowParams& p, void* stream) {
  const ConvGeometry& g = p.g;
  const int64_t work = p.M * (p.K_pad / 16);
  if (work == 0) return nullptr;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool fits = fits32(work, {g.N * g.H * g.W * g.C, g.N * g.P * g.Q, p.M * p.K_pad, g.R * g.S * p.Cg});
  return launch_indexed(fits, [&](auto index) {
    im2row_kernel<decltype(index)><<<blocks_for(work), kThreads, 0, s>>>(p);
  });
}

size_t grouped_conv_workspace_bytes(const GroupedConvParams& p) {
  return grouped_words(p.g, p.groups) ? static_cast<size_t>(p.g.R * p.g.S * p.g.C / p.groups * p.g.K) : 0;
}

const char* launch_grouped_conv(const GroupedConvParams& p, void* workspace, void* stream) {
  const ConvGeometry& g = p.g;
  const int64_t work = g.N * g.P * g.Q * ((g.K + 3) / 4);
  if (work == 0) return nullptr;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  int32_t* const words = grouped_words(g, p.groups) ? static_cast<int32_t*>(workspace) : nullptr;
  if (grouped_words(g, p.groups) && words == nullptr) return "grouped conv: the weight words' workspace is missing";
  const int64_t nwords = g.R * g.S * (g.C / p.groups) / 4 * g.K;
  const bool fits = fits32(std::max(work, nwords), {g.N * g.H * g.W * g.C, g.N * g.P * g.Q * g.K, g.K * p.K_pad});
  return launch_indexed(fits, [&](auto index) {
    using I = decltype(index);
    if (words) gconv_words_kernel<I><<<blocks_for(nwords), kThreads, 0, s>>>(p, words);
    gconv_kernel<I><<<blocks_for(work), kThreads, 0, s>>>(p, words);
  });
}

const char* launch_conv_fold(const ConvFoldParams& p, void* stream) {
  conv_fold_kernel<<<blocks_for(p.K + 1), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

const char* launch_dwconv(const DwConvParams& p, void* stream) {
  const ConvGeometry& g = p.g;
  const int64_t work = g.N * g.P * g.Q * ((g.C + 3) / 4);
  if (work == 0) return nullptr;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (p.strip && strip_takes(p)) {
    dwstrip::dispatch(g, p.strip, [&](auto taps, auto stride, auto qs) {
      dwconv_strip_kernel<taps(), stride(), qs()><<<blocks_for(strip_work(g, qs())), kThreads, 0, s>>>(p);
    });
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
  }
  const bool fits = fits32(work, {g.N * g.H * g.W * g.C, g.N * g.P * g.Q * g.C, g.R * g.S * g.C});
  return launch_indexed(fits, [&](auto index) {
    dwconv_kernel<decltype(index)><<<blocks_for(work), kThreads, 0, s>>>(p);
  });
}

}  // namespace cuda_kernels
}  // namespace fastinfer
