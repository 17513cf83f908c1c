// CPU entry layer for int8 convolution: checks, input quantization (per tensor), then either the
// implicit GEMM (row chunks gathered on the fly into the int8 GEMM kernels) or the depthwise kernel.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "../kernels/conv/add.h"
#include "../kernels/conv/concat.h"
#include "../kernels/conv/im2row.h"
#include "../kernels/conv/pool.h"
#include "../kernels/conv/window.h"
#include "entry.h"
#include "ops.h"

namespace fastinfer {
namespace cpu {
namespace {

// max |x| over a contiguous fp32 tensor (NaN if it holds NaN/Inf), in parallel chunks.
float tensor_absmax(const at::Tensor& x) {
  const int64_t n = x.numel();
  if (n == 0) return 0.0f;
  const auto& ks = kernels_for(Family::Quantize);
  const float* data = x.data_ptr<float>();
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<uint32_t> part(static_cast<size_t>(chunks), 0);
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) part[c] = ks.absmax_bits(data + c * kChunk, std::min(kChunk, n - c * kChunk));
  });
  const uint32_t bits = *std::max_element(part.begin(), part.end());
  if (bits >= 0x7f800000u) return std::nanf("");
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

at::Tensor pack_conv_weight(const at::Tensor& w, int64_t groups) {
  const char* op = "pack_conv_weight";
  check_cpu(w, op, "weight");
  check_dtype(w, at::kChar, op, "weight");
  TORCH_CHECK(w.dim() == 4, "fastinfer.pack_conv_weight: weight must be 4-D [Cout, Cin/groups, KH, KW], got shape ",
              w.sizes());
  TORCH_CHECK(groups >= 1 && w.size(0) % groups == 0, "fastinfer.pack_conv_weight: groups must be >= 1 and divide "
              "Cout=", w.size(0), ", got groups=", groups);
  TORCH_CHECK(w.numel() > 0, "fastinfer.pack_conv_weight: weight is empty, shape ", w.sizes());
  const int64_t cout = w.size(0), cin_g = w.size(1), kh = w.size(2), kw = w.size(3);
  if (is_depthwise(groups, cin_g * groups, cout) && cin_g == 1)  // [KH*KW, C]: channels contiguous per tap
    return w.reshape({cout, kh * kw}).t().contiguous();
  const int64_t cout_g = cout / groups, K = kh * kw * cin_g;
  check_max_k(K, "pack_conv_weight", "KH*KW*Cin/groups");
  at::Tensor out = at::empty({groups, kernels::packed_nbytes(cout_g, K)}, w.options().dtype(at::kByte));
  // Taps outer, channels inner: the gathered activation row is (kh, kw, c), NHWC-contiguous runs.
  const at::Tensor rows = w.permute({0, 2, 3, 1}).contiguous().reshape({cout, K});
  for (int64_t g = 0; g < groups; ++g)
    kernels::pack_int8_weight(rows.data_ptr<int8_t>() + g * cout_g * K, K, cout_g, K, out[g].data_ptr<uint8_t>());
  return out;
}

// Pixels [p0, p1) of the fp32 NHWC input rows [pixels, C] quantized with the per-tensor a_scale (s8, or
// u8 = s8 + 128 with shift) into dst, ld bytes per pixel. An all-zero input (scale 0) or a non-finite one
// (scale NaN: the output is NaN) quantizes to zeros.
class QuantizedRows {
 public:
  QuantizedRows(const at::Tensor& x_rows, float a_scale, bool shift)
      : x_(x_rows.scalar_type() == at::kFloat ? x_rows.data_ptr<float>() : nullptr), C_(x_rows.size(1)),
        zero_(shift ? 128 : 0), all_zero_(!(a_scale > 0.0f && std::isfinite(a_scale))),
        ks_(kernels_for(Family::Quantize)) {
    q_.shift128 = shift;
    q_.static_inv = all_zero_ ? 0.0f : 1.0f / a_scale;
  }
  // Pixels p0, p0 + step, ... below p1 (every pixel by default; a stride plane's row takes every s-th).
  void write(int64_t p0, int64_t p1, uint8_t* dst, int64_t ld, int64_t step = 1) const {
    const int64_t count = (p1 - p0 + step - 1) / step;
    if (all_zero_) {
      for (int64_t p = 0; p < count; ++p) std::memset(dst + p * ld, zero_, static_cast<size_t>(C_));
      return;
    }
    kernels::QuantizeParams q = q_;
    const bool packed = ld == C_ && step == 1;  // contiguous pixels: one row of count * C values
    q.M = packed ? 1 : count;
    q.K = q.K_pad = packed ? count * C_ : C_;
    q.ldx = packed ? q.K : step * C_;
    q.x = x_ + p0 * C_;
    q.q = dst;
    q.ldq = packed ? q.K : ld;
    ks_.quantize(q, 0, q.M);
  }

 private:
  const float* x_;
  int64_t C_;
  uint8_t zero_;
  bool all_zero_;
  const kernels::KernelSet& ks_;
  kernels::QuantizeParams q_;
};

// Writes rows of the padded NHWC input: padded row hp of image n is Wp * C bytes, its border of pw
// columns (and whole rows outside the image) int8 zero (128 with shift), inside it the image row,
// quantized (fp32 x, QuantizedRows) or copied (int8 x). x_rows: the NHWC input rows [N * H * W, C].
class PaddedRows {
 public:
  PaddedRows(const at::Tensor& x_rows, const ConvArgs& a, float a_scale, int64_t ph, int64_t pw, bool shift)
      : x_rows_(x_rows), a_(a), ph_(ph), pw_(pw), shift_(shift), zero_(shift ? 128 : 0),
        quant_(x_rows, a_scale, shift) {}

  uint8_t zero() const { return zero_; }  // the padding byte: int8 zero in the operand's encoding

  void write(int64_t n, int64_t hp, uint8_t* d) const {
    const int64_t C = a_.C, h = hp - ph_, row = a_.W * C;
    if (h < 0 || h >= a_.H) {
      std::memset(d, zero_, static_cast<size_t>((a_.W + 2 * pw_) * C));
      return;
    }
    std::memset(d, zero_, static_cast<size_t>(pw_ * C));
    std::memset(d + (pw_ + a_.W) * C, zero_, static_cast<size_t>(pw_ * C));
    const int64_t p0 = (n * a_.H + h) * a_.W;
    if (x_rows_.scalar_type() == at::kChar)
      kernels::copy_operand_rows(x_rows_.data_ptr<int8_t>() + p0 * C, row, 1, row, d + pw_ * C, row, row, shift_);
    else
      quant_.write(p0, p0 + a_.W, d + pw_ * C, C);
  }

  // Padded row hp of image n split by column phase into s stride-plane rows of Wq pixels, phase px's at
  // d + px * plane_stride: its column j is padded column s * j + px (zero past the padded width).
  void write_planes(int64_t n, int64_t hp, uint8_t* d, int64_t plane_stride, int64_t s, int64_t Wq) const {
    const int64_t C = a_.C, h = hp - ph_;
    for (int64_t px = 0; px < s; ++px) {
      uint8_t* row = d + px * plane_stride;
      // The plane columns [j0, j1) whose input column s * j + px - pw lies in [0, W).
      const int64_t j0 = std::min(Wq, (std::max<int64_t>(0, pw_ - px) + s - 1) / s);
      const int64_t last = a_.W - 1 + pw_ - px;  // s * j <= last
      const int64_t j1 = h < 0 || h >= a_.H || last < 0 ? j0 : std::clamp(last / s + 1, j0, Wq);
      std::memset(row, zero_, static_cast<size_t>(j0 * C));
      std::memset(row + j1 * C, zero_, static_cast<size_t>((Wq - j1) * C));
      if (j1 == j0) continue;
      const int64_t p0 = (n * a_.H + h) * a_.W + s * j0 + px - pw_;
      if (x_rows_.scalar_type() == at::kChar)
        kernels::copy_operand_rows(x_rows_.data_ptr<int8_t>() + p0 * C, s * C, j1 - j0, C, row + j0 * C, C, C, shift_);
      else
        quant_.write(p0, p0 + s * (j1 - j0), row + j0 * C, C, s);
    }
  }

 private:
  const at::Tensor& x_rows_;
  const ConvArgs& a_;
  int64_t ph_, pw_;
  bool shift_;
  uint8_t zero_;
  QuantizedRows quant_;
};

// The quantized NHWC input of the gathered-rows paths and the depthwise kernel, [N * H * W, C] bytes
// (PaddedRows without a border). An int8 input that needs no +128 shift is used as it is. With guard bytes
// (an input read in place whose tiles read a little before the first image or past the last: PaddedTaps), a
// flat [before + N * H * W * C + after] copy, the guards zero, the images from byte `before`.
at::Tensor quantized_input(const at::Tensor& x_rows, const ConvArgs& a, float a_scale, bool shift, int64_t before = 0,
                           int64_t after = 0) {
  const bool guarded = before > 0 || after > 0;
  if (x_rows.scalar_type() == at::kChar && !shift && !guarded) return x_rows.view(at::kByte);
  const PaddedRows rows(x_rows, a, a_scale, 0, 0, shift);
  const int64_t row = a.W * a.C, bytes = a.N * a.H * row;
  at::Tensor xq = guarded ? at::empty({before + bytes + after}, at::dtype(at::kByte))
                          : output_empty({a.N * a.H * a.W, a.C}, at::kByte);
  uint8_t* const base = xq.data_ptr<uint8_t>();
  uint8_t* const dst = base + before;
  std::memset(base, 0, static_cast<size_t>(before));
  std::memset(dst + bytes, 0, static_cast<size_t>(after));
  at::parallel_for(0, a.N * a.H, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, row)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) rows.write(r / a.H, r % a.H, dst + r * row);
  });
  return xq;
}

// The convolution's folded epilogue (EPILOGUE.md, "Convolutions"): the activation scale is one per
// tensor, so it is multiplied into the per-channel scale once per call, and for an int8 output whose
// activation commutes with scaling (kernels::folds_out_inv) the output scale is multiplied into the
// scale and the bias too. Every kernel then runs its usual epilogue with a_scale = 1 (an exact
// multiply) and these vectors, which is the same arithmetic as the reference; `finite` lets the AMX
// tile kernels use their shorter folded epilogue (no NaN can arise).
struct ConvEpilogue {
  const float* scale = nullptr;  // [Cout] fp32
  const float* bias = nullptr;   // [Cout] fp32; nullptr without one
  float out_inv = 1.0f;
  bool finite = false;
  bool stream_out = false;  // Int8GemmParams::stream_out
  // What scale and bias point into where they are computed here (plain vectors: two at::empty a call
  // were a tenth of a 1-pixel convolution's time). Moves keep a vector's data where it is; copies would
  // not, so there are none.
  std::vector<float> scale_buf, bias_buf;
  ConvEpilogue() = default;
  ConvEpilogue(ConvEpilogue&&) = default;
  ConvEpilogue(const ConvEpilogue&) = delete;
  ConvEpilogue& operator=(const ConvEpilogue&) = delete;
};

// fp32 outputs from this size on are written with non-temporal stores by the kernels that can
// (Int8GemmParams::stream_out): the output lines are not read for ownership first. Measured (AMD Zen 4,
// 1 MB L2 a core, 32 MB L3; batch 8, int8 in, fp32 out, 1 thread): grouped 3x3 at 56 x 56 x 128 (12.8 MB
// out) 3.2 -> 1.5 ms, also at batch 1 (3.2 MB) no slower; a following fp32 consumer (ReLU) reads the
// output from memory instead of L3 and still came out ahead (EPILOGUE.md, "Streaming fp32 outputs"). The AMX
// kernels ignore it and apply their own per-call rule (amx.cc, stream_output), GEMMs included.
constexpr int64_t kConvStreamOutBytes = 2 << 20;

constexpr float kUnitScale = 1.0f;

ConvEpilogue fold_epilogue(float a_scale, const at::Tensor& ws, const at::Tensor& bi, std::optional<double> out_scale,
                           kernels::Act act) {
  ConvEpilogue e;
  const float out_inv = out_scale ? 1.0f / static_cast<float>(*out_scale) : 1.0f;
  const bool fold_inv = out_scale && folds_out_inv(act);
  e.out_inv = fold_inv ? 1.0f : out_inv;
  bool finite = std::isfinite(e.out_inv);
  const size_t n = static_cast<size_t>(ws.size(0));
  e.scale_buf.resize(n);
  const float* w = ws.data_ptr<float>();
  float* sc = e.scale_buf.data();
  for (size_t i = 0; i < n; ++i) {
    const float v = a_scale * w[i];
    sc[i] = fold_inv ? v * out_inv : v;
    finite = finite && std::isfinite(sc[i]);
  }
  e.scale = sc;
  if (bi.defined()) {
    const float* b = bi.data_ptr<float>();
    if (fold_inv) {
      e.bias_buf.resize(n);
      for (size_t i = 0; i < n; ++i) e.bias_buf[i] = b[i] * out_inv;
      b = e.bias_buf.data();
    }
    for (size_t i = 0; i < n; ++i) finite = finite && std::isfinite(b[i]);
    e.bias = b;
  }
  e.finite = finite;
  return e;
}

// Output columns [ow0, ow1) that run kernel columns [kw0, kw1) (PaddedTaps, below).
struct TapSeg {
  int64_t ow0, ow1, kw0, kw1;
};

// The output columns in runs of equal valid kernel columns into *runs; false where a column reads only padding.
bool valid_column_runs(const ConvArgs& a, std::vector<TapSeg>* runs) {
  runs->clear();
  for (int64_t ow = 0; ow < a.OW; ++ow) {
    int64_t k0, k1;
    kernels::valid_taps(ow * a.SW - a.PW, a.DW, a.KW, a.W, &k0, &k1);
    if (k0 == k1) return false;
    if (!runs->empty() && runs->back().kw0 == k0 && runs->back().kw1 == k1)
      runs->back().ow1 = ow + 1;
    else
      runs->push_back({ow, ow + 1, k0, k1});
  }
  return true;
}

// AMX's segments: the output columns split where the tile products are fewest. A segment is a union of
// neighbouring runs (valid_column_runs) that computes the union of their kernel columns in ceil(width / T)
// tiles of T pixels (one whole tile where it is narrower), so a 3x3 of dilation 24 at 32 x 32 runs columns
// [0, 8), [8, 24), [24, 32) with 2, 1 and 2 kernel columns (5 tile products a row, not 6), and a
// padding-1 kernel keeps whole rows (its 1-pixel edges would each take a tile). Shortest path over the run
// boundaries (ties: the fewest segments). Clears *exact where a pixel then computes a column in the padding.
std::vector<TapSeg> tile_segments(const ConvArgs& a, int64_t T, bool* exact) {
  std::vector<TapSeg> runs;
  if (!valid_column_runs(a, &runs)) {
    *exact = false;
    return {TapSeg{0, a.OW, 0, a.KW}};
  }
  const size_t m = runs.size();
  std::vector<int64_t> best(m + 1, std::numeric_limits<int64_t>::max());
  std::vector<size_t> from(m + 1, 0);
  best[0] = 0;
  for (size_t j = 1; j <= m; ++j) {
    int64_t k0 = a.KW, k1 = 0;
    for (size_t i = j; i-- > 0;) {  // segment = runs [i, j)
      k0 = std::min(k0, runs[i].kw0);
      k1 = std::max(k1, runs[i].kw1);
      const int64_t cost = best[i] + (runs[j - 1].ow1 - runs[i].ow0 + T - 1) / T * (k1 - k0);
      if (cost <= best[j]) {
        best[j] = cost;
        from[j] = i;
      }
    }
  }
  std::vector<TapSeg> segs;
  for (size_t j = m; j > 0; j = from[j]) {
    TapSeg u{runs[from[j]].ow0, runs[j - 1].ow1, a.KW, 0};
    for (size_t i = from[j]; i < j; ++i) {
      u.kw0 = std::min(u.kw0, runs[i].kw0);
      u.kw1 = std::max(u.kw1, runs[i].kw1);
    }
    for (size_t i = from[j]; i < j; ++i)
      if (runs[i].kw0 != u.kw0 || runs[i].kw1 != u.kw1) *exact = false;
    segs.insert(segs.begin(), u);
  }
  return segs;
}

// An output row's valid kernel rows [*k0, *k1); false where it reads only padding.
bool valid_kernel_rows(const ConvArgs& a, int64_t oh, int64_t* k0, int64_t* k1) {
  kernels::valid_taps(oh * a.SH - a.PH, a.DH, a.KH, a.H, k0, k1);
  return *k0 < *k1;
}

// AMX at stride 1: whether tiles within output rows that run each row's tap boxes (tile_segments) make fewer
// tile products than the tiles over the padded width, which compute every tap and Wp - OW padding columns a
// row. They do for dilated kernels: DeepLabV3's 3x3 of dilation 2, 4, 12, 24 and 36 at 32 x 32 make 0.85,
// 0.73, 0.43, 0.17 and 0.03 times as many. conv_padded_rows "never" keeps the padded width; "always" takes the
// boxes wherever they are fewer or as many.
// The tile products of one image's tap boxes: each output row's valid kernel rows (all of them where it reads
// only padding) times each segment's tiles and kernel columns.
int64_t box_tile_products(const ConvArgs& a, const std::vector<TapSeg>& segs, int64_t T) {
  int64_t products = 0;
  for (int64_t oh = 0; oh < a.OH; ++oh) {
    int64_t k0, k1;
    if (!valid_kernel_rows(a, oh, &k0, &k1)) {
      k0 = 0;
      k1 = a.KH;
    }
    for (const TapSeg& g : segs) products += (g.ow1 - g.ow0 + T - 1) / T * (g.kw1 - g.kw0) * (k1 - k0);
  }
  return products;
}

bool row_boxes_beat_padded_width(const ConvArgs& a, int64_t T) {
  const int mode = conv_padded_rows_mode();
  if (mode == 2 || (a.PH == 0 && a.PW == 0) || a.OW < T) return false;
  bool exact = true;
  const int64_t boxes = box_tile_products(a, tile_segments(a, T, &exact), T);
  const int64_t padded_width = (a.OH * (a.W + 2 * a.PW) + T - 1) / T * a.KH * a.KW;
  return mode == 1 ? boxes <= padded_width : boxes < padded_width;
}

// The direct convolution (ConvDirectParams): A read from the padded input, no row gather.
// AMX (16-pixel tiles), measured against the gathered rows at ResNet-50's 3x3 layers (2 threads,
// batch 8): 1.7-1.9x faster at 56x56, 28x28 and 14x14, but slower at 7x7, where the padded width
// wastes 2 of 9 columns and a pass is mostly window overlap. So on AMX:
// - over the padded width for stride 1 with OW >= 12 (2 padding columns per row instead of a shifted
//   tile's overlap);
// - tiles within output rows for other strides when OW >= 16;
// - over stride planes (ConvDirectParams::plane_bytes) for SH == SW > 1 without dilation, every plane read
//   (KH >= SH, KW >= SW) and 12 <= OW < 16: the padded input split by row and column phase, each tap a
//   stride-1 window of its plane. Against the gathered rows (paired, 2 threads, batch 8, int8 in/out /
//   fp32 in/out): 128 -> 256 at 28 -> 14 1.11x / 1.20-1.23x, ResNet-50's 256 -> 256 at 28 -> 14 1.07x /
//   1.17x; batch 1 1.00x / 1.11x. Not where tiles within rows serve (OW >= 16: ResNet-50's 128 -> 128 at
//   56 -> 28, 0.92-0.98x: the planes' tiles were faster, but splitting 4 planes cost more than the rows'
//   copy), nor at OW 7 (0.33-0.83x: an output row of 8 plane pixels is half a tile);
// - else none: the implicit GEMM on gathered rows; a plain 1x1 convolution is a GEMM on the input rows.
// Register tiles within an output row (AVX-512 VNNI and AVX-VNNI: <= 6 pixels; AVX2: <= 4 pixels, and
// only for weights without -128, the ones its maddubs step is exact for): every convolution with OW >= 10, plain
// 1x1 included (the per-item slab replaces the whole shifted or quantized copy of the input, and an
// unpadded int8 input is read in place). Measured on an AMD Zen 5 (2 threads, batch 8, int8 in/out)
// against the gathered rows: l1 3x3 (56 x 56) 2.35 -> 1.31-1.39 ms, l1 1x1 1.19 -> 0.74-0.88, s2 3x3
// (stride 2, OW 14) 0.82 -> 0.56, l3 3x3 (OW 14) 1.31 -> 1.13; but l4 3x3 (OW 7: tiles of 4 + 3
// pixels, each streaming the 64-column weight block from L2 for fewer rows) 1.20-1.28 -> 1.40-1.44.
// A few-channel input (C % 4 != 0 and C < 16, as an RGB first layer) takes row segments
// (ConvDirectParams::row_seg): a kernel row's KW * C input bytes are contiguous, so they form one K segment, and
// the weight is repacked (once: row_segment_weight) with each kernel row zero-padded to 4 bytes (AMX: 64, a tile
// step). ResNet's 3-channel 7x7 stride-2 stem at 224 x 224, batch 1, int8 in/out, AMD Zen 5, 2 threads: 0.21 ms
// (oneDNN 0.27); the gathered rows took 0.56 ms (1.62 before the gather copied whole kernel rows).
// On AMX every C that is not a multiple of 64 (a tile step) takes row segments (DW == 1): over the padded width
// at stride 1 with OW >= 12, within output rows for C < 16 and OW >= 16 at other strides (the stride-2 layers of
// 96 and 288 channels at 35 -> 17 ran 1.17x and 0.76-0.80x the gathered rows: 17 pixels take two tiles). A
// kernel row costs ceil(KW * C / 64) tile steps instead of KW * C / 64: 3x3 of 32 channels 1.33x the products,
// 80 or 48 (5x5) channels 1.07x, 160 (7x1) 1.2x. Against the gathered rows, int8 in/out, batch 8, 2 threads, in
// one process: Inception v3's 3x3 32 -> 64 at 147 x 147 4.46 -> 2.30 ms (oneDNN 2.07), 32 -> 32 at 149 x 149
// 2.96 -> 1.15 (1.42), 80 -> 192 at 73 x 73 4.00 -> 2.51 (2.80), 5x5 48 -> 64 at 35 x 35 0.79 -> 0.32 (0.28),
// 3x3 96 -> 96 0.71 -> 0.35 (0.34), 1x7 / 7x1 160 -> 160 at 17 x 17 0.29 / 0.33 -> 0.20 / 0.20 (0.20 / 0.20);
// GoogLeNet's 5x5 32 -> 96 at 28 x 28 0.47 -> 0.21 (0.28), 3x3 96 -> 128 0.58 -> 0.29 (0.28), 112 -> 224 at
// 14 x 14 0.32 -> 0.17 (0.15). Whole models, same process, batch 8 / 1: Inception v3 1.25x / 1.12x, GoogLeNet
// 1.07x / 0.99x, SqueezeNet 1.1 1.12x / 1.08x.
enum class DirectMode { None, Rows, PaddedWidth, RowSegments, PaddedWidthSegments, StridePlanes };
constexpr int64_t kVnniDirectMinOW = 10;  // tiles of >= 5 pixels
constexpr int64_t kRowSegmentMaxC = 16;

DirectMode direct_mode(const kernels::KernelSet* ks, const ConvArgs& a, bool plain_1x1, bool w_no_min128) {
  if (!ks || !ks->conv_direct || a.groups != 1) return DirectMode::None;
  if (ks->conv_direct_no_min128 && !w_no_min128) return DirectMode::None;
  if (ks->conv_tile_rows < 16) {
    if (a.OW < kVnniDirectMinOW) return DirectMode::None;
    if (a.C % ks->conv_c_step == 0) return DirectMode::Rows;
    return a.C < kRowSegmentMaxC && a.DW == 1 ? DirectMode::RowSegments : DirectMode::None;
  }
  if (plain_1x1) return DirectMode::None;
  if (a.C % ks->conv_c_step != 0) {
    if (a.DW != 1) return DirectMode::None;
    if (a.SH == 1 && a.SW == 1 && a.OW >= 12) return DirectMode::PaddedWidthSegments;
    return a.C < kRowSegmentMaxC && a.OW >= 16 ? DirectMode::RowSegments : DirectMode::None;
  }
  if (a.SH == 1 && a.SW == 1 && a.OW >= 12)
    return row_boxes_beat_padded_width(a, ks->conv_tile_rows) ? DirectMode::Rows : DirectMode::PaddedWidth;
  if (a.OW >= 16) return DirectMode::Rows;
  if (ks->conv_planes && a.SH == a.SW && a.DH == 1 && a.DW == 1 && a.KH >= a.SH && a.KW >= a.SW && a.OW >= 12)
    return DirectMode::StridePlanes;
  return DirectMode::None;
}

// A plain 1x1 convolution (stride 1, no padding, one group; its one tap ignores dilation) of images narrower
// than the VNNI tiles' rows (OW < kVnniDirectMinOW) on AVX-512 VNNI as images of one output row of OH * OW
// pixels: its NHWC pixels are back to back in the input and the output alike, so the register tiles within
// rows serve it, an int8 input read in place, instead of the GEMM on a shifted copy of the rows. In-process A/B
// against that GEMM (AMD Zen 4, 2 threads, 2026-12-06), int8 in/out: MobileNetV2's 7 x 7 layers (576 -> 160,
// 160 -> 960, 960 -> 160, 960 -> 320, 320 -> 1280) 1.12-1.22x at batch 8, 1.22-1.36x at batch 1; ResNet-50's
// 512 -> 2048 and 2048 -> 512 1.07-1.12x; fp32 in/out 1.01-1.17x. Wider images keep their rows (one row of the image's
// pixels measured 0.99-1.06x at 14 x 14 and 28 x 28). AVX2's 4-pixel tiles: 0.98-1.13x at batch 8 but
// 0.70-0.96x at batch 1 with 96-160 output channels (one item an image, its columns split in panels), so the
// 256-bit tiers keep the GEMM (AVX-VNNI not measured: no such CPU here). AMX runs plain 1x1 convolutions as
// GEMMs (direct_mode).
bool one_row_images(const kernels::KernelSet* ks, const ConvArgs& a, bool plain_1x1) {
  return ks && ks->conv_direct && isa_of(*ks) == Isa::Avx512Vnni && plain_1x1 && a.groups == 1 &&
         a.OW < kVnniDirectMinOW && a.OH * a.OW >= kVnniDirectMinOW;
}

ConvArgs as_one_row(ConvArgs a) {
  a.W *= a.H;
  a.H = 1;
  a.OW *= a.OH;
  a.OH = 1;
  return a;
}

const char* direct_mode_name(DirectMode mode) {
  switch (mode) {
    case DirectMode::Rows: return "rows";
    case DirectMode::PaddedWidth: return "padded_width";
    case DirectMode::RowSegments: return "row_segments";
    case DirectMode::PaddedWidthSegments: return "padded_width_row_segments";
    case DirectMode::StridePlanes: return "stride_planes";
    default: return "";
  }
}

kernels::ConvDirectParams direct_geometry(const kernels::KernelSet* ks, const ConvArgs& a, DirectMode mode) {
  kernels::ConvDirectParams cp;
  cp.Hp = a.H + 2 * a.PH;
  cp.Wp = a.W + 2 * a.PW;
  cp.C = a.C;
  cp.OH = a.OH;
  cp.OW = a.OW;
  cp.KH = a.KH;
  cp.KW = a.KW;
  cp.SH = a.SH;
  cp.SW = a.SW;
  cp.DH = a.DH;
  cp.DW = a.DW;
  cp.virtual_width =
      mode == DirectMode::PaddedWidth || mode == DirectMode::PaddedWidthSegments || mode == DirectMode::StridePlanes;
  if (mode == DirectMode::StridePlanes) {  // a plane's width; Hp and plane_bytes are set per slab (conv_direct)
    cp.Wp = (cp.Wp + a.SW - 1) / a.SW;
  }
  cp.row_seg = mode == DirectMode::RowSegments || mode == DirectMode::PaddedWidthSegments
                   ? kernels::round_up(a.KW * a.C, ks->conv_seg_align)
                   : 0;
  return cp;
}

// The packed weight [Cout, KH * KW * C] (rows (kh, kw, c)) repacked for row segments: [Cout, KH * seg],
// each kernel row's KW * C bytes followed by zeros up to seg.
at::Tensor pack_row_segments(const at::Tensor& packed_w, const PackedHeader& h, const ConvArgs& a, int64_t seg) {
  const int64_t run = a.KW * a.C, K = a.KH * seg;
  std::vector<int8_t> rows(static_cast<size_t>(h.N * h.K)), padded(static_cast<size_t>(h.N * K), 0);
  kernels::unpack_int8_weight(packed_w.data_ptr<uint8_t>(), rows.data(), h.K);
  for (int64_t n = 0; n < h.N; ++n)
    for (int64_t kh = 0; kh < a.KH; ++kh)
      std::memcpy(&padded[n * K + kh * seg], &rows[n * h.K + kh * run], static_cast<size_t>(run));
  at::Tensor out = at::empty({kernels::packed_nbytes(h.N, K)}, packed_w.options());
  kernels::pack_int8_weight(padded.data(), K, h.N, K, out.data_ptr<uint8_t>());
  return out;
}

// pack_row_segments's weight for packed_w, made once: an int8 weight is packed once and called many times, and
// repacking a 160 -> 160 1x7 layer's weight took longer than its convolution (batch 8, AMX). Entries hold
// packed_w's TensorImpl weakly (an entry dies with its tensor; expired ones are dropped on the next insert)
// with its version and data pointer: an in-place write (load_state_dict's copy_) or a new storage makes a new
// entry. Inference tensors have no version counter: theirs are repacked each call. At most kSegCacheEntries
// (the oldest goes first).
constexpr size_t kSegCacheEntries = 256;
at::Tensor row_segment_weight(const at::Tensor& packed_w, const PackedHeader& h, const ConvArgs& a, int64_t seg) {
  if (packed_w.is_inference()) return pack_row_segments(packed_w, h, a, seg);
  struct Entry {
    c10::weak_intrusive_ptr<c10::TensorImpl> impl;
    uint32_t version;
    const void* data;
    int64_t seg, KW, C;
    at::Tensor packed;
  };
  static std::mutex mutex;
  static std::vector<Entry> entries;
  c10::TensorImpl* const impl = packed_w.unsafeGetTensorImpl();
  const uint32_t version = impl->version_counter().current_version();
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (const Entry& e : entries)
      if (!e.impl.expired() && e.impl._unsafe_get_target() == impl && e.version == version &&
          e.data == packed_w.data_ptr() && e.seg == seg && e.KW == a.KW && e.C == a.C)
        return e.packed;
  }
  at::Tensor packed = pack_row_segments(packed_w, h, a, seg);
  std::lock_guard<std::mutex> lock(mutex);
  entries.erase(std::remove_if(entries.begin(), entries.end(), [](const Entry& e) { return e.impl.expired(); }),
                entries.end());
  if (entries.size() >= kSegCacheEntries) entries.erase(entries.begin());
  entries.push_back({c10::weak_intrusive_ptr<c10::TensorImpl>(packed_w.getIntrusivePtr()), version,
                     packed_w.data_ptr(), seg, a.KW, a.C, packed});
  return packed;
}

// The GEMM epilogue fields of a convolution (group g of cout_g channels).
void set_conv_epilogue(kernels::Int8GemmParams& p, const ConvEpilogue& e, int64_t g, int64_t cout_g,
                       kernels::OutKind kind, kernels::Act act) {
  p.a_scale = &kUnitScale;
  p.a_scale_per_tensor = true;
  p.b_scale = e.scale + g * cout_g;
  p.bias = e.bias ? e.bias + g * cout_g : nullptr;
  p.out_kind = kind;
  p.act = act;
  p.out_inv_scale = e.out_inv;
  p.folded = e.finite;
  p.stream_out = e.stream_out;
}

// The row groups per image from per_image up to twice that whose item count (N of them) is a multiple of
// the thread count, if one is (at::parallel_for hands each thread a contiguous range of items).
int64_t even_row_groups(int64_t per_image, const ConvArgs& a, int64_t threads) {
  for (int64_t k = per_image; k <= std::min(a.OH, 2 * per_image); ++k)
    if ((a.N * k) % threads == 0) return k;
  return per_image;
}

// Taps in the zero padding.
// Kernel rows: an output row near the top or bottom of the image reads padding rows with its first or last
// kernel rows: their products are 128 * w each (the padding's u8 zero), which the epilogue's 128 * colsum then
// takes away again. Such a row runs only its kernel rows [kh0, kh1) that read the image: K is ordered
// (kh, kw, c), so they are one K range of the packed weight, run against the column sums of those kernel rows
// (the packed weight holds only the sums over all of K). The sums are made here once a call for each distinct
// tap box (a few) by the int8 GEMM: an operand row of ones over the box's K against the packed weight, int32
// out. oneDNN skips them too: its 512-channel 3x3 at 7 x 7 ran 1.2x faster padded than unpadded
// (bench_conv.py's `(a0)` rows), where fastinfer took the same time.
// Kernel columns: a pixel near the left or right edge reads padding columns with its first or last kernel
// columns. The register-tile direct kernels run any tap box (their tiles jump to each tap's weight rows), so an
// output row splits into column segments of pixels with the same valid kernel columns, each run with the box
// of its row's kernel rows and its own kernel columns. A segment narrower than min_cols (half a register tile,
// at least 3 pixels) joins its wider neighbour and computes the union of their columns: a narrow tile streams the weights for few
// pixels, so the one-pixel edges of a padding-1 kernel (ResNet) keep their rows' full width. Dilated
// convolutions on small maps gain the most: DeepLabV3's ASPP 3x3 of dilation 36 at 32 x 32 reads only its
// centre tap, which it now runs alone.
// Where every pixel's box is exactly its valid taps (no segment joined, no output row or column without a valid
// tap), no tap reads padding at all, and an int8 input is read in place: no padded slab (exact()). The slab of a
// dilation-36 layer held 72 padding columns beside 32 image ones, and 72 padding rows.
// Measured on AMD Zen 4 (2 threads, batch 1, int8 in/out, 2048 -> 256 at 32 x 32; rows alone -> rows, columns
// and in place; a 1x1 of the same shape 1.19 ms; oneDNN in the same process 6.3 / 2.9 / 1.3 ms): dilation 12
// 8.7 -> 6.2 ms, 24 6.5 -> 2.8 ms, 36 5.2 -> 1.24 ms; DeepLabV3-ResNet50's 512-channel dilation-4 layers
// 5.0 -> 4.5 ms (oneDNN 4.7).
// Who skips: the direct convolution of the VNNI and AVX2 tiers (rows and columns), AMX's tiles within output
// rows (rows and columns, segments by tile_segments, no column sums: its s8 operand has no shift to take
// away), and the gathered-rows GEMM on AVX-512 VNNI (rows only: the rows of an output row are consecutive in
// M, and a box with holes in K is no K range; Int8GemmParams::k_quads, which only that GEMM honours). AMX's
// padded-width and stride-plane tiles cross output rows and compute every tap; at stride 1 AMX takes tiles
// within rows where their boxes make fewer tile products (row_boxes_beat_padded_width).
class PaddedTaps {
 public:
  // h, base: the packed weight (checked_header's); krow: K bytes a kernel row (a multiple of 4); tap: K bytes a
  // tap (C) where the caller's kernels run tap boxes (the direct convolutions over output rows), 0 where they
  // run whole kernel rows only (row segments, the gathered-rows GEMM); allowed: the caller's kernels can skip;
  // min_cols: the narrowest column segment run on its own by the register tiles (AMX: tile_segments).
  PaddedTaps(const kernels::KernelSet& ks, const ConvArgs& a, const PackedHeader& h, const uint8_t* base,
             int64_t krow, int64_t tap, bool allowed, int64_t min_cols)
      : krow_(krow), KH_(a.KH), KW_(a.KW), OW_(a.OW), OH_(a.OH), K_pad_(h.K_pad), N_pad_(h.N_pad) {
    const int mode = conv_padded_rows_mode();
    if (mode == 2 || !allowed || (a.PH == 0 && (a.PW == 0 || tap == 0)) || krow % kernels::kPackKB != 0) return;
    const bool amx = ks.conv_tile_rows >= 16 && tap > 0;  // AMX's tiles within output rows, T pixels each
    const int64_t T = ks.conv_tile_rows;
    bool exact = tap > 0 || a.PW == 0;  // whole kernel rows read the side padding
    std::vector<std::pair<int64_t, int64_t>> rows(static_cast<size_t>(a.OH));  // per output row its kernel rows
    for (int64_t oh = 0; oh < a.OH; ++oh) {
      int64_t k0, k1;
      if (!valid_kernel_rows(a, oh, &k0, &k1)) {  // an output row of padding alone computes every kernel row
        k0 = 0;
        k1 = a.KH;
        exact = false;
      }
      rows[static_cast<size_t>(oh)] = {k0, k1};
    }
    segs_ = amx ? tile_segments(a, T, &exact) : column_segments(a, tap > 0 ? min_cols : 0, &exact);
    const int64_t nseg = static_cast<int64_t>(segs_.size());
    const int64_t full = tap > 0 ? a.KH * a.KW * tap : a.KH * krow;  // K bytes a pixel of the full box
    double saved = 0;  // K bytes left out over one image's pixels (AMX: tile products)
    int64_t reach_lo = 0, reach_hi = a.H * a.W;  // AMX: the pixels its tiles read (window_reach)
    cls_.assign(static_cast<size_t>(a.OH * nseg), -1);
    for (int64_t oh = 0; oh < a.OH; ++oh)
      for (int64_t s = 0; s < nseg; ++s) {
        const TapSeg& g = segs_[static_cast<size_t>(s)];
        const Box box{rows[static_cast<size_t>(oh)].first, rows[static_cast<size_t>(oh)].second, g.kw0, g.kw1};
        if (amx) window_reach(a, oh, box, g, T, &reach_lo, &reach_hi);
        if (box.kh0 == 0 && box.kh1 == a.KH && box.kw0 == 0 && box.kw1 == a.KW) continue;
        const int64_t bytes = (box.kh1 - box.kh0) * (tap > 0 ? (box.kw1 - box.kw0) * tap : krow);
        saved += amx ? 0 : static_cast<double>(full - bytes) * (g.ow1 - g.ow0);
        size_t c = 0;
        while (c < boxes_.size() && !(boxes_[c] == box)) ++c;
        if (c == boxes_.size()) boxes_.push_back(box);
        cls_[static_cast<size_t>(oh * nseg + s)] = static_cast<int>(c);
      }
    if (amx)  // tile products left out against whole rows of every tap
      saved = static_cast<double>((a.OW + T - 1) / T * a.KH * a.KW * a.OH - box_tile_products(a, segs_, T));
    const int64_t classes = static_cast<int64_t>(boxes_.size());
    // "auto": the products saved against the sums' GEMM (classes operand rows over the whole packed weight,
    // in tiles of a few rows) and its pass over the weight, counted as 4 products a byte. In-process A/B on
    // AMD Zen 4 (2 threads, int8 in/out, ResNet-50's 3x3 layers, kernel rows alone): batch 8 1.01-1.04x (256
    // channels at 14 x 14 1.04x, at 28 x 28 1.02x, 56 x 56 1.01x, the stride-2 layers 1.01-1.02x); batch 1
    // within the noise of +-2.5%, where the 256-channel layer at 14 x 14 (saved / cost 1.6) came out 1.02x in
    // two runs of three, the stride-2 256 -> 256 at 28 x 28 (only the top row skips a kernel row; 0.9)
    // 0.97-0.99x, and the 512-channel layer at 7 x 7 (0.8; gathered rows) 1.01x over 25 rounds.
    saved *= static_cast<double>(a.N) * h.N;
    const double cost = ks.signed_a ? 0 : static_cast<double>(classes + 4) * h.K_pad * N_pad_;
    if (classes == 0 || (mode == 0 && saved <= cost)) {
      cls_.clear();
      boxes_.clear();
      return;
    }
    exact_ = exact;
    guard_before_ = (0 - reach_lo) * a.C;
    guard_after_ = (reach_hi - a.H * a.W) * a.C;
    if (ks.signed_a) return;  // s8 x s8 (AMX): a skipped tap adds nothing to take away
    // Operand rows: s8 1 over each box's K, 0 elsewhere, shifted to the GEMM's u8 by copy_operand_rows.
    std::vector<int8_t> ones(static_cast<size_t>(classes * h.K), 0);
    for (int64_t c = 0; c < classes; ++c) {
      const Box& box = boxes_[static_cast<size_t>(c)];
      for (int64_t kh = box.kh0; kh < box.kh1; ++kh) {
        auto row = ones.begin() + c * h.K + kh * krow;
        if (tap == 0)
          std::fill(row, row + krow, 1);
        else
          std::fill(row + box.kw0 * tap, row + box.kw1 * tap, 1);
      }
    }
    const int64_t ld = kernels::operand_stride(h.K_pad);
    std::vector<uint8_t> operand(static_cast<size_t>(classes * ld));
    kernels::copy_operand_rows(ones.data(), h.K, classes, h.K, operand.data(), ld, h.K_pad, /*shift=*/true);
    sums_.assign(static_cast<size_t>(classes * N_pad_), 0);  // padded columns stay 0, as the packed colsum's
    kernels::Int8GemmParams g;  // an int32 output: no epilogue fields
    set_packed_weight(g, h, base);
    g.M = classes;
    g.a = operand.data();
    g.lda = ld;
    g.out = sums_.data();
    g.ldo = N_pad_;
    g.out_kind = kernels::OutKind::Int32;
    const int64_t blocks = N_pad_ / kernels::kPackNB;
    at::parallel_for(0, blocks, std::max<int64_t>(4, blocks / std::max(1, at::get_num_threads())),
                     [&](int64_t b0, int64_t b1) {
                       ks.int8_gemm(g, 0, classes, b0 * kernels::kPackNB, b1 * kernels::kPackNB);
                     });
  }
  bool active() const { return !cls_.empty(); }
  // Every pixel computes exactly its valid taps: no tap reads padding.
  bool exact() const { return active() && exact_; }
  // Bytes an input read in place needs before its first image and after its last (window_reach).
  int64_t guard_before() const { return guard_before_; }
  int64_t guard_after() const { return guard_after_; }
  // For last_kernel("conv_padded_rows").
  const char* how() const {
    if (!active()) return "computed";
    const bool columns =
        std::any_of(boxes_.begin(), boxes_.end(), [&](const Box& b) { return b.kw0 > 0 || b.kw1 < KW_; });
    return columns ? "skipped_taps" : "skipped";
  }

  // The direct convolution's output rows [r0, r1) of item ci (its input at output row r0, its out at row r0),
  // in runs of rows with the same boxes, each run once per column segment.
  void run_direct(const kernels::KernelSet& ks, const kernels::ConvDirectParams& ci, const ConvArgs& a, int64_t r0,
                  int64_t r1, int64_t n0, int64_t n1, int64_t out_row_bytes) const {
    const size_t nseg = segs_.size();
    auto row_cls = [&](int64_t r) { return cls_.begin() + static_cast<ptrdiff_t>(r * static_cast<int64_t>(nseg)); };
    for (int64_t ra = r0; ra < r1;) {
      int64_t rb = ra + 1;
      while (rb < r1 && std::equal(row_cls(ra), row_cls(ra + 1), row_cls(rb))) ++rb;
      for (size_t s = 0; s < nseg; ++s) {
        kernels::ConvDirectParams cr = ci;
        cr.x_origin = ci.x_origin + (ra - r0) * a.SH * ci.Wp * ci.C;
        cr.OH = rb - ra;
        cr.gemm.M = (rb - ra) * a.OW;
        cr.gemm.out = static_cast<char*>(ci.gemm.out) + (ra - r0) * out_row_bytes;
        cr.ow0 = segs_[s].ow0;
        cr.ow1 = segs_[s].ow1;
        const int c = *(row_cls(ra) + static_cast<ptrdiff_t>(s));
        if (c >= 0) {
          const Box& box = boxes_[static_cast<size_t>(c)];
          cr.kh0 = box.kh0;
          cr.kh1 = box.kh1;
          cr.kw0 = box.kw0;
          cr.kw1 = box.kw1;
          if (!sums_.empty()) cr.gemm.b_colsum = sums_.data() + c * N_pad_;
        }
        ks.conv_direct(cr, 0, rb - ra, n0, n1);
      }
      ra = rb;
    }
  }

  // The gathered-rows GEMM p on its rows [m0, m1) (pixels (n, oh, ow) in order; p.a and p.out at row m0), in
  // runs of pixels whose output rows have the same kernel rows (tap == 0: one column segment).
  void run_gemm(const kernels::KernelSet& ks, const kernels::Int8GemmParams& p, int64_t m0, int64_t m1, int64_t n0,
                int64_t n1, int64_t out_row_bytes) const {
    auto cls_of = [&](int64_t m) { return cls_[static_cast<size_t>((m / OW_) % OH_)]; };
    for (int64_t ma = m0; ma < m1;) {
      const int c = cls_of(ma);
      int64_t mb = std::min(m1, (ma / OW_ + 1) * OW_);  // to the end of this output row, then whole rows
      while (mb < m1 && cls_of(mb) == c) mb = std::min(m1, mb + OW_);
      kernels::Int8GemmParams q = p;
      q.M = mb - ma;
      q.a = p.a + (ma - m0) * p.lda;
      q.out = static_cast<char*>(p.out) + (ma - m0) * out_row_bytes;
      if (c >= 0) {
        const Box& box = boxes_[static_cast<size_t>(c)];
        const int64_t k0 = box.kh0 * krow_, k1 = box.kh1 == KH_ ? K_pad_ : box.kh1 * krow_;
        q.a += k0;
        q.b = p.b + k0 * kernels::kPackNB;
        q.k_quads = (k1 - k0) / kernels::kPackKB;
        q.b_colsum = sums_.data() + c * N_pad_;
      }
      ks.int8_gemm(q, 0, mb - ma, n0, n1);
      ma = mb;
    }
  }

 private:
  struct Box {
    int64_t kh0, kh1, kw0, kw1;
    bool operator==(const Box& o) const { return kh0 == o.kh0 && kh1 == o.kh1 && kw0 == o.kw0 && kw1 == o.kw1; }
  };
  // The output columns in segments of the same valid kernel columns (min_cols 0: one segment of all
  // kernel columns), a segment narrower than min_cols joined to its wider neighbour; clears *exact where a
  // pixel then computes a kernel column in the padding.
  static std::vector<TapSeg> column_segments(const ConvArgs& a, int64_t min_cols, bool* exact) {
    if (min_cols == 0 || a.PW == 0) return {TapSeg{0, a.OW, 0, a.KW}};
    std::vector<TapSeg> segs;
    if (!valid_column_runs(a, &segs)) return {TapSeg{0, a.OW, 0, a.KW}};  // a column of padding alone
    while (segs.size() > 1) {
      size_t i = 0;  // the narrowest segment
      for (size_t j = 1; j < segs.size(); ++j)
        if (segs[j].ow1 - segs[j].ow0 < segs[i].ow1 - segs[i].ow0) i = j;
      if (segs[i].ow1 - segs[i].ow0 >= min_cols) break;
      const size_t j = i == 0 ? 1
                       : i + 1 == segs.size() || segs[i - 1].ow1 - segs[i - 1].ow0 >= segs[i + 1].ow1 - segs[i + 1].ow0
                           ? i - 1
                           : i + 1;
      const TapSeg u{std::min(segs[i].ow0, segs[j].ow0), std::max(segs[i].ow1, segs[j].ow1),
                  std::min(segs[i].kw0, segs[j].kw0), std::max(segs[i].kw1, segs[j].kw1)};
      if (u.kw0 != segs[i].kw0 || u.kw1 != segs[i].kw1 || u.kw0 != segs[j].kw0 || u.kw1 != segs[j].kw1) *exact = false;
      segs[std::min(i, j)] = u;
      segs.erase(segs.begin() + static_cast<ptrdiff_t>(std::max(i, j)));
      for (size_t k = 1; k < segs.size();)  // neighbours that now run the same columns: one segment
        if (segs[k].kw0 == segs[k - 1].kw0 && segs[k].kw1 == segs[k - 1].kw1) {
          segs[k - 1].ow1 = segs[k].ow1;
          segs.erase(segs.begin() + static_cast<ptrdiff_t>(k));
        } else {
          ++k;
        }
    }
    return segs;
  }

  // AMX, an input read in place: the tiles of segment g in output row oh (box's kernel rows) read pixels
  // (ih, iw) with iw maybe off the row. A segment narrower than T pixels takes a tile from row_tile_window's
  // column, whose pixels beside it read with the segment's taps: off the row they read the row before or after,
  // harmless (nothing of theirs is stored) inside the input, but before the first image or past the last one
  // the input needs guard pixels. Widens [*lo, *hi), the pixels read relative to the image's first (from 0,
  // H * W).
  static void window_reach(const ConvArgs& a, int64_t oh, const Box& box, const TapSeg& g, int64_t T, int64_t* lo,
                           int64_t* hi) {
    if (g.ow1 - g.ow0 >= T) return;  // its tiles lie within the segment, whose taps are valid (exact)
    const int64_t w = kernels::row_tile_window(g.ow0, g.ow1, T);
    for (int64_t kh = box.kh0; kh < box.kh1; ++kh)
      for (int64_t kw = box.kw0; kw < box.kw1; ++kw) {
        const int64_t ih = oh * a.SH - a.PH + kh * a.DH;
        const int64_t first = ih * a.W + w * a.SW - a.PW + kw * a.DW, last = first + (T - 1) * a.SW;
        *lo = std::min(*lo, first);
        *hi = std::max(*hi, last + 1);
      }
  }

  int64_t krow_, KH_, KW_, OW_, OH_, K_pad_, N_pad_;
  std::vector<TapSeg> segs_;
  std::vector<int> cls_;    // per output row and column segment: its box in boxes_, or -1 (the full kernel)
  std::vector<Box> boxes_;  // the boxes other than the full kernel
  std::vector<int32_t> sums_;  // per box, N_pad column sums of its taps' weight rows
  bool exact_ = false;
  int64_t guard_before_ = 0, guard_after_ = 0;
};

// Items are (image, output row group, column panel). Each item first writes the padded input rows its
// group reads (PaddedRows: quantized or copied, borders zero) into a thread-local slab, then runs the
// tile kernel on the slab while it is in L2, for each of its column panels. (Measured against one
// padded copy of the whole input before the convolution: the slab saves the copy's round trip through
// memory; halo rows are written twice, KH - 1 per group.) A group is at most ~8 passes (1024 pixels):
// the kernel overlaps each column pair's epilogue with the next pair's products, so the last pair of a
// call runs alone. Groups split each image evenly, at least 4 items per thread, and the item count is
// a multiple of the thread count when one is near (at::parallel_for hands each thread a contiguous
// range: 25 items on 2 threads left one thread idle for a whole item).
void conv_direct(const kernels::KernelSet& ks, const ConvArgs& a, DirectMode mode,
                 const kernels::ConvDirectParams& geometry, const at::Tensor& x_rows, float a_scale,
                 const at::Tensor& packed_w, const PackedHeader& h, const ConvEpilogue& epi, at::Tensor& out,
                 int64_t ldo, kernels::OutKind kind, kernels::Act act) {
  kernels::ConvDirectParams cp = geometry;
  kernels::Int8GemmParams& p = cp.gemm;
  const at::Tensor seg_w = cp.row_seg ? row_segment_weight(packed_w, h, a, cp.row_seg) : at::Tensor();
  const PackedHeader wh = cp.row_seg ? checked_header(seg_w, "int8_conv2d", "packed_w") : h;  // the weight run
  const uint8_t* const w_base = cp.row_seg ? seg_w.data_ptr<uint8_t>() : packed_w.data_ptr<uint8_t>();
  set_packed_weight(p, wh, w_base);
  set_conv_epilogue(p, epi, 0, a.Cout, kind, act);
  p.ldo = ldo;
  const PaddedRows rows(x_rows, a, a_scale, a.PH, a.PW, /*shift=*/!ks.signed_a);
  // An unpadded int8 input whose bytes the kernel can read as they are (VNNI flips s8 to u8 itself, AMX
  // reads s8, and tiles within output rows read nothing past the rows they need): no slab, the input is
  // read in place. (AMX, ResNet-50's 1x1 stride-2 downsample 256 -> 512 at 56 x 56, batch 8, int8 in/out:
  // 1.40x; the slab copied every input row, half of them never read.)
  // Tiles within output rows run tap boxes: the register tiles (row segments: whole kernel rows) and AMX's.
  const bool tiles = ks.conv_tile_rows < 16 || (!cp.virtual_width && !cp.row_seg);
  const PaddedTaps padded(ks, a, wh, w_base, cp.row_seg ? cp.row_seg : a.KW * a.C,
                          cp.row_seg || cp.virtual_width ? 0 : a.C, tiles,
                          std::max<int64_t>(3, ks.conv_tile_rows / 2));
  record_conv_padded_rows(padded.how());
  // An int8 input whose padding no tap reads (none, or every tap box exact) is read in place. With padding
  // (the register tiles only), each item's input starts at the image and x_origin places its first output row.
  // An fp32 input whose taps all lie in the image is quantized once, unpadded, and then read in place too: the
  // slabs would quantize mostly padding (a dilation-36 layer's rows are 104 pixels wide for 32 of the image) and
  // the halo rows of every group again. (DeepLabV3's 2048 -> 256 dilation 36 at 32 x 32, batch 1, fp32
  // channels_last in: 3.25 -> 1.61 ms, AMD Zen 4; torch.ao with its quantize and dequantize 2.0 ms.)
  // AMX's tiles of a segment narrower than 16 pixels may read a few pixels before the first image or past the
  // last: such an input is copied once with guard bytes around it (DeepLabV3's dilation 24 at 32 x 32: 7 pixels
  // past the last row).
  const bool exact = tiles && !cp.virtual_width && !cp.row_seg && padded.exact();
  const int64_t guard = exact ? padded.guard_before() : 0;
  const at::Tensor x_in =
      exact && (x_rows.scalar_type() != at::kChar || guard > 0 || padded.guard_after() > 0)
          ? quantized_input(x_rows, a, a_scale, /*shift=*/false, guard, padded.guard_after()).view(at::kChar)
          : x_rows;
  const bool int8_rows = !cp.virtual_width && !cp.row_seg && x_in.scalar_type() == at::kChar;
  const bool in_place = int8_rows && a.PH == 0 && a.PW == 0;
  const bool in_place_padded = int8_rows && !in_place && exact;
  const bool no_slab = in_place || in_place_padded;
  const int64_t threads = at::get_num_threads(), N_pad = kernels::round_up(h.N, kernels::kPackNB);
  const int64_t max_group = std::max<int64_t>(1, 8 * ks.m_chunk / a.OW);
  const int64_t full_panels = (N_pad + ks.n_panel - 1) / ks.n_panel;
  const int64_t reach = a.DH * (a.KH - 1) + 1;
  // Items a thread: 4, or on AMX 2 where each group's slab would hold more halo rows (the kernel's reach past
  // its own stride rows, built again by the group below) than rows of its own: the tiles outrun the slab's
  // copy. In-process A/B on AMX (2 threads, batch 1, int8 / fp32 in): DeepLabV3's 2048 -> 256 dilation 12 at
  // 32 x 32 1.11-1.18x / 1.24-1.29x, 512 -> 512 dilation 4 1.05x / 1.04x, ResNet-50's 256 -> 256 3x3 at
  // 14 x 14 1.09x / 1.17x (1 item a thread: 1.06x / 1.27x and 1.07x / 1.08x). The register tiles (AVX-512
  // VNNI on the same machine): 0.97-1.03x, so they keep 4.
  const int64_t groups_at_4 = std::max<int64_t>(1, (4 * threads + a.N * full_panels - 1) / (a.N * full_panels));
  const int64_t per_thread =
      ks.conv_tile_rows >= 16 && !no_slab && reach - a.SH > a.OH / groups_at_4 * a.SH ? 2 : 4;
  int64_t per_image = std::max((a.OH + max_group - 1) / max_group,
                               (per_thread * threads + a.N * full_panels - 1) / (a.N * full_panels));
  per_image = std::min(per_image, a.OH);
  per_image = even_row_groups(per_image, a, threads);
  const int64_t items = a.N * per_image;
  const int64_t n_panel = panel_width(ks, N_pad, items);
  const int64_t panels = (N_pad + n_panel - 1) / n_panel;
  // The most slab rows a group reads: its rows' stride rows plus the kernel's reach, plus the slack the
  // padded-width tiles may read past the last row.
  const int64_t max_rows = (a.OH + per_image - 1) / per_image;
  const int64_t slab_row = cp.Wp * a.C;
  // Stride planes: s * s planes of plane_rows rows each (a group's rows and its taps' reach, kh / s).
  const bool planes = mode == DirectMode::StridePlanes;
  const int64_t s = a.SH, plane_reach = (a.KH - 1) / s;
  if (planes) cp.plane_bytes = (max_rows + plane_reach) * slab_row;
  // (A row segment reads row_seg - KW * C bytes past its kernel row's last tap.)
  const int64_t slack = (cp.virtual_width ? kernels::conv_direct_slack_bytes(cp) : 0) +
                        (cp.row_seg ? cp.row_seg - a.KW * a.C : 0);
  const int64_t slab_bytes =
      (planes ? s * s * cp.plane_bytes : ((max_rows - 1) * a.SH + reach) * slab_row) + slack;
  const int64_t elem = kind == kernels::OutKind::Int8 ? 1 : 4;
  if (in_place_padded) {
    cp.Wp = a.W;
    cp.Hp = a.H;
    record_conv_direct_mode("rows_in_place");
  }
  at::parallel_for(0, items * panels, 1, [&](int64_t b, int64_t e) {
    const at::Tensor slab_t = no_slab ? at::Tensor() : at::empty({slab_bytes}, x_rows.options().dtype(at::kByte));
    uint8_t* const slab = no_slab ? nullptr : slab_t.data_ptr<uint8_t>();
    int64_t built = -1;  // which item the slab holds
    for (int64_t it = b; it < e; ++it) {
      const int64_t item = it / panels, n = item / per_image, g = item % per_image;
      const int64_t r0 = g * a.OH / per_image, r1 = (g + 1) * a.OH / per_image;
      const int64_t hp0 = r0 * a.SH, hp_rows = planes ? r1 - r0 + plane_reach : (r1 - r0 - 1) * a.SH + reach;
      if (planes && built != item) {
        // Plane (py, px) row i is padded row hp0 + s * i + py; the rows past hp_rows (a smaller group's) and the
        // slack are zero, as below.
        for (int64_t py = 0; py < s; ++py) {
          uint8_t* plane = slab + py * s * cp.plane_bytes;
          for (int64_t i = 0; i < hp_rows; ++i)
            rows.write_planes(n, hp0 + s * i + py, plane + i * slab_row, cp.plane_bytes, s, cp.Wp);
          for (int64_t px = 0; px < s; ++px)
            std::memset(plane + px * cp.plane_bytes + hp_rows * slab_row, rows.zero(),
                        static_cast<size_t>(cp.plane_bytes - hp_rows * slab_row));
        }
        std::memset(slab + s * s * cp.plane_bytes, rows.zero(), static_cast<size_t>(slack));
        built = item;
      } else if (!no_slab && built != item) {
        for (int64_t r = 0; r < hp_rows; ++r) rows.write(n, hp0 + r, slab + r * slab_row);
        std::memset(slab + hp_rows * slab_row, rows.zero(), static_cast<size_t>(slab_bytes - hp_rows * slab_row));
        built = item;
      }
      // The slab (or the input from padded row hp0 of image n) as one image of r1 - r0 output rows,
      // writing output rows (n, r0 ...).
      kernels::ConvDirectParams ci = cp;
      ci.signed_x = no_slab;
      if (in_place_padded) {
        ci.x = x_in.data_ptr<int8_t>() + guard + n * a.H * a.W * a.C;
        ci.x_origin = ((hp0 - a.PH) * a.W - a.PW) * a.C;
      } else {
        ci.x = in_place ? x_in.data_ptr<int8_t>() + (n * cp.Hp + hp0) * slab_row
                        : reinterpret_cast<const int8_t*>(slab);
        ci.Hp = hp_rows;
      }
      ci.OH = r1 - r0;
      ci.gemm.M = (r1 - r0) * a.OW;
      ci.gemm.out = static_cast<char*>(out.data_ptr()) + (n * a.OH + r0) * a.OW * ldo * elem;
      const int64_t n0 = (it % panels) * n_panel;
      if (padded.active())
        padded.run_direct(ks, ci, a, r0, r1, n0, std::min(N_pad, n0 + n_panel), a.OW * ldo * elem);
      else
        ks.conv_direct(ci, 0, r1 - r0, n0, std::min(N_pad, n0 + n_panel));
    }
  });
}

// A depthwise convolution of an fp32 input, by items of (image, output row group): each item quantizes the
// input rows its group reads into a per-thread slab (L2-sized) and runs the depthwise kernel on the slab as
// an image of its own (its first row is input row lo, so the padding above shrinks by lo - r0 * SH). This
// replaces a whole quantized copy of the input, written and read back by a second pass. Groups: at least
// 2 per thread (fewer, larger groups quantize fewer halo rows twice: KH - 1 per group).
void depthwise_by_rows(const kernels::KernelSet& ks, const kernels::DwConvParams& p, const ConvArgs& a,
                       const QuantizedRows& rows) {
  const int64_t threads = at::get_num_threads(), elem = p.out_kind == kernels::OutKind::Int8 ? 1 : 4;
  const int64_t per_image = std::min(a.OH, std::max<int64_t>(1, (2 * threads + a.N - 1) / a.N));
  const int64_t reach = (a.KH - 1) * a.DH + 1, max_rows = (a.OH + per_image - 1) / per_image;
  const int64_t slab_rows = std::min(a.H, (max_rows - 1) * a.SH + reach);
  at::parallel_for(0, a.N * per_image, 1, [&](int64_t b, int64_t e) {
    const at::Tensor slab_t = at::empty({std::max<int64_t>(1, slab_rows * a.W * a.C)}, at::dtype(at::kByte));
    uint8_t* const slab = slab_t.data_ptr<uint8_t>();
    for (int64_t item = b; item < e; ++item) {
      const int64_t n = item / per_image, g = item % per_image;
      const int64_t r0 = g * a.OH / per_image, r1 = (g + 1) * a.OH / per_image;
      const int64_t lo = std::clamp<int64_t>(r0 * a.SH - a.PH, 0, a.H);
      const int64_t hi = std::clamp<int64_t>((r1 - 1) * a.SH - a.PH + reach, lo, a.H);
      if (hi > lo) rows.write((n * a.H + lo) * a.W, (n * a.H + hi) * a.W, slab, a.C);
      kernels::DwConvParams q = p;
      q.N = 1;
      q.H = hi - lo;
      q.PH = a.PH + lo - r0 * a.SH;
      q.OH = r1 - r0;
      q.x = reinterpret_cast<const int8_t*>(slab);
      q.out = static_cast<char*>(p.out) + (n * a.OH + r0) * a.OW * a.C * elem;
      ks.dwconv(q, 0, (r1 - r0) * a.OW);
    }
  });
}

// The narrow-group convolution (KernelSet::gconv, GroupConvParams): its operands, rebuilt per call from
// the packed per-group weights (4.6 KB at ResNeXt-50's first stage, 295 KB at its last).
// L = lanes (KernelSet::gconv_lanes) output channels a block.
struct GroupConvPlan {
  at::Tensor w;       // [blocks][taps][cin_g / 4][L][4] int8
  at::Tensor idx;     // [blocks][L] int32: each lane's dword in its block's window of 4 L bytes
  at::Tensor off;     // [blocks] int32: the window's first input channel
  at::Tensor colsum;  // [blocks * L] int32: sum of each output channel's weights (0 past Cout)
  bool one_group_blocks = true;
  bool no_min128 = true, s7 = true;  // every group's weight has its pack flag (the AVX2 steps)
};

// Whether the narrow-group kernel serves: whole 4-channel k steps within a group, each L-lane block's
// groups within one window of 4 L bytes ((last group - first group) * Cin/groups + 4 <= 4 L), and groups of
// fewer than 64 output channels. From 64 on, a group fills the GEMM kernels' 64-column register tile
// and the gathered rows run as fast (AMD Zen 5, 2 threads, batch 8, 3x3: 2 groups of 64 at 28 x 28,
// 1.31-1.41 ms against 1.36-1.59 here; 4 groups of 64, 2.64-2.84 against 2.69-2.90), while groups of
// 4, 8 and 16 channels ran 23x, 10x and 3.5x faster here than there.
bool group_conv_fits(const ConvArgs& a, int64_t lanes) {
  const int64_t cin_g = a.C / a.groups, cout_g = a.Cout / a.groups;
  constexpr int64_t kGemmTileColumns = 64;
  if (a.groups == 1 || cin_g % 4 != 0 || cout_g >= kGemmTileColumns) return false;
  for (int64_t o = 0; o < a.Cout; o += lanes) {
    const int64_t g0 = o / cout_g, g1 = (std::min(o + lanes, a.Cout) - 1) / cout_g;
    if ((g1 - g0) * cin_g + 4 > 4 * lanes) return false;
  }
  return true;
}

// Read straight from each group's packed GEMM weight (n16k4: the 4 bytes of output n at k-quad q are one
// dword) and its stored column sums: one dword copy per lane, tap and step (ResNeXt-50's 1024-channel layer:
// 74K), no unpacking.
GroupConvPlan group_conv_plan(const at::Tensor& packed_w, const std::vector<PackedHeader>& headers,
                              const ConvArgs& a, int64_t lanes) {
  const int64_t cin_g = a.C / a.groups, cout_g = a.Cout / a.groups, taps = a.KH * a.KW;
  const int64_t steps = cin_g / 4, blocks = (a.Cout + lanes - 1) / lanes, L = lanes;
  GroupConvPlan pl;
  pl.w = at::zeros({blocks * taps * steps * L * 4}, at::dtype(at::kChar));
  pl.idx = at::zeros({blocks * L}, at::dtype(at::kInt));
  pl.off = at::empty({blocks}, at::dtype(at::kInt));
  pl.colsum = at::zeros({blocks * L}, at::dtype(at::kInt));
  int32_t* w = reinterpret_cast<int32_t*>(pl.w.data_ptr<int8_t>());
  int32_t *idx = pl.idx.data_ptr<int32_t>(), *off = pl.off.data_ptr<int32_t>(), *cs = pl.colsum.data_ptr<int32_t>();
  const uint8_t* base = packed_w.data_ptr<uint8_t>();
  for (const PackedHeader& h : headers) {
    pl.no_min128 = pl.no_min128 && kernels::packed_no_min128(h);
    pl.s7 = pl.s7 && kernels::packed_s7(h);
  }
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t g0 = L * b / cout_g;
    off[b] = static_cast<int32_t>(g0 * cin_g);
    for (int64_t j = 0; j < L && L * b + j < a.Cout; ++j) {
      const int64_t o = L * b + j, g = o / cout_g, n = o % cout_g;
      idx[L * b + j] = static_cast<int32_t>((g - g0) * cin_g / 4);
      pl.one_group_blocks = pl.one_group_blocks && g == g0;
      const PackedHeader& h = headers[static_cast<size_t>(g)];
      const uint8_t* buf = base + g * packed_w.size(1);
      int32_t sum;
      std::memcpy(&sum, buf + h.colsum_offset + n * 4, 4);
      cs[o] = sum;
      // k = t * cin_g + 4 * s (taps ordered (kh, kw), channels fastest): k-quad t * steps + s
      const uint8_t* col =
          buf + h.data_offset + (n / kernels::kPackNB) * (h.K_pad / 4) * 64 + (n % kernels::kPackNB) * 4;
      for (int64_t q = 0; q < taps * steps; ++q) std::memcpy(w + (b * taps * steps + q) * L + j, col + q * 64, 4);
    }
  }
  return pl;
}

// Items are (image, output row group), as in conv_direct: each writes the padded input rows its group
// reads into a thread-local slab (quantized or copied; u8 with borders 128, or s8 with borders 0 where
// the kernel set reads s8) and runs the kernel on it.
// Groups keep the slab within about 256 KB (L2) and give each thread at least 4 items.
void conv_grouped(const kernels::KernelSet& ks, const ConvArgs& a, const at::Tensor& x_rows, float a_scale,
                  const GroupConvPlan& plan, const ConvEpilogue& epi, at::Tensor& out, int64_t ldo,
                  kernels::OutKind kind, kernels::Act act) {
  kernels::GroupConvParams gp;
  kernels::Int8GemmParams& p = gp.gemm;
  p.N = a.Cout;
  p.b_colsum = plan.colsum.data_ptr<int32_t>();
  p.b_no_min128 = plan.no_min128;
  p.b_s7 = plan.s7;
  record_gemm_step(ks, &p);
  set_conv_epilogue(p, epi, 0, a.Cout, kind, act);
  p.ldo = ldo;
  gp.Wp = a.W + 2 * a.PW;
  gp.C = a.C;
  gp.OW = a.OW;
  gp.KH = a.KH; gp.KW = a.KW; gp.SH = a.SH; gp.SW = a.SW; gp.DH = a.DH; gp.DW = a.DW;
  gp.cin_g = a.C / a.groups;
  gp.blocks = plan.off.size(0);
  gp.w = plan.w.data_ptr<int8_t>();
  gp.lane_idx = plan.idx.data_ptr<int32_t>();
  gp.block_off = plan.off.data_ptr<int32_t>();
  gp.one_group_blocks = plan.one_group_blocks;
  const PaddedRows rows(x_rows, a, a_scale, a.PH, a.PW, /*shift=*/!ks.gconv_signed_x);
  const int64_t threads = at::get_num_threads(), slab_row = gp.Wp * a.C, reach = a.DH * (a.KH - 1) + 1;
  constexpr int64_t kSlabTarget = 256 << 10, kSlack = 64;
  const int64_t max_group = std::max<int64_t>(1, (kSlabTarget / slab_row - reach) / a.SH + 1);
  int64_t per_image = std::min(a.OH, std::max((a.OH + max_group - 1) / max_group, (4 * threads + a.N - 1) / a.N));
  per_image = even_row_groups(per_image, a, threads);
  const int64_t max_rows = (a.OH + per_image - 1) / per_image;
  const int64_t slab_bytes = ((max_rows - 1) * a.SH + reach) * slab_row + kSlack;
  const int64_t elem = kind == kernels::OutKind::Int8 ? 1 : 4;
  at::parallel_for(0, a.N * per_image, 1, [&](int64_t b, int64_t e) {
    const at::Tensor slab_t = at::empty({slab_bytes}, x_rows.options().dtype(at::kByte));
    uint8_t* const slab = slab_t.data_ptr<uint8_t>();
    for (int64_t item = b; item < e; ++item) {
      const int64_t n = item / per_image, g = item % per_image;
      const int64_t r0 = g * a.OH / per_image, r1 = (g + 1) * a.OH / per_image;
      const int64_t hp0 = r0 * a.SH, hp_rows = (r1 - r0 - 1) * a.SH + reach;
      for (int64_t r = 0; r < hp_rows; ++r) rows.write(n, hp0 + r, slab + r * slab_row);
      std::memset(slab + hp_rows * slab_row, rows.zero(), static_cast<size_t>(slab_bytes - hp_rows * slab_row));
      kernels::GroupConvParams gi = gp;
      gi.x = slab;
      gi.gemm.out = static_cast<char*>(out.data_ptr()) + (n * a.OH + r0) * a.OW * ldo * elem;
      ks.gconv(gi, 0, r1 - r0);
    }
  });
}

// The input as channels-last, and *a_scale, the activations' one scale (static x_scale, or amax / 127: NaN
// when x holds NaN/Inf, so the output is NaN). The input is returned as it is, as an fp32 copy, or, for an
// NCHW fp32 input on a kernel set with quantize_planes, as the int8 NHWC tensor the fp32 paths would quantize
// it to, made in one pass: the int8-input paths then compute the same bytes as the fp32 ones would, without
// the fp32 channels-last copy.
at::Tensor nhwc_input(const at::Tensor& x, std::optional<double> x_scale, float* a_scale_out) {
  const bool planes_in = x.scalar_type() == at::kFloat && x.is_contiguous() &&
                         !x.is_contiguous(at::MemoryFormat::ChannelsLast);
  const kernels::KernelSet* ks = planes_in ? &kernels_for(Family::QuantizePlanes) : nullptr;
  const bool planes = ks && ks->quantize_planes;
  if (!planes) clear_kernel(Family::QuantizePlanes);
  const at::Tensor xs = planes ? x : channels_last(x);  // dense either way: tensor_absmax reads it whole
  const float a_scale = x_scale ? static_cast<float>(*x_scale) : tensor_absmax(xs) / 127.0f;
  *a_scale_out = a_scale;
  if (!planes) return xs;
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  at::Tensor q = output_empty(x.sizes(), at::kChar, at::MemoryFormat::ChannelsLast);
  if (!(a_scale > 0.0f && std::isfinite(a_scale))) {  // all zero, or NaN/Inf seen: zeros (as QuantizedRows)
    q.zero_();
    return q;
  }
  kernels::QuantizePlanesParams p;
  p.C = C;
  p.HW = HW;
  p.inv = 1.0f / a_scale;
  const float* const xd = x.data_ptr<float>();
  int8_t* const qd = q.data_ptr<int8_t>();
  // Items of up to 1024 pixels of one image (whole 16-pixel blocks but the image's last), at least ~16K values
  // per thread hand-off.
  constexpr int64_t kPixels = 1024;
  const int64_t per_image = (HW + kPixels - 1) / kPixels;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / (kPixels * C));
  at::parallel_for(0, N * per_image, grain, [&](int64_t b, int64_t e) {
    for (int64_t it = b; it < e; ++it) {
      const int64_t n = it / per_image, p0 = it % per_image * kPixels;
      kernels::QuantizePlanesParams pn = p;
      pn.x = xd + n * C * HW;
      pn.out = qd + n * C * HW;
      ks->quantize_planes(pn, p0, std::min(HW, p0 + kPixels));
    }
  });
  return q;
}

// Elements between consecutive pixels of t ([N, C, H, W] read as N * H * W pixel rows) when its channels are
// contiguous and its pixels evenly spaced: a channels_last tensor (C), or a channel slice of one (a DenseNet's
// concatenated features, a prefix of a wider buffer). -1 for any other layout.
int64_t pixel_stride(const at::Tensor& t) {
  if (t.size(1) > 1 && t.stride(1) != 1) return -1;
  int64_t ld = -1, expect = 0;
  for (const int d : {3, 2, 0}) {
    if (t.size(d) == 1) continue;
    if (ld < 0) ld = expect = t.stride(d);
    if (t.stride(d) != expect) return -1;
    expect *= t.size(d);
  }
  if (ld < 0) ld = t.size(1);  // at most one pixel
  return ld >= t.size(1) ? ld : -1;
}

// int8_conv2d, writing into `into` where given (int8_conv2d_into) and into a fresh channels_last tensor else.
at::Tensor conv2d_impl(const at::Tensor& x, const at::Tensor& packed_w, const at::Tensor& w_scale,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                       std::optional<double> x_scale, std::optional<double> out_scale, const std::string& activation,
                       const at::Tensor* into) {
  const char* op = into ? "int8_conv2d_into" : "int8_conv2d";
  check_cpu(x, op, "x");
  check_cpu(w_scale, op, "w_scale");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kChar,
              "fastinfer.int8_conv2d: x must be float32 (quantized here) or int8 (with x_scale), got ", x.scalar_type());
  TORCH_CHECK(w_scale.dim() == 1, "fastinfer.int8_conv2d: w_scale must be 1-D [Cout], got shape ", w_scale.sizes());
  const ConvArgs a = conv_args(x, w_scale.size(0), kernel_size, stride, padding, dilation, groups);
  const kernels::Act act = parse_act(activation, op);
  const at::Tensor ws = channel_vector(w_scale, a.Cout, op, "w_scale", false);
  const at::Tensor bi = bias ? channel_vector(*bias, a.Cout, op, "bias", true) : at::Tensor();
  if (x.scalar_type() == at::kChar)
    TORCH_CHECK(x_scale.has_value(), "fastinfer.int8_conv2d: an int8 x needs its x_scale");
  check_scale(x_scale, op, "x_scale");
  check_scale(out_scale, op, "out_scale");
  const bool dw = is_depthwise(groups, a.C, a.Cout);
  const int64_t cin_g = a.C / groups, cout_g = a.Cout / groups, K = a.KH * a.KW * cin_g;
  if (dw) {
    TORCH_CHECK(packed_w.scalar_type() == at::kChar && packed_w.dim() == 2 && packed_w.size(0) == a.KH * a.KW &&
                packed_w.size(1) == a.C && packed_w.is_contiguous(),
                "fastinfer.int8_conv2d: packed_w for this depthwise conv must be int8 [KH*KW=", a.KH * a.KW, ", C=",
                a.C, "] from pack_conv_weight(weight, groups=", groups, "), got ", packed_w.scalar_type(), " ",
                packed_w.sizes());
  }
  std::vector<PackedHeader> headers;
  if (!dw) {
    check_cpu(packed_w, op, "packed_w");
    TORCH_CHECK(packed_w.scalar_type() == at::kByte && packed_w.dim() == 2 && packed_w.size(0) == groups &&
                    packed_w.is_contiguous(),
                "fastinfer.int8_conv2d: packed_w must be a contiguous uint8 [groups=", groups,
                ", bytes] from pack_conv_weight, got ", packed_w.scalar_type(), " ", packed_w.sizes());
    const int64_t row_bytes = packed_w.size(1);
    const uint8_t* const rows = packed_w.data_ptr<uint8_t>();
    for (int64_t g = 0; g < groups; ++g) {
      const PackedHeader h = checked_header(rows + g * row_bytes, row_bytes, op, "packed_w");
      TORCH_CHECK(h.N == cout_g && h.K == K, "fastinfer.int8_conv2d: packed_w holds a [", h.N, ", ", h.K,
                  "] weight per group, expected [", cout_g, ", ", K, "] (Cout/groups, KH*KW*Cin/groups, with Cout = ",
                  a.Cout, " the length of w_scale)");
      headers.push_back(h);
    }
  }
  const auto out_dtype = out_scale ? at::kChar : at::kFloat;
  // The output's pixels lie ldo elements apart: Cout in a fresh output, more in a channel slice of a wider buffer
  // (a concatenation's: fastinfer.nn.concat), whose other channels the kernels leave as they are.
  at::Tensor out;
  int64_t ldo = a.Cout;
  if (into) {
    out = *into;
    check_cpu(out, op, "out");
    check_dtype(out, out_dtype, op, "out");
    TORCH_CHECK(out.dim() == 4 && out.size(0) == a.N && out.size(1) == a.Cout && out.size(2) == a.OH &&
                    out.size(3) == a.OW,
                "fastinfer.int8_conv2d_into: out must be [N=", a.N, ", Cout=", a.Cout, ", OH=", a.OH, ", OW=", a.OW,
                "] (the conv's output shape), got ", out.sizes());
    ldo = pixel_stride(out);
    TORCH_CHECK(ldo >= 0, "fastinfer.int8_conv2d_into: out must hold its channels contiguously with evenly spaced "
                "pixels (channels_last, or a channel slice of a channels_last tensor), got strides ", out.strides());
    TORCH_CHECK(!out.is_alias_of(x), "fastinfer.int8_conv2d_into: out shares memory with x");
  } else {
    out = output_empty({a.N, a.Cout, a.OH, a.OW}, out_dtype, at::MemoryFormat::ChannelsLast);
  }
  record_gemm_step(kernels::kernels_ref(), nullptr);  // set below where one weight's GEMM step serves
  record_conv_direct_mode("");                        // set below where a direct kernel serves
  record_conv_padded_rows("");
  if (a.N == 0 || a.OH == 0 || a.OW == 0) return out;

  // 1) activations -> int8 NHWC, one scale for the whole tensor (static x_scale, or amax / 127).
  float a_scale;
  const at::Tensor xs = nhwc_input(x, x_scale, &a_scale);
  const at::Tensor x_rows = xs.permute({0, 2, 3, 1}).reshape({a.N * a.H * a.W, a.C});  // NHWC rows, no copy
  const kernels::OutKind kind = out_scale ? kernels::OutKind::Int8 : kernels::OutKind::Float32;
  ConvEpilogue epi = fold_epilogue(a_scale, ws, bi, out_scale, act);
  epi.stream_out = kind == kernels::OutKind::Float32 && out.nbytes() >= static_cast<size_t>(kConvStreamOutBytes);
  record_conv_store(epi.stream_out);
  if (!dw && a.groups > 1) {  // 2a) narrow groups: all channels of a pixel at once
    const kernels::KernelSet& gk = kernels_for(Family::GroupConv);
    // AVX2's step is exact only without -128 in the weight (every group's header says whether).
    const bool exact = !gk.conv_direct_no_min128 ||
                       std::all_of(headers.begin(), headers.end(), [](const PackedHeader& h) {
                         return kernels::packed_no_min128(h);
                       });
    if (gk.gconv && exact && group_conv_fits(a, gk.gconv_lanes)) {
      clear_kernel(Family::ConvDirect);
      conv_grouped(gk, a, x_rows, a_scale, group_conv_plan(packed_w, headers, a, gk.gconv_lanes), epi, out, ldo,
                   kind, act);
      return out;
    }
  }
  clear_kernel(Family::GroupConv);
  const int64_t M = a.N * a.OH * a.OW;
  // The GEMM path's kernel set fixes the operand: u8 = s8 + 128 for VNNI, s8 for AMX (signed_a); the
  // depthwise kernel multiplies s8 directly.
  const kernels::KernelSet* gks = dw ? nullptr : &gemm_kernels(M);
  const bool shift = !dw && !gks->signed_a;
  const bool plain_1x1 = a.KH == 1 && a.KW == 1 && a.SH == 1 && a.SW == 1 && a.PH == 0 && a.PW == 0;
  const bool w_no_min128 = !headers.empty() && kernels::packed_no_min128(headers[0]);
  const bool one_row = one_row_images(gks, a, plain_1x1);
  const ConvArgs da = one_row ? as_one_row(a) : a;  // the direct convolution's geometry
  const DirectMode mode = direct_mode(gks, da, plain_1x1, w_no_min128);
  const bool tiles_direct = mode != DirectMode::None;
  if (gks && a.groups == 1) {  // the GEMM kernels' step for this weight (AVX2: its pack flags)
    kernels::Int8GemmParams step;
    set_packed_weight(step, headers[0], packed_w.data_ptr<uint8_t>());
    record_gemm_step(*gks, &step);
  }
  if (tiles_direct) {  // 2b) direct convolution: the padded input is written per row group
    record_kernel(Family::ConvDirect, isa_of(*gks));
    record_conv_direct_mode(one_row ? "one_row_images" : direct_mode_name(mode));
    conv_direct(*gks, da, mode, direct_geometry(gks, da, mode), x_rows, a_scale, packed_w, headers[0], epi, out, ldo,
                kind, act);
    return out;
  }
  clear_kernel(Family::ConvDirect);
  // A plain 1x1 convolution of an fp32 input quantizes each row chunk right before its GEMM (below):
  // no whole quantized copy of the input.
  const int64_t K_pad = kernels::round_up(K, kernels::kPackKB);
  const bool direct = plain_1x1 && groups == 1 && K == K_pad;  // a 1x1 conv is a GEMM on the input rows themselves
  const bool quantize_chunks = direct && x_rows.scalar_type() == at::kFloat;
  // A depthwise convolution of an fp32 input quantizes per row group (depthwise_by_rows), not up front.
  const bool dw_rows = dw && x_rows.scalar_type() == at::kFloat;
  const at::Tensor xq = quantize_chunks || dw_rows ? at::Tensor() : quantized_input(x_rows, a, a_scale, shift);

  if (dw) {  // 2c) depthwise
    kernels::DwConvParams p;
    p.N = a.N; p.H = a.H; p.W = a.W; p.C = a.C; p.OH = a.OH; p.OW = a.OW;
    p.KH = a.KH; p.KW = a.KW; p.SH = a.SH; p.SW = a.SW; p.PH = a.PH; p.PW = a.PW; p.DH = a.DH; p.DW = a.DW;
    p.w = packed_w.data_ptr<int8_t>();
    p.a_scale = kUnitScale;
    p.w_scale = epi.scale;
    p.bias = epi.bias;
    p.out_kind = kind;
    p.act = act;
    p.out_inv_scale = epi.out_inv;
    p.folded = epi.finite;
    p.stream_out = epi.stream_out;
    // The depthwise kernels write pixels Cout apart: a channel slice of a wider buffer takes a copy.
    const at::Tensor dst =
        ldo == a.Cout ? out : output_empty({a.N, a.Cout, a.OH, a.OW}, out_dtype, at::MemoryFormat::ChannelsLast);
    p.out = dst.data_ptr();
    const auto& ks = kernels_for(Family::DwConv);
    record_dwconv_path(ks, p);
    if (dw_rows) {
      depthwise_by_rows(ks, p, a, QuantizedRows(x_rows, a_scale, /*shift=*/false));
    } else {
      p.x = reinterpret_cast<const int8_t*>(xq.data_ptr<uint8_t>());
      const int64_t grain = std::max<int64_t>(1, kMinMacsPerTask / std::max<int64_t>(1, a.C * a.KH * a.KW));
      at::parallel_for(0, M, grain, [&](int64_t b, int64_t e) { ks.dwconv(p, b, e); });
    }
    if (!dst.is_same(out)) out.copy_(dst);
    return out;
  }

  const auto& ks = *gks;

  // 2d) implicit GEMM: per (group, row chunk), gather the chunk's rows, run every column panel.
  kernels::ConvGeometry geo{a.N, a.H, a.W, a.C, a.OH, a.OW, a.KH, a.KW, a.SH, a.SW, a.PH, a.PW, a.DH, a.DW, cin_g};
  const int64_t N_pad = kernels::round_up(cout_g, kernels::kPackNB);
  const int64_t threads = at::get_num_threads();
  // Items are (group, row chunk, column panel), chunk-major: a thread gathers a chunk's rows once
  // and runs its consecutive panels on them. Small images get smaller chunks (down to 4 register
  // tiles) and then narrower panels, so that every thread has several items (at::parallel_for hands
  // each thread one contiguous range).
  // A plain 1x1 convolution gathers nothing (its rows are read in place, or quantized into a chunk buffer),
  // so its items may span several of the kernel's passes: the kernel's work per call (tile configuration,
  // the K tail's weight tiles, each column block's epilogue vectors) then spreads over more rows. Up to
  // kDirectRows rows an item in place, quantized chunks of at most kQuantizedChunkBytes, and at least 8
  // items a thread (with fewer, the column panels' unequal widths left a thread idle: 0.91x at 96 -> 576).
  // Measured against items of one pass (AMX, 2 threads, batch 8, alternated in one process; MobileNetV2's
  // 1x1 layers): int8 in/out 32 -> 16 at 112 x 112 1.59x, 96 -> 24 at 56 x 56 1.25x, 16 -> 96 at 112 x 112
  // 1.18x, 32 -> 192 and 192 -> 32 at 28 x 28 1.18-1.19x, ResNet-50's 64 -> 256 at 56 x 56 1.05x, 256 -> 64
  // 1.01x, larger K 0.99-1.00x; batch 1 1.07-1.42x; fp32 in 0.99-1.30x. MobileNetV2 at batch 8: 1.04x.
  constexpr int64_t kDirectRows = 1024, kQuantizedChunkBytes = 64 << 10;
  int64_t rows = ks.m_chunk;
  if (direct) {
    const int64_t cap = quantize_chunks ? std::min(kDirectRows, kQuantizedChunkBytes / K_pad) : kDirectRows;
    rows = std::max(rows, std::min(cap, M / (8 * threads)));
  }
  const int64_t full_panels = (N_pad + ks.n_panel - 1) / ks.n_panel;
  while (rows > std::max<int64_t>(24, 4 * ks.m_tile) && groups * ((M + rows - 1) / rows) * full_panels < 4 * threads) rows /= 2;
  // Even chunks: the fewest chunks of at most `rows`, their sizes whole register tiles (or AMX's 16-row
  // tiles) that differ by at most one tile; chunk c starts at chunk_start(c). 392 rows of l4 3x3 at
  // batch 8 on VNNI (6-row tiles): 78 x 4 + 80, not 84 x 4 + 56, which left one thread 13% more rows.
  const int64_t tile = std::min<int64_t>(ks.m_tile, 16), tiles = (M + tile - 1) / tile;
  const int64_t chunks = (M + rows - 1) / rows;
  rows = (tiles + chunks - 1) / chunks * tile;  // the largest chunk: the gather buffer's rows
  auto chunk_start = [&](int64_t c) { return std::min(M, tile * (c * tiles / chunks)); };
  int64_t n_panel = panel_width(ks, N_pad, groups * chunks);
  // An item count that is not a multiple of the thread count leaves a thread idle for an item (13 items
  // of s2 3x3 at batch 8 on 2 threads: 7 + 6): narrower panels (down to 64 columns) when they give one.
  for (int64_t w = n_panel; w >= 64; w = kernels::round_up(w / 2, 32)) {
    if ((groups * chunks * ((N_pad + w - 1) / w)) % threads == 0) {
      n_panel = w;
      break;
    }
    if (w == 64) break;
  }
  const int64_t panels = (N_pad + n_panel - 1) / n_panel;
  const int64_t ld = kernels::operand_stride(K_pad);  // gathered rows
  const QuantizedRows chunk_rows(x_rows, a_scale, shift);
  const int64_t macs_per_item = std::min(rows, M) * std::min(cout_g, n_panel) * K;
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerTask / std::max<int64_t>(1, macs_per_item));
  const int64_t elem = out_scale ? 1 : 4;
  std::optional<PaddedTaps> padded;  // one group's weight: AVX-512 VNNI's GEMM runs K ranges
  if (groups == 1 && !direct) {
    padded.emplace(ks, a, headers[0], packed_w.data_ptr<uint8_t>(), a.KW * cin_g, /*tap=*/0,
                   isa_of(ks) == Isa::Avx512Vnni, /*min_cols=*/0);
    record_conv_padded_rows(padded->how());
  }
  at::parallel_for(0, groups * chunks * panels, grain, [&](int64_t begin, int64_t end) {
    // The gathered rows: torch's allocator aligns them to 64 bytes, so every row of a tile load is
    // whole cache lines (a std::vector's 16-byte alignment split them, and zero-filled the buffer
    // first: measured 2x slower at l4 3x3, whose 7x7 output takes this path).
    const bool own_rows = !direct || quantize_chunks;
    const at::Tensor buf_t = own_rows ? at::empty({rows * ld}, x_rows.options().dtype(at::kByte)) : at::Tensor();
    uint8_t* const buf = own_rows ? buf_t.data_ptr<uint8_t>() : nullptr;
    int64_t gathered = -1;  // which (group, chunk) buf holds
    for (int64_t it = begin; it < end; ++it) {
      const int64_t panel = it % panels, gc = it / panels;
      const int64_t g = gc / chunks, m0 = chunk_start(gc % chunks), m1 = chunk_start(gc % chunks + 1);
      const PackedHeader& h = headers[g];
      kernels::Int8GemmParams p;
      set_packed_weight(p, h, packed_w.data_ptr<uint8_t>() + g * packed_w.size(1));  // N = cout_g, K as checked
      if (direct && !quantize_chunks) {
        p.a = xq.data_ptr<uint8_t>() + m0 * a.C;
        p.lda = a.C;
      } else {
        if (gathered != gc) {
          if (quantize_chunks)
            chunk_rows.write(m0, m1, buf, ld);
          else
            kernels::gather_conv_rows(geo, xq.data_ptr<uint8_t>(), g, m0, m1, buf, ld, K_pad, shift ? 128 : 0);
        }
        gathered = gc;
        p.a = buf;
        p.lda = ld;
      }
      p.M = m1 - m0;
      set_conv_epilogue(p, epi, g, cout_g, kind, act);
      p.out = static_cast<char*>(out.data_ptr()) + (m0 * ldo + g * cout_g) * elem;
      p.ldo = ldo;
      const int64_t n0 = panel * n_panel;
      if (padded && padded->active())
        padded->run_gemm(ks, p, m0, m1, n0, std::min(N_pad, n0 + n_panel), ldo * elem);
      else
        ks.int8_gemm(p, 0, m1 - m0, n0, std::min(N_pad, n0 + n_panel));
    }
  });
  return out;
}

}  // namespace

at::Tensor int8_conv2d(const at::Tensor& x, const at::Tensor& packed_w, const at::Tensor& w_scale,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                       std::optional<double> x_scale, std::optional<double> out_scale, const std::string& activation) {
  return conv2d_impl(x, packed_w, w_scale, bias, kernel_size, stride, padding, dilation, groups, x_scale, out_scale,
                     activation, nullptr);
}

void int8_conv2d_into(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed_w,
                      const at::Tensor& w_scale, const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      std::optional<double> x_scale, std::optional<double> out_scale, const std::string& activation) {
  conv2d_impl(x, packed_w, w_scale, bias, kernel_size, stride, padding, dilation, groups, x_scale, out_scale,
              activation, &out);
}

namespace {

at::Tensor int8_max_pool2d(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  check_cpu(x, "int8_max_pool2d", "x");
  check_dtype(x, at::kChar, "int8_max_pool2d", "x");
  const PoolArgs a = pool_args(x, kernel_size, stride, padding, dilation, ceil_mode);
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor out = output_empty({a.N, a.C, a.OH, a.OW}, x.scalar_type(), at::MemoryFormat::ChannelsLast);
  if (out.numel() == 0) return out;
  kernels::MaxPoolParams p;
  p.x = xc.data_ptr<int8_t>();
  p.out = out.data_ptr<int8_t>();
  p.N = a.N, p.H = a.H, p.W = a.W, p.C = a.C, p.OH = a.OH, p.OW = a.OW;
  p.KH = a.KH, p.KW = a.KW, p.SH = a.SH, p.SW = a.SW, p.PH = a.PH, p.PW = a.PW, p.DH = a.DH, p.DW = a.DW;
  const kernels::KernelSet& ks = kernels_for(Family::MaxPool);
  const kernels::MaxPoolFn fn = ks.max_pool ? ks.max_pool : kernels::max_pool_nhwc_s8;
  if (!ks.max_pool) record_kernel(Family::MaxPool, Isa::Ref);  // the portable kernel served
  const int64_t row_bytes = a.OW * a.C * a.KH * a.KW;  // about the work of one output row
  at::parallel_for(0, a.N * a.OH, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, row_bytes)),
                   [&](int64_t b, int64_t e) { fn(p, b, e); });
  return out;
}

// Average pooling of int8 activations at one scale (kernels::avg_pool_nhwc_s8): torch's avg_pool2d arguments
// (stride empty = kernel_size, as its schema), dilation 1.
at::Tensor int8_avg_pool2d(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                           std::optional<int64_t> divisor_override) {
  const char* op = "int8_avg_pool2d";
  check_cpu(x, op, "x");
  check_dtype(x, at::kChar, op, "x");
  const std::vector<int64_t> one{1, 1};
  const PoolArgs a = pool_args(x, kernel_size, stride.empty() ? kernel_size : stride, padding, one, ceil_mode, op);
  TORCH_CHECK(!divisor_override || *divisor_override > 0, "fastinfer.", op,
              ": divisor_override must be a positive integer (or None), got ", divisor_override.value_or(0));
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor out = output_empty({a.N, a.C, a.OH, a.OW}, at::kChar, at::MemoryFormat::ChannelsLast);
  if (out.numel() == 0) return out;
  kernels::AvgPoolParams p;
  p.x = xc.data_ptr<int8_t>();
  p.out = out.data_ptr<int8_t>();
  p.N = a.N, p.H = a.H, p.W = a.W, p.C = a.C, p.OH = a.OH, p.OW = a.OW;
  p.KH = a.KH, p.KW = a.KW, p.SH = a.SH, p.SW = a.SW, p.PH = a.PH, p.PW = a.PW;
  p.count_include_pad = count_include_pad;
  p.divisor_override = divisor_override.value_or(0);
  const kernels::KernelSet& ks = kernels_for(Family::AvgPool);
  const kernels::AvgPoolFn fn = ks.avg_pool ? ks.avg_pool : kernels::avg_pool_nhwc_s8;
  if (!ks.avg_pool) record_kernel(Family::AvgPool, Isa::Ref);  // the portable kernel served
  const int64_t row_bytes = a.OW * a.C * a.KH * a.KW;
  at::parallel_for(0, a.N * a.OH, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, row_bytes)),
                   [&](int64_t b, int64_t e) { fn(p, b, e); });
  return out;
}

}  // namespace

at::Tensor int8_add(const at::Tensor& a, const at::Tensor& b, std::optional<double> a_scale,
                    std::optional<double> b_scale, bool relu, std::optional<double> out_scale) {
  const char* op = "int8_add";
  check_cpu(a, op, "a");
  check_cpu(b, op, "b");
  const at::MemoryFormat fmt = add_operands(a, b, a_scale, b_scale, out_scale);
  const at::Tensor ac = a.contiguous(fmt), bc = b.contiguous(fmt);
  at::Tensor out = output_empty(a.sizes(), out_scale ? at::kChar : at::kFloat, fmt);
  kernels::AddParams p;
  p.a = ac.data_ptr();
  p.b = bc.data_ptr();
  p.a_int8 = a.scalar_type() == at::kChar;
  p.b_int8 = b.scalar_type() == at::kChar;
  p.a_scale = a_scale ? static_cast<float>(*a_scale) : 1.0f;
  p.b_scale = b_scale ? static_cast<float>(*b_scale) : 1.0f;
  p.relu = relu;
  p.out = out.data_ptr();
  p.out_int8 = out_scale.has_value();
  p.out_inv_scale = out_scale ? 1.0f / static_cast<float>(*out_scale) : 1.0f;
  const kernels::KernelSet& ks = kernels_for(Family::Add);
  const kernels::AddFn fn = ks.add_act ? ks.add_act : kernels::add_act;
  if (!ks.add_act) record_kernel(Family::Add, Isa::Ref);  // the portable kernel served
  record_add_path(ks.add_act ? &ks : nullptr, p);
  at::parallel_for(0, out.numel(), 1 << 16, [&](int64_t i0, int64_t i1) { fn(p, i0, i1); });
  return out;
}

namespace {

// An int8 NHWC activation of a squeeze-excitation op, checked; returned in channels_last memory.
at::Tensor gate_input(const at::Tensor& x, double x_scale, const char* op) {
  check_cpu(x, op, "x");
  TORCH_CHECK(x.scalar_type() == at::kChar, "fastinfer.", op, ": x must be int8 (an int8 activation, value = q * "
              "x_scale), got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 4, "fastinfer.", op, ": x must be 4-D [N, C, H, W] (int8, channels_last), got shape ",
              x.sizes());
  check_scale(x_scale, op, "x_scale");
  return x.contiguous(at::MemoryFormat::ChannelsLast);
}

kernels::GateParams gate_params(const at::Tensor& xc) {
  kernels::GateParams p;
  p.x = xc.data_ptr<int8_t>();
  p.N = xc.size(0), p.C = xc.size(1), p.P = xc.size(2) * xc.size(3);
  return p;
}

}  // namespace

// Global average pool of an int8 activation: [N, C, 1, 1] fp32, (float(sum of the int8 values) * x_scale) / (H * W)
// (the sum exact in int32, then two fp32 roundings).
at::Tensor int8_channel_mean(const at::Tensor& x, double x_scale) {
  const char* op = "int8_channel_mean";
  const at::Tensor xc = gate_input(x, x_scale, op);
  kernels::GateParams p = gate_params(xc);
  TORCH_CHECK(p.P > 0, "fastinfer.int8_channel_mean: x has no pixels (H * W == 0), got shape ", x.sizes());
  TORCH_CHECK(p.P <= (int64_t{1} << 24), "fastinfer.int8_channel_mean: x has ", p.P, " pixels an image; at most 2^24 "
              "(int32 sums of int8 values)");
  at::Tensor sums = at::empty({p.N, p.C}, x.options().dtype(at::kInt));
  p.sums = sums.data_ptr<int32_t>();
  const kernels::KernelSet& ks = kernels_for(Family::Gate);
  const kernels::GateFn fn = ks.gate_sum ? ks.gate_sum : kernels::channel_sum_s8;
  if (!ks.gate_sum) record_kernel(Family::Gate, Isa::Ref);
  at::parallel_for(0, kernels::gate_sum_items(p), 1, [&](int64_t i0, int64_t i1) { fn(p, i0, i1); });
  const float scale = static_cast<float>(x_scale), pixels = static_cast<float>(p.P);
  at::Tensor out = at::empty({p.N, p.C, 1, 1}, x.options().dtype(at::kFloat));
  const int32_t* s = p.sums;
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < p.N * p.C; ++i) o[i] = static_cast<float>(s[i]) * scale / pixels;
  return out;
}

// The gate's multiply on an int8 activation: v = float(x) * fl(x_scale * gate[n, c]), stored as fp32, or as int8
// requantized with out_scale (gate.h). gate: [N, C] or [N, C, 1, 1] float32.
at::Tensor int8_channel_scale(const at::Tensor& x, double x_scale, const at::Tensor& gate,
                              std::optional<double> out_scale) {
  const char* op = "int8_channel_scale";
  const at::Tensor xc = gate_input(x, x_scale, op);
  check_cpu(gate, op, "gate");
  TORCH_CHECK(gate.scalar_type() == at::kFloat, "fastinfer.int8_channel_scale: gate must be float32, got ",
              gate.scalar_type());
  check_scale(out_scale, op, "out_scale");
  kernels::GateParams p = gate_params(xc);
  TORCH_CHECK((gate.dim() == 2 || (gate.dim() == 4 && gate.size(2) == 1 && gate.size(3) == 1)) &&
              gate.size(0) == p.N && gate.size(1) == p.C, "fastinfer.int8_channel_scale: gate must be [N=", p.N,
              ", C=", p.C, "] or [N, C, 1, 1] (one factor an image and channel), got shape ", gate.sizes());
  const at::Tensor g = gate.reshape({p.N, p.C}).contiguous();
  at::Tensor f = at::empty({p.N, p.C}, g.options());
  const float xs = static_cast<float>(x_scale);
  const float* gp = g.data_ptr<float>();
  float* fp = f.data_ptr<float>();
  for (int64_t i = 0; i < p.N * p.C; ++i) fp[i] = gp[i] * xs;
  at::Tensor out = output_empty(x.sizes(), out_scale ? at::kChar : at::kFloat, at::MemoryFormat::ChannelsLast);
  if (out.numel() == 0) return out;
  p.f = f.data_ptr<float>();
  p.out = out.data_ptr();
  p.out_int8 = out_scale.has_value();
  p.out_inv_scale = out_scale ? 1.0f / static_cast<float>(*out_scale) : 1.0f;
  const kernels::KernelSet& ks = kernels_for(Family::Gate);
  const kernels::GateFn fn = ks.gate_scale ? ks.gate_scale : kernels::channel_scale_s8;
  if (!ks.gate_scale) record_kernel(Family::Gate, Isa::Ref);
  at::parallel_for(0, p.N * p.P, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, p.C)),
                   [&](int64_t r0, int64_t r1) { fn(p, r0, r1); });
  return out;
}

// Writes parts (int8 [N, C_i, H, W] each, any layout) one after another into out's channels from channel_offset
// on. out: int8 [N, C, H, W] with contiguous channels and evenly spaced pixels (pixel_stride): channels_last, or
// a channel slice of a wider channels_last buffer. What torch.cat(parts, 1) computes, without its per-part
// strided copies: fastinfer.nn.concat's int8 concatenations run on it.
void int8_cat_channels_into(const at::Tensor& out, at::TensorList parts, int64_t channel_offset) {
  const char* op = "int8_cat_channels_into";
  check_cpu(out, op, "out");
  check_dtype(out, at::kChar, op, "out");
  TORCH_CHECK(out.dim() == 4, "fastinfer.", op, ": out must be 4-D [N, C, H, W], got shape ", out.sizes());
  const int64_t ldo = pixel_stride(out);
  TORCH_CHECK(ldo >= 0, "fastinfer.", op, ": out must hold its channels contiguously with evenly spaced pixels "
              "(channels_last, or a channel slice of a channels_last tensor), got strides ", out.strides());
  TORCH_CHECK(channel_offset >= 0 && channel_offset <= out.size(1), "fastinfer.", op, ": channel_offset must be in "
              "[0, ", out.size(1), "] (out's channels), got ", channel_offset);
  std::vector<at::Tensor> held;
  std::vector<kernels::ConcatPart> ps;
  int64_t c = channel_offset;
  for (size_t i = 0; i < parts.size(); ++i) {
    const at::Tensor& part = parts[i];
    const std::string arg = "parts[" + std::to_string(i) + "]";
    check_cpu(part, op, arg.c_str());
    check_dtype(part, at::kChar, op, arg.c_str());
    TORCH_CHECK(part.dim() == 4 && part.size(0) == out.size(0) && part.size(2) == out.size(2) &&
                part.size(3) == out.size(3), "fastinfer.", op, ": ", arg, " must be 4-D [N=", out.size(0),
                ", C, H=", out.size(2), ", W=", out.size(3), "] (out's N, H and W), got shape ", part.sizes());
    TORCH_CHECK(!part.is_alias_of(out), "fastinfer.", op, ": ", arg, " shares memory with out");
    c += part.size(1);
    TORCH_CHECK(c <= out.size(1), "fastinfer.", op, ": the parts' channels from channel_offset ", channel_offset,
                " on reach channel ", c, ", past out's ", out.size(1));
    if (part.size(1) == 0 || part.numel() == 0) continue;
    int64_t ld = pixel_stride(part);
    held.push_back(ld >= 0 ? part : part.contiguous(at::MemoryFormat::ChannelsLast));
    if (ld < 0) ld = part.size(1);
    ps.push_back({held.back().data_ptr<int8_t>(), ld, part.size(1), c - part.size(1)});
  }
  const int64_t pixels = out.size(0) * out.size(2) * out.size(3);
  if (ps.empty() || pixels == 0) return;
  kernels::ConcatParams p;
  p.parts = ps.data();
  p.n_parts = static_cast<int64_t>(ps.size());
  p.out = out.data_ptr<int8_t>();
  p.ldo = ldo;
  const int64_t blocks = (pixels + kernels::kConcatBlock - 1) / kernels::kConcatBlock;
  const int64_t block_bytes = kernels::kConcatBlock * std::max<int64_t>(1, c - channel_offset);
  // at least 256 KB of output a task
  at::parallel_for(0, blocks, std::max<int64_t>(1, 262144 / block_bytes), [&](int64_t b0, int64_t b1) {
    kernels::concat_channels_s8(p, b0 * kernels::kConcatBlock, std::min(pixels, b1 * kernels::kConcatBlock));
  });
}

// A per-channel affine map (+ ReLU) quantized with a static scale: an eval BatchNorm (+ ReLU) written as the int8
// input of the static conv behind it (fastinfer.nn.BatchNormQuant2d). x [N, C, H, W] float32 / bfloat16, or int8
// with x_scale (value = x * x_scale: an int8 hand-off, such as a DenseNet's concatenated features), any memory
// format (read as channels_last: a copy unless it is one, or a channel slice of one); out int8 [N, C, H, W]
// channels_last, q = clamp(round_half_even(act(x * s[c] + shift[c]) * fl(1 / out_scale)), -127, 127) with
// s = scale, or for int8 x s = fl(x_scale * scale[c]); each step an fp32 rounding, NaN -> 0. The quantizer of the w8a8 ops
// (QuantizeParams::col_scale / col_shift / relu), rows = pixels.
at::Tensor quantize_channel_affine(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                                   double out_scale, bool relu, std::optional<double> x_scale) {
  const char* op = "quantize_channel_affine";
  check_cpu(x, op, "x");
  const at::ScalarType t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kChar, "fastinfer.", op,
              ": x must be float32, bfloat16 or int8 (with x_scale), got ", t);
  TORCH_CHECK((t == at::kChar) == x_scale.has_value(), "fastinfer.", op, ": x_scale must be given exactly when x is "
              "int8 (its value is x * x_scale), got x of dtype ", t, " and x_scale ", x_scale ? "given" : "None");
  TORCH_CHECK(x.dim() == 4, "fastinfer.", op, ": x must be 4-D [N, C, H, W], got shape ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const at::Tensor sc = channel_vector(scale, C, op, "scale", false);
  const at::Tensor sh = channel_vector(shift, C, op, "shift", false);
  check_scale(x_scale, op, "x_scale");
  check_scale(out_scale, op, "out_scale");
  at::Tensor out = output_empty(x.sizes(), at::kChar, at::MemoryFormat::ChannelsLast);
  if (out.numel() == 0) return out;
  // int8 x: s = fl(x_scale * scale[c]), fp32 products with one rounding each (not sc.mul(x_scale): at batch 1 its
  // scalar wrapping and allocation took a tenth of a DenseNet layer's norm)
  const float* s = sc.data_ptr<float>();
  std::vector<float> scaled;
  if (x_scale) {
    const float xs = static_cast<float>(*x_scale);
    scaled.resize(C);
    for (int64_t c = 0; c < C; ++c) scaled[c] = s[c] * xs;
    s = scaled.data();
  }
  // [N, C, H, W] in channels_last memory is the row-major [N * H * W, C] the quantizer reads and writes. A channel
  // slice of a wider channels_last buffer (a DenseNet's concatenated features, fastinfer.nn.concat) is read in
  // place, its rows pixel_stride elements apart.
  const int64_t ld = pixel_stride(x);
  const at::Tensor rows =
      ld >= 0 ? x.as_strided({N * H * W, C}, {ld, 1})
              : x.contiguous(at::MemoryFormat::ChannelsLast).permute({0, 2, 3, 1}).reshape({N * H * W, C});
  at::Tensor q = out.permute({0, 2, 3, 1}).reshape({N * H * W, C});
  TORCH_INTERNAL_ASSERT(q.data_ptr() == out.data_ptr() && rows.stride(1) == 1 && rows.stride(0) >= C);
  at::Tensor none;
  quantize_rows(rows, q, none, /*shift128=*/false, 1.0f / static_cast<float>(out_scale), s, sh.data_ptr<float>(),
                relu);
  return out;
}

TORCH_LIBRARY_IMPL(fastinfer, CPU, m) {
  m.impl("pack_conv_weight", &pack_conv_weight);
  m.impl("int8_conv2d", &int8_conv2d);
  m.impl("int8_conv2d_into", &int8_conv2d_into);
  m.impl("int8_max_pool2d", &int8_max_pool2d);
  m.impl("int8_avg_pool2d", &int8_avg_pool2d);
  m.impl("int8_add", &int8_add);
  m.impl("int8_channel_mean", &int8_channel_mean);
  m.impl("int8_channel_scale", &int8_channel_scale);
  m.impl("quantize_channel_affine", &quantize_channel_affine);
  m.impl("int8_cat_channels_into", &int8_cat_channels_into);
}

}  // namespace cpu
}  // namespace fastinfer
