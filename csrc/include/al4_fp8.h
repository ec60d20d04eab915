// FP8 e4m3fn (OCP: bias 7, max 448, 0x7f/0xff NaN, signed zero) and e4m3fnuz (gfx942: bias 8,
// max 240, 0x80 the only NaN, no -0) encode/decode with integer arithmetic only, so the CPU and
// GPU paths are bit-exact with torch's casts whatever the compiler flags (-ffast-math included).
// Encoding saturates: |x| beyond max gives +-max, never inf/NaN (the reference clamps first).
#pragma once

#include "al4_common.h"

namespace al4 {

template <bool FNUZ>
struct Fp8Fmt {
  static constexpr int kBias = FNUZ ? 8 : 7;
  static constexpr float kMax = FNUZ ? 240.0f : 448.0f;
  static constexpr uint8_t kMaxBits = FNUZ ? 0x7f : 0x7e;
  static constexpr uint8_t kNaN = FNUZ ? 0x80 : 0x7f;
};

// fp32 -> fp8 bits, round to nearest even, saturating.
template <bool FNUZ>
AL4_HD uint8_t fp8_encode(float x) {
  using F = Fp8Fmt<FNUZ>;
  const uint32_t u = f32_to_bits(x);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return FNUZ ? F::kNaN : uint8_t(F::kNaN | sign);
  uint32_t r;
  // Smallest normal is 2^(1-bias): fp32 exponent field 127+1-bias.
  const uint32_t min_normal = uint32_t(127 + 1 - F::kBias) << 23;
  if (a >= min_normal) {
    // Keep 3 mantissa bits with round-to-nearest-even on the 20 dropped bits, then rebias.
    uint32_t t = a + 0x7ffffu + ((a >> 20) & 1u);
    r = (t >> 20) - (uint32_t(127 - F::kBias) << 3);
    if (a >= 0x7f800000u || r > F::kMaxBits) r = F::kMaxBits;  // saturate (inf included)
  } else {
    // Subnormal step is 2^(1-bias-3). Scale by 2^(bias+2) exactly via the exponent field and
    // round to nearest even on the integer: r in [0, 8]; 8 is the smallest normal's bit pattern.
    const int shift = 23 - (int(a >> 23) - (127 - F::kBias - 2));  // bits below the unit
    if (a == 0 || shift > 24) {
      r = 0;
    } else {
      uint32_t m = (a & 0x7fffffu) | (a >= 0x800000u ? 0x800000u : 0u);
      int sh = (a >= 0x800000u) ? shift : 24;  // fp32 subnormals are far below fp8's range
      if (sh > 24) {
        r = 0;
      } else {
        uint32_t q = m >> sh;
        uint32_t rem = m & ((1u << sh) - 1u);
        uint32_t half = 1u << (sh - 1);
        if (rem > half || (rem == half && (q & 1u))) ++q;
        r = q;
      }
    }
  }
  if (FNUZ && r == 0) return 0;  // fnuz has no -0 (0x80 is NaN)
  return uint8_t(r | sign);
}

template <bool FNUZ>
AL4_HD float fp8_decode(uint8_t b) {
  using F = Fp8Fmt<FNUZ>;
  if (FNUZ ? (b == 0x80) : ((b & 0x7f) == 0x7f)) return bits_to_f32(0x7fc00000u);
  const uint32_t sign = uint32_t(b & 0x80) << 24;
  const uint32_t e = (b >> 3) & 15u, m = b & 7u;
  uint32_t u;
  if (e == 0) {
    if (m == 0) return bits_to_f32(sign);
    // m * 2^(1-bias-3): normalise the 3-bit mantissa into fp32.
    int lz = (m >= 4) ? 0 : (m >= 2 ? 1 : 2);
    uint32_t mm = (m << (lz + 1)) & 7u;
    int exp = 1 - F::kBias - lz - 1;
    u = sign | (uint32_t(exp + 127) << 23) | (mm << 20);
  } else {
    u = sign | (uint32_t(int(e) - F::kBias + 127) << 23) | (m << 20);
  }
  return bits_to_f32(u);
}

// A 256-entry table per format: CPU GEMMs decode weights with a load instead of branches.
struct Fp8Table {
  float v[256];
};

template <bool FNUZ>
inline const Fp8Table& fp8_table() {
  static const Fp8Table t = [] {
    Fp8Table x;
    for (int i = 0; i < 256; ++i) x.v[i] = fp8_decode<FNUZ>(uint8_t(i));
    return x;
  }();
  return t;
}

}  // namespace al4
