// The depthwise strip arithmetic of csrc/kernels/cuda/dwconv_strip.cuh, run on the CPU for every thread of
// the kernel's grid, against a direct int32 reference: bit-exact sums for every stored output, over random
// geometries of each instantiated filter width and column stride (random R, row stride, row dilation,
// padding, channels a multiple of 4, widths that miss the strip length), and with exact-size buffers so that
// AddressSanitizer (tests/test_cuda_host.py builds with it) catches any read outside x or w.
// Prints "ok <cases> <outputs>" and exits 0, or the first mismatch and exits 1.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "dwconv_strip.cuh"

using fastinfer::cuda_kernels::ConvGeometry;
namespace ds = fastinfer::cuda_kernels::dwstrip;

namespace {

int32_t reference(const ConvGeometry& g, const std::vector<int8_t>& x, const std::vector<int8_t>& w, int64_t n,
                  int64_t oh, int64_t ow, int64_t c) {
  int32_t acc = 0;
  for (int64_t r = 0; r < g.R; ++r)
    for (int64_t s = 0; s < g.S; ++s) {
      const int64_t ih = oh * g.stride_h - g.pad_h + r * g.dil_h, iw = ow * g.stride_w - g.pad_w + s * g.dil_w;
      if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
      acc += int32_t{x[((n * g.H + ih) * g.W + iw) * g.C + c]} * int32_t{w[(r * g.S + s) * g.C + c]};
    }
  return acc;
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  int64_t cases = 0, outputs = 0;
  for (int qs1 : {8, 4})
  for (int S : {3, 5, 7})
    for (int SW : {1, 2})
      for (int trial = 0; trial < 40; ++trial) {
        ConvGeometry g;
        g.S = S;
        g.stride_w = SW;
        g.R = pick(1, 7);
        g.stride_h = pick(1, 3);
        g.dil_h = pick(1, 2);
        g.N = pick(1, 2);
        g.C = 4 * pick(1, 12);
        g.K = g.C;
        g.H = pick(1, 12);
        g.W = pick(1, 23);
        g.pad_h = pick(0, 3);
        g.pad_w = pick(0, S);  // up to a whole filter width of padding: windows that start and end outside
        const int64_t eff_h = (g.R - 1) * g.dil_h + 1;
        if (g.H + 2 * g.pad_h < eff_h || g.W + 2 * g.pad_w < S) continue;
        g.P = (g.H + 2 * g.pad_h - eff_h) / g.stride_h + 1;
        g.Q = (g.W + 2 * g.pad_w - S) / SW + 1;
        // extreme values half the time: the sums' range (|sum| up to R S 128^2)
        const bool extreme = trial % 2 == 1;
        std::vector<int8_t> x(g.N * g.H * g.W * g.C), w(g.R * g.S * g.C);
        for (auto& v : x) v = static_cast<int8_t>(extreme ? (pick(0, 1) ? -128 : 127) : pick(-128, 127));
        for (auto& v : w) v = static_cast<int8_t>(extreme ? -128 : pick(-128, 127));
        bool served = ds::dispatch(g, qs1, [&](auto taps, auto stride, auto qs) {
          constexpr int kQS = decltype(qs)::value;
          const int32_t strips = static_cast<int32_t>((g.Q + kQS - 1) / kQS);
          for (int32_t n = 0; n < g.N; ++n)
            for (int32_t oh = 0; oh < g.P; ++oh)
              for (int32_t sq = 0; sq < strips; ++sq)
                for (int32_t c0 = 0; c0 < g.C; c0 += 4) {
                  int32_t acc[kQS][4];
                  ds::strip_sums<decltype(taps)::value, decltype(stride)::value, kQS, int32_t>(
                      g, x.data(), w.data(), n, oh, sq * kQS, c0, acc);
                  for (int q = 0; q < kQS && sq * kQS + q < g.Q; ++q)
                    for (int k = 0; k < 4; ++k) {
                      const int32_t want = reference(g, x, w, n, oh, sq * kQS + q, c0 + k);
                      if (acc[q][k] != want) {
                        std::printf("MISMATCH S=%d SW=%d R=%lld SH=%lld DH=%lld C=%lld H=%lld W=%lld PH=%lld "
                                    "PW=%lld: n=%d oh=%d ow=%d c=%d got %d want %d\n",
                                    S, SW, (long long)g.R, (long long)g.stride_h, (long long)g.dil_h,
                                    (long long)g.C, (long long)g.H, (long long)g.W, (long long)g.pad_h,
                                    (long long)g.pad_w, n, oh, sq * kQS + q, c0 + k, acc[q][k], want);
                        std::exit(1);
                      }
                      ++outputs;
                    }
                }
        });
        if (!served) {
          std::printf("NOT SERVED: S=%d SW=%d\n", S, SW);
          return 1;
        }
        ++cases;
      }
  // Shapes the dispatch must refuse (the per-output kernel serves them): {C, S, stride_w, dil_w, strip length}.
  const int refused[][5] = {{8, 3, 3, 1, 8}, {8, 3, 1, 2, 8}, {6, 3, 1, 1, 8}, {8, 4, 1, 1, 8}, {8, 3, 1, 1, 2}};
  for (const auto& r : refused) {
    ConvGeometry g;
    g.C = r[0];
    g.S = r[1];
    g.stride_w = r[2];
    g.dil_w = r[3];
    if (ds::dispatch(g, r[4], [](auto, auto, auto) {})) {
      std::printf("DISPATCH took C=%d S=%d stride_w=%d dil_w=%d strip %d, which it does not serve\n", r[0], r[1],
                  r[2], r[3], r[4]);
      return 1;
    }
  }
  std::printf("ok %lld %lld\n", (long long)cases, (long long)outputs);
  return 0;
}
