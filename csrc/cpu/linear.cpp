// Small-M linear on CPU: out[M, N] = x[M, K] @ W[N, K]^T (+ bias), W in nn.Linear's layout. Built
// for the decode step (M = a few rows): there the product is a weight stream, and a GEMM library's
// packing and blocking cost more than the arithmetic. Each output is a dot product over K; a tile
// of MB x rows and NB weight rows keeps MB*NB vector accumulators, so every weight vector loaded
// from memory feeds MB FMAs and the x rows stay in L1. Threads take contiguous ranges of weight
// rows: long sequential reads. fp32 math; bf16 weights are widened on load. Several weights that
// share the input (q/k/v, gate/up) run in one call: their outputs side by side in one [M, sum N].
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_ops.h"
#include "moe_gemm_kernel.h"  // AL4_INLINE

namespace al4::cpu {

namespace {

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

// o[i][j] = dot(x[i], w[j]) over K for i < MB, j < NB (rows past the end point at valid memory and
// their outputs at a dump slot).
template <int VW, int MB, int NB, typename W, typename Ld>
AL4_INLINE void dot_tile(const float* const* x, const W* const* w, int64_t K, float* const* o, Ld ld,
                         const char* pf = nullptr, int64_t pf_step = 0) {
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
        *o[i * NB + j] = s;
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

using RowsFn = void (*)(const LinearArgs&, int64_t, int64_t);
constexpr int kNB = 8;  // weight rows per tile, the same on every ISA (task ranges count tiles)

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("arch=x86-64-v4"))) void rows_v4(const LinearArgs& a, int64_t b0, int64_t b1) {
  linear_typed<16, 2, kNB>(a, b0, b1);  // 16 + 8 + 1 of 32 zmm
}
__attribute__((target("arch=x86-64-v3"))) void rows_v3(const LinearArgs& a, int64_t b0, int64_t b1) {
  linear_typed<8, 1, kNB>(a, b0, b1);  // 8 + 8 + 1 of 16 ymm
}
#endif
void rows_base(const LinearArgs& a, int64_t b0, int64_t b1) { linear_typed<4, 1, kNB>(a, b0, b1); }

RowsFn rows_fn() {
  const int level = cpu_isa_level();
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (level >= 4) return rows_v4;
  if (level >= 3) return rows_v3;
#endif
  (void)level;
  return rows_base;
}

}  // namespace

// x: [M, K] fp32|bf16; ws[p]: [N_p, K] of x's dtype; biases[p]: [N_p] or null -> out: [M, sum N_p] of
// x's dtype, weight p's outputs in columns [sum_{q<p} N_q, ... + N_p).
void linear(const TensorRef& x, const std::vector<TensorRef>& ws, const std::vector<const TensorRef*>& biases,
            const TensorRef& out) {
  const int64_t M = x.size(0), K = x.size(1), Ntot = out.size(1);
  std::vector<float> xf, yf;
  const float* xp = nullptr;
  float* yp = nullptr;
  dispatch_act(x, "linear", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float>) {
      xp = x.data<float>();
      yp = out.data<float>();
    } else {  // bf16: widen x, accumulate in fp32, round once at the end (as torch does)
      xf.resize(size_t(M * K));
      yf.resize(size_t(M * Ntot));
      for (int64_t i = 0; i < M * K; ++i) xf[i] = load_f32(x.data<T>(), i);
      xp = xf.data(), yp = yf.data();
    }
  });
  // One job list over all weights: (weight, its tiles [b0, b1)), contiguous tile ranges per thread.
  std::vector<LinearArgs> parts(ws.size());
  std::vector<int64_t> first_block(ws.size() + 1, 0);
  int64_t col = 0, work = 0;
  for (size_t p = 0; p < ws.size(); ++p) {
    LinearArgs& a = parts[p];
    a.M = M, a.K = K, a.N = ws[p].size(0), a.ldy = Ntot;
    a.x = xp, a.y = yp + col;
    a.w = reinterpret_cast<const void*>(ws[p].ptr);
    a.bf16_w = ws[p].dtype == kBF16;
    col += a.N;
    work += a.N * K;
    first_block[p + 1] = first_block[p] + ceil_div(a.N, int64_t(kNB));
  }
  static const RowsFn rows = rows_fn();
  const int64_t blocks = first_block.back();
  const int64_t threads = int64_t(omp_get_max_threads());
  const bool par = work * std::max<int64_t>(M, 4) > (1 << 16);  // tiny layers stay serial
  const int64_t chunks = par ? std::min(blocks, threads) : 1;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b0 = blocks * c / chunks, b1 = blocks * (c + 1) / chunks;
    for (size_t p = 0; p < parts.size(); ++p) {
      const int64_t lo = std::max(b0, first_block[p]), hi = std::min(b1, first_block[p + 1]);
      if (lo < hi) rows(parts[p], lo - first_block[p], hi - first_block[p]);
    }
  }
  bool any_bias = false;
  for (const TensorRef* b : biases) any_bias = any_bias || b != nullptr;
  if (x.dtype == kF32 && !any_bias) return;  // written in place
  dispatch_act(out, "linear", [&](auto tag) {
    using T = decltype(tag);
    T* op = out.data<T>();
    for (size_t p = 0, c0 = 0; p < parts.size(); c0 += parts[p].N, ++p)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < parts[p].N; ++n) {
          const int64_t i = m * Ntot + int64_t(c0) + n;
          store_f32(op, i, yp[i] + (biases[p] ? load_f32(biases[p]->data<T>(), n) : 0.0f));
        }
  });
}

}  // namespace al4::cpu
