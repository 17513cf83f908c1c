// Framework-free parameter structs for the int8 GEMM family (no torch headers here).
// The entry layer (csrc/cpu) fills these from checked tensors; kernels only read them.
#pragma once
#include <cstdint>
#include <vector>

#include "../conv/add.h"
#include "../conv/gate.h"
#include "../conv/pool.h"
#include "../epilogue_kinds.h"

namespace fastinfer {
namespace kernels {

using fastinfer::Act;
using fastinfer::OutKind;

// Y[m, n] for m in [0, M), n in [0, N):
//   acc   = sum_k A_u8[m, k] * B[n, k] - 128 * colsum[n]        (== sum_k A_s8 * B, exact)
//           (kernel sets with signed_a, AMX: A holds s8 and acc = sum_k A_s8[m, k] * B[n, k] directly)
//   Int32 : Y = acc
//   Float : Y = act(float(acc) * a_scale[m] * b_scale[n] (+ bias[n]))  (see EPILOGUE.md)
//   Int8  : Y = clamp(round_half_even(Float * out_inv_scale), -127, 127)
struct Int8GemmParams {
  int64_t M = 0, N = 0, K = 0;
  int64_t K_pad = 0;            // K rounded up to 4; A rows hold K_pad valid bytes
  const uint8_t* a = nullptr;   // activations, row-major: s8 + 128 stored as u8 (s8 for signed_a sets)
  int64_t lda = 0;              // bytes between rows of a (>= K_pad)
  const int8_t* b = nullptr;    // packed weight data (PACKING.md, format n16k4)
  const int32_t* b_colsum = nullptr;  // per output channel sum_k B[n, k], length N_pad
  // K steps of 4 the tiles run, from b and a as given (0: K_pad / 4, all of K). A convolution's rows whose
  // first or last kernel rows read only zero padding run a K range (b and a advanced to its start, b_colsum
  // that range's sums: conv_ops.cpp, PaddedKernelRows). Only the AVX-512 VNNI GEMM honours it; the entry
  // layer sets it for that kernel set alone.
  int64_t k_quads = 0;
  bool b_no_min128 = false;           // no B value is -128 (header flag): enables AVX2's maddubs path
  bool b_s7 = false;                  // every B value is in [-64, 63] (header flag): AVX2's shifted maddubs
  const float* a_scale = nullptr;     // [M], per token (float outputs only)
  bool a_scale_per_tensor = false;    // a_scale[0] applies to every row (static scale)
  const float* b_scale = nullptr;     // [N], per output channel (float outputs only)
  const float* bias = nullptr;        // [N] or null
  void* out = nullptr;
  int64_t ldo = 0;              // elements between rows of out
  OutKind out_kind = OutKind::Int32;
  Act act = Act::None;
  float out_inv_scale = 1.0f;   // Int8 output: 1 / output scale
  // Set by the convolution entry layer when its scales are folded (EPILOGUE.md, "Convolutions"):
  // a_scale is 1 for every row, b_scale and bias are finite, and out_inv_scale is 1 when
  // folds_out_inv(act). Kernels that know this may skip those multiplies and the NaN test (AMX);
  // the others compute the same values through the general epilogue.
  bool folded = false;
  // Set by the convolution entry layer for an fp32 output larger than the caches hold (kStreamOutBytes):
  // kernels with a folded fp32 epilogue may write whole 64-byte-aligned vectors with non-temporal
  // stores (no read for ownership of each output line; EPILOGUE.md, "Streaming fp32 outputs").
  bool stream_out = false;
};

// The activation scale of row m.
inline float row_scale(const Int8GemmParams& p, int64_t m) { return p.a_scale[p.a_scale_per_tensor ? 0 : m]; }

// Weight-only int8: Y = (X_f32 . B^T) * b_scale[n] (+ bias[n]); weights dequantized on the fly.
struct W8GemmParams {
  int64_t M = 0, N = 0, K = 0;
  const float* a = nullptr;     // fp32 activations, row-major, K valid floats per row
  const uint16_t* a_bf16 = nullptr;  // or bf16 ones (KernelSet::w8_gemm_bf16 reads these)
  int64_t lda = 0;              // elements between rows
  const int8_t* b = nullptr;    // packed weight data (n16k4)
  int64_t K_pad = 0;
  const float* b_scale = nullptr;
  const float* bias = nullptr;
  void* out = nullptr;
  int64_t ldo = 0;
  OutKind out_kind = OutKind::Float32;  // Float32 or BFloat16
};

// Per-token symmetric quantization of rows of X (fp32 or bf16) to int8.
//   amax = max_k |x|; inv = 127 / amax; q = clamp(round_half_even(x * inv), -127, 127)
//   scale = amax / 127.  amax == 0 or inv not finite (amax subnormal): q = 0, scale = 0.
//   Any NaN/Inf in the row: q = 0, scale = NaN, so the row's GEMM output is NaN.
struct QuantizeParams {
  int64_t M = 0, K = 0;
  const void* x = nullptr;
  bool x_is_bf16 = false;
  bool x_is_s8 = false;         // int8 x, read as float(x) (an int8 hand-off into quantize_channel_affine)
  int64_t ldx = 0;              // elements between rows of x
  void* q = nullptr;            // int8 (or u8 = q + 128 when shift128)
  int64_t ldq = 0;              // bytes between rows of q
  int64_t K_pad = 0;            // columns [K, K_pad) of q are written as 0 (128 when shifted)
  bool shift128 = false;        // write q + 128 as u8 (the VNNI u8 x s8 operand)
  float* scale = nullptr;       // [M] (may be null with static_inv)
  // Static (calibrated) per-tensor quantization: q = clamp(round(x * static_inv), -127, 127) for
  // every row, no amax pass. 0 selects the dynamic per-row rule above.
  float static_inv = 0.0f;
  // Optional per-column multiplier applied to x before anything else (SmoothQuant's 1 / s[k],
  // whose s is folded into the weight's columns): x'[m, k] = x[m, k] * col_scale[k]. Null: none.
  const float* col_scale = nullptr;
  // Then an optional per-column shift and a ReLU (quantize_channel_affine: an eval BatchNorm + ReLU in front of
  // a static conv): x'' = max(x' + col_shift[k], 0), each step rounded on its own (no FMA), NaN -> 0 by the ReLU.
  const float* col_shift = nullptr;
  bool relu = false;
};

// Depthwise int8 convolution (one filter per channel), NHWC activations and outputs.
//   acc[n, oh, ow, c] = sum over valid taps x_s8[n, ih, iw, c] * w_s8[kh * KW + kw, c]
//   then the float/Int8 epilogue of Int8GemmParams with a_scale (per tensor) and w_scale[c].
struct DwConvParams {
  int64_t N = 0, H = 0, W = 0, C = 0, OH = 0, OW = 0;
  int64_t KH = 0, KW = 0, SH = 1, SW = 1, PH = 0, PW = 0, DH = 1, DW = 1;
  const int8_t* x = nullptr;    // [N, H, W, C] int8
  const int8_t* w = nullptr;    // [KH * KW, C] int8
  float a_scale = 1.0f;
  const float* w_scale = nullptr;   // [C]
  const float* bias = nullptr;      // [C] or null
  void* out = nullptr;              // [N, OH, OW, C]
  OutKind out_kind = OutKind::Float32;  // Float32 or Int8
  Act act = Act::None;
  float out_inv_scale = 1.0f;
  bool folded = false;              // as Int8GemmParams::folded (a_scale 1, finite scales)
  bool stream_out = false;          // as Int8GemmParams::stream_out
};

// Direct convolution: the implicit GEMM whose row m is output pixel m = (n, oh, ow) and whose K is
// (kh, kw, c), read straight from a zero-padded NHWC input (the kernel set's operand: s8 for AMX,
// u8 = s8 + 128 for VNNI, whose padding is then 128), no row gather. Needs groups = 1 and
// C % KernelSet::conv_c_step == 0. AMX (16-pixel tiles) also needs either virtual_width (SH == SW;
// tiles run over the padded width, and x has slack_bytes(...) readable bytes after the last image)
// or OW >= 16 (tiles within an output row), or stride planes (plane_bytes); VNNI tiles stay within an
// output row, any OW.
struct ConvDirectParams {
  Int8GemmParams gemm;          // B = pack_conv_weight's (one group), epilogue, out [pixels, Cout]; a unused
  const int8_t* x = nullptr;    // [N, Hp, Wp, C]: the input with its zero padding in place
  int64_t Hp = 0, Wp = 0, C = 0, OH = 0, OW = 0;
  int64_t KH = 1, KW = 1, SH = 1, SW = 1, DH = 1, DW = 1;
  bool virtual_width = false;
  bool signed_x = false;        // VNNI: x holds s8 (an unpadded int8 input read in place), not u8
  // A few-channel first layer (C % conv_c_step != 0): > 0 makes each kernel row one K segment of row_seg =
  // round_up(KW * C, KernelSet::conv_seg_align) bytes (VNNI 4, AMX 64: whole tile steps), the KW * C
  // contiguous input bytes of its taps (DW == 1) and the bytes after them, which meet zero weights: the
  // packed weight's K is then KH * row_seg, rows zero-padded per kernel row, and x needs row_seg - KW * C
  // readable bytes past its last row.
  int64_t row_seg = 0;
  // Stride planes (KernelSet::conv_planes; virtual_width, SH == SW == s > 1, DH == DW == 1): > 0 makes x
  // the s * s planes of the padded input, plane py * s + px at x + (py * s + px) * plane_bytes, whose row i,
  // column j is padded pixel (s * i + py, s * j + px); Hp x Wp is then a plane's size (Wp = ceil(padded
  // width / s), columns past the padded width zero). Tap (kh, kw) of output pixel (oh, ow) reads plane
  // (kh % s, kw % s) at (oh + kh / s, ow + kw / s): a stride-1 window, so tiles run over the plane width
  // and drop its Wp - OW columns (0-1 for stride 2, 3x3) instead of about half the padded width.
  int64_t plane_bytes = 0;
  // A tap box (conv_ops.cpp, PaddedTaps; honoured by the register-tile kernels, conv_tile_rows < 16, and by
  // AMX's tiles within output rows, and given only to those): the call computes taps kh in [kh0, kh1) and kw
  // in [kw0, kw1) (-1: KH, KW; row segments take whole kernel rows) of output columns [ow0, ow1) of each row
  // (-1: OW). The skipped taps' products are left out, so gemm.b_colsum must hold the column sums of the
  // box's weight rows alone (read only by the u8 kernels; AMX's s8 needs no sums). An AMX tile of a segment
  // narrower than 16 pixels reads the 16 from row_tile_window's column and stores the segment's alone.
  int64_t kh0 = 0, kh1 = -1, kw0 = 0, kw1 = -1, ow0 = 0, ow1 = -1;
  // Bytes added to every input offset of the box-running kernels: the padded image's origin relative to
  // x. 0 for a padded slab; an unpadded int8 input read in place whose every box tap lies inside the image
  // has Wp = W and x_origin = ((top row * SH - PH) * W - PW) * C, negative near the top left.
  int64_t x_origin = 0;
};

// The first column of the T-pixel tile that computes columns from ow of a segment ending at ow_hi: ow where T
// pixels from ow lie in the segment, else shifted back to end at ow_hi, but not before column 0 (a segment
// narrower than T: the tile reads pixels beside it, which it does not store). Needs OW >= T.
inline int64_t row_tile_window(int64_t ow, int64_t ow_hi, int64_t T) {
  const int64_t w = ow < ow_hi - T ? ow : ow_hi - T;
  return w < 0 ? 0 : w;
}

// Bytes a virtual-width direct convolution may read past the end of its input (with stride planes, past
// the last plane): a window's 16 rows (stride s pixels apart), a row of the stride, and the farthest tap.
inline int64_t conv_direct_slack_bytes(const ConvDirectParams& c) {
  if (c.plane_bytes > 0)
    return (16 + (1 + (c.KH - 1) / c.SH) * c.Wp + (c.KW - 1) / c.SW + 1) * c.C;
  return (16 * c.SW + (c.SH + (c.KH - 1) * c.DH) * c.Wp + (c.KW - 1) * c.DW + 1) * c.C;
}

// Grouped convolution with narrow groups (1 < groups, not depthwise; ResNeXt's 4-8 channels a group),
// on 16-lane output blocks: lane j of block b is output channel 16 * b + j, and its 4-byte k steps are
// 4 input channels of its own group at one tap. Every lane of a block reads the 64 input bytes from
// channel block_off[b] (+ 4 per k step) of its pixel, and lane_idx[b][j] picks its dword among them
// (a dword permute; one broadcast when every block lies in one group). GroupConvPlan (csrc/cpu) builds
// the fields below from a packed weight; they exist when Cin/groups % 4 == 0 and each block's groups
// span at most 64 bytes of channels.
//   acc[pixel, o] = sum over taps, c in o's group of x_u8[...] * w[o, c, tap] - 128 * colsum[o]
// then the epilogue of Int8GemmParams (its b_colsum is colsum).
// L = KernelSet::gconv_lanes output channels a block (16 on AVX-512, 8 on the 256-bit tiers); each block's
// groups lie in one window of 4 L input bytes from block_off.
struct GroupConvParams {
  Int8GemmParams gemm;            // epilogue fields, N = Cout, out [pixels, Cout] (ldo), b_colsum [blocks * L]
  const uint8_t* x = nullptr;     // [Hp, Wp, C] u8 = s8 + 128 (or s8: KernelSet::gconv_signed_x), the
                                  // padding in place, and 64 readable bytes after the last pixel
  int64_t Wp = 0, C = 0, OW = 0;
  int64_t KH = 1, KW = 1, SH = 1, SW = 1, DH = 1, DW = 1;
  int64_t cin_g = 0;              // input channels per group, a multiple of 4
  int64_t blocks = 0;             // ceil(Cout / L)
  const int8_t* w = nullptr;      // [blocks][KH * KW][cin_g / 4][L lanes][4 bytes], 0 past Cout
  const int32_t* lane_idx = nullptr;   // [blocks][L]: each lane's dword in its block's window
  const int32_t* block_off = nullptr;  // [blocks], in bytes (channels)
  bool one_group_blocks = false;  // each block's lanes share one group: lane_idx is all 0
};

// A narrow-group tile's k steps, (kh, kw, s) in the packed weight's order: step q's 4 input bytes lie
// (kh * DH * Wp + kw * DW) * C + 4 s bytes from its pixel's first tap in the block's window. Each kernel call
// builds the table once (as conv_direct_rows builds its tap offsets), so its tiles loop once over k steps.
inline std::vector<int64_t> gconv_k_offsets(const GroupConvParams& p) {
  std::vector<int64_t> off;
  off.reserve(static_cast<size_t>(p.KH * p.KW * (p.cin_g / 4)));
  for (int64_t kh = 0; kh < p.KH; ++kh)
    for (int64_t kw = 0; kw < p.KW; ++kw)
      for (int64_t s = 0; s < p.cin_g / 4; ++s) off.push_back((kh * p.DH * p.Wp + kw * p.DW) * p.C + 4 * s);
  return off;
}

// Kernels compute the block rows [m0, m1) x columns [n0, n1) of Y; n0 is a multiple of 16.
using Int8GemmFn = void (*)(const Int8GemmParams&, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
using W8GemmFn = void (*)(const W8GemmParams&, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
using QuantizeFn = void (*)(const QuantizeParams&, int64_t m0, int64_t m1);

// Static per-tensor quantization of an NCHW fp32 image into NHWC int8 (the rule of QuantizeParams::static_inv),
// the transpose and the quantization in one pass: the convolutions' NCHW inputs, which otherwise take an fp32
// channels-last copy first.
struct QuantizePlanesParams {
  const float* x = nullptr;  // one image: C planes of HW values
  int64_t C = 0, HW = 0;
  float inv = 0.0f;          // 1 / scale, > 0 and finite
  int8_t* out = nullptr;     // [HW, C]
};
// Pixels [p0, p1) of the image.
using QuantizePlanesFn = void (*)(const QuantizePlanesParams&, int64_t p0, int64_t p1);
// max over i < n of (bits(x[i]) & 0x7fffffff): |x| as ordered bits; >= 0x7f800000 means NaN/Inf seen.
using AbsMaxFn = uint32_t (*)(const float* x, int64_t n);
// Computes output pixels [p0, p1) of the flattened (n, oh, ow) range, all channels.
using DwConvFn = void (*)(const DwConvParams&, int64_t p0, int64_t p1);
// Which of a depthwise kernel's ways serves p ("row_quads_paired", "row_quads", "tap_groups", "tap_pairs"):
// the entry layer records it, tests assert it (ops.last_kernel("dwconv_path")).
using DwPathFn = const char* (*)(const DwConvParams&);
// Which step of the set's int8 GEMM serves p (AVX2: "shifted", "sign" or "widen", from the weight's pack
// flags): the kernel and the entry layer's record (ops.last_kernel("int8_gemm_step")) both ask it.
using GemmStepFn = const char* (*)(const Int8GemmParams&);
// Computes the output pixels of output rows [r0, r1) of the flattened (n, oh) range, channels [n0, n1).
using ConvDirectFn = void (*)(const ConvDirectParams&, int64_t r0, int64_t r1, int64_t n0, int64_t n1);
// Computes output rows [r0, r1) of the padded input x (row r reads rows r * SH ...), all channels; output
// pixel (r, ow) is row r * OW + ow of gemm.out.
using GroupConvFn = void (*)(const GroupConvParams&, int64_t r0, int64_t r1);
// Runs `iters` rounds of the ISA's int8 multiply-accumulate on registers only (no memory):
// the instruction's peak rate, for benchmarks. Returns the integer ops done (2 per MAC).
using PeakProbeFn = int64_t (*)(int64_t iters);
// Residual add (csrc/kernels/conv/add.h), elements [i0, i1).
using AddFn = void (*)(const AddParams&, int64_t i0, int64_t i1);
// Which way add_act takes for these params (a static string), for last_kernel("add_path").
using AddPathFn = const char* (*)(const AddParams&);
// Squeeze-excitation on int8 (csrc/kernels/conv/gate.h): channel sums of items [a, b), channel scale of pixel
// rows [a, b).
using GateFn = void (*)(const GateParams&, int64_t a, int64_t b);
// int8 average pooling (csrc/kernels/conv/pool.h), output rows [r0, r1).
using AvgPoolFn = void (*)(const AvgPoolParams&, int64_t r0, int64_t r1);
using MaxPoolFn = void (*)(const MaxPoolParams&, int64_t r0, int64_t r1);

// One ISA's kernels. Blocking traits are here so the one dispatch function can split work.
struct KernelSet {
  const char* name;
  Int8GemmFn int8_gemm;
  W8GemmFn w8_gemm;
  QuantizeFn quantize;
  DwConvFn dwconv;
  AbsMaxFn absmax_bits;
  PeakProbeFn peak_probe;   // null where there is no vector int8 instruction (ref)
  int64_t n_panel;   // columns a thread takes at once (B panel kept hot in L2)
  int64_t m_chunk;   // rows per work item
  int64_t m_tile;    // rows of the GEMM's register tile (work chunks are kept multiples of it)
  bool signed_a;     // int8_gemm reads s8 activations (AMX tdpbssd); otherwise u8 = s8 + 128 (VNNI)
  ConvDirectFn conv_direct;  // null where convolutions take the gathered-rows GEMM
  int64_t conv_c_step = 64;      // conv_direct needs C % conv_c_step == 0 (a tile step, or a 4-byte k step)
  int64_t conv_tile_rows = 16;   // output pixels per A tile of conv_direct (AMX 16; VNNI register tiles 6)
  AddFn add_act = nullptr;       // null: the portable kernels::add_act (baseline-flag vectors)
  bool conv_direct_no_min128 = false;  // conv_direct and gconv are exact only for weights without -128
                                       // (AVX2's maddubs)
  DwPathFn dwconv_path = nullptr;      // null: dwconv has one way (AVX2's tap pairs, the scalar reference)
  GroupConvFn gconv = nullptr;         // null: grouped convolutions take the gathered rows per group
  int64_t gconv_lanes = 16;            // output channels per gconv block (GroupConvParams' L)
  bool gconv_signed_x = false;         // gconv reads an s8 slab (padding 0), else u8 = s8 + 128 (padding 128)
  GemmStepFn gemm_step = nullptr;      // null: int8_gemm has one step
  W8GemmFn w8_gemm_bf16 = nullptr;     // bf16 activations by vdpbf16ps, for CPUs with AVX512_BF16 (the entry
                                       // layer checks); null: bf16 x takes w8_gemm on an fp32 copy
  GateFn gate_sum = nullptr;           // null: the portable kernels::channel_sum_s8 / channel_scale_s8
  GateFn gate_scale = nullptr;
  int64_t conv_seg_align = 4;          // ConvDirectParams::row_seg's multiple (a k step; AMX: a tile step)
  QuantizePlanesFn quantize_planes = nullptr;  // null: an NCHW fp32 input is copied to channels-last first
  AddPathFn add_path = nullptr;  // null: add_act has one way
  bool conv_planes = false;      // conv_direct reads stride planes (ConvDirectParams::plane_bytes)
  AvgPoolFn avg_pool = nullptr;  // null: the portable kernels::avg_pool_nhwc_s8
  MaxPoolFn max_pool = nullptr;  // null: the portable kernels::max_pool_nhwc_s8
};

// Defined one per ISA translation unit.
const KernelSet& kernels_ref();
const KernelSet& kernels_avx2();
const KernelSet& kernels_avx_vnni();  // the int8 GEMM and direct convolution; the rest are AVX2's
const KernelSet& kernels_avx512_vnni();
const KernelSet& kernels_amx();  // the tile GEMM; the other families are the AVX-512 VNNI kernels
void gconv_avx512(const GroupConvParams& p, int64_t r0, int64_t r1);  // gconv_avx512.cc
void gate_sum_avx512(const GateParams& p, int64_t i0, int64_t i1);    // gate_avx512.cc
void gate_scale_avx512(const GateParams& p, int64_t r0, int64_t r1);
void gate_sum_avx2(const GateParams& p, int64_t i0, int64_t i1);      // gate_avx2.cc
void gate_scale_avx2(const GateParams& p, int64_t r0, int64_t r1);
void avg_pool_avx512(const AvgPoolParams& p, int64_t r0, int64_t r1);  // pool_avx512.cc
void avg_pool_avx2(const AvgPoolParams& p, int64_t r0, int64_t r1);    // pool_avx2.cc
void max_pool_avx512(const MaxPoolParams& p, int64_t r0, int64_t r1);  // pool_avx512.cc
void max_pool_avx2(const MaxPoolParams& p, int64_t r0, int64_t r1);    // pool_avx2.cc
void w8_gemm_bf16_avx512(const W8GemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);  // w8_bf16_avx512.cc
// dw_ymm_avx512.cc: the 256-bit row-quad depthwise kernel for AVX-512 VNNI CPUs at 32 channels; its path
// name, or null where it does not serve (dwconv_avx512 then runs its own kernel)
const char* dwconv_ymm_path_avx512(const DwConvParams& p);
void dwconv_ymm_avx512(const DwConvParams& p, int64_t p0, int64_t p1);

}  // namespace kernels
}  // namespace fastinfer
