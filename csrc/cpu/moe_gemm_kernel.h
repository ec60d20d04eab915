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

// dst: [kc, NR] fp32 <- W[k0:k0+kc, n0:n0+nr] (row stride ldw), columns past nr zero-filled.
template <int NR, typename W, typename Dec>
AL4_INLINE void pack_panel(const W* w, int64_t ldw, int64_t k0, int64_t kc, int64_t n0, int64_t nr, Dec dec,
                           float* dst) {
  for (int64_t k = 0; k < kc; ++k) {
    const W* row = w + (k0 + k) * ldw + n0;
    float* d = dst + k * NR;
    if (nr == NR) {
      for (int j = 0; j < NR; ++j) d[j] = dec(row, j);
    } else {
      for (int j = 0; j < NR; ++j) d[j] = j < nr ? dec(row, j) : 0.0f;
    }
  }
}

// c[w][i][0:NR] += sum_k a[i][k] * panel[w][k][0:NR] for i < MR, w < NW. Accumulators live in
// registers for the whole kc loop; a[i] are fp32 activation rows, panels are 64-byte aligned.
template <int VW, int MR, int NV, int NW>
AL4_INLINE void microkernel(const float* const* a, int64_t kc, const float* const* panel, float* const* c) {
  typedef float vec __attribute__((vector_size(VW * 4)));
  constexpr int NR = NV * VW;
  vec acc[NW][MR][NV];
#pragma GCC unroll 64
  for (int w = 0; w < NW; ++w)
#pragma GCC unroll 64
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 64
      for (int v = 0; v < NV; ++v) __builtin_memcpy(&acc[w][i][v], c[w * MR + i] + v * VW, sizeof(vec));
  for (int64_t k = 0; k < kc; ++k) {
    vec b[NW][NV];
#pragma GCC unroll 64
    for (int w = 0; w < NW; ++w)
#pragma GCC unroll 64
      for (int v = 0; v < NV; ++v) b[w][v] = *reinterpret_cast<const vec*>(panel[w] + k * NR + v * VW);
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

}  // namespace al4::cpu
