// AMX-INT8 GEMM (tdpbssd: s8 x s8 -> s32 on 16 x 64-byte tiles), behind the same Int8GemmFn as
// the VNNI kernel. It reads s8 activation rows as they are (the set's signed_a: no +128 shift, no
// column-sum compensation, so int8 inputs need no pass before the GEMM) and the n16k4 packed weight,
// whose 16-column block at k-step t (16 k-quads) is exactly an AMX B tile (16 rows of 64 bytes,
// PACKING.md). Only this file is compiled for AMX (push_options/target below).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <immintrin.h>

#include "epilogue.h"
#include "pack.h"
#include "params.h"

#pragma GCC push_options
#pragma GCC target("prfchw,amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")

#include "avx512_common.h"

namespace fastinfer {
namespace kernels {
namespace {

// Blocking, measured on this project's AMX machine (2 cores, 48 KiB L1D, 2 MiB L2 per core;
// benchmarks/RESULTS.md):
// - 8 tiles: C = 2 x 2 tiles (a 32 x 32 int32 block) in tmm0-3, two A tiles (tmm4-5), two B tiles
//   (tmm6-7): one tile load per tdpbssd, the best ratio 8 tiles allow.
// - K is walked in chunks of at most kMaxChunkSteps tile steps; for one chunk the pair of B tiles
//   (32 columns x <= 512 bytes of K = 16 KiB) stays in L1 while every 32-row block of the pass uses it,
//   so only A comes from L2. A chunk boundary costs a store + reload of the C tiles (the stores overlap
//   the next block's first products: block_chunk's deferred stores); walking the whole
//   K per block instead (both operands from L2) measured ~25% slower at K = 2048, and chunks of 12-16
//   steps 0-8% slower than 8. Software prefetch (the next rows' A, the next chunk's B) did not help.
// - A pass covers at most kPassRows rows: its A rows (<= 128 x K) stay in L2 across column pairs.
struct AmxTraits {
  static constexpr int64_t kTileRows = 16;       // rows of an A or C tile
  static constexpr int64_t kStepBytes = 64;      // K bytes per tile step (16 k-quads)
  static constexpr int64_t kBlockRows = 32;      // two A tiles
  static constexpr int64_t kBlockCols = 32;      // two B tiles
  static constexpr int64_t kMaxChunkSteps = 8;   // tile steps per K chunk (at most; 8, 12, 16, 32 measured)
  // A convolution's chunks: up to 36 steps, so a 3x3 layer with up to 256 channels runs in one chunk
  // (its B pair then comes from L2). Measured: a C store + reload between chunks cost ~10% at l1 3x3
  // (9 steps); with the deferred C stores, l3 3x3 (256 channels, 36 steps) in one chunk instead of
  // three of 12 ran 1.10-1.15x at batch 8 (1.00x at batch 1), and l4 (72 steps) the same in two
  // chunks of 36 as in five (session 23).
  static constexpr int64_t kMaxConvChunkSteps = 36;
  static constexpr int64_t kPassRows = 128;      // rows per pass
  static constexpr int64_t kBlocksPerPass = kPassRows / kBlockRows;
  static_assert(kPassRows % kBlockRows == 0, "a pass is whole 32-row blocks");
  static_assert(kMaxChunkSteps * kStepBytes * kBlockCols <= 32 * 1024, "the GEMM chunk's B pair must stay in L1");
};

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

// Tile state belongs to the thread: configured when a kernel call starts, released when it ends, so
// nothing leaks to other code on this thread (oneDNN, other libraries) and the OS saves no tile data
// for an idle thread. ldtilecfg + tilerelease measured ~50 ns, small beside a call's work.
struct TileScope {
  TileScope() {
    TileConfig c;
    for (int t = 0; t < 8; ++t) {
      c.colsb[t] = AmxTraits::kStepBytes;
      c.rows[t] = AmxTraits::kTileRows;
    }
    _tile_loadconfig(&c);
  }
  ~TileScope() { _tile_release(); }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

// A block's C tiles in the per-thread buffer: [tile row][16 rows][32 columns] int32 (128-byte rows).
constexpr int64_t kCTileInts = AmxTraits::kTileRows * AmxTraits::kBlockCols;
constexpr int64_t kCStride = AmxTraits::kBlockCols * 4;  // bytes between C rows
constexpr int64_t kCHalfInts = AmxTraits::kBlocksPerPass * 2 * kCTileInts;  // one column pair's blocks
constexpr int64_t kStreamOutBytes = 1 << 20;  // 4-byte outputs from this size on: non-temporal stores

// Buffers that tile instructions read or write are 64-byte aligned, so that each 64-byte tile row is
// whole cache lines (malloc only promises 16 bytes, and a row split over two lines slows every tile
// load: the convolution's gathered rows in a std::vector ran the l4 3x3 layer 2x slower).
template <typename T>
T* aligned64(std::vector<T>& v, size_t n) {
  v.resize(n + 64 / sizeof(T));
  const uintptr_t at = reinterpret_cast<uintptr_t>(v.data());
  return v.data() + ((64 - at % 64) % 64) / sizeof(T);
}

constexpr int64_t kBTileBytes = AmxTraits::kTileRows * AmxTraits::kStepBytes;  // 16 k-quads x 16 columns

struct ThreadBuffers {
  std::vector<int32_t> c_storage;
  int32_t* c = nullptr;        // two halves: the pair being computed and the pair in its epilogue
  std::vector<int8_t> tail_storage;
  int8_t* tail_b = nullptr;    // the K tail of a column pair's two B blocks as whole tiles (zero rows after it)
  std::vector<int64_t> koff;   // byte offset of each tile step (TileSource)
  std::vector<int64_t> kb;     // byte offset of each tile step's B tiles in a column block (TileSource)
  std::vector<uint8_t> small;  // A with fewer than 16 rows, copied into 16 zero-padded rows
  std::vector<uint8_t> guard;  // the last rows of A with slack after them (the tail step reads past K)
};

ThreadBuffers& thread_buffers() {
  thread_local ThreadBuffers b;
  if (!b.c) b.c = aligned64(b.c_storage, static_cast<size_t>(2 * kCHalfInts));
  if (!b.tail_b) b.tail_b = aligned64(b.tail_storage, static_cast<size_t>(2 * kBTileBytes));
  return b;
}

constexpr int kMaxPassTiles = static_cast<int>(AmxTraits::kPassRows / AmxTraits::kTileRows);

// The row tiles of one pass (up to 8, taken two at a time as the row tiles of a block). Row t < 16 of
// tile i at tile step kt is the 64 bytes at base[i] + t * stride + koff[kt] (TileSource); its result
// goes to output row out[16 i + t], or nowhere when that is -1: a window shifted back so that all 16
// rows it reads exist recomputes rows of the tile before it, and a convolution over the padded width
// computes columns that are padding. Each block keeps its own C buffer, so those never mix with
// another block's sums.
struct TilePass {
  int tiles = 0;
  const uint8_t* base[kMaxPassTiles] = {};
  int64_t out[kMaxPassTiles * AmxTraits::kTileRows];
};

// How A is addressed: the GEMM's rows (koff[kt] = 64 kt) or a convolution's taps and channels.
// A GEMM whose K_pad is not a multiple of 64 ends with a tail step: K quads [16 steps, K_pad / 4) as one
// more tile product, A read as 64 bytes at koff[steps] (past K: the next row's bytes, or the guard
// copy's slack at the end) against a B tile whose rows after the tail are zero, so the bytes past K
// add nothing: the sums stay exact. (It replaced a vpdpbusd tail in the epilogue: u8 = s8 + 128 and a
// 128 * sum(b) correction per quad, which ran 1x1 convolutions with 40-240 channels up to 2.4x slower
// than AVX-512 VNNI alone; benchmarks/RESULTS.md, session 19.)
struct TileSource {
  int64_t stride;        // bytes between the rows of a tile
  const int64_t* koff;   // [steps + 1 with a tail]
  // [steps]: the B tiles of step kt are at kb[kt] in each 16-column weight block (kt * kBTileBytes, but a
  // direct convolution's tap box leaves out the taps in the padding, and with them their weight rows).
  const int64_t* kb;
  int64_t steps;         // whole tile steps (64 bytes of K each)
  int64_t tail_quads;    // GEMM only: K quads after them (0-15)
  // A tiles loaded with the streaming hint (GEMM: a row passes once per column pair). A convolution
  // reads each input pixel once per tap, so its A stays cached (measured on l1 3x3 at batch 8, one
  // thread: 1.10 -> 1.04 ms).
  bool stream_a;
  int64_t tile_steps() const { return steps + (tail_quads > 0 ? 1 : 0); }  // the tail step included
};

struct GemmCtx {
  const Int8GemmParams& p;
  TileSource src;
  bool stream_out;  // large 4-byte output: non-temporal stores of whole aligned lines (see below)
};

// An int8 output whose rows take at most this many tile steps (K <= 128: the 1x1 convolutions that widen 64
// or 128 channels to 4x as many) is written faster than the products are made, and the epilogue waits on the
// output lines' read-for-ownership misses (a few in flight at a time). There the folded int8 epilogue
// prefetches (prefetchw) the lines of the rows kPrefetchOutRows ahead. Measured, both alternated in one process,
// batch 8, 2 threads, int8 in/out: ResNet-50's 64 -> 256 1x1 at 56 x 56 1.14x, 128 -> 512 at 28 x 28 1.08-1.11x;
// with more steps it cost 2-3% (256 -> 64 at 56, 1024 -> 256 at 14, the 3x3 layers), so it stays off there.
constexpr int64_t kPrefetchOutMaxSteps = 2;
constexpr int kPrefetchOutRows = 8;

// The epilogue of a finished column pair (dequantize, bias, activation, store, on AVX-512). It runs a few
// rows after each tile call of the next pair (a direct convolution's: after each tile step, see tile_gemm),
// so its vector work and its output stores (the output often costs as much as the products: 4 KiB of fp32
// per 32 x 32 block) overlap the TMUL, a separate unit, instead of leaving it idle. (Measured on the GEMM:
// spreading it over every tile step was slower at small K, and running it after the pair slower at large
// K.) Cursor: row `pos` of the pass, counted over every tile row, stored or not (the -1 rows cost a test).
struct PendingEpilogue {
  const TilePass* pass_ptr = nullptr;  // the pass of the pair (tile_gemm keeps two, alternating)
  const int32_t* c = nullptr;
  ColBlock16 cols[2];
  int nt = 0, pos = 0;
  int64_t left = 0;  // tile rows not yet visited
  bool fits_int32 = false;  // every |y| of the pair is below 2^30 (pair_fits_int32): no float clamp needed
};

// Whether every y = float(acc) * b_scale[n] + bias[n] of a column pair is below 2^30 in magnitude, from
// |acc| <= 128 * 128 per product (s8 x s8) times the products a row sums. Then the folded int8 rule's
// min(y, 127) can be left out: it only keeps y >= 2^31 from converting to INT_MIN, and below that the
// saturating packs give the same bytes. (2^30 leaves room for the float rounding of the bound.) Far from
// binding in practice: at K = 576 it holds for |b_scale| up to ~100. False for NaN or infinite scales.
inline bool pair_fits_int32(const TileSource& src, const ColBlock16* cols, int nt) {
  const float products = static_cast<float>(src.steps * AmxTraits::kStepBytes + src.tail_quads * 4);
  const __m512 most = _mm512_set1_ps(128.0f * 128.0f * products), limit = _mm512_set1_ps(1073741824.0f);
  for (int j = 0; j < nt; ++j) {  // lanes past N hold zero scales (col_block16's masked loads)
    const __m512 bound = _mm512_add_ps(_mm512_mul_ps(_mm512_abs_ps(cols[j].b_scale), most), _mm512_abs_ps(cols[j].bias));
    if (_mm512_cmp_ps_mask(bound, limit, _CMP_LT_OQ) != 0xffff) return false;  // ordered: NaN fails
  }
  return true;
}

// Row `pos` of the pending pair's C tiles, column block j: the pass's row tiles lie one after another in
// the pair's C buffer (block b's two at 2b and 2b + 1, each 16 rows of kBlockCols ints), so row pos is at
// c + pos * kBlockCols. Every pair runs at least one tile step: K >= 1 (validate_packed refuses less).
inline __m512i pair_acc(const int32_t* c, int pos, int j) {
  return _mm512_loadu_si512(c + static_cast<int64_t>(pos) * AmxTraits::kBlockCols + 16 * j);
}

// Runs the next `rows` rows of a pending epilogue, specialized per output kind, activation and bias
// (a generic per-vector epilogue measured ~2x slower at small K, where the epilogue is as long as the
// products). The AMX sums are exact s8 x s8, so there is no compensation; fp32 math as EPILOGUE.md.
template <OutKind KIND, Act ACT, bool BIAS>
void epilogue_rows(const GemmCtx& g, PendingEpilogue& e, int64_t rows) {
  // Locals: the output stores could alias anything reached through a pointer, forcing reloads.
  char* const out = static_cast<char*>(g.p.out);
  const int64_t ldo = g.p.ldo;
  const float* const a_scale = g.p.a_scale;
  const bool per_tensor = g.p.a_scale_per_tensor, stream = g.stream_out;
  const __m512 out_inv = _mm512_set1_ps(g.p.out_inv_scale);
  const int nt = e.nt;
  const ColBlock16 cols[2] = {e.cols[0], e.cols[1]};
  const bool full = nt == 2 && cols[0].mask == 0xffff && cols[1].mask == 0xffff;
  const int64_t* const row_of = e.pass_ptr->out;
  const int32_t* const c = e.c;
  int pos = e.pos;
  int64_t left = e.left;
  for (; rows > 0 && left > 0; --rows, --left, ++pos) {
    const int64_t r = row_of[pos];
    if (r < 0) continue;
    __m512i acc[2];
    for (int j = 0; j < nt; ++j) acc[j] = pair_acc(c, pos, j);
    const int64_t idx = r * ldo + cols[0].col;  // element index of the row's first column
    if (KIND == OutKind::Int32) {
      int32_t* o = reinterpret_cast<int32_t*>(out) + idx;
      for (int j = 0; j < nt; ++j) {
        if (stream && cols[j].mask == 0xffff && (reinterpret_cast<uintptr_t>(o + 16 * j) & 63) == 0)
          _mm512_stream_si512(reinterpret_cast<__m512i*>(o + 16 * j), acc[j]);
        else
          _mm512_mask_storeu_epi32(o + 16 * j, cols[j].mask, acc[j]);
      }
      continue;
    }
    const __m512 as = _mm512_set1_ps(a_scale[per_tensor ? 0 : r]);
    __m512 y[2];
    for (int j = 0; j < nt; ++j) {
      y[j] = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[j]), as), cols[j].b_scale);
      if (BIAS) y[j] = _mm512_add_ps(y[j], cols[j].bias);
      y[j] = act16(y[j], ACT);
    }
    if (KIND == OutKind::Float32) {
      float* o = reinterpret_cast<float*>(out) + idx;
      for (int j = 0; j < nt; ++j) {
        if (stream && cols[j].mask == 0xffff && (reinterpret_cast<uintptr_t>(o + 16 * j) & 63) == 0)
          _mm512_stream_ps(o + 16 * j, y[j]);
        else
          _mm512_mask_storeu_ps(o + 16 * j, cols[j].mask, y[j]);
      }
    } else if (KIND == OutKind::BFloat16) {
      uint16_t* o = reinterpret_cast<uint16_t*>(out) + idx;
      for (int j = 0; j < nt; ++j) _mm256_mask_storeu_epi16(o + 16 * j, cols[j].mask, to_bf16(y[j]));
    } else {  // Int8: the two vectors' 32 bytes in one store when both are whole
      int8_t* o = reinterpret_cast<int8_t*>(out) + idx;
      const __m128i q0 = _mm512_cvtepi32_epi8(quant16(y[0], out_inv));
      if (full) {
        const __m128i q1 = _mm512_cvtepi32_epi8(quant16(y[1], out_inv));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1));
      } else {
        _mm_mask_storeu_epi8(o, cols[0].mask, q0);
        if (nt == 2) _mm_mask_storeu_epi8(o + 16, cols[1].mask, _mm512_cvtepi32_epi8(quant16(y[1], out_inv)));
      }
    }
  }
  e.pos = pos;
  e.left = left;
}

// The folded convolution epilogue (Int8GemmParams::folded; EPILOGUE.md, "Convolutions"):
// y = act(float(acc) * b_scale[n] + bias[n]), fp32 out, or int8 out as clamp(round(y)) (y * out_inv
// first for relu6 and gelu, whose int8 scale is not folded). The scales are finite, so y is never NaN:
// the int8 rule is min(y, 127), convert (nearest even; below -2^31 gives INT_MIN), saturate to bytes,
// max -127. Rows go in pairs: an int8 pair of 32 columns is packed with two packs + one permute instead
// of four narrowing converts (2 uops each): about 6 vector uops per 16 outputs instead of 12. Measured
// on the l1 3x3 convolution (K = 576, where the epilogue's vector work outweighs the products), batch 8,
// int8 in/out, one thread: 1.48 -> 1.10 ms.
template <OutKind KIND, Act ACT, bool BIAS>
void epilogue_folded(const GemmCtx& g, PendingEpilogue& e, int64_t rows) {
  // Everything the loop reads lives in locals: the output stores could alias anything behind a pointer.
  char* const out = static_cast<char*>(g.p.out);
  const int64_t ldo = g.p.ldo;
  const bool stream = g.stream_out;
  const __m512 out_inv = _mm512_set1_ps(g.p.out_inv_scale);
  const __m512 hi = _mm512_set1_ps(KIND == OutKind::Int8 ? folded_int8_hi(ACT, g.p.out_inv_scale) : 127.0f);
  const __m512i lo32 = _mm512_set1_epi32(-127);
  // packs leave dword 4l + i of the result as lane l of input i (rows' column blocks 0, 1, 0, 1).
  const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  const int nt = e.nt;
  const int64_t col = e.cols[0].col;
  const __mmask16 mask[2] = {e.cols[0].mask, e.cols[1].mask};
  const __m512 sc[2] = {e.cols[0].b_scale, e.cols[1].b_scale}, bi[2] = {e.cols[0].bias, e.cols[1].bias};
  const bool full = nt == 2 && mask[0] == 0xffff && mask[1] == 0xffff;
  const int64_t* const row_of = e.pass_ptr->out;
  const int32_t* const c = e.c;
  // A full int8 pair takes ReLU and ReLU6's max against 0 on the packed bytes (relu_on_bytes: rounding and
  // the multiply by out_inv > 0 are monotone and keep 0, and y below -2^31 converts to INT_MIN, which
  // saturates below 0); the max replaces the -127 floor. ReLU6's cap is hi (folded_int8_hi).
  constexpr bool relu_bytes = KIND == OutKind::Int8 && relu_on_bytes(ACT);
  const __m512i floor8 = _mm512_set1_epi8(relu_bytes ? 0 : -127);
  auto value = [&](int pos, int j, bool bytes = false) {
    const __m512i acc = pair_acc(c, pos, j);
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), sc[j]);
    if (BIAS) y = _mm512_add_ps(y, bi[j]);
    if (KIND != OutKind::Int8) return act16(y, ACT);
    return bytes ? folded_int8_act_before_bytes(y, ACT, out_inv) : folded_int8_act(y, ACT, out_inv);
  };
  auto to_int = [&](__m512 y) { return _mm512_cvtps_epi32(_mm512_min_ps(y, hi)); };
  int pos = e.pos;
  int64_t left = e.left;
  // Tile rows come in pairs (a tile has 16), both of one tile: adjacent rows of the C buffer. A full int8
  // pair has a loop of its own: no per-row test of the column masks.
  if (KIND == OutKind::Int8 && full) {
    int8_t* const o = reinterpret_cast<int8_t*>(out) + col;
    const bool prefetch = g.src.tile_steps() <= kPrefetchOutMaxSteps;
    // The clamp at hi is left out where it cannot change a byte: hi = 127 (ACT none or relu) and every |y| of
    // the pair below 2^30 (PendingEpilogue::fits_int32), a vector uop in about 7. This loop of its own and
    // the skipped clamp, with the plain C row loads (pair_acc) and the fp32 loop below, measured (both
    // versions alternated in one process, batch 8, 2 threads, AMX machine of 2026-12-06): int8 in/out
    // l1 3x3 1.06x, l1 1x1 1.05x, s2 1.05x, l2 1.02x, l3 1.01x; fp32 in/out l1 3x3 1.07x, l1 1x1 1.04x.
    auto run = [&](auto clamp) {
      auto to_i = [&](__m512 y) { return clamp ? to_int(y) : _mm512_cvtps_epi32(y); };
      for (; rows > 0 && left > 0; rows -= 2, left -= 2, pos += 2) {
        const int64_t r0 = row_of[pos], r1 = row_of[pos + 1];
        if (prefetch && left > kPrefetchOutRows + 1) {  // rows pos + 8, pos + 9 are in the pass (left counts to its end)
          const int64_t q0 = row_of[pos + kPrefetchOutRows], q1 = row_of[pos + kPrefetchOutRows + 1];
          if (q0 >= 0) _m_prefetchw(o + q0 * ldo);
          if (q1 >= 0) _m_prefetchw(o + q1 * ldo);
        }
        if ((r0 & r1) < 0) continue;  // neither row is stored
        const __m512i w0 = _mm512_packs_epi32(to_i(value(pos, 0, relu_bytes)), to_i(value(pos, 1, relu_bytes)));
        const __m512i w1 = _mm512_packs_epi32(to_i(value(pos + 1, 0, relu_bytes)), to_i(value(pos + 1, 1, relu_bytes)));
        const __m512i q = _mm512_permutexvar_epi32(order, _mm512_max_epi8(_mm512_packs_epi16(w0, w1), floor8));
        if (r0 >= 0) _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + r0 * ldo), _mm512_castsi512_si256(q));
        if (r1 >= 0) _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + r1 * ldo), _mm512_extracti64x4_epi64(q, 1));
      }
    };
    if (folds_out_inv(ACT) && e.fits_int32)
      run(std::false_type{});
    else
      run(std::true_type{});
    e.pos = pos;
    e.left = left;
    return;
  }
  // So does a full fp32 pair: whole-line stores, non-temporal ones for a streamed output (its rows are
  // whole lines when the base is aligned and ldo a multiple of 16 floats).
  if (KIND == OutKind::Float32 && full) {
    float* const o = reinterpret_cast<float*>(out) + col;
    const bool whole_lines = stream && (reinterpret_cast<uintptr_t>(o) & 63) == 0 && ldo % 16 == 0;
    for (; rows > 0 && left > 0; rows -= 2, left -= 2, pos += 2) {
      for (int i = 0; i < 2; ++i) {
        const int64_t r = row_of[pos + i];
        if (r < 0) continue;
        const __m512 y0 = value(pos + i, 0), y1 = value(pos + i, 1);
        float* const d = o + r * ldo;
        if (whole_lines) {
          _mm512_stream_ps(d, y0);
          _mm512_stream_ps(d + 16, y1);
        } else {
          _mm512_storeu_ps(d, y0);
          _mm512_storeu_ps(d + 16, y1);
        }
      }
    }
    e.pos = pos;
    e.left = left;
    return;
  }
  for (; rows > 0 && left > 0; rows -= 2, left -= 2, pos += 2) {
    const int64_t r0 = row_of[pos], r1 = row_of[pos + 1];
    if ((r0 & r1) < 0) continue;  // neither row is stored
    for (int i = 0; i < 2; ++i) {
      const int64_t r = i == 0 ? r0 : r1;
      if (r < 0) continue;
      for (int j = 0; j < nt; ++j) {
        const __m512 y = value(pos + i, j);
        if (KIND == OutKind::Int8) {
          int8_t* const o = reinterpret_cast<int8_t*>(out) + r * ldo + col + 16 * j;
          _mm512_mask_cvtsepi32_storeu_epi8(o, mask[j], _mm512_max_epi32(to_int(y), lo32));
        } else {
          float* const o = reinterpret_cast<float*>(out) + r * ldo + col + 16 * j;
          if (stream && mask[j] == 0xffff && (reinterpret_cast<uintptr_t>(o) & 63) == 0)
            _mm512_stream_ps(o, y);
          else
            _mm512_mask_storeu_ps(o, mask[j], y);
        }
      }
    }
  }
  e.pos = pos;
  e.left = left;
}

using EpilogueFn = void (*)(const GemmCtx&, PendingEpilogue&, int64_t);

constexpr int64_t kMinSliceRows = 6;  // rows of a direct convolution's epilogue slice, at least (tile_gemm)

template <OutKind KIND, Act ACT>
EpilogueFn epilogue_for_act(bool bias, bool folded) {
  if (folded && (KIND == OutKind::Float32 || KIND == OutKind::Int8))
    return bias ? epilogue_folded<KIND, ACT, true> : epilogue_folded<KIND, ACT, false>;
  return bias ? epilogue_rows<KIND, ACT, true> : epilogue_rows<KIND, ACT, false>;
}

template <OutKind KIND>
EpilogueFn epilogue_for_kind(Act act, bool bias, bool folded) {
  switch (act) {
    case Act::Relu: return epilogue_for_act<KIND, Act::Relu>(bias, folded);
    case Act::Relu6: return epilogue_for_act<KIND, Act::Relu6>(bias, folded);
    case Act::Gelu: return epilogue_for_act<KIND, Act::Gelu>(bias, folded);
    case Act::Hardswish: return epilogue_for_act<KIND, Act::Hardswish>(bias, folded);
    case Act::Silu: return epilogue_for_act<KIND, Act::Silu>(bias, folded);
    case Act::None: break;
  }
  return epilogue_for_act<KIND, Act::None>(bias, folded);
}

// (OutKind::Float16 is a CUDA output: the CPU entry layer never asks for it.)
EpilogueFn epilogue_for(const Int8GemmParams& p) {
  switch (p.out_kind) {
    case OutKind::Int32: return epilogue_rows<OutKind::Int32, Act::None, false>;
    case OutKind::BFloat16: return epilogue_for_kind<OutKind::BFloat16>(p.act, p.bias != nullptr, false);
    case OutKind::Int8: return epilogue_for_kind<OutKind::Int8>(p.act, p.bias != nullptr, p.folded);
    default: return epilogue_for_kind<OutKind::Float32>(p.act, p.bias != nullptr, p.folded);
  }
}

// A slice of the pending epilogue that a direct convolution's block runs after every `every`-th tile step
// (those with kt % every == 0; TileSource::stream_a false; see tile_gemm).
struct StepEpilogue {
  EpilogueFn fn;
  const GemmCtx* g;
  PendingEpilogue* pending;
  int64_t rows;   // per slice
  int64_t every;  // tile steps per slice
};

// One K chunk [kt0, kt1) of a block of MT x NT tiles. a0/a1: the bases of the block's row tiles,
// b0/b1: the two B column blocks, c: the block's C buffer; first: start from zero. Step src.steps (the
// last chunk's, when there is a K tail) is the tail step, on the zero-padded tail tiles tb0/tb1. A GEMM's A tiles
// are loaded with the streaming hint (tileloaddt1, STREAM_A): they pass once per column pair, and
// keeping them out of L1 leaves it to the B chunk, which every block of the pass reuses (measured:
// +5-20%); a convolution's are not (TileSource::stream_a). each_step: an epilogue slice after every step.
//
// Deferred C stores: a tile store waits for the last product into its tile, and the next block's first
// product into that tile waits for the store (tile registers are not renamed), so storing a block's C
// tiles at its end drains the TMUL at every block. A full 2 x 2 block leaves its four C tiles in the
// registers instead, and the next call stores them (prev: that block's buffer, or null), each just
// before its own first product into that tile, while the TMUL still works on the products before it.
// Measured (paired, batch 8, 2 threads, int8 in/out): the 3x3 layers 1.03-1.10x, l1 1x1 1.08x, GEMMs
// with M >= 100 1.04-1.10x (benchmarks/RESULTS.md, session 23). The caller stores the last block's
// tiles (store_tiles) before its final epilogue.
// Stores the C tiles of an MT x NT block (tmm0-3) to its buffer c.
template <int MT, int NT>
inline void store_tiles(int32_t* c) {
  _tile_stored(0, c, kCStride);
  if (NT == 2) _tile_stored(1, c + 16, kCStride);
  if (MT == 2) _tile_stored(2, c + kCTileInts, kCStride);
  if (MT == 2 && NT == 2) _tile_stored(3, c + kCTileInts + 16, kCStride);
}

template <int MT, int NT, bool STREAM_A>
inline void block_chunk(bool first, const uint8_t* a0, const uint8_t* a1, const TileSource& src, const int8_t* b0,
                        const int8_t* b1, const int8_t* tb0, const int8_t* tb1, int64_t kt0, int64_t kt1, int32_t* c,
                        const StepEpilogue* each_step, int32_t* prev) {
  // The same block's next chunk right after its previous one: its sums are still in the registers.
  const bool in_regs = !first && prev == c;
  if (in_regs) prev = nullptr;
  int32_t* c1 = c + kCTileInts;
  int32_t* p1 = prev ? prev + kCTileInts : nullptr;
  const int64_t stride = src.stride;
  const int64_t* koff = src.koff;
  const int64_t full_end = std::min(kt1, src.steps);
  // The next step that runs an epilogue slice (every each_step->every-th step: kt % every == 0).
  int64_t next_slice = each_step ? round_up(kt0, each_step->every) : -1;
  // One tile step: loads interleaved with the products that consume them (A0, B0, C00, B1, C01, A1, C10,
  // C11). The chunk's first step (FIRST) also stores each C tile for the previous block (prev), then zeroes
  // or reloads it, just before its first product. The tile numbers must be literals: the intrinsics paste
  // them into the instructions.
  const auto step = [&](int64_t kt, auto first_step) {
    constexpr bool FIRST = decltype(first_step)::value;
    // The tail step (kt == src.steps) takes its B tiles from the padded copies.
    const int8_t* const bt0 = kt < full_end ? b0 + src.kb[kt] : tb0;
    const int8_t* const bt1 = kt < full_end ? b1 + src.kb[kt] : tb1;
#define FI_AMX_STORE_PREV(tile, at)                  \
  if constexpr (FIRST) {                             \
    if (prev) _tile_stored(tile, at, kCStride);      \
  }
#define FI_AMX_START_C(tile, from)                                 \
  if constexpr (FIRST) {                                           \
    if (first)                                                     \
      _tile_zero(tile);                                            \
    else if (!in_regs)                                             \
      _tile_loadd(tile, from, kCStride);                           \
  }
#define FI_AMX_LOAD_A(tile, a)                                     \
  if (STREAM_A)                                                    \
    _tile_stream_loadd(tile, (a) + koff[kt], stride);              \
  else                                                             \
    _tile_loadd(tile, (a) + koff[kt], stride);
    FI_AMX_STORE_PREV(0, prev)
    FI_AMX_START_C(0, c)
    FI_AMX_LOAD_A(4, a0)
    _tile_loadd(6, bt0, 64);
    _tile_dpbssd(0, 4, 6);
    FI_AMX_STORE_PREV(1, prev + 16)
    if (NT == 2) {
      FI_AMX_START_C(1, c + 16)
      _tile_loadd(7, bt1, 64);
      _tile_dpbssd(1, 4, 7);
    }
    FI_AMX_STORE_PREV(2, p1)
    if (MT == 2) {
      FI_AMX_START_C(2, c1)
      FI_AMX_LOAD_A(5, a1)
      _tile_dpbssd(2, 5, 6);
    }
    FI_AMX_STORE_PREV(3, p1 + 16)
    if (MT == 2 && NT == 2) {
      FI_AMX_START_C(3, c1 + 16)
      _tile_dpbssd(3, 5, 7);
    }
#undef FI_AMX_LOAD_A
#undef FI_AMX_START_C
#undef FI_AMX_STORE_PREV
    if (kt == next_slice) {
      each_step->fn(*each_step->g, *each_step->pending, each_step->rows);
      next_slice += each_step->every;
    }
  };
  step(kt0, std::true_type{});
  for (int64_t kt = kt0 + 1; kt < kt1; ++kt) step(kt, std::false_type{});
  // A 2 x 2 block keeps its tiles in the registers: the next call (or tile_gemm, store_tiles) stores them.
  if (MT < 2 || NT < 2) store_tiles<MT, NT>(c);
}

using BlockFn = void (*)(bool, const uint8_t*, const uint8_t*, const TileSource&, const int8_t*, const int8_t*,
                         const int8_t*, const int8_t*, int64_t, int64_t, int32_t*, const StepEpilogue*, int32_t*);
// [stream A][MT - 1][NT - 1]
constexpr BlockFn kBlockFns[2][2][2] = {
    {{block_chunk<1, 1, false>, block_chunk<1, 2, false>}, {block_chunk<2, 1, false>, block_chunk<2, 2, false>}},
    {{block_chunk<1, 1, true>, block_chunk<1, 2, true>}, {block_chunk<2, 1, true>, block_chunk<2, 2, true>}}};

// A large fp32/int32 output is written with non-temporal stores: no read-for-ownership of lines that
// are overwritten whole. Measured +5-15% on the large shapes and +25% at 512 x 384 x 1536 (a 3 MB
// output), where writing the output takes as long as the products; no change end to end on MiniLM,
// whose next op reads these outputs.
bool stream_output(const Int8GemmParams& p, int64_t rows) {
  return (p.out_kind == OutKind::Float32 || p.out_kind == OutKind::Int32) && rows * p.N * 4 >= kStreamOutBytes;
}

// The tile kernel: for every pass that next_pass(TilePass&) fills (false: done), output columns
// [n0, min(n1, N_pad)) (n0 a multiple of 16).
template <typename NextPass>
void tile_gemm(const GemmCtx& g, int64_t n0, int64_t n1, NextPass&& next_pass) {
  const Int8GemmParams& p = g.p;
  n1 = std::min(n1, round_up(p.N, kPackNB));
  const int64_t full_steps = g.src.steps, tail_bytes = g.src.tail_quads * AmxTraits::kStepBytes;
  const int64_t steps = g.src.tile_steps();
  // K chunks of at most kMaxChunkSteps steps (kMaxConvChunkSteps for a convolution), ceil(steps / max)
  // of them, as even as that allows (12 steps: 2 x 6, not 8 + 4).
  const int64_t max_steps = g.src.stream_a ? AmxTraits::kMaxChunkSteps : AmxTraits::kMaxConvChunkSteps;
  const int64_t chunks = (steps + max_steps - 1) / max_steps;
  const int64_t kc = chunks > 0 ? (steps + chunks - 1) / chunks : 0;
  const int64_t block_stride = p.K_pad * kPackNB;  // bytes per 16-column weight block
  int32_t* const cbuf = thread_buffers().c;  // locals: every output store could alias the thread_local
  int8_t* const tail_b = thread_buffers().tail_b;
  // The tail tiles' rows after the tail stay zero for the whole call (each pair copies the same rows).
  if (tail_bytes > 0) std::memset(tail_b, 0, static_cast<size_t>(2 * kBTileBytes));
  const EpilogueFn run_epilogue = epilogue_for(p);
  PendingEpilogue pending;
  // Two passes alternate: the last pair's epilogue of one runs while the next one computes.
  TilePass passes[2];
  int64_t pair_count = 0, pass_count = 0;
  int32_t* kept = nullptr;  // the 2 x 2 block whose C tiles are still in the registers (block_chunk)
  TileScope tiles;
  for (;; ++pass_count) {
    TilePass& pass = passes[pass_count % 2];
    if (!next_pass(pass)) break;
    const int blocks = (pass.tiles + 1) / 2;
    for (int64_t n = n0; n < n1; n += AmxTraits::kBlockCols, ++pair_count) {
      const int nt = n1 - n >= AmxTraits::kBlockCols ? 2 : 1;
      const int8_t* b0 = p.b + (n / kPackNB) * block_stride;
      const int8_t* b1 = b0 + block_stride;
      int32_t* const c = cbuf + (pair_count % 2) * kCHalfInts;
      if (tail_bytes > 0) {  // the pair's K tail as whole tiles (the epilogue below reads C only)
        std::memcpy(tail_b, b0 + full_steps * kBTileBytes, static_cast<size_t>(tail_bytes));
        if (nt == 2) std::memcpy(tail_b + kBTileBytes, b1 + full_steps * kBTileBytes, static_cast<size_t>(tail_bytes));
      }
      // The previous pair's epilogue, spread evenly over this pair's tile calls, or for a direct convolution
      // over its tile steps (a few rows after each), so that its vector work and stores run while the TMUL
      // works on the step's products. A slice after each block call overlapped less (presumably the
      // epilogue's hundreds of uops after a block's tile instructions hold back the next block's). Measured,
      // both alternated in one process, batch 8, 2 threads, AMX machine of 2026-12-05: l1 3x3 1.08x (int8
      // out) and 1.05x (fp32 out), l2 1.07x, l3 1.02x, l4, s2 and the stem 1.00-1.02x, batch 1 1.01-1.03x;
      // the GEMM (1x1 convolutions, K = 24-256), whose A comes from memory, ran 0.93-0.98x with it, so it
      // keeps the slice per block.
      // A slice is at least kMinSliceRows rows, so where the pair's rows spread over every step would give
      // fewer, it runs every few steps: each slice call reloads the pair's scales, biases, masks and
      // constants through an indirect call, and at 1-2 rows a step (l2 3x3: 18 steps, l3: 36) the epilogue
      // added 0.051 ms to l2 at batch 8 while it takes 0.022 ms alone. Measured, both alternated in one
      // process, batch 8, 2 threads, AMX machine of 2026-12-06: int8 in/out l2 3x3 1.05x, l3 1.04x, l1
      // 1.02x; fp32 in/out l2 1.08x, l1 1.03x; batch 1 l2 and l3 1.04-1.05x; s2, l4, the stem 0.99-1.01x.
      const bool per_step = !g.src.stream_a;
      int64_t every = 1;
      if (per_step && pending.left > 0) {
        const int64_t per_step_rows = (pending.left + blocks * steps - 1) / (blocks * steps);
        every = std::min(steps, (kMinSliceRows + per_step_rows - 1) / per_step_rows);
      }
      const int64_t calls = blocks * (per_step ? (steps + every - 1) / every : chunks);
      const int64_t rows = calls > 0 ? (pending.left + calls - 1) / calls : 0;
      const StepEpilogue slice{run_epilogue, &g, &pending, rows, every};
      for (int64_t kt0 = 0; kt0 < steps; kt0 += kc) {
        const int64_t kt1 = std::min(steps, kt0 + kc);
        for (int b = 0; b < blocks; ++b) {
          const int mt = 2 * b + 1 < pass.tiles ? 2 : 1;
          int32_t* const cb = c + b * 2 * kCTileInts;
          kBlockFns[g.src.stream_a][mt - 1][nt - 1](kt0 == 0, pass.base[2 * b], pass.base[2 * b + mt - 1], g.src, b0,
                                                    b1, tail_b, tail_b + kBTileBytes, kt0, kt1, cb,
                                                    per_step && pending.left > 0 ? &slice : nullptr, kept);
          kept = mt == 2 && nt == 2 ? cb : nullptr;
          if (!per_step) run_epilogue(g, pending, rows);
        }
      }
      run_epilogue(g, pending, pending.left);  // what the spread left (all of it when K < 64)
      pending.pass_ptr = &pass;
      pending.c = c;
      for (int j = 0; j < nt; ++j) pending.cols[j] = col_block16(p, n + 16 * j, /*signed_a=*/true);
      pending.fits_int32 = p.folded && p.out_kind == OutKind::Int8 && pair_fits_int32(g.src, pending.cols, nt);
      pending.nt = nt;
      pending.pos = 0;
      pending.left = pass.tiles * AmxTraits::kTileRows;
    }
  }
  if (kept) store_tiles<2, 2>(kept);
  run_epilogue(g, pending, pending.left);
  if (g.stream_out) _mm_sfence();  // the non-temporal stores are visible to other threads before the call returns
}

// The thread's tables of A (koff) and B (kb) offsets for `steps` tile steps (TileSource).
void step_offsets(int64_t steps, int64_t** koff, int64_t** kb) {
  ThreadBuffers& buf = thread_buffers();
  if (static_cast<int64_t>(buf.koff.size()) < steps) {
    buf.koff.resize(static_cast<size_t>(steps));
    buf.kb.resize(static_cast<size_t>(steps));
  }
  *koff = buf.koff.data();
  *kb = buf.kb.data();
}

// A tile's output rows when they are consecutive: out[t] = first + t for t in [t_lo, t_hi), else -1.
inline void window_rows(int64_t* out, int64_t first, int64_t t_lo, int64_t t_hi) {
  const __m512i lo = _mm512_set1_epi64(t_lo), hi = _mm512_set1_epi64(t_hi), none = _mm512_set1_epi64(-1);
  for (int h = 0; h < 2; ++h) {
    const __m512i t = _mm512_add_epi64(_mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi64(8 * h));
    const __mmask8 keep = _mm512_cmpge_epi64_mask(t, lo) & _mm512_cmplt_epi64_mask(t, hi);
    _mm512_storeu_si512(out + 8 * h, _mm512_mask_blend_epi64(keep, none, _mm512_add_epi64(t, _mm512_set1_epi64(first))));
  }
}

// The output rows of a padded-width tile (16 pixels from q = w of an image whose first output row is
// image_row0): pixel q = oh * Wp + ow is output row image_row0 + oh * OW + ow = image_row0 + q - oh * (Wp - OW),
// or -1 where it is a padding column (ow >= OW) or outside [w + t_lo, w + t_hi). Vectorized: 16 pixels from
// ow(w) <= Wp - 1 cross at most wraps = (Wp + 14) / Wp row ends (two for the entry layer's Wp >= 12). The scalar
// loop (a division-free step per pixel) cost ~10% at l1 3x3, batch 8, int8 in/out: it runs between
// passes, while the TMUL waits (session 23).
inline void padded_width_rows(int64_t* out, int64_t w, int64_t t_lo, int64_t t_hi, int64_t image_row0, int64_t Wp,
                              int64_t OW, int64_t wraps) {
  const int64_t oh0 = w / Wp, ow0 = w % Wp, d = Wp - OW;
  const __m512i base = _mm512_set1_epi64(image_row0 + w - oh0 * d), wp = _mm512_set1_epi64(Wp);
  const __m512i ow_lim = _mm512_set1_epi64(OW), dv = _mm512_set1_epi64(d), none = _mm512_set1_epi64(-1);
  const __m512i lo = _mm512_set1_epi64(t_lo), hi = _mm512_set1_epi64(t_hi);
  for (int h = 0; h < 2; ++h) {
    const __m512i t = _mm512_add_epi64(_mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi64(8 * h));
    __m512i ow = _mm512_add_epi64(t, _mm512_set1_epi64(ow0)), r = _mm512_add_epi64(base, t);
    for (int64_t wrap = 0; wrap < wraps; ++wrap) {  // past a row end: the next row, d fewer output rows on
      const __mmask8 m = _mm512_cmpge_epi64_mask(ow, wp);
      ow = _mm512_mask_sub_epi64(ow, m, ow, wp);
      r = _mm512_mask_sub_epi64(r, m, r, dv);
    }
    const __mmask8 keep = _mm512_cmpge_epi64_mask(t, lo) & _mm512_cmplt_epi64_mask(t, hi) & _mm512_cmplt_epi64_mask(ow, ow_lim);
    _mm512_storeu_si512(out + 8 * h, _mm512_mask_blend_epi64(keep, none, r));
  }
}

void int8_gemm_amx(const Int8GemmParams& p_in, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (m1 <= m0) return;
  ThreadBuffers& buf = thread_buffers();
  Int8GemmParams p = p_in;
  // A tile load reads 16 rows. A window never starts past row M - 16, so only an A of fewer than 16
  // rows needs padding: it runs on a zero-padded copy (the extra rows are never stored).
  if (p.M < AmxTraits::kTileRows) {
    const int64_t ld = operand_stride(p.K_pad);
    uint8_t* const small = aligned64(buf.small, static_cast<size_t>(AmxTraits::kTileRows * ld));
    std::memset(small, 0, static_cast<size_t>(AmxTraits::kTileRows * ld));
    for (int64_t r = 0; r < p.M; ++r)
      std::memcpy(small + r * ld, p.a + r * p.lda, static_cast<size_t>(p.K_pad));
    p.a = small;
    p.lda = ld;
    p.M = AmxTraits::kTileRows;
  }
  const int64_t steps = p.K_pad / AmxTraits::kStepBytes;  // whole tile steps; the rest is the K tail
  const int64_t tail = p.K_pad - steps * AmxTraits::kStepBytes;
  int64_t *koff, *kb;
  step_offsets(steps + 1, &koff, &kb);
  for (int64_t kt = 0; kt <= steps; ++kt) {
    koff[kt] = kt * AmxTraits::kStepBytes;
    kb[kt] = kt * kBTileBytes;
  }
  const GemmCtx g{p, TileSource{p.lda, koff, kb, steps, tail / 4, true}, stream_output(p, p.M)};
  // The tail step reads row r's bytes [r lda, r lda + 64 (steps + 1)): past the end of A for the last
  // rows (first_bad on). Windows that hold such a row read a copy of A's rows [g0, M) followed by 64
  // bytes of slack (at most 31 rows: a row reads at most 60 bytes past its K_pad, and lda >= 4). This
  // call's windows start before m1, so they end before m1 + 15: most calls of a split GEMM copy nothing.
  int64_t first_bad = p.M, g0 = p.M;
  const uint8_t* guard = nullptr;
  const int64_t room = (p.M - 1) * p.lda + p.K_pad - (steps + 1) * AmxTraits::kStepBytes;  // last safe r lda
  const int64_t bad = room < 0 ? 0 : room / p.lda + 1;
  if (tail > 0 && m1 + AmxTraits::kTileRows - 1 > bad) {
    first_bad = bad;
    g0 = std::max<int64_t>(0, std::min(first_bad, p.M - AmxTraits::kTileRows) - (AmxTraits::kTileRows - 1));
    const size_t bytes = static_cast<size_t>((p.M - 1 - g0) * p.lda + p.K_pad);
    uint8_t* const copy = aligned64(buf.guard, bytes + AmxTraits::kStepBytes);
    std::memcpy(copy, p.a + g0 * p.lda, bytes);
    std::memset(copy + bytes, 0, static_cast<size_t>(AmxTraits::kStepBytes));
    guard = copy;
  }
  auto row_base = [&](int64_t w) {  // the bytes of window w (16 rows from row w)
    return w + AmxTraits::kTileRows - 1 >= first_bad ? guard + (w - g0) * p.lda : p.a + w * p.lda;
  };
  // Passes of kPassRows rows; tile i starts at row r, its window at w = min(r, M - 16).
  int64_t pm0 = m0;
  tile_gemm(g, n0, n1, [&](TilePass& pass) {
    if (pm0 >= m1) return false;
    const int64_t pm1 = std::min(m1, pm0 + AmxTraits::kPassRows);
    pass.tiles = 0;
    for (int64_t r = pm0; r < pm1; r += AmxTraits::kTileRows, ++pass.tiles) {
      const int64_t w = std::min(r, p.M - AmxTraits::kTileRows);
      pass.base[pass.tiles] = row_base(w);
      window_rows(pass.out + pass.tiles * AmxTraits::kTileRows, w, r - w, pm1 - w);  // its own rows, in [m0, m1)
    }
    pm0 = pm1;
    return true;
  });
}

// Direct convolution. Tile row t is an output pixel whose tap (kh, kw) input pixel sits a fixed
// stride after row t - 1's, so one strided tile load reads 16 pixels x 64 channels of a tap:
// - per output row (cp.virtual_width == 0): output row (n, oh) is split into 16-pixel tiles, the last
//   one shifted back to end at OW; rows are SW * C bytes apart;
// - over the padded width (SH == SW == s): pixel q = oh * Wp + ow of an image, ow < Wp, reads
//   s * q * C + tap offset, so 16 consecutive q are s * C bytes apart across output rows; the
//   Wp - OW columns that are padding are computed and dropped (for stride 1 that wastes 2 / Wp
//   columns instead of a shifted tile's overlap; the entry layer picks the mode);
// - over a stride plane's width (cp.plane_bytes, stride s > 1): the same with s = 1 inside the tap's
//   plane, whose width drops Wp - OW columns (1 of 15 for ResNet's 3x3 stride 2 at 28 -> 14).
void conv_direct_amx(const ConvDirectParams& cp, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
  if (r1 <= r0) return;
  const Int8GemmParams& p = cp.gemm;
  // Tile steps per tap: C / 64 channel chunks; with row segments, a kernel row's row_seg / 64 steps
  // (its KW taps' bytes side by side, then bytes that meet zero weight rows).
  const int64_t taps_w = cp.row_seg ? 1 : cp.KW;
  const int64_t cchunks = (cp.row_seg ? cp.row_seg : cp.C) / AmxTraits::kStepBytes;
  // Tiles within output rows run the call's tap box over its output columns [ow_lo, ow_hi) (ConvDirectParams::kh0
  // ...); the padded-width and stride-plane tiles cross output rows, and run every tap.
  const bool box = !cp.virtual_width && !cp.row_seg;
  const int64_t kh0 = box ? cp.kh0 : 0, kh1 = box && cp.kh1 >= 0 ? cp.kh1 : cp.KH;
  const int64_t kw0 = box ? cp.kw0 : 0, kw1 = box && cp.kw1 >= 0 ? cp.kw1 : taps_w;
  const int64_t ow_lo = box ? cp.ow0 : 0, ow_hi = box && cp.ow1 >= 0 ? cp.ow1 : cp.OW;
  const int64_t steps = (kh1 - kh0) * (kw1 - kw0) * cchunks;
  // With stride planes a tap reads its plane, at a stride-1 window: tile rows are C bytes apart.
  const bool planes = cp.plane_bytes > 0;
  const int64_t s = cp.SW, pixel_step = planes ? 1 : cp.SW;
  int64_t *koff, *kb;
  step_offsets(steps, &koff, &kb);
  for (int64_t kh = kh0, kt = 0; kh < kh1; ++kh)
    for (int64_t kw = kw0; kw < kw1; ++kw)
      for (int64_t cc = 0; cc < cchunks; ++cc, ++kt) {
        koff[kt] = (planes ? ((kh % s) * s + kw % s) * cp.plane_bytes + ((kh / s) * cp.Wp + kw / s) * cp.C
                           : (kh * cp.DH * cp.Wp + kw * cp.DW) * cp.C) +
                   cc * AmxTraits::kStepBytes;
        kb[kt] = ((kh * taps_w + kw) * cchunks + cc) * kBTileBytes;  // the packed weight's K order (kh, kw, c)
      }
  const GemmCtx g{p, TileSource{pixel_step * cp.C, koff, kb, steps, 0, false}, stream_output(p, (r1 - r0) * cp.OW)};
  const uint8_t* x = reinterpret_cast<const uint8_t*>(cp.x) + cp.x_origin;
  constexpr int64_t T = AmxTraits::kTileRows;
  const int64_t image = planes ? s * s * cp.plane_bytes : cp.Hp * cp.Wp * cp.C;  // bytes per padded image
  // The call's tiles, spread evenly over its passes in whole blocks of two (9 tiles: 6 + 3, not 8 + 1,
  // whose one-tile pass runs a half-height block and its epilogue alone; 14 tiles: 8 + 6, not 7 + 7).
  int64_t call_tiles = 0;
  if (!cp.virtual_width) {
    call_tiles = (r1 - r0) * ((ow_hi - ow_lo + T - 1) / T);
  } else {
    for (int64_t row = r0; row < r1;) {
      const int64_t next = std::min(r1, (row / cp.OH + 1) * cp.OH);
      call_tiles += ((next - row) * cp.Wp + T - 1) / T;
      row = next;
    }
  }
  const int64_t passes = (call_tiles + kMaxPassTiles - 1) / kMaxPassTiles;
  const int pass_tiles = static_cast<int>(std::max<int64_t>(2, round_up((call_tiles + passes - 1) / passes, 2)));
  if (!cp.virtual_width) {
    int64_t row = r0, ow = ow_lo;  // the next tile starts at pixel ow of output row `row`
    tile_gemm(g, n0, n1, [&](TilePass& pass) {
      pass.tiles = 0;
      while (row < r1 && pass.tiles < pass_tiles) {
        const int64_t n = row / cp.OH, oh = row % cp.OH, w = row_tile_window(ow, ow_hi, T);
        pass.base[pass.tiles] = x + n * image + ((oh * cp.SH) * cp.Wp + w * cp.SW) * cp.C;
        window_rows(pass.out + pass.tiles * T, row * cp.OW + w, ow - w, std::min(T, ow_hi - w));
        ++pass.tiles;
        ow += T;
        if (ow >= ow_hi) {
          ow = ow_lo;
          ++row;
        }
      }
      return pass.tiles > 0;
    });
    return;
  }
  // Over the padded width: output rows [r0, r1) are, image by image, runs of q = oh * Wp + ow.
  int64_t row = r0, q = (r0 % cp.OH) * cp.Wp;  // the next tile starts at pixel q of row's image
  const int64_t wraps = (cp.Wp + T - 2) / cp.Wp;  // row ends a tile crosses at most (padded_width_rows)
  tile_gemm(g, n0, n1, [&](TilePass& pass) {
    pass.tiles = 0;
    while (row < r1 && pass.tiles < pass_tiles) {
      const int64_t n = row / cp.OH;
      // This image's part of the call ends at output row min(r1, next image): q_end on the padded width.
      const int64_t last_row = std::min(r1, (n + 1) * cp.OH) - n * cp.OH;
      const int64_t q_end = last_row * cp.Wp;
      const int64_t w = std::max<int64_t>(0, std::min(q, q_end - T));  // window: inside this image's rows
      pass.base[pass.tiles] = x + n * image + w * pixel_step * cp.C;
      padded_width_rows(pass.out + pass.tiles * T, w, q - w, q_end - w, n * cp.OH * cp.OW, cp.Wp, cp.OW, wraps);
      ++pass.tiles;
      q += T;
      if (q >= q_end) {
        row = n * cp.OH + last_row;
        q = 0;
      }
    }
    return pass.tiles > 0;
  });
}

// tdpbssd on tiles only (no memory in the loop): the TMUL's peak rate, for benchmarks.
int64_t peak_probe_amx(int64_t iters) {
  TileScope tiles;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_zero(4);
  _tile_zero(5);
  _tile_zero(6);
  _tile_zero(7);
  for (int64_t i = 0; i < iters; ++i) {
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(1, 4, 7);
    _tile_dpbssd(2, 5, 6);
    _tile_dpbssd(3, 5, 7);
  }
  alignas(64) int32_t sink[256];
  _tile_stored(0, sink, 64);
  return iters * 4 * AmxTraits::kTileRows * AmxTraits::kTileRows * AmxTraits::kStepBytes * 2;
}

}  // namespace
}  // namespace kernels
}  // namespace fastinfer

#pragma GCC pop_options

namespace fastinfer {
namespace kernels {
// The AMX set adds the tile GEMM and its peak probe; every other kernel is the AVX-512 VNNI one
// (the dispatcher reports those families as avx512_vnni).
const KernelSet& kernels_amx() {
  static const KernelSet s = [] {
    KernelSet k = kernels_avx512_vnni();
    k.name = "amx";
    k.int8_gemm = int8_gemm_amx;
    k.peak_probe = peak_probe_amx;
    k.n_panel = 512;                  // B panel (512 x K) kept in L2 while the rows of a chunk pass over it
    k.m_chunk = AmxTraits::kPassRows;
    k.m_tile = AmxTraits::kBlockRows;
    k.signed_a = true;
    k.conv_direct = conv_direct_amx;
    k.conv_c_step = AmxTraits::kStepBytes;   // a tile step is one tap's 64 channels
    k.conv_tile_rows = AmxTraits::kTileRows;  // not the VNNI set's copied values
    k.conv_seg_align = AmxTraits::kStepBytes;
    k.conv_planes = true;
    return k;
  }();
  return s;
}
}  // namespace kernels
}  // namespace fastinfer
