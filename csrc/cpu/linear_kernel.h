// One-row linear kernel (the batch-1 decode step): y[n] = dot(x, W[n, :]) for a contiguous range of
// weight rows, each row read start to end before the next, so a thread's range of nn.Linear's
// [N, K] rows is ONE sequential stream. Measured at decode shapes with the weights cycled out of
// the L3 (2 threads, AVX-512, perf/bench_linear.py --decode and a C++ harness): bf16 up to 43 GB/s
// against 26 for tiles of 8 rows read side by side (8 interleaved streams at a row's distance; the
// hardware prefetcher follows one stream per thread best), fp32 35 against 34. With several x rows
// the tiles win again (each weight vector feeds more FMAs; more lines in flight per instruction),
// so linear.cpp uses this for one row only. always_inline: compiled per ISA by linear.cpp's wrappers.
//
// bf16 weights are widened in registers a pair per 32-bit lane: `u << 16` is the even element,
// `u & 0xffff0000` the odd one, against x split once per call into its even and odd elements, so a
// step reads a whole 64-byte line with two shifts/masks and two FMAs. bf16 products are exact in
// fp32; the sum is rounded once to the output dtype.
#pragma once

#include <algorithm>

#include "moe_gemm_kernel.h"  // AL4_INLINE, al4_common.h

namespace al4::cpu {

// The four horizontal sums of a0..a3 (VW lanes each) by a shuffle tree: each level halves the lanes
// per sum and packs two sums into one vector, ~4 vector ops per sum instead of VW scalar adds
// (at K = 512 the scalar sums cost as much as the FMAs).
template <int VW>
struct HSum4;
template <>
struct HSum4<16> {
  typedef float v16 __attribute__((vector_size(64)));
  typedef float v8 __attribute__((vector_size(32)));
  typedef float v4 __attribute__((vector_size(16)));
  AL4_INLINE static v4 run(v16 a0, v16 a1, v16 a2, v16 a3) {
    v16 t0 = __builtin_shufflevector(a0, a1, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
             __builtin_shufflevector(a0, a1, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    v16 t1 = __builtin_shufflevector(a2, a3, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
             __builtin_shufflevector(a2, a3, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    v16 u = __builtin_shufflevector(t0, t1, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
            __builtin_shufflevector(t0, t1, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    v8 h = __builtin_shufflevector(u, u, 0, 1, 4, 5, 8, 9, 12, 13) + __builtin_shufflevector(u, u, 2, 3, 6, 7, 10, 11, 14, 15);
    return __builtin_shufflevector(h, h, 0, 2, 4, 6) + __builtin_shufflevector(h, h, 1, 3, 5, 7);
  }
};
template <>
struct HSum4<8> {
  typedef float v8 __attribute__((vector_size(32)));
  typedef float v4 __attribute__((vector_size(16)));
  AL4_INLINE static v4 run(v8 a0, v8 a1, v8 a2, v8 a3) {
    v8 t0 = __builtin_shufflevector(a0, a1, 0, 1, 2, 3, 8, 9, 10, 11) + __builtin_shufflevector(a0, a1, 4, 5, 6, 7, 12, 13, 14, 15);
    v8 t1 = __builtin_shufflevector(a2, a3, 0, 1, 2, 3, 8, 9, 10, 11) + __builtin_shufflevector(a2, a3, 4, 5, 6, 7, 12, 13, 14, 15);
    v8 u = __builtin_shufflevector(t0, t1, 0, 1, 4, 5, 8, 9, 12, 13) + __builtin_shufflevector(t0, t1, 2, 3, 6, 7, 10, 11, 14, 15);
    return __builtin_shufflevector(u, u, 0, 2, 4, 6) + __builtin_shufflevector(u, u, 1, 3, 5, 7);
  }
};
template <>
struct HSum4<4> {
  typedef float v4 __attribute__((vector_size(16)));
  AL4_INLINE static v4 run(v4 a0, v4 a1, v4 a2, v4 a3) {
    v4 t0 = __builtin_shufflevector(a0, a1, 0, 1, 4, 5) + __builtin_shufflevector(a0, a1, 2, 3, 6, 7);
    v4 t1 = __builtin_shufflevector(a2, a3, 0, 1, 4, 5) + __builtin_shufflevector(a2, a3, 2, 3, 6, 7);
    return __builtin_shufflevector(t0, t1, 0, 2, 4, 6) + __builtin_shufflevector(t0, t1, 1, 3, 5, 7);
  }
};

// One step reads 2*VW weights of a row as two fp32 vectors (a, b) and names the x elements they
// multiply. fp32: x as given, a = w[k, k+VW), b = w[k+VW, k+2VW). bf16: one vector of VW 32-bit
// lanes, each a (even, odd) pair; x prepared as [even elements | odd elements] (`half` each).
template <int VW, typename W>
struct Step;
template <int VW>
struct Step<VW, float> {
  typedef float vec __attribute__((vector_size(VW * 4)));
  AL4_INLINE static void load(const float* w, int64_t k, vec& a, vec& b) {
    __builtin_memcpy(&a, w + k, sizeof(vec));
    __builtin_memcpy(&b, w + k + VW, sizeof(vec));
  }
  AL4_INLINE static const float* xa(const float* x, int64_t k, int64_t) { return x + k; }
  AL4_INLINE static const float* xb(const float* x, int64_t k, int64_t) { return x + k + VW; }
  AL4_INLINE static float x1(const float* x, int64_t k, int64_t) { return x[k]; }  // the K tail
};
template <int VW>
struct Step<VW, bf16_t> {
  typedef float vec __attribute__((vector_size(VW * 4)));
  typedef uint32_t uvec __attribute__((vector_size(VW * 4)));
  AL4_INLINE static void load(const bf16_t* w, int64_t k, vec& a, vec& b) {
    uvec u;
    __builtin_memcpy(&u, w + k, sizeof(uvec));
    a = (vec)(u << 16);          // elements k, k+2, ...: low halves (little endian)
    b = (vec)(u & 0xffff0000u);  // elements k+1, k+3, ...
  }
  AL4_INLINE static const float* xa(const float* x, int64_t k, int64_t) { return x + k / 2; }
  AL4_INLINE static const float* xb(const float* x, int64_t k, int64_t half) { return x + half + k / 2; }
  AL4_INLINE static float x1(const float* x, int64_t k, int64_t half) { return x[(k & 1) * half + k / 2]; }
};

// Lines ahead of the read position to prefetch into L2 (the row's stream continues into the next
// row: rows are contiguous).
constexpr int64_t kRowPrefetchBytes = 1024;  // 0 / 1024 / 2048 measured alike within the noise

// out[col0 + n] = x . W[n] (+ bias[n]) for weight rows n in [4 * g0, min(4 * g1, N)); x prepared as
// Step<VW, W> reads it; W, bias, out of type W (the activation dtype).
template <int VW, typename W>
AL4_INLINE void row_dots(const float* x, int64_t half, const W* wp, const W* bias, W* out, int64_t N, int64_t K,
                         int64_t g0, int64_t g1) {
  typedef float vec __attribute__((vector_size(VW * 4)));
  using S = Step<VW, W>;
  const int64_t kv = K / (2 * VW) * (2 * VW);
  for (int64_t g = g0; g < g1; ++g) {
    vec sums[4];
    float tail[4];
    for (int r = 0; r < 4; ++r) {
      const W* w = wp + std::min(4 * g + r, N - 1) * K;  // rows past N: read row N-1, dropped
      const char* pf = reinterpret_cast<const char*>(w) + kRowPrefetchBytes;
      vec acc0 = vec{}, acc1 = vec{};
      for (int64_t k = 0; k < kv; k += 2 * VW) {
        vec wa, wb, xa, xb;
        S::load(w, k, wa, wb);
        if constexpr (kRowPrefetchBytes > 0)
#pragma GCC unroll 2
          for (int b = 0; b < 2 * VW * int(sizeof(W)); b += 64) __builtin_prefetch(pf + k * int64_t(sizeof(W)) + b, 0, 2);
        __builtin_memcpy(&xa, S::xa(x, k, half), sizeof(vec));
        __builtin_memcpy(&xb, S::xb(x, k, half), sizeof(vec));
        acc0 += xa * wa;
        acc1 += xb * wb;
      }
      sums[r] = acc0 + acc1;
      float t = 0.0f;
      for (int64_t k = kv; k < K; ++k) t += S::x1(x, k, half) * load_f32(w, k);
      tail[r] = t;
    }
    const auto s = HSum4<VW>::run(sums[0], sums[1], sums[2], sums[3]);
    for (int r = 0; r < 4 && 4 * g + r < N; ++r) {
      const int64_t n = 4 * g + r;
      store_f32(out, n, s[r] + tail[r] + (bias ? load_f32(bias, n) : 0.0f));
    }
  }
}

}  // namespace al4::cpu
