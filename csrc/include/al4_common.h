// Host/device helpers shared by the CPU (C++) and GPU (HIP/CUDA) kernels: qualifiers, bf16 and
// activation math. One header so both backends round exactly the same way.
#pragma once

#include <stdint.h>

#if defined(__HIPCC__) || defined(__CUDACC__)
#define AL4_HD __host__ __device__ inline __attribute__((always_inline))
#else
#define AL4_HD inline
#endif

#if defined(__HIP_DEVICE_COMPILE__) || defined(__CUDA_ARCH__)
#define AL4_DEVICE_PASS 1
#endif

namespace al4 {

// Data types as the Python launcher encodes them (amd_llama4/ops/native.py: _DTYPE_CODES).
enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kF8E4M3FN = 3, kF8E4M3FNUZ = 4, kI32 = 5, kI64 = 6, kU8 = 7 };

AL4_HD float bits_to_f32(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

AL4_HD uint32_t f32_to_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
}

struct bf16_t {
  uint16_t bits;
};

AL4_HD float bf16_to_f32(uint16_t b) { return bits_to_f32(uint32_t(b) << 16); }

// Round to nearest even, NaN stays a quiet NaN (same as torch's float -> bfloat16 cast).
AL4_HD uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// Values are carried as fp32 between ops; `round_to` reproduces the reference's intermediate casts.
template <typename T>
AL4_HD float load_f32(const T* p, int64_t i);
template <>
AL4_HD float load_f32<float>(const float* p, int64_t i) { return p[i]; }
template <>
AL4_HD float load_f32<bf16_t>(const bf16_t* p, int64_t i) { return bf16_to_f32(p[i].bits); }

template <typename T>
AL4_HD void store_f32(T* p, int64_t i, float v);
template <>
AL4_HD void store_f32<float>(float* p, int64_t i, float v) { p[i] = v; }
template <>
AL4_HD void store_f32<bf16_t>(bf16_t* p, int64_t i, float v) { p[i].bits = f32_to_bf16(v); }

template <typename T>
AL4_HD float round_to(float v) { return v; }
template <>
AL4_HD float round_to<bf16_t>(float v) { return bf16_to_f32(f32_to_bf16(v)); }

AL4_HD float silu_f32(float x) {
#ifdef AL4_DEVICE_PASS
  return x / (1.0f + __expf(-x));
#else
  return x / (1.0f + __builtin_expf(-x));
#endif
}

AL4_HD float sigmoid_f32(float x) {
#ifdef AL4_DEVICE_PASS
  return 1.0f / (1.0f + __expf(-x));
#else
  return 1.0f / (1.0f + __builtin_expf(-x));
#endif
}

AL4_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace al4
