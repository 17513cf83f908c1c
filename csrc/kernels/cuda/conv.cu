// int8 convolution kernels that run on any CUDA arch of the build: the folded epilogue vectors (conv_fold),
// the row gather of the implicit-GEMM fallback (im2row: the GEMM's A operand for a chunk of output pixels) and
// the depthwise convolution.
// The Hopper implicit GEMM (no gather) is sm90_conv.cuh. Framework-free: pointers + params.h structs.
#include <cuda_runtime.h>

#include <cstdint>

#include "epilogue.cuh"
#include "params.h"

namespace fastinfer {
namespace cuda_kernels {
namespace {

constexpr int kThreads = 256;

// One thread per 16 bytes of a gathered row: row m = output pixel m0 + m, column k = (r, s, c) with c
// fastest over the group's Cg channels. A 16-byte piece that lies inside one tap's channels (Cg % 16 == 0,
// so c0 and C are multiples of 16 too: every piece) is one vector copy; otherwise bytes are gathered one
// by one. Padding taps and columns >= R*S*Cg are zero.
__global__ void __launch_bounds__(kThreads) im2row_kernel(const Im2RowParams p) {
  const ConvGeometry& g = p.g;
  const int64_t pieces = p.K_pad / 16;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= p.M * pieces) return;
  const int64_t m = i / pieces, k0 = (i % pieces) * 16;
  const int64_t pix = p.m0 + m, n = pix / (g.P * g.Q), oh = (pix / g.Q) % g.P, ow = pix % g.Q;
  const int64_t K = g.R * g.S * p.Cg;
  int8_t* dst = p.rows + m * p.K_pad + k0;
  auto tap_src = [&](int64_t k) -> const int8_t* {  // the input byte of column k, or null (zero)
    if (k >= K) return nullptr;
    const int64_t c = k % p.Cg, rs = k / p.Cg, r = rs / g.S, s = rs % g.S;
    const int64_t ih = oh * g.stride_h - g.pad_h + r * g.dil_h, iw = ow * g.stride_w - g.pad_w + s * g.dil_w;
    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return nullptr;
    return p.x + ((n * g.H + ih) * g.W + iw) * g.C + p.c0 + c;
  };
  if (p.Cg % 16 == 0) {  // the piece is 16 channels of one tap: 16-byte aligned on both sides
    const int8_t* src = tap_src(k0);
    *reinterpret_cast<int4*>(dst) = src ? *reinterpret_cast<const int4*>(src) : make_int4(0, 0, 0, 0);
    return;
  }
  alignas(16) int8_t v[16];
  for (int j = 0; j < 16; ++j) {
    const int8_t* src = tap_src(k0 + j);
    v[j] = src ? *src : 0;
  }
  *reinterpret_cast<int4*>(dst) = *reinterpret_cast<const int4*>(v);
}

// The folded convolution epilogue of one output (params.h): y = act(acc * scale + bias), fp32 or int8.
__device__ __forceinline__ void conv_store(const ConvEpilogueParams& e, int64_t idx, int64_t k, int32_t acc) {
  float y = __fmul_rn(static_cast<float>(acc), e.scale[k]);
  if (e.bias) y = __fadd_rn(y, e.bias[k]);
  y = apply_act(y, e.act);
  if (e.out_kind == OutKind::Int8)
    static_cast<int8_t*>(e.out)[idx] = requant(y, e.out_inv_scale);
  else
    static_cast<float*>(e.out)[idx] = y;
}

// Depthwise: one thread per (output pixel, 4 channels); the 4 channels' taps are 4-byte loads when
// C % 4 == 0, else single bytes. Exact int32 sums.
__global__ void __launch_bounds__(kThreads) dwconv_kernel(const DwConvParams p) {
  const ConvGeometry& g = p.g;
  const int64_t quads = (g.C + 3) / 4;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= g.N * g.P * g.Q * quads) return;
  const int64_t pix = i / quads, c0 = (i % quads) * 4;
  const int64_t n = pix / (g.P * g.Q), oh = (pix / g.Q) % g.P, ow = pix % g.Q;
  const bool vec = g.C % 4 == 0;
  int32_t acc[4] = {0, 0, 0, 0};
  for (int64_t r = 0; r < g.R; ++r) {
    const int64_t ih = oh * g.stride_h - g.pad_h + r * g.dil_h;
    if (ih < 0 || ih >= g.H) continue;
    for (int64_t s = 0; s < g.S; ++s) {
      const int64_t iw = ow * g.stride_w - g.pad_w + s * g.dil_w;
      if (iw < 0 || iw >= g.W) continue;
      const int8_t* xp = p.x + ((n * g.H + ih) * g.W + iw) * g.C + c0;
      const int8_t* wp = p.w + (r * g.S + s) * g.C + c0;
      if (vec) {
        const char4 xv = *reinterpret_cast<const char4*>(xp), wv = *reinterpret_cast<const char4*>(wp);
        acc[0] += xv.x * wv.x;
        acc[1] += xv.y * wv.y;
        acc[2] += xv.z * wv.z;
        acc[3] += xv.w * wv.w;
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j)  // constant indices: acc stays in registers
          if (c0 + j < g.C) acc[j] += xp[j] * wp[j];
      }
    }
  }
  const int64_t base = pix * g.C + c0;
#pragma unroll
  for (int j = 0; j < 4; ++j)
    if (c0 + j < g.C) conv_store(p.e, base + j, c0 + j, acc[j]);
}

// One thread per output channel (ConvFoldParams); thread K also writes the trailing 1.
__global__ void __launch_bounds__(kThreads) conv_fold_kernel(const ConvFoldParams p) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (k > p.K) return;
  if (k == p.K) {
    p.out[2 * p.K] = 1.0f;
    return;
  }
  const float a = p.a_scale_ptr ? *p.a_scale_ptr : p.a_scale_value;
  float s = __fmul_rn(a, p.w_scale[k]);
  if (p.fold_inv) s = __fmul_rn(s, p.out_inv);
  p.out[k] = s;
  if (p.bias) p.out[p.K + k] = p.fold_inv ? __fmul_rn(p.bias[k], p.out_inv) : p.bias[k];
}

unsigned blocks_for(int64_t work) { return static_cast<unsigned>((work + kThreads - 1) / kThreads); }

}  // namespace

const char* launch_im2row(const Im2RowParams& p, void* stream) {
  const int64_t work = p.M * (p.K_pad / 16);
  if (work == 0) return nullptr;
  im2row_kernel<<<blocks_for(work), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

const char* launch_conv_fold(const ConvFoldParams& p, void* stream) {
  conv_fold_kernel<<<blocks_for(p.K + 1), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

const char* launch_dwconv(const DwConvParams& p, void* stream) {
  const int64_t work = p.g.N * p.g.P * p.g.Q * ((p.g.C + 3) / 4);
  if (work == 0) return nullptr;
  dwconv_kernel<<<blocks_for(work), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace cuda_kernels
}  // namespace fastinfer
