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
// contiguous range of blocks (spanning weight boundaries, so both threads stream on q|k|v too),
// stealing the ends of the others' when done (parallel_ranges), and calls fn(p, first block, end
// block) per weight a piece touches.
template <typename F>
void split_blocks(const std::vector<TensorRef>& ws, int64_t rows, int64_t chunks, F&& fn) {
  constexpr size_t kInline = 8;  // q/k/v, gate/up: no heap allocation on the decode path
  int64_t first_inline[kInline + 1];
  std::vector<int64_t> first_heap(ws.size() > kInline ? ws.size() + 1 : 0);
  int64_t* first = ws.size() > kInline ? first_heap.data() : first_inline;
  first[0] = 0;
  for (size_t p = 0; p < ws.size(); ++p) first[p + 1] = first[p] + ceil_div(ws[p].size(0), rows);
  const int64_t blocks = first[ws.size()];
  // pieces of ~64 KB of weights: a steal costs one atomic per piece
  const int64_t step = std::max<int64_t>(1, (int64_t(64) << 10) / std::max<int64_t>(1, rows * ws[0].size(1) * 2));
  parallel_ranges(blocks, chunks, step, [&](int64_t b0, int64_t b1) {
    for (size_t p = 0; p < ws.size(); ++p) {
      const int64_t lo = std::max(b0, first[p]), hi = std::min(b1, first[p + 1]);
      if (lo < hi) fn(p, lo - first[p], hi - first[p]);
    }
  });
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
