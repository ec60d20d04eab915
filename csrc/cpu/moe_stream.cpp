// Fused MoE at decode (fp32|bf16 weights, a few rows per expert): the step is bound by reading the
// active experts' weights, so both paths read each of them once as long sequential streams.
//   Input-major weights (HF's [E, H, 2I] / [E, I, H]): axpy over weight rows into partial sums.
//   Output-major weights (the same logical tensors stored [E, 2I, H] / [E, H, I], as a CPU model
//   keeps them, model/loader.py): each output is a dot product over one contiguous weight row
//   (linear_kernel.h's row_dots) and each thread streams one contiguous range of rows, as the
//   one-row linear does. No partial sums, and one stream per thread instead of KR interleaved rows
//   (which the hardware prefetcher follows worse).
// Roundings as moe_gemm.cpp's gate_up_task / down_task make them (the reference's bf16 GEMM outputs).
#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <vector>

#include "linear_kernel.h"
#include "moe_gemm_internal.h"

namespace al4::cpu::moe {

namespace {

// Row stride of a decode task's partial sums: one cache line past the columns, so that rows at
// 4 KB multiples (cols = 1024 fp32) do not alias each other in L1 and the store buffer.
constexpr int64_t part_ld(int64_t cols) { return cols + 16; }

// Decode task: part[0:n][0:cols] (row stride part_ld(cols)) = A[0:n][k0:k1] W[k0:k1][0:cols] (fp32
// or bf16 W, row stride ldw), 8 rows per pass over the weights.
template <int VW, typename W>
AL4_INLINE void axpy_rows_typed(const float* A, int64_t lda, int64_t n, const W* w, int64_t ldw, int64_t cols,
                                int64_t k0, int64_t k1, float* part) {
  const int64_t ldc = part_ld(cols);
  std::memset(part, 0, sizeof(float) * n * ldc);
  for (int64_t i0 = 0; i0 < n; i0 += 8) {
    const float* a = A + i0 * lda;
    float* c = part + i0 * ldc;
    switch (std::min<int64_t>(8, n - i0)) {
      case 1: rows_axpy<VW, 1>(a, lda, k0, k1, w, ldw, cols, c, ldc); break;
      case 2: rows_axpy<VW, 2>(a, lda, k0, k1, w, ldw, cols, c, ldc); break;
      case 3: rows_axpy<VW, 3>(a, lda, k0, k1, w, ldw, cols, c, ldc); break;
      case 4: rows_axpy<VW, 4>(a, lda, k0, k1, w, ldw, cols, c, ldc); break;
      case 5: rows_axpy<VW, 5>(a, lda, k0, k1, w, ldw, cols, c, ldc); break;
      case 6: rows_axpy<VW, 6>(a, lda, k0, k1, w, ldw, cols, c, ldc); break;
      case 7: rows_axpy<VW, 7>(a, lda, k0, k1, w, ldw, cols, c, ldc); break;
      default: rows_axpy<VW, 8>(a, lda, k0, k1, w, ldw, cols, c, ldc); break;
    }
  }
}
template <int VW>
AL4_INLINE void axpy_rows(const float* A, int64_t lda, int64_t n, const void* w, bool bf16, int64_t ldw, int64_t cols,
                          int64_t k0, int64_t k1, float* part) {
  if (bf16)
    axpy_rows_typed<VW>(A, lda, n, static_cast<const bf16_t*>(w), ldw, cols, k0, k1, part);
  else
    axpy_rows_typed<VW>(A, lda, n, static_cast<const float*>(w), ldw, cols, k0, k1, part);
}
using AxpyFn = void (*)(const float*, int64_t, int64_t, const void*, bool, int64_t, int64_t, int64_t, int64_t, float*);


// Output-major: one x row, row_dots into fp32 outputs (no bias); several, linear_kernel.h's tiles.
template <int VW>
AL4_INLINE void dots(const float* x, int64_t half, const void* w, bool bf16, int64_t N, int64_t K, int64_t g0,
                     int64_t g1, float* out) {
  if (bf16)
    row_dots<VW>(x, half, static_cast<const bf16_t*>(w), static_cast<const float*>(nullptr), out, N, K, g0, g1);
  else
    row_dots<VW>(x, half, static_cast<const float*>(w), static_cast<const float*>(nullptr), out, N, K, g0, g1);
}
using DotFn = void (*)(const float*, int64_t, const void*, bool, int64_t, int64_t, int64_t, int64_t, float*);
using RowsFn = void (*)(const LinearArgs&, int64_t, int64_t);
constexpr int kUnit = 8;  // weight rows per work unit: two row_dots groups, one tile of the row kernels

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define AL4_TARGET_V4 __attribute__((target("arch=x86-64-v4")))
#define AL4_TARGET_V3 __attribute__((target("arch=x86-64-v3")))
AL4_TARGET_V4 void axpy_v4(const float* A, int64_t lda, int64_t n, const void* w, bool bf, int64_t ldw, int64_t cols, int64_t k0, int64_t k1, float* p) { axpy_rows<16>(A, lda, n, w, bf, ldw, cols, k0, k1, p); }
AL4_TARGET_V3 void axpy_v3(const float* A, int64_t lda, int64_t n, const void* w, bool bf, int64_t ldw, int64_t cols, int64_t k0, int64_t k1, float* p) { axpy_rows<8>(A, lda, n, w, bf, ldw, cols, k0, k1, p); }
AL4_TARGET_V4 void dots_v4(const float* x, int64_t half, const void* w, bool bf, int64_t N, int64_t K, int64_t g0, int64_t g1, float* o) { dots<16>(x, half, w, bf, N, K, g0, g1, o); }
AL4_TARGET_V3 void dots_v3(const float* x, int64_t half, const void* w, bool bf, int64_t N, int64_t K, int64_t g0, int64_t g1, float* o) { dots<8>(x, half, w, bf, N, K, g0, g1, o); }
AL4_TARGET_V4 void rows_v4(const LinearArgs& a, int64_t b0, int64_t b1) { linear_typed<16, 2, kUnit>(a, b0, b1); }
AL4_TARGET_V3 void rows_v3(const LinearArgs& a, int64_t b0, int64_t b1) { linear_typed<8, 1, kUnit>(a, b0, b1); }
#endif
void axpy_base(const float* A, int64_t lda, int64_t n, const void* w, bool bf, int64_t ldw, int64_t cols, int64_t k0, int64_t k1, float* p) { axpy_rows<4>(A, lda, n, w, bf, ldw, cols, k0, k1, p); }
void dots_base(const float* x, int64_t half, const void* w, bool bf, int64_t N, int64_t K, int64_t g0, int64_t g1, float* o) { dots<4>(x, half, w, bf, N, K, g0, g1, o); }
void rows_base(const LinearArgs& a, int64_t b0, int64_t b1) { linear_typed<4, 1, kUnit>(a, b0, b1); }

struct StreamIsa {
  AxpyFn axpy;
  DotFn dot;
  RowsFn rows;
};

const StreamIsa& stream_isa() {
  static const StreamIsa chosen = [] {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    const int level = cpu_isa_level();
    if (level >= 4) return StreamIsa{axpy_v4, dots_v4, rows_v4};
    if (level >= 3) return StreamIsa{axpy_v3, dots_v3, rows_v3};
#endif
    return StreamIsa{axpy_base, dots_base, rows_base};
  }();
  return chosen;
}

// Input-major weights: a task is (expert, a range of weight
// rows) and writes partial sums; the partials of an expert's ks ranges are added after each GEMM. At
// decode shapes this is 20-35% faster than column-strip tasks (strided row segments); for bf16 it
// also skips packing the weights to fp32 panels (the panel path read the expert 2.5x slower).
// bf16 roundings as gate_up_task / down_task make them (the reference's bf16 GEMM outputs).
void streamed_axpy(const MoeArgs& g, AxpyFn axpy, int64_t N, int64_t active, bool bf16_w) {
  const int64_t H = g.H, I = g.I;
  // K ranges per expert: about 4 tasks per thread, each range at least 64 rows
  const int64_t ks = std::clamp<int64_t>(ceil_div(4 * int64_t(omp_get_max_threads()), std::max<int64_t>(active, 1)), 1,
                                         std::max<int64_t>(1, std::min(H, I) / 64));
  std::vector<std::array<int64_t, 2>> tasks;
  for (int64_t e = 0; e < g.E; ++e)
    if (g.off[e + 1] > g.off[e])
      for (int64_t j = 0; j < ks; ++j) tasks.push_back({e, j});
  const int64_t nt = int64_t(tasks.size());
  // Uninitialised: each task zeroes its own [rows, part_ld(cols)] part before adding to it. Kept
  // between calls (row_buffer): at decode a fresh buffer (128 KB+) is an mmap and page faults per call.
  std::unique_ptr<float[]> fresh;
  float* parts = row_buffer(3, size_t(ks * N * part_ld(std::max(2 * I, H))), fresh);
  auto part = [&](int64_t j, int64_t r, int64_t cols) { return parts + (j * N + r) * part_ld(cols); };
  const int64_t esize = bf16_w ? 2 : 4;
  auto gemm = [&](const float* A, int64_t K, const void* W, int64_t cols) {  // part j = A W over range j
#pragma omp parallel for schedule(dynamic, 1) if (nt > 1)
    for (int64_t t = 0; t < nt; ++t) {
      const int64_t e = tasks[t][0], j = tasks[t][1], r0 = g.off[e];
      axpy(A + r0 * K, K, g.off[e + 1] - r0, static_cast<const char*>(W) + e * K * cols * esize, bf16_w, cols, cols,
           j * K / ks, (j + 1) * K / ks, part(j, r0, cols));
    }
  };

  gemm(g.xin, H, g.w1, 2 * I);
  parallel_rows_cols(N, I, kParallelMinExp, [&](int64_t r, int64_t c0, int64_t c1) {
    float* hrow = g.h + r * I;
    for (int64_t c = c0; c < c1; ++c) {
      float gv = 0.0f, uv = 0.0f;
      for (int64_t j = 0; j < ks; ++j) gv += part(j, r, 2 * I)[c], uv += part(j, r, 2 * I)[I + c];
      gv = act_round(gv, g.bf16_act), uv = act_round(uv, g.bf16_act);
      hrow[c] = act_round(act_round(silu_f32(gv), g.bf16_act) * uv, g.bf16_act);
    }
  });
  gemm(g.h, I, g.w2, H);
  // ks partial sums per element: split a decode row's columns too
  parallel_rows_cols(N, H, kParallelMin / ks, [&](int64_t r, int64_t c0, int64_t c1) {
    float* yrow = g.y + r * H;
    for (int64_t c = c0; c < c1; ++c) {
      float v = 0.0f;
      for (int64_t j = 0; j < ks; ++j) v += part(j, r, H)[c];
      yrow[c] = act_round(v, g.bf16_act);
    }
  });
}

// x rows [n, K] fp32 -> as Step<VW, W> reads them (row stride *ldx): fp32 as they are; for bf16
// weights each row split into its even | odd elements (`half` each, zero-padded).
const float* prepare_rows(const float* x, int64_t n, int64_t K, bool bf16, std::unique_ptr<float[]>& fresh,
                          int64_t* ldx, int64_t* half) {
  if (!bf16) {
    *ldx = K, *half = 0;
    return x;
  }
  const int64_t hf = (K + 1) / 2;
  float* xs = row_buffer(4, size_t(n * 2 * hf), fresh);
#pragma omp parallel for schedule(static) if (n * K > kParallelMin)
  for (int64_t r = 0; r < n; ++r) {
    const float* src = x + r * K;
    float* dst = xs + r * 2 * hf;
    for (int64_t j = 0; j < hf; ++j) {
      dst[j] = src[2 * j];
      dst[hf + j] = 2 * j + 1 < K ? src[2 * j + 1] : 0.0f;
    }
  }
  *ldx = 2 * hf, *half = hf;
  return xs;
}

// out[r, 0:M] = x[r] . W_e[m, 0:K] for the rows r of each active expert e (W: [E, M, K], output-major),
// rounded as the activations are; x fp32 rows, xp the same prepared for row_dots (row stride ldx).
// The active experts' kUnit-row weight blocks form one list; each thread takes a contiguous range of
// it (one sequential read per thread, across expert boundaries too), then steals the others' ends.
// An expert with one row uses row_dots; with several, the row tiles (each weight vector loaded
// feeds several rows).
void dot_gemm(const MoeArgs& g, const int64_t* act, int64_t active, const float* x, const float* xp, int64_t ldx,
              int64_t half, const void* W, bool bf16, int64_t M, int64_t K, float* out) {
  const StreamIsa& is = stream_isa();
  const int64_t units = ceil_div(M, int64_t(kUnit)), total = active * units;
  const int64_t esize = bf16 ? 2 : 4;
  const int64_t threads = active * M * K > (1 << 16) ? omp_get_max_threads() : 1;
  // pieces of ~64 KB of weights (parallel_ranges: own share front to back, then steal)
  const int64_t step = std::max<int64_t>(1, (int64_t(64) << 10) / (kUnit * K * esize));
  parallel_ranges(total, threads, step, [&](int64_t b0, int64_t b1) {
    for (int64_t a = b0 / units; a < active && a * units < b1; ++a) {
      const int64_t e = act[a], r0 = g.off[e], n = g.off[e + 1] - r0;
      const int64_t lo = std::max(b0, a * units) - a * units, hi = std::min(b1, (a + 1) * units) - a * units;
      const void* we = static_cast<const char*>(W) + e * M * K * esize;
      if (n == 1) {
        is.dot(xp + r0 * ldx, half, we, bf16, M, K, lo * (kUnit / 4), hi * (kUnit / 4), out + r0 * M);
      } else {
        LinearArgs la;
        la.x = x + r0 * K, la.w = we, la.y = out + r0 * M;
        la.M = n, la.N = M, la.K = K, la.ldy = M, la.bf16_w = bf16;
        is.rows(la, lo, hi);
      }
      if (g.bf16_act)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t m = lo * kUnit; m < std::min(M, hi * kUnit); ++m)
            out[(r0 + i) * M + m] = round_to<bf16_t>(out[(r0 + i) * M + m]);
    }
  });
}

void streamed_dot(const MoeArgs& g, int64_t N, int64_t active, bool bf16_w) {
  const int64_t H = g.H, I = g.I;
  int64_t act_inline[64];  // Scout: 16 experts; Maverick: 128
  std::vector<int64_t> act_heap(g.E > 64 ? g.E : 0);
  int64_t* act = g.E > 64 ? act_heap.data() : act_inline;
  for (int64_t e = 0, a = 0; e < g.E; ++e)
    if (g.off[e + 1] > g.off[e]) act[a++] = e;
  std::unique_ptr<float[]> fresh[3];
  int64_t ldx = 0, half = 0;
  const float* xp = prepare_rows(g.xin, N, H, bf16_w, fresh[0], &ldx, &half);
  float* gu = row_buffer(5, size_t(N * 2 * I), fresh[1]);  // [N, 2I]: gate | up
  dot_gemm(g, act, active, g.xin, xp, ldx, half, g.w1, bf16_w, 2 * I, H, gu);
  parallel_rows_cols(N, I, kParallelMinExp, [&](int64_t r, int64_t c0, int64_t c1) {
    const float* gate = gu + r * 2 * I;
    float* hrow = g.h + r * I;
    for (int64_t c = c0; c < c1; ++c)
      hrow[c] = act_round(act_round(silu_f32(gate[c]), g.bf16_act) * gate[I + c], g.bf16_act);
  });
  const float* hp = prepare_rows(g.h, N, I, bf16_w, fresh[2], &ldx, &half);
  dot_gemm(g, act, active, g.h, hp, ldx, half, g.w2, bf16_w, H, I, g.y);
}

}  // namespace

void streamed_moe(const MoeArgs& g, int64_t N, int64_t active, bool bf16_w) {
  if (g.out_major)
    streamed_dot(g, N, active, bf16_w);
  else
    streamed_axpy(g, stream_isa().axpy, N, active, bf16_w);
}

}  // namespace al4::cpu::moe
