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

// out[n] = x . W[n] (+ bias[n]) for weight rows n in [4 * g0, min(4 * g1, N)); x prepared as
// Step<VW, W> reads it; bias and out of type O (linear: the activation dtype; fused MoE: fp32).
template <int VW, typename W, typename O>
AL4_INLINE void row_dots(const float* x, int64_t half, const W* wp, const O* bias, O* out, int64_t N, int64_t K,
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

// Several x rows (linear.cpp, and fused MoE's output-major experts at decode): tiles of MB x rows
// by NB weight rows.

// Load VW weights as fp32 into `v` (a VW-float vector); the (p, i) form reads one for the K tail.
template <int VW>
struct LoadF32 {
  template <typename V>
  AL4_INLINE void operator()(const float* p, V& v) const { __builtin_memcpy(&v, p, sizeof(V)); }
  AL4_INLINE float operator()(const float* p, int64_t i) const { return p[i]; }
};

template <int VW>
struct LoadBF16 {  // bf16 -> fp32 is a 16-bit left shift of the bits
  template <typename V>
  AL4_INLINE void operator()(const bf16_t* p, V& v) const {
    uint32_t b[VW];
#pragma GCC unroll 64
    for (int l = 0; l < VW; ++l) b[l] = uint32_t(p[l].bits) << 16;
    __builtin_memcpy(&v, b, sizeof(V));
  }
  AL4_INLINE float operator()(const bf16_t* p, int64_t i) const { return bf16_to_f32(p[i].bits); }
};

// o[i][j] = dot(x[i], w[j]) over K for i < MB, j < NB (rows past the end point at valid memory and
// their outputs at a dump slot); with add, o[i][j] += the dot (K blocks).
template <int VW, int MB, int NB, typename W, typename Ld>
AL4_INLINE void dot_tile(const float* const* x, const W* const* w, int64_t K, float* const* o, Ld ld,
                         const char* pf = nullptr, int64_t pf_step = 0, bool add = false) {
  typedef float vec __attribute__((vector_size(VW * 4)));
  vec acc[MB][NB];
#pragma GCC unroll 64
  for (int i = 0; i < MB; ++i)
#pragma GCC unroll 64
    for (int j = 0; j < NB; ++j) acc[i][j] = vec{};
  int64_t k = 0;
  for (; k + VW <= K; k += VW) {
    vec wv[NB];
#pragma GCC unroll 64
    for (int j = 0; j < NB; ++j) ld(w[j] + k, wv[j]);
    if (pf) {  // paced prefetch of a later weight tile: pf_step bytes per step of VW
      for (int64_t b = 0; b < pf_step; b += 64) __builtin_prefetch(pf + b, 0, 2);
      pf += pf_step;
    }
#pragma GCC unroll 64
    for (int i = 0; i < MB; ++i) {
      vec xv;
      __builtin_memcpy(&xv, x[i] + k, sizeof(vec));
#pragma GCC unroll 64
      for (int j = 0; j < NB; ++j) acc[i][j] += xv * wv[j];
    }
  }
  static_assert(NB % 4 == 0, "the horizontal sums go four at a time");
  for (int i = 0; i < MB; ++i)
    for (int j0 = 0; j0 < NB; j0 += 4) {
      const auto sums = HSum4<VW>::run(acc[i][j0], acc[i][j0 + 1], acc[i][j0 + 2], acc[i][j0 + 3]);
      for (int j = j0; j < j0 + 4; ++j) {
        float s = sums[j - j0];
        for (int64_t kk = k; kk < K; ++kk) s += x[i][kk] * ld(w[j], kk);
        *o[i * NB + j] = add ? *o[i * NB + j] + s : s;
      }
    }
}

// Weight tiles ahead to prefetch (1 measured best of 1, 2, 4 with perf/bench_linear.py-like cold
// runs): hides DRAM latency when few rows leave little compute to overlap.
constexpr int kAhead = 1;

struct LinearArgs {
  const float* x = nullptr;  // [M, K] fp32
  const void* w = nullptr;   // [N, K]
  float* y = nullptr;        // [M, N] fp32, row stride ldy
  int64_t M = 0, N = 0, K = 0, ldy = 0;
  bool bf16_w = false;
};

// x rows [m0, m0 + MB) (all valid) against weight rows w[0..NB); outputs past N go to a dump slot.
template <int VW, int MB, int NB, typename W, typename Ld>
AL4_INLINE void row_tile(const LinearArgs& a, int64_t m0, int64_t n0, const W* const* w, Ld ld,
                         const char* pf = nullptr, int64_t pf_step = 0) {
  float dump = 0.0f;
  const float* x[MB];
  float* o[MB * NB];
  for (int i = 0; i < MB; ++i) {
    x[i] = a.x + (m0 + i) * a.K;
    for (int j = 0; j < NB; ++j) o[i * NB + j] = n0 + j < a.N ? a.y + (m0 + i) * a.ldy + n0 + j : &dump;
  }
  dot_tile<VW, MB, NB, W>(x, w, a.K, o, ld, pf, pf_step);
}

template <int VW, int MB, int NB, typename W, typename Ld>
AL4_INLINE void linear_rows(const LinearArgs& a, int64_t nb0, int64_t nb1, Ld ld) {
  const W* wp = static_cast<const W*>(a.w);
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    const int64_t n0 = nb * NB;
    const W* w[NB];
    for (int j = 0; j < NB; ++j) w[j] = wp + std::min(n0 + j, a.N - 1) * a.K;
    // The first row tile prefetches the weight tile kAhead ahead, paced over its K loop.
    const char* pf = nullptr;
    int64_t pf_step = 0;
    if (nb + kAhead < nb1) {
      pf = reinterpret_cast<const char*>(wp + (n0 + kAhead * NB) * a.K);
      const int64_t bytes = std::min<int64_t>(NB, a.N - n0 - kAhead * NB) * a.K * int64_t(sizeof(W));
      pf_step = ceil_div(bytes, std::max<int64_t>(1, a.K / VW)) + 63;
    }
    int64_t m0 = 0;
    for (; m0 + MB <= a.M; m0 += MB, pf = nullptr) row_tile<VW, MB, NB, W>(a, m0, n0, w, ld, pf, pf_step);
    // the last rows in 1-row tiles: one token must not pay for MB rows of FMAs
    for (; m0 < a.M; ++m0, pf = nullptr) row_tile<VW, 1, NB, W>(a, m0, n0, w, ld, pf, pf_step);
  }
}

template <int VW, int MB, int NB>
AL4_INLINE void linear_typed(const LinearArgs& a, int64_t nb0, int64_t nb1) {
  if (a.bf16_w)
    linear_rows<VW, MB, NB, bf16_t>(a, nb0, nb1, LoadBF16<VW>{});
  else
    linear_rows<VW, MB, NB, float>(a, nb0, nb1, LoadF32<VW>{});
}

}  // namespace al4::cpu
