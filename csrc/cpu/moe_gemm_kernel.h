// The CPU grouped-GEMM building blocks of fused MoE: weight-panel packing (any weight dtype ->
// fp32) and a register-blocked microkernel written with GCC/Clang vector extensions. Everything
// here is always_inline so that the ISA-specific wrappers in moe_gemm.cpp (target attributes:
// AVX-512, AVX2, baseline) compile it for their ISA: one source, no per-ISA copies.
#pragma once

#include <stdint.h>

#include "al4_fp8.h"

#define AL4_INLINE __attribute__((always_inline)) inline

namespace al4::cpu {

// Register tiling per ISA: VW floats per vector, a tile is MR rows x NV vectors; NW weight
// matrices (gate and up together, or down alone) share the activation loads.
template <int VW_, int MR2, int NV2, int MR1, int NV1>
struct TileCfg {
  static constexpr int VW = VW_;
  template <int NW>
  static constexpr int MR = NW == 2 ? MR2 : MR1;
  template <int NW>
  static constexpr int NV = NW == 2 ? NV2 : NV1;
};

// Weight element -> fp32. The fp8 decoder holds its 256-entry table.
struct DecF32 {
  AL4_INLINE float operator()(const float* p, int64_t i) const { return p[i]; }
};
struct DecBF16 {
  AL4_INLINE float operator()(const bf16_t* p, int64_t i) const { return bf16_to_f32(p[i].bits); }
};
struct DecFP8 {
  const float* table;
  AL4_INLINE float operator()(const uint8_t* p, int64_t i) const { return table[p[i]]; }
};

// dst[s - s0]: [kb, NR] fp32 <- W[k0:k0+kc, s*NR : s*NR+NR] for strips s in [s0, s1) (row stride
// ldw, ncols columns; columns past ncols zero-filled). Row by row, so the weights are read as
// whole row segments (sequential DRAM traffic); the scattered writes stay in cache.
template <int NR, typename W, typename Dec>
AL4_INLINE void pack_strips(const W* w, int64_t ldw, int64_t ncols, int64_t k0, int64_t kc, int64_t s0, int64_t s1,
                            int64_t kb, Dec dec, float* dst) {
  for (int64_t k = 0; k < kc; ++k) {
    const W* row = w + (k0 + k) * ldw;
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t n0 = s * NR;
      float* d = dst + ((s - s0) * kb + k) * NR;
      if (n0 + NR <= ncols) {
        for (int j = 0; j < NR; ++j) d[j] = dec(row, n0 + j);
      } else {
        for (int j = 0; j < NR; ++j) d[j] = n0 + j < ncols ? dec(row, n0 + j) : 0.0f;
      }
    }
  }
}

// c[w][i][0:NR] += sum_k a[i][k] * panel[w][k * ldp : k * ldp + NR] for i < MR, w < NW.
// Accumulators live in registers for the whole kc loop; a[i] are fp32 activation rows. Panels are
// packed (ldp = NR) or, for a few rows of fp32 weights, the weight matrix itself (ldp = its row
// stride): then packing would cost more than it saves. pf[0:npf]: cache lines to prefetch, one per
// k step, so that the next weights stream in steadily under the FMAs rather than in bursts.
template <int VW, int MR, int NV, int NW>
AL4_INLINE void microkernel(const float* const* a, int64_t kc, const float* const* panel, int64_t ldp,
                            float* const* c, const char* const* pf = nullptr, int64_t npf = 0) {
  typedef float vec __attribute__((vector_size(VW * 4)));
  vec acc[NW][MR][NV];
#pragma GCC unroll 64
  for (int w = 0; w < NW; ++w)
#pragma GCC unroll 64
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 64
      for (int v = 0; v < NV; ++v) __builtin_memcpy(&acc[w][i][v], c[w * MR + i] + v * VW, sizeof(vec));
  for (int64_t k = 0; k < kc; ++k) {
    if (k < npf) __builtin_prefetch(pf[k], 0, 2);
    vec b[NW][NV];
#pragma GCC unroll 64
    for (int w = 0; w < NW; ++w)
#pragma GCC unroll 64
      for (int v = 0; v < NV; ++v) __builtin_memcpy(&b[w][v], panel[w] + k * ldp + v * VW, sizeof(vec));
#pragma GCC unroll 64
    for (int i = 0; i < MR; ++i) {
      const float s = a[i][k];
#pragma GCC unroll 64
      for (int w = 0; w < NW; ++w)
#pragma GCC unroll 64
        for (int v = 0; v < NV; ++v) acc[w][i][v] += s * b[w][v];
    }
  }
#pragma GCC unroll 64
  for (int w = 0; w < NW; ++w)
#pragma GCC unroll 64
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 64
      for (int v = 0; v < NV; ++v) __builtin_memcpy(c[w * MR + i] + v * VW, &acc[w][i][v], sizeof(vec));
}

// VW weights at p as an fp32 vector (bf16: a 16-bit left shift of the bits, vectorised), and one.
template <typename V>
AL4_INLINE void load_wvec(const float* p, V& v) { __builtin_memcpy(&v, p, sizeof(V)); }
template <typename V>
AL4_INLINE void load_wvec(const bf16_t* p, V& v) {
  constexpr int VW = sizeof(V) / 4;
  uint32_t b[VW];
#pragma GCC unroll 64
  for (int l = 0; l < VW; ++l) b[l] = uint32_t(p[l].bits) << 16;
  __builtin_memcpy(&v, b, sizeof(V));
}
AL4_INLINE float load_w1(const float* p) { return *p; }
AL4_INLINE float load_w1(const bf16_t* p) { return bf16_to_f32(p->bits); }

// c[i * ldc + 0:ncols] += sum_{k0 <= k < k1} a[i * lda + k] * w[k * ldw + 0:ncols] for i < M (the
// decode step: a few rows per expert). Weight rows are read whole and in order, KR at a time (one
// sequential stream), with rows kAxpyAhead further on prefetched; the M output rows stay in L1, ldc
// apart (callers pad it past ncols: rows 4 KB apart alias in L1 and the store buffer).
// W: fp32 or bf16 (widened in registers: half the bytes of fp32 read, no packed copy). One weight
// row per pass (a purely sequential read, which wins in linear_kernel.h's dot products) measured
// slower here at 1 row (fp32 26 vs 38 GB/s, bf16 no better): each line then costs a c load + store.
constexpr int64_t kAxpyAhead = 16;  // 8-32 measured alike; none: 15% slower

// KR weight rows per pass: 8 for one or two output rows (half the partial-sum loads/stores per
// weight byte; fp32 3-8% faster than 4 rows in a same-process A/B at 1-2 rows, bf16 alike), 4 above
// (8 rows x M accumulators would spill).
template <int VW, int M, typename W, int KR = (M <= 2 ? 8 : 4)>
AL4_INLINE void rows_axpy(const float* a, int64_t lda, int64_t k0, int64_t k1, const W* w, int64_t ldw,
                          int64_t ncols, float* c, int64_t ldc) {
  typedef float vec __attribute__((vector_size(VW * 4)));
  const int64_t nv = ncols / VW * VW;
  int64_t k = k0;
  for (; k + KR <= k1; k += KR) {
    const W* w0 = w + k * ldw;
    float s[M][KR];
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < KR; ++j) s[i][j] = a[i * lda + k + j];
    const bool pf = k + kAxpyAhead + KR <= k1;
    for (int64_t col = 0; col < nv; col += VW) {
      vec x[KR];
#pragma GCC unroll 8
      for (int j = 0; j < KR; ++j) load_wvec(w0 + j * ldw + col, x[j]);
      if (pf)
#pragma GCC unroll 8
        for (int j = 0; j < KR; ++j) __builtin_prefetch(w0 + (kAxpyAhead + j) * ldw + col, 0, 2);
#pragma GCC unroll 16
      for (int i = 0; i < M; ++i) {
        vec acc;
        __builtin_memcpy(&acc, c + i * ldc + col, sizeof(vec));
        // pairwise sums: a shorter dependency chain than adding the rows one by one
        vec p[KR / 2];
#pragma GCC unroll 8
        for (int j = 0; j < KR / 2; ++j) p[j] = s[i][2 * j] * x[2 * j] + s[i][2 * j + 1] * x[2 * j + 1];
#pragma GCC unroll 8
        for (int j = 0; j < KR / 2; ++j) acc += p[j];
        __builtin_memcpy(c + i * ldc + col, &acc, sizeof(vec));
      }
    }
    for (int64_t col = nv; col < ncols; ++col)
      for (int i = 0; i < M; ++i) {
        float v = 0.0f;
        for (int j = 0; j < KR; ++j) v += s[i][j] * load_w1(w0 + j * ldw + col);
        c[i * ldc + col] += v;
      }
  }
  for (; k < k1; ++k)
    for (int i = 0; i < M; ++i) {
      const float si = a[i * lda + k];
      for (int64_t col = 0; col < ncols; ++col) c[i * ldc + col] += si * load_w1(w + k * ldw + col);
    }
}

}  // namespace al4::cpu
