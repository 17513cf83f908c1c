// AMX-INT8 GEMM (tdpbssd: s8 x s8 -> s32 on 16 x 64-byte tiles), behind the same Int8GemmFn as
// the VNNI kernel. It reads s8 activation rows as they are (the set's signed_a: no +128 shift, no
// column-sum compensation, so int8 inputs need no pass before the GEMM) and the n16k4 packed weight,
// whose 16-column block at k-step t (16 k-quads) is exactly an AMX B tile (16 rows of 64 bytes,
// PACKING.md). Only this file is compiled for AMX (push_options/target below).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include <immintrin.h>

#include "epilogue.h"
#include "pack.h"
#include "params.h"

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")

#include "avx512_common.h"

namespace fastinfer {
namespace kernels {
namespace {

// Blocking, measured on this project's AMX machine (2 cores, 48 KiB L1D, 2 MiB L2 per core;
// benchmarks/RESULTS.md):
// - 8 tiles: C = 2 x 2 tiles (a 32 x 32 int32 block) in tmm0-3, two A tiles (tmm4-5), two B tiles
//   (tmm6-7): one tile load per tdpbssd, the best ratio 8 tiles allow.
// - K is walked in chunks of at most kMaxChunkSteps tile steps; for one chunk the pair of B tiles
//   (32 columns x <= 768 bytes of K = 24 KiB) stays in L1 while every 32-row block of the pass uses it,
//   so only A comes from L2. A chunk boundary costs a store + reload of the C tiles; walking the whole
//   K per block instead (both operands from L2) measured ~25% slower at K = 2048.
// - A pass covers at most kPassRows rows: its A rows (<= 128 x K) stay in L2 across column pairs.
struct AmxTraits {
  static constexpr int64_t kTileRows = 16;       // rows of an A or C tile
  static constexpr int64_t kStepBytes = 64;      // K bytes per tile step (16 k-quads)
  static constexpr int64_t kBlockRows = 32;      // two A tiles
  static constexpr int64_t kBlockCols = 32;      // two B tiles
  static constexpr int64_t kMaxChunkSteps = 12;  // tile steps per K chunk (at most; 8-16 measured)
  static constexpr int64_t kPassRows = 128;      // rows per pass
  static constexpr int64_t kBlocksPerPass = kPassRows / kBlockRows;
  static_assert(kPassRows % kBlockRows == 0, "a pass is whole 32-row blocks");
  static_assert(kMaxChunkSteps * kStepBytes * kBlockCols <= 32 * 1024, "the chunk's B pair must stay in L1");
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

struct ThreadBuffers {
  std::vector<int32_t> c;      // two halves: the pair being computed and the pair in its epilogue
  std::vector<uint8_t> small;  // A with fewer than 16 rows, copied into 16 zero-padded rows
};

ThreadBuffers& thread_buffers() {
  thread_local ThreadBuffers b;
  if (b.c.empty()) b.c.resize(static_cast<size_t>(2 * kCHalfInts));
  return b;
}

// Rows [pm0, pm0 + rows) of a pass: row tile i of block b covers rows [r, r + 16) (clipped to the
// pass), r = pm0 + 32b + 16i, and loads its A from window row w = min(r, M - 16) so the 16 rows a
// tile load reads stay inside A. A shifted window recomputes a few rows of the tile before it; each
// block keeps its own C buffer, so those duplicates never mix with another block's partial sums.
struct Pass {
  int64_t pm0, rows, M;
  int64_t window(int64_t r) const { return std::min(r, M - AmxTraits::kTileRows); }
  // Where row r's accumulators sit in a pair's C buffers.
  int64_t c_offset(int64_t r) const {
    const int64_t b = (r - pm0) / AmxTraits::kBlockRows, i = ((r - pm0) / AmxTraits::kTileRows) % 2;
    const int64_t w = window(pm0 + b * AmxTraits::kBlockRows + i * AmxTraits::kTileRows);
    return (b * 2 + i) * kCTileInts + (r - w) * AmxTraits::kBlockCols;
  }
};

struct GemmCtx {
  const Int8GemmParams& p;
  const uint8_t* a;
  int64_t lda, steps, q_tail, q_end;
  bool stream_out;  // large 4-byte output: non-temporal stores of whole aligned lines (see below)
};

// The epilogue of a finished column pair: the K tail (K_pad % 64 bytes) with vpdpbusd (u8 x s8:
// the s8 activations are fed as a + 128 and 128 * sum(b) is taken off again, exact), then the
// shared AVX-512 epilogue (compensation, dequantize, bias, activation, store). It runs a few rows
// after each tile call of the next pair, so its vector work and its output stores (the output often
// costs as much as the products: 4 KiB of fp32 per 32 x 32 block) overlap the TMUL, a separate
// unit, instead of leaving it idle. Counted in rows (next, total) of its pass. (Measured: spreading
// it over every tile step instead was slower at small K, and running it after the pair slower at
// large K.)
struct PendingEpilogue {
  Pass pass{0, 0, 0};
  const int32_t* c = nullptr;
  const int8_t* b[2] = {nullptr, nullptr};
  ColBlock16 cols[2];
  int nt = 0;
  int64_t next = 0, total = 0;
};

inline void run_epilogue(const GemmCtx& g, PendingEpilogue& e, int64_t rows) {
  const int64_t end = std::min(e.total, e.next + rows);
  const __m512i k80 = _mm512_set1_epi32(static_cast<int32_t>(0x80808080u));
  for (int64_t i = e.next; i < end; ++i) {
    const int64_t r = e.pass.pm0 + i;
    const int32_t* c = e.c + e.pass.c_offset(r);
    const uint8_t* ar = g.a + r * g.lda;
    for (int j = 0; j < e.nt; ++j) {
      __m512i acc = g.steps > 0 ? _mm512_loadu_si512(c + 16 * j) : _mm512_setzero_si512();
      for (int64_t q = g.q_tail; q < g.q_end; ++q) {
        const __m512i bq = _mm512_loadu_si512(e.b[j] + q * 64);
        acc = _mm512_dpbusd_epi32(acc, _mm512_xor_si512(bcast_u8x4(ar + q * 4), k80), bq);
        acc = _mm512_sub_epi32(acc, _mm512_dpbusd_epi32(_mm512_setzero_si512(), k80, bq));
      }
      if (g.stream_out) {
        void* o = static_cast<char*>(g.p.out) + (r * g.p.ldo + e.cols[j].col) * 4;
        if (e.cols[j].mask == 0xffff && (reinterpret_cast<uintptr_t>(o) & 63) == 0) {
          if (g.p.out_kind == OutKind::Int32)
            _mm512_stream_si512(static_cast<__m512i*>(o), _mm512_sub_epi32(acc, e.cols[j].comp));
          else
            _mm512_stream_ps(static_cast<float*>(o), epilogue16_f32(g.p, e.cols[j], r, acc));
          continue;
        }
      }
      epilogue16(g.p, e.cols[j], r, acc);
    }
  }
  e.next = end;
}

// One K chunk [kt0, kt1) of a block of MT x NT tiles. a0/a1: the first A row of each row tile's
// window, b0/b1: the two B column blocks, c: the block's C buffer; first: start from zero. A tiles
// are loaded with the streaming hint (tileloaddt1): they pass once per column pair, and keeping them
// out of L1 leaves it to the B chunk, which every block of the pass reuses (measured: +5-20%).
template <int MT, int NT>
inline void block_chunk(bool first, const uint8_t* a0, const uint8_t* a1, int64_t lda, const int8_t* b0,
                        const int8_t* b1, int64_t kt0, int64_t kt1, int32_t* c) {
  int32_t* c1 = c + kCTileInts;
  if (first) {
    _tile_zero(0);
    if (NT == 2) _tile_zero(1);
    if (MT == 2) _tile_zero(2);
    if (MT == 2 && NT == 2) _tile_zero(3);
  } else {
    _tile_loadd(0, c, kCStride);
    if (NT == 2) _tile_loadd(1, c + 16, kCStride);
    if (MT == 2) _tile_loadd(2, c1, kCStride);
    if (MT == 2 && NT == 2) _tile_loadd(3, c1 + 16, kCStride);
  }
  for (int64_t kt = kt0; kt < kt1; ++kt) {
    // Loads interleaved with the products that consume them (A0, B0, C00, B1, C01, A1, C10, C11).
    _tile_stream_loadd(4, a0 + kt * AmxTraits::kStepBytes, lda);
    _tile_loadd(6, b0 + kt * 1024, 64);
    _tile_dpbssd(0, 4, 6);
    if (NT == 2) {
      _tile_loadd(7, b1 + kt * 1024, 64);
      _tile_dpbssd(1, 4, 7);
    }
    if (MT == 2) {
      _tile_stream_loadd(5, a1 + kt * AmxTraits::kStepBytes, lda);
      _tile_dpbssd(2, 5, 6);
      if (NT == 2) _tile_dpbssd(3, 5, 7);
    }
  }
  _tile_stored(0, c, kCStride);
  if (NT == 2) _tile_stored(1, c + 16, kCStride);
  if (MT == 2) _tile_stored(2, c1, kCStride);
  if (MT == 2 && NT == 2) _tile_stored(3, c1 + 16, kCStride);
}

using BlockFn = void (*)(bool, const uint8_t*, const uint8_t*, int64_t, const int8_t*, const int8_t*, int64_t,
                         int64_t, int32_t*);
constexpr BlockFn kBlockFns[2][2] = {{block_chunk<1, 1>, block_chunk<1, 2>}, {block_chunk<2, 1>, block_chunk<2, 2>}};

void int8_gemm_amx(const Int8GemmParams& p_in, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (m1 <= m0) return;
  ThreadBuffers& buf = thread_buffers();
  Int8GemmParams p = p_in;
  // A tile load reads 16 rows. A window never starts past row M - 16 (Pass), so only an A of fewer
  // than 16 rows needs padding: it runs on a zero-padded copy (the extra rows are never stored).
  if (p.M < AmxTraits::kTileRows) {
    const int64_t ld = operand_stride(p.K_pad);
    buf.small.assign(static_cast<size_t>(AmxTraits::kTileRows * ld), 0);
    for (int64_t r = 0; r < p.M; ++r)
      std::memcpy(buf.small.data() + r * ld, p.a + r * p.lda, static_cast<size_t>(p.K_pad));
    p.a = buf.small.data();
    p.lda = ld;
    p.M = AmxTraits::kTileRows;
  }
  n1 = std::min(n1, round_up(p.N, kPackNB));
  const int64_t steps = p.K_pad / AmxTraits::kStepBytes;  // whole tile steps; the rest is the K tail
  // A large fp32/int32 output is written with non-temporal stores: no read-for-ownership of lines
  // that are overwritten whole. Measured +5-15% on the large shapes and +25% at 512 x 384 x 1536 (a
  // 3 MB output), where writing the output takes as long as the products; no change end to end on
  // MiniLM, whose next op reads these outputs.
  const bool stream_out = (p.out_kind == OutKind::Float32 || p.out_kind == OutKind::Int32) &&
                          p.M * p.N * 4 >= kStreamOutBytes;
  const GemmCtx g{p, p.a, p.lda, steps, steps * 16, p.K_pad / kPackKB, stream_out};
  // K chunks of at most kMaxChunkSteps steps, as even as possible (K = 1536: 2 x 12, not 16 + 8).
  const int64_t chunks = (steps + AmxTraits::kMaxChunkSteps - 1) / AmxTraits::kMaxChunkSteps;
  const int64_t kc = chunks > 0 ? (steps + chunks - 1) / chunks : 0;
  const int64_t block_stride = p.K_pad * kPackNB;  // bytes per 16-column weight block
  int32_t* const cbuf = buf.c.data();               // a local: every output store could alias the thread_local
  PendingEpilogue pending;
  int64_t pair_count = 0;
  TileScope tiles;
  for (int64_t pm0 = m0; pm0 < m1; pm0 += AmxTraits::kPassRows) {
    const Pass pass{pm0, std::min(m1, pm0 + AmxTraits::kPassRows) - pm0, p.M};
    const int64_t blocks = (pass.rows + AmxTraits::kBlockRows - 1) / AmxTraits::kBlockRows;
    for (int64_t n = n0; n < n1; n += AmxTraits::kBlockCols, ++pair_count) {
      const int nt = n1 - n >= AmxTraits::kBlockCols ? 2 : 1;
      const int8_t* b0 = p.b + (n / kPackNB) * block_stride;
      const int8_t* b1 = b0 + block_stride;
      int32_t* const c = cbuf + (pair_count % 2) * kCHalfInts;
      // The previous pair's epilogue, spread evenly over this pair's tile calls.
      const int64_t calls = blocks * chunks;
      const int64_t rows = calls > 0 ? (pending.total + calls - 1) / calls : 0;
      for (int64_t kt0 = 0; kt0 < steps; kt0 += kc) {
        const int64_t kt1 = std::min(steps, kt0 + kc);
        for (int64_t b = 0; b < blocks; ++b) {
          const int64_t r0 = pm0 + b * AmxTraits::kBlockRows;
          const int mt = pass.rows - b * AmxTraits::kBlockRows > AmxTraits::kTileRows ? 2 : 1;
          const uint8_t* a0 = g.a + pass.window(r0) * g.lda;
          const uint8_t* a1 = g.a + pass.window(r0 + AmxTraits::kTileRows) * g.lda;
          kBlockFns[mt - 1][nt - 1](kt0 == 0, a0, a1, g.lda, b0, b1, kt0, kt1, c + b * 2 * kCTileInts);
          run_epilogue(g, pending, rows);
        }
      }
      run_epilogue(g, pending, pending.total);  // what the spread left (all of it when K < 64)
      pending.pass = pass;
      pending.c = c;
      pending.b[0] = b0;
      pending.b[1] = b1;
      for (int j = 0; j < nt; ++j) pending.cols[j] = col_block16(p, n + 16 * j, /*signed_a=*/true);
      pending.nt = nt;
      pending.next = 0;
      pending.total = pass.rows;
    }
  }
  run_epilogue(g, pending, pending.total);
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
    return k;
  }();
  return s;
}
}  // namespace kernels
}  // namespace fastinfer
