// silu_and_mul and rms_norm on CPU: rows in parallel, fp32 math, the reference's roundings.
#include <cmath>

#include "cpu_ops.h"

namespace al4::cpu {

// x: [R, 2I] ([gate | up]) -> out: [R, I] = silu(gate) * up; both contiguous.
void silu_and_mul(const TensorRef& x, const TensorRef& out) {
  const int64_t R = x.size(0), I = out.size(1);
  dispatch_act(x, "silu_and_mul", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    T* op = out.data<T>();
    parallel_rows_cols(R, I, kParallelMinExp, [&](int64_t r, int64_t c0, int64_t c1) {
      const T* g = xp + r * 2 * I;
      const T* u = g + I;
      T* o = op + r * I;
      for (int64_t i = c0; i < c1; ++i) {
        // torch rounds silu(gate) to the dtype before the product.
        float s = round_to<T>(silu_f32(load_f32(g, i)));
        store_f32(o, i, s * load_f32(u, i));
      }
    });
  });
}

// x, residual, out, residual_out: [R, H]; weight: [H] or null. HF order: normalise in fp32, cast
// to the dtype, then scale by the weight (the product rounded again).
void rms_norm(const TensorRef& x, const TensorRef* weight, double eps, const TensorRef* residual,
              const TensorRef& out, const TensorRef* residual_out) {
  const int64_t R = x.size(0), H = x.size(1);
  const float feps = float(eps);
  dispatch_act(x, "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    const T* rp = residual ? residual->data<T>() : nullptr;
    const T* wp = weight ? weight->data<T>() : nullptr;
    T* op = out.data<T>();
    T* rop = residual_out ? residual_out->data<T>() : nullptr;
#pragma omp parallel if (R * H > kParallelMin)
    {
      std::vector<float> row(H);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < R; ++r) {
        const int64_t base = r * H;
        for (int64_t i = 0; i < H; ++i) {
          float v = load_f32(xp, base + i);
          if (rp) v = round_to<T>(v + load_f32(rp, base + i));  // x + residual in the dtype
          row[i] = v;
        }
        if (rop)
          for (int64_t i = 0; i < H; ++i) store_f32(rop, base + i, row[i]);
        // 16 partial sums: vectorises without -ffast-math and is more accurate than one chain.
        float part[16] = {0};
        int64_t i = 0;
        for (; i + 16 <= H; i += 16)
          for (int j = 0; j < 16; ++j) part[j] += row[i + j] * row[i + j];
        for (; i < H; ++i) part[i & 15] += row[i] * row[i];
        double ss = 0;
        for (int j = 0; j < 16; ++j) ss += part[j];
        const float inv = 1.0f / std::sqrt(float(ss / double(H)) + feps);
        for (int64_t k = 0; k < H; ++k) {
          float v = round_to<T>(row[k] * inv);
          if (wp) v *= load_f32(wp, k);
          store_f32(op, base + k, v);
        }
      }
    }
  });
}

}  // namespace al4::cpu
