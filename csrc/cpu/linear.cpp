// Small-M linear on CPU: out[M, N] = x[M, K] @ W[N, K]^T (+ bias), W in nn.Linear's layout. Built
// for the decode step (M = a few rows): there the product is a weight stream, and a GEMM library's
// packing and blocking cost more than the arithmetic. Each output is a dot product over K.
// One x row (batch-1 decode): linear_kernel.h's row_dots, each thread reading its range of weight
// rows as one sequential stream. Several rows: a tile of MB x rows and NB weight rows keeps MB*NB
// vector accumulators, so every weight vector loaded from memory feeds MB FMAs and the x rows stay
// in L1. Threads take contiguous ranges of weight rows: long sequential reads. fp32 math; bf16
// weights are widened on load. Several weights that share the input (q/k/v, gate/up) run in one
// call: their outputs side by side in one [M, sum N].
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_ops.h"
#include "linear_kernel.h"  // row_dots, HSum4, AL4_INLINE

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

// One x row: row groups [g0, g1) of 4 weight rows, outputs (+ bias) written in the activation dtype.
struct RowArgs {
  const float* x = nullptr;  // fp32: x; bf16: x split even | odd (`half` each)
  int64_t half = 0;
  const void* w = nullptr;     // [N, K]
  const void* bias = nullptr;  // [N] or null
  void* out = nullptr;         // this weight's first output column
  int64_t N = 0, K = 0;
  bool bf16 = false;
};
using OneRowFn = void (*)(const RowArgs&, int64_t, int64_t);

template <int VW>
AL4_INLINE void one_row_typed(const RowArgs& a, int64_t g0, int64_t g1) {
  if (a.bf16)
    row_dots<VW>(a.x, a.half, static_cast<const bf16_t*>(a.w), static_cast<const bf16_t*>(a.bias),
                 static_cast<bf16_t*>(a.out), a.N, a.K, g0, g1);
  else
    row_dots<VW>(a.x, a.half, static_cast<const float*>(a.w), static_cast<const float*>(a.bias),
                 static_cast<float*>(a.out), a.N, a.K, g0, g1);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("arch=x86-64-v4"))) void rows_v4(const LinearArgs& a, int64_t b0, int64_t b1) {
  linear_typed<16, 2, kNB>(a, b0, b1);  // 16 + 8 + 1 of 32 zmm
}
__attribute__((target("arch=x86-64-v3"))) void rows_v3(const LinearArgs& a, int64_t b0, int64_t b1) {
  linear_typed<8, 1, kNB>(a, b0, b1);  // 8 + 8 + 1 of 16 ymm
}
__attribute__((target("arch=x86-64-v4"))) void one_row_v4(const RowArgs& a, int64_t g0, int64_t g1) {
  one_row_typed<16>(a, g0, g1);
}
__attribute__((target("arch=x86-64-v3"))) void one_row_v3(const RowArgs& a, int64_t g0, int64_t g1) {
  one_row_typed<8>(a, g0, g1);
}
#endif
void rows_base(const LinearArgs& a, int64_t b0, int64_t b1) { linear_typed<4, 1, kNB>(a, b0, b1); }
void one_row_base(const RowArgs& a, int64_t g0, int64_t g1) { one_row_typed<4>(a, g0, g1); }

struct Kernels {
  RowsFn rows;
  OneRowFn one_row;
};

Kernels kernels() {
  const int level = cpu_isa_level();
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (level >= 4) return {rows_v4, one_row_v4};
  if (level >= 3) return {rows_v3, one_row_v3};
#endif
  (void)level;
  return {rows_base, one_row_base};
}

// The calling thread's fp32 copies of x and of the fp32 outputs (bf16 or bias), kept between calls:
// the decode step calls linear ~50 times per token, no allocation after the first.
float* thread_buffer(int slot, size_t n) {
  thread_local std::vector<float> bufs[2];
  if (bufs[slot].size() < n) bufs[slot].resize(n);
  return bufs[slot].data();
}

// Every weight's rows in blocks of `rows` as one job list; each of `chunks` threads takes a
// contiguous range of blocks (spanning weight boundaries, so both threads stream on q|k|v too) and
// calls fn(p, first block, end block) per weight it touches.
template <typename F>
void split_blocks(const std::vector<TensorRef>& ws, int64_t rows, int64_t chunks, F&& fn) {
  constexpr size_t kInline = 8;  // q/k/v, gate/up: no heap allocation on the decode path
  int64_t first_inline[kInline + 1];
  std::vector<int64_t> first_heap(ws.size() > kInline ? ws.size() + 1 : 0);
  int64_t* first = ws.size() > kInline ? first_heap.data() : first_inline;
  first[0] = 0;
  for (size_t p = 0; p < ws.size(); ++p) first[p + 1] = first[p] + ceil_div(ws[p].size(0), rows);
  const int64_t blocks = first[ws.size()];
  chunks = std::max<int64_t>(1, std::min(chunks, blocks));
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b0 = blocks * c / chunks, b1 = blocks * (c + 1) / chunks;
    for (size_t p = 0; p < ws.size(); ++p) {
      const int64_t lo = std::max(b0, first[p]), hi = std::min(b1, first[p + 1]);
      if (lo < hi) fn(p, lo - first[p], hi - first[p]);
    }
  }
}

}  // namespace

// x: [M, K] fp32|bf16; ws[p]: [N_p, K] of x's dtype; biases[p]: [N_p] or null -> out: [M, sum N_p] of
// x's dtype, weight p's outputs in columns [sum_{q<p} N_q, ... + N_p). All contiguous.
void linear(const TensorRef& x, const std::vector<TensorRef>& ws, const std::vector<const TensorRef*>& biases,
            const TensorRef& out) {
  const int64_t M = x.size(0), K = x.size(1), Ntot = out.size(1);
  dispatch_act(x, "linear", [](auto) {});  // fp32 | bf16, else a named error
  if (M == 0 || Ntot == 0) return;
  const bool bf16 = x.dtype == kBF16;
  static const Kernels kern = kernels();
  int64_t work = 0;
  for (const TensorRef& w : ws) work += w.size(0) * K;
  const bool par = work * std::max<int64_t>(M, 4) > (1 << 16);  // tiny layers stay serial
  const int64_t chunks = par ? int64_t(omp_get_max_threads()) : 1;
  const size_t elt = bf16 ? 2 : 4;
  int64_t col0_inline[8];  // weight p's first output column
  std::vector<int64_t> col0_heap(ws.size() > 8 ? ws.size() : 0);
  int64_t* col0 = ws.size() > 8 ? col0_heap.data() : col0_inline;
  for (size_t p = 0, c = 0; p < ws.size(); c += size_t(ws[p].size(0)), ++p) col0[p] = int64_t(c);

  if (M == 1) {  // outputs (+ bias) written by the kernel in x's dtype
    const float* xp = x.data<float>();
    int64_t half = 0;
    if (bf16) {  // x split into its even and odd elements, widened (Step<VW, bf16_t>)
      half = (K + 1) / 2;
      float* xs = thread_buffer(0, size_t(2 * half));
      const bf16_t* xb = x.data<bf16_t>();
      for (int64_t j = 0; j < half; ++j) {
        xs[j] = bf16_to_f32(xb[2 * j].bits);
        xs[half + j] = 2 * j + 1 < K ? bf16_to_f32(xb[2 * j + 1].bits) : 0.0f;
      }
      xp = xs;
    }
    split_blocks(ws, 4, chunks, [&](size_t p, int64_t g0, int64_t g1) {
      RowArgs a;
      a.x = xp, a.half = half, a.K = K, a.N = ws[p].size(0), a.bf16 = bf16;
      a.w = reinterpret_cast<const void*>(ws[p].ptr);
      a.bias = biases[p] ? reinterpret_cast<const void*>(biases[p]->ptr) : nullptr;
      a.out = reinterpret_cast<char*>(out.ptr) + col0[p] * elt;
      kern.one_row(a, g0, g1);
    });
    return;
  }

  // Several rows: fp32 x and y (bf16 widened; y rounded with the bias added at the end, as torch).
  const bool direct = !bf16 && std::all_of(biases.begin(), biases.end(), [](const TensorRef* b) { return !b; });
  const float* xp = x.data<float>();
  if (bf16) {
    float* xf = thread_buffer(0, size_t(M * K));
    for (int64_t i = 0; i < M * K; ++i) xf[i] = load_f32(x.data<bf16_t>(), i);
    xp = xf;
  }
  float* yp = direct ? out.data<float>() : thread_buffer(1, size_t(M * Ntot));
  split_blocks(ws, kNB, chunks, [&](size_t p, int64_t b0, int64_t b1) {
    LinearArgs a;
    a.M = M, a.K = K, a.N = ws[p].size(0), a.ldy = Ntot;
    a.x = xp, a.y = yp + col0[p];
    a.w = reinterpret_cast<const void*>(ws[p].ptr);
    a.bf16_w = bf16;
    kern.rows(a, b0, b1);
  });
  if (direct) return;  // written in place
  dispatch_act(out, "linear", [&](auto tag) {
    using T = decltype(tag);
    T* op = out.data<T>();
    for (size_t p = 0; p < ws.size(); ++p)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < ws[p].size(0); ++n) {
          const int64_t i = m * Ntot + col0[p] + n;
          store_f32(op, i, yp[i] + (biases[p] ? load_f32(biases[p]->data<T>(), n) : 0.0f));
        }
  });
}

}  // namespace al4::cpu
