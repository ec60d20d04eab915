// Small-M linear on CPU: out[M, N] = x[M, K] @ W[N, K]^T (+ bias), W in nn.Linear's layout. Built
// for the decode step (M = a few rows): there the product is a weight stream, and a GEMM library's
// packing and blocking cost more than the arithmetic. Each output is a dot product over K; a tile
// of MB x rows and NB weight rows keeps MB*NB vector accumulators, so every weight vector loaded
// from memory feeds MB FMAs and the x rows stay in L1. Threads take contiguous ranges of weight
// rows: long sequential reads. fp32 math; bf16 weights are widened on load.
#include <algorithm>
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

// o[i][j] = dot(x[i], w[j]) over K for i < MB, j < NB (rows past the end point at valid memory and
// their outputs at a dump slot).
template <int VW, int MB, int NB, typename W, typename Ld>
AL4_INLINE void dot_tile(const float* const* x, const W* const* w, int64_t K, float* const* o, Ld ld) {
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
#pragma GCC unroll 64
    for (int i = 0; i < MB; ++i) {
      vec xv;
      __builtin_memcpy(&xv, x[i] + k, sizeof(vec));
#pragma GCC unroll 64
      for (int j = 0; j < NB; ++j) acc[i][j] += xv * wv[j];
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) {
      float s = 0.0f;
      for (int l = 0; l < VW; ++l) s += acc[i][j][l];
      for (int64_t kk = k; kk < K; ++kk) s += x[i][kk] * ld(w[j], kk);
      *o[i * NB + j] = s;
    }
}

struct LinearArgs {
  const float* x = nullptr;  // [M, K] fp32
  const void* w = nullptr;   // [N, K]
  float* y = nullptr;        // [M, N] fp32
  int64_t M = 0, N = 0, K = 0;
  bool bf16_w = false;
};

template <int VW, int MB, int NB, typename W, typename Ld>
AL4_INLINE void linear_rows(const LinearArgs& a, int64_t nb0, int64_t nb1, Ld ld) {
  const W* wp = static_cast<const W*>(a.w);
  float dump = 0.0f;
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    const int64_t n0 = nb * NB;
    const W* w[NB];
    for (int j = 0; j < NB; ++j) w[j] = wp + std::min(n0 + j, a.N - 1) * a.K;
    for (int64_t m0 = 0; m0 < a.M; m0 += MB) {
      const float* x[MB];
      float* o[MB * NB];
      for (int i = 0; i < MB; ++i) {
        const bool row_ok = m0 + i < a.M;
        x[i] = a.x + (row_ok ? m0 + i : 0) * a.K;
        for (int j = 0; j < NB; ++j) o[i * NB + j] = row_ok && n0 + j < a.N ? a.y + (m0 + i) * a.N + n0 + j : &dump;
      }
      dot_tile<VW, MB, NB, W>(x, w, a.K, o, ld);
    }
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
constexpr int kNB = 4;  // weight rows per tile, the same on every ISA (task ranges count tiles)

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("arch=x86-64-v4"))) void rows_v4(const LinearArgs& a, int64_t b0, int64_t b1) {
  linear_typed<16, 4, kNB>(a, b0, b1);  // 16 + 4 + 1 of 32 zmm
}
__attribute__((target("arch=x86-64-v3"))) void rows_v3(const LinearArgs& a, int64_t b0, int64_t b1) {
  linear_typed<8, 2, kNB>(a, b0, b1);  // 8 + 4 + 1 of 16 ymm
}
#endif
void rows_base(const LinearArgs& a, int64_t b0, int64_t b1) { linear_typed<4, 2, kNB>(a, b0, b1); }

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

// x: [M, K] fp32|bf16; w: [N, K] of x's dtype; bias: [N] or null -> out: [M, N] of x's dtype.
void linear(const TensorRef& x, const TensorRef& w, const TensorRef* bias, const TensorRef& out) {
  LinearArgs a;
  a.M = x.size(0), a.K = x.size(1), a.N = w.size(0);
  a.w = reinterpret_cast<const void*>(w.ptr);
  a.bf16_w = w.dtype == kBF16;
  std::vector<float> xf, yf;
  dispatch_act(x, "linear", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float>) {
      a.x = x.data<float>();
      a.y = out.data<float>();
    } else {  // bf16: widen x, accumulate in fp32, round once at the end (as torch does)
      xf.resize(size_t(a.M * a.K));
      yf.resize(size_t(a.M * a.N));
      for (int64_t i = 0; i < a.M * a.K; ++i) xf[i] = load_f32(x.data<T>(), i);
      a.x = xf.data(), a.y = yf.data();
    }
  });
  static const RowsFn rows = rows_fn();
  const int64_t blocks = ceil_div(a.N, int64_t(kNB));
  const int64_t threads = int64_t(omp_get_max_threads());
  const bool par = a.N * a.K * std::max<int64_t>(a.M, 4) > (1 << 16);  // tiny layers stay serial
  const int64_t chunks = par ? std::min(blocks, threads) : 1;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) rows(a, blocks * c / chunks, blocks * (c + 1) / chunks);
  if (x.dtype == kF32 && bias == nullptr) return;  // written in place
  dispatch_act(out, "linear", [&](auto tag) {
    using T = decltype(tag);
    T* op = out.data<T>();
    for (int64_t m = 0; m < a.M; ++m)
      for (int64_t n = 0; n < a.N; ++n)
        store_f32(op, m * a.N + n, a.y[m * a.N + n] + (bias ? load_f32(bias->data<T>(), n) : 0.0f));
  });
}

}  // namespace al4::cpu
