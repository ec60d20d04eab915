// int4 weight-only (w4a16) CPU building blocks shared by int4_linear.cpp, int4_moe.cpp and the
// AVX-512 BF16 body (int4_avx512.cpp).
// Layout (amd_llama4/ops/int4.py): W [N, K] as q uint8 [N, K/2] (k = 2j low nibble, 2j+1 high),
// scales [N, K/G] fp32|bf16|fp16, zeros uint8 [N, K/G] or none (zero point 8);
// W[n, k] = (q[n, k] - z[n, k/G]) * s[n, k/G].
//
// A kernel body is a pair: `prep` lays the M activation rows out once per call in the order its
// inner loop reads them (so that unpacked nibbles meet their activations without shuffles), then
// `rows` computes weight rows [n0, n1) from that layout, one call per thread.
#pragma once

#include <stdint.h>

#include <vector>

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

// M activation rows of width K (row stride ld elements), fp32 or bf16. `bf16_values`: fp32 rows
// whose values the caller already rounded to bf16 (the MoE's rounded intermediates), which a bf16
// body may then take as bf16, exactly.
struct Int4In {
  const void* x = nullptr;
  int dtype = kF32;
  int64_t M = 0, K = 0, ld = 0;
  bool bf16_values = false;
};

// The rows as a body's prep laid them out: row m at data + m * row_bytes, in the body's own format.
struct Int4Act {
  const char* data = nullptr;
  int64_t M = 0, K = 0, row_bytes = 0;
  bool bf16 = false;            // AVX-512 body: bf16 values (for vdpbf16ps), else fp32
  const float* xsum = nullptr;  // [M, NG] sums of x per weight group (zero-point weights), else null
  int64_t NG = 0;
};

// Rows [first, first + count) of a prepared activation (the MoE's rows of one expert).
inline Int4Act int4_act_rows(const Int4Act& a, int64_t first, int64_t count) {
  Int4Act r = a;
  r.data = a.data + first * a.row_bytes;
  r.xsum = a.xsum ? a.xsum + first * a.NG : nullptr;
  r.M = count;
  return r;
}

// prep(in, G, zero_point, scratch) -> the rows' layout (kept in scratch); rows: y[i * ldy + n] =
// sum_k x_i[k] W[n, k] for all M rows and weight rows n in [n0, n1).
struct Int4Kernel {
  const char* name;
  Int4Act (*prep)(const Int4In& in, int64_t G, bool zero_point, std::vector<char>& scratch);
  void (*rows)(const Int4W& w, const Int4Act& a, float* y, int64_t ldy, int64_t n0, int64_t n1);
};

// The body for this CPU: AVX-512 (BF16 or not), else AVX2, else portable (AMD_LLAMA4_CPU_ISA forces
// the lower ones).
const Int4Kernel& int4_kernel();
const char* int4_isa();  // "avx512bf16", "avx512", "avx2", "portable"
// The AVX-512 body (int4_avx512.cpp), or null when the CPU (or the compiler) has no AVX-512.
const Int4Kernel* int4_kernel_avx512();

// Weight rows per kernel tile (thread ranges are whole tiles).
constexpr int64_t kInt4NB = 4;

}  // namespace al4::cpu
