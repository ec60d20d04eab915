// int4 weight-only (w4a16) CPU building blocks shared by int4_linear.cpp and int4_moe.cpp.
// Layout (amd_llama4/ops/int4.py): W [N, K] as q uint8 [N, K/2] (k = 2j low nibble, 2j+1 high),
// scales [N, K/G] fp32|bf16|fp16, zeros uint8 [N, K/G] or none (zero point 8);
// W[n, k] = (q[n, k] - z[n, k/G]) * s[n, k/G].
//
// Activations are handed to the kernels "nibble-permuted": within each block of 32 columns, the 16
// even columns first, then the 16 odd ones. Then the low nibbles of 16 packed bytes multiply 16
// consecutive floats and the high nibbles the next 16: no shuffles in the inner loop. G >= 32, so a
// block never straddles two groups.
#pragma once

#include <stdint.h>

#include "al4_tensor.h"

namespace al4::cpu {

struct Int4W {
  const uint8_t* q = nullptr;  // [N, K / 2]
  const void* s = nullptr;     // [N, K / G], dtype sdt
  int sdt = kF32;
  const uint8_t* z = nullptr;  // [N, K / G] or null (symmetric: 8)
  int64_t N = 0, K = 0, G = 0;
};

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return bits_to_f32(sign | 0x7f800000u | (m << 13));  // inf / nan
  if (e == 0) {                                                         // zero / subnormal: m * 2^-24
    const float v = float(m) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_to_f32(sign | ((e + 112u) << 23) | (m << 13));
}

inline float int4_scale(const Int4W& w, int64_t i) {
  if (w.sdt == kBF16) return bf16_to_f32(static_cast<const uint16_t*>(w.s)[i]);
  if (w.sdt == kF16) return f16_to_f32(static_cast<const uint16_t*>(w.s)[i]);
  return static_cast<const float*>(w.s)[i];
}

inline float int4_zero(const Int4W& w, int64_t i) { return w.z ? float(w.z[i]) : 8.0f; }

// xp[32c + t] = x[32c + 2t], xp[32c + 16 + t] = x[32c + 2t + 1] (t < 16), K % 32 == 0; x as fp32.
template <typename T>
inline void int4_permute_row(const T* x, int64_t K, float* xp) {
  for (int64_t c = 0; c < K; c += 32)
    for (int t = 0; t < 16; ++t) {
      xp[c + t] = load_f32(x, c + 2 * t);
      xp[c + 16 + t] = load_f32(x, c + 2 * t + 1);
    }
}
inline void int4_permute_row(const float* x, int64_t K, float* xp) { int4_permute_row<float>(x, K, xp); }

// y[i * ldy + n] = sum_k x_i[k] W[n, k] for rows i < M and weight rows n in [n0, n1); xp: M
// permuted fp32 rows, row stride ldx. The AVX-512 / AVX2 / portable body is chosen at run time.
using Int4RowsFn = void (*)(const Int4W& w, const float* xp, int64_t M, int64_t ldx, float* y, int64_t ldy,
                            int64_t n0, int64_t n1);
Int4RowsFn int4_rows_fn();
const char* int4_isa();

// Weight rows per kernel tile (thread ranges are whole tiles).
constexpr int64_t kInt4NB = 4;

}  // namespace al4::cpu
