// Implicit-GEMM operand for int8 convolution: the rows (output pixels) a chunk of the GEMM
// needs, gathered from an NHWC u8 input on the fly. Framework-free; no full im2col buffer.
#pragma once
#include <cstdint>

namespace fastinfer {
namespace kernels {

struct ConvGeometry {
  int64_t N = 0, H = 0, W = 0, C = 0;        // input, NHWC; C = all input channels
  int64_t OH = 0, OW = 0;
  int64_t KH = 1, KW = 1, SH = 1, SW = 1, PH = 0, PW = 0, DH = 1, DW = 1;
  int64_t cin_g = 0;                          // input channels per group
};

// Row m (output pixel n, oh, ow) of group g: for each tap (kh, kw) the cin_g channels of the
// input pixel it reads, or `pad` where the tap falls in the padding; columns [K, K_pad) = pad.
// With the u8 (+128) operand pad = 128, which is int8 zero. Rows of dst are ld >= K_pad bytes apart.
void gather_conv_rows(const ConvGeometry& geo, const uint8_t* x, int64_t group, int64_t m0, int64_t m1,
                      uint8_t* dst, int64_t ld, int64_t K_pad, uint8_t pad);

}  // namespace kernels
}  // namespace fastinfer
