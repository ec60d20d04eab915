// GPU silu_and_mul, rms_norm, sigmoid top-k routing and FP8 quantisation (HIP; nvcc via gpu_compat.h).
// Math and rounding come from the same headers as the CPU kernels (al4_common.h, al4_fp8.h).
#include "gpu_compat.h"  // first: the runtime header defines the qualifiers
#include "al4_common.h"
#include "al4_fp8.h"
#include "gpu_ops.h"

namespace al4::gpu {

namespace {

// x: [R, 2I] -> out: [R, I]; grid (R, ceil(I / blockDim)).
template <typename T>
__global__ void silu_and_mul_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t I) {
  const int64_t r = blockIdx.x, i = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (i >= I) return;
  const float s = round_to<T>(silu_f32(load_f32(x, r * 2 * I + i)));
  store_f32(out, r * I + i, s * load_f32(x, r * 2 * I + I + i));
}

// One block per row. x, residual, out, residual_out: [R, H]; weight: [H] or null.
template <typename T>
__global__ void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ res,
                                T* __restrict__ out, T* __restrict__ res_out, int64_t H, float eps) {
  const int64_t base = int64_t(blockIdx.x) * H;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
    float v = load_f32(x, base + i);
    if (res) {
      v = round_to<T>(v + load_f32(res, base + i));
      store_f32(res_out, base + i, v);
    }
    ss += v * v;
  }
  const float inv = rsqrtf(block_reduce<false>(ss) / float(H) + eps);
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
    // residual_out holds the rounded sum already; re-read it so both paths agree bit for bit.
    float v = res ? load_f32(res_out, base + i) : load_f32(x, base + i);
    v = round_to<T>(v * inv);
    if (w) v *= load_f32(w, i);
    store_f32(out, base + i, v);
  }
}

// One thread per token: insertion top-k (k <= 8 on GPU), ties to the lower expert id.
template <typename T>
__global__ void topk_sigmoid_kernel(const T* __restrict__ logits, float* __restrict__ wts, int32_t* __restrict__ ids,
                                    int64_t Tn, int E, int k) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= Tn) return;
  float bv[8];
  int32_t bi[8];
  int n = 0;
  for (int e = 0; e < E; ++e) {
    const float v = load_f32(logits, t * E + e);
    if (n == k && !(v > bv[n - 1])) continue;
    int pos = n < k ? n++ : n - 1;
    while (pos > 0 && v > bv[pos - 1]) {
      bv[pos] = bv[pos - 1];
      bi[pos] = bi[pos - 1];
      --pos;
    }
    bv[pos] = v;
    bi[pos] = e;
  }
  for (int j = 0; j < k; ++j) {
    wts[t * k + j] = sigmoid_f32(bv[j]);
    ids[t * k + j] = bi[j];
  }
}

// One block per (matrix b, tile (sr, sc)): amax -> scale (if asked), then quantise the tile.
template <typename T, bool FNUZ>
__global__ void quantize_tile_kernel(const T* __restrict__ x, uint8_t* __restrict__ q, float* __restrict__ scale,
                                     int64_t R, int64_t C, int64_t br, int64_t bc, bool compute) {
  const int64_t SR = ceil_div(R, br), SC = ceil_div(C, bc);
  const int64_t b = blockIdx.z, sr = blockIdx.y, sc = blockIdx.x;
  const int64_t r0 = sr * br, c0 = sc * bc, nr = min(br, R - r0), nc = min(bc, C - c0);
  float* s = scale + (b * SR + sr) * SC + sc;
  const T* xt = x + b * R * C;
  if (compute) {
    float amax = 0.0f;
    for (int64_t i = threadIdx.x; i < nr * nc; i += blockDim.x)
      amax = fmaxf(amax, fabsf(load_f32(xt, (r0 + i / nc) * C + c0 + i % nc)));
    amax = block_reduce<true>(amax);
    if (threadIdx.x == 0) *s = fmaxf(amax, 1e-12f) / Fp8Fmt<FNUZ>::kMax;
    __syncthreads();
  }
  const float sv = *s;
  for (int64_t i = threadIdx.x; i < nr * nc; i += blockDim.x) {
    const int64_t off = b * R * C + (r0 + i / nc) * C + c0 + i % nc;
    q[off] = fp8_encode<FNUZ>(load_f32(x, off) / sv);  // IEEE division by default (hip and nvcc): bit-exact
  }
}

template <typename F>
void dispatch_act(const TensorRef& t, const char* op, F&& f) {
  if (t.dtype == kF32)
    f(float{});
  else if (t.dtype == kBF16)
    f(bf16_t{});
  else
    fail(std::string(op) + ": " + t.name + " dtype " + dtype_name(t.dtype) + " unsupported on GPU");
}

}  // namespace

void silu_and_mul(const TensorRef& x, const TensorRef& out) {
  const int64_t R = x.size(0), I = out.size(1);
  if (R == 0 || I == 0) return;
  dispatch_act(x, "silu_and_mul", [&](auto tag) {
    using T = decltype(tag);
    dim3 grid(unsigned(R), unsigned(ceil_div(I, 256)));
    silu_and_mul_kernel<T><<<grid, 256, 0, stream_of(x.stream)>>>(x.data<T>(), out.data<T>(), I);
  });
  check_launch("silu_and_mul");
}

void rms_norm(const TensorRef& x, const TensorRef* weight, double eps, const TensorRef* residual,
              const TensorRef& out, const TensorRef* residual_out) {
  const int64_t R = x.size(0), H = x.size(1);
  if (R == 0) return;
  dispatch_act(x, "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    rms_norm_kernel<T><<<unsigned(R), 256, 0, stream_of(x.stream)>>>(
        x.data<T>(), weight ? weight->data<T>() : nullptr, residual ? residual->data<T>() : nullptr, out.data<T>(),
        residual_out ? residual_out->data<T>() : nullptr, H, float(eps));
  });
  check_launch("rms_norm");
}

void moe_topk_sigmoid(const TensorRef& logits, int top_k, const TensorRef& weights, const TensorRef& ids) {
  check(top_k <= 8, "moe_topk_sigmoid: GPU path supports top_k <= 8");
  const int64_t T = logits.size(0);
  if (T == 0) return;
  dispatch_act(logits, "moe_topk_sigmoid", [&](auto tag) {
    using D = decltype(tag);
    topk_sigmoid_kernel<D><<<unsigned(ceil_div(T, 128)), 128, 0, stream_of(logits.stream)>>>(
        logits.data<D>(), weights.data<float>(), ids.data<int32_t>(), T, int(logits.size(1)), top_k);
  });
  check_launch("moe_topk_sigmoid");
}

void quantize_fp8(const TensorRef& x, const TensorRef& q, const TensorRef& scale, int64_t br, int64_t bc,
                  bool compute_scale) {
  const int64_t B = x.size(0), R = x.size(1), C = x.size(2);
  if (x.numel() == 0) return;
  const bool fnuz = q.dtype == kF8E4M3FNUZ;
  dim3 grid(unsigned(ceil_div(C, bc)), unsigned(ceil_div(R, br)), unsigned(B));
  dispatch_act(x, "quantize_fp8", [&](auto tag) {
    using T = decltype(tag);
    auto kern = fnuz ? quantize_tile_kernel<T, true> : quantize_tile_kernel<T, false>;
    kern<<<grid, 256, 0, stream_of(x.stream)>>>(x.data<T>(), q.data<uint8_t>(), scale.data<float>(), R, C, br, bc,
                                                compute_scale);
  });
  check_launch("quantize_fp8");
}

}  // namespace al4::gpu
