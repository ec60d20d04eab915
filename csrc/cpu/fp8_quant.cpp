// FP8 quantisation on CPU for every granularity as one tiled loop: a scale covers a (br x bc) tile
// of each [R, C] matrix (tensor: R x C, row: 1 x C, col: R x 1, block: br x bc, ragged edges).
#include <algorithm>
#include <cmath>

#include "al4_fp8.h"
#include "cpu_ops.h"

namespace al4::cpu {

namespace {

constexpr float kMinAmax = 1e-12f;  // amax floor of the reference (ops/fp8.py MIN_AMAX)

template <typename T, bool FNUZ>
void quantize_impl(const T* x, uint8_t* q, float* scale, int64_t B, int64_t R, int64_t C, int64_t br, int64_t bc,
                   bool compute_scale) {
  const int64_t SR = ceil_div(R, br), SC = ceil_div(C, bc);
  const float fmax = Fp8Fmt<FNUZ>::kMax;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (B * R * C > kParallelMin)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t sr = 0; sr < SR; ++sr) {
      const int64_t r0 = sr * br, r1 = std::min(R, r0 + br);
      float* srow = scale + (b * SR + sr) * SC;
      if (compute_scale) {
        std::vector<float> amax(SC, 0.0f);
        for (int64_t r = r0; r < r1; ++r) {
          const T* xr = x + (b * R + r) * C;
          for (int64_t c = 0; c < C; ++c) amax[c / bc] = std::max(amax[c / bc], std::fabs(load_f32(xr, c)));
        }
        for (int64_t s = 0; s < SC; ++s) srow[s] = std::max(amax[s], kMinAmax) / fmax;
      }
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = x + (b * R + r) * C;
        uint8_t* qr = q + (b * R + r) * C;
        // True division (not a reciprocal product): bit-exact with the reference's x / scale.
        for (int64_t c = 0; c < C; ++c) qr[c] = fp8_encode<FNUZ>(load_f32(xr, c) / srow[c / bc]);
      }
    }
  }
}

template <bool FNUZ, typename T>
void dequantize_impl(const uint8_t* q, const float* scale, int64_t B, int64_t R, int64_t C, int64_t br, int64_t bc,
                     T* out) {
  const int64_t SR = ceil_div(R, br), SC = ceil_div(C, bc);
  const Fp8Table& tab = fp8_table<FNUZ>();
#pragma omp parallel for collapse(2) schedule(static) if (B * R * C > kParallelMin)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < R; ++r) {
      const float* srow = scale + (b * SR + r / br) * SC;
      const uint8_t* qr = q + (b * R + r) * C;
      T* o = out + (b * R + r) * C;
      for (int64_t c = 0; c < C; ++c) store_f32(o, c, tab.v[qr[c]] * srow[c / bc]);
    }
}

}  // namespace

// x: [B, R, C] float32|bfloat16 -> q: [B, R, C] fp8 bits; scale: [B, ceil(R/br), ceil(C/bc)] fp32
// (written when compute_scale, else read).
void quantize_fp8(const TensorRef& x, const TensorRef& q, const TensorRef& scale, int64_t br, int64_t bc,
                  bool compute_scale) {
  const int64_t B = x.size(0), R = x.size(1), C = x.size(2);
  const bool fnuz = q.dtype == kF8E4M3FNUZ;
  dispatch_act(x, "quantize_fp8", [&](auto tag) {
    using T = decltype(tag);
    auto run = fnuz ? quantize_impl<T, true> : quantize_impl<T, false>;
    run(x.data<T>(), q.data<uint8_t>(), scale.data<float>(), B, R, C, br, bc, compute_scale);
  });
}

// q: [B, R, C] fp8, scale: [B, SR, SC] fp32 -> out: [B, R, C] float32|bfloat16.
void dequantize_fp8(const TensorRef& q, const TensorRef& scale, int64_t br, int64_t bc, const TensorRef& out) {
  const int64_t B = q.size(0), R = q.size(1), C = q.size(2);
  const bool fnuz = q.dtype == kF8E4M3FNUZ;
  dispatch_act(out, "dequantize_fp8", [&](auto tag) {
    using T = decltype(tag);
    auto run = fnuz ? dequantize_impl<true, T> : dequantize_impl<false, T>;
    run(q.data<uint8_t>(), scale.data<float>(), B, R, C, br, bc, out.data<T>());
  });
}

// e4m3fn bits -> e4m3fnuz bits (value halves; the caller doubles the scale); -0 (0x80, NaN in fnuz) -> 0.
void fn_to_fnuz(const TensorRef& q, const TensorRef& out) {
  const int64_t n = q.numel();
  const uint8_t* s = q.data<uint8_t>();
  uint8_t* d = out.data<uint8_t>();
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) d[i] = s[i] == 0x80 ? 0 : s[i];
}

}  // namespace al4::cpu
