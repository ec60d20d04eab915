// GPU fused MoE: align (tokens sorted by expert, padded to the 64-row GEMM block), grouped GEMM
// over the padded rows (gate_up), SiLU-and-mul (+ per-token FP8 re-quantisation), grouped GEMM
// (down), per-token sum over the k slots. bf16 activations/weights, or FP8 w8a8 with per-channel
// weight scales and per-token activation scales.
// The GEMM uses MFMA on gfx942/gfx950 (v_mfma_f32_16x16x16_bf16, v_mfma_f32_16x16x32_fp8_fp8 in
// the arch's native fp8 format: fnuz on gfx942, OCP fn on gfx950) and a portable FMA path elsewhere
// (nvcc sm_90 included). Compile-checked for gfx942 and sm_90; NOT yet run on a GPU.
// No host sync and no allocation here: the padded row count stays on the device (grids cover the
// worst case, blocks past it exit) and the scratch is a torch tensor passed in by amd_llama4/ops/native.py.
#include "gpu_compat.h"  // first: the runtime header defines the qualifiers
#include <algorithm>
#include "al4_common.h"
#include "al4_fp8.h"
#include "gpu_ops.h"

namespace al4::gpu {

namespace {

constexpr int BM = 64, BN = 64, BK = 32, THREADS = 256;

// ids: [N] int32|int64 -> sorted: [Pmax] (slot index, sentinel N), expert_ids: [Pmax/block] (-1 past
// the used rows), total: [1] used rows, inv: [N] (padded row of each slot; may be null). One block;
// stable within an expert like the CPU/torch versions. Pmax comes from shapes (align_capacity in
// amd_llama4/ops/moe.py), so nothing is read back to the host.
template <typename I>
__global__ void align_kernel(const I* __restrict__ ids, int N, int E, int block, int32_t* __restrict__ sorted,
                             int32_t* __restrict__ expert_ids, int32_t* __restrict__ total, int32_t* __restrict__ inv,
                             int Pmax) {
  extern __shared__ int32_t sh[];  // counts[E], start[E + 1]
  int32_t* counts = sh;
  int32_t* start = sh + E;
  for (int e = threadIdx.x; e < E; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < N; i += blockDim.x) atomicAdd(&counts[int(ids[i])], 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    start[0] = 0;
    for (int e = 0; e < E; ++e) start[e + 1] = start[e] + (counts[e] + block - 1) / block * block;
    *total = start[E];
  }
  __syncthreads();
  for (int p = threadIdx.x; p < Pmax; p += blockDim.x) sorted[p] = N;
  for (int b = threadIdx.x; b < Pmax / block; b += blockDim.x) {
    int e = -1;  // blocks past the used rows: no expert
    if (b * block < start[E]) {
      e = 0;
      while (start[e + 1] <= b * block) ++e;
    }
    expert_ids[b] = e;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int pos = start[e];
    for (int i = 0; i < N; ++i)
      if (int(ids[i]) == e) {
        sorted[pos] = i;
        if (inv) inv[i] = pos;
        ++pos;
      }
  }
}

int64_t align_capacity(int64_t n, int64_t E, int64_t block) {  // = amd_llama4.ops.moe.align_capacity
  const int64_t bound = n + std::min(E, n) * (block - 1);
  return (bound + block - 1) / block * block;
}

constexpr size_t kAlign = 256;
size_t al(int64_t b) { return size_t(b + kAlign - 1) / kAlign * kAlign; }

struct GemmArgs {
  const void* A;           // GATHER: x [T, K] (row = slot / top_k); else [Pmax, K] in padded order
  const float* a_scale;    // [Pmax] per-row activation scale (FP8) or null
  const float* topk_w;     // [N] routing weight applied to the input (GATHER) or null
  const int32_t* sorted;   // [Pmax]
  const int32_t* expert_ids;
  const int32_t* total;
  const void* W;           // [E, K, N] input-major
  const float* w_scale;    // [E, N] (FP8) or null
  float* C;                // [Pmax, N] fp32
  int64_t K, N;
  int num_valid, top_k;
};

template <bool FP8, bool FNUZ>
__device__ __forceinline__ float decode_elem(uint16_t v) {
  if constexpr (FP8)
    return fp8_decode<FNUZ>(uint8_t(v));
  else
    return bf16_to_f32(v);
}

// C[rows of block, cols] = A_rows @ W[expert]. TA = uint16_t (bf16 bits) or uint8_t (fp8 bits).
template <typename TA, bool FP8, bool FNUZ, bool GATHER>
__global__ __launch_bounds__(THREADS) void moe_gemm_kernel(GemmArgs g) {
  constexpr int PAD = 16 / sizeof(TA);  // keeps 16-byte row alignment, spreads LDS banks
  __shared__ __attribute__((aligned(16))) TA As[BM][BK + PAD];
  __shared__ __attribute__((aligned(16))) TA Bs[BK][BN + PAD];
  const int64_t row0 = int64_t(blockIdx.x) * BM, col0 = int64_t(blockIdx.y) * BN;
  if (row0 >= *g.total) return;
  const int e = g.expert_ids[blockIdx.x];
  const TA* W = static_cast<const TA*>(g.W) + int64_t(e) * g.K * g.N;
  const int tid = threadIdx.x;

#if defined(AL4_MFMA)
  // gfx942 matrix cores read fnuz fp8, gfx950 OCP fn: other combinations take the portable path.
#if defined(__gfx942__)
  constexpr bool kMfma = !FP8 || FNUZ;
#else
  constexpr bool kMfma = !FP8 || !FNUZ;
#endif
#else
  constexpr bool kMfma = false;
#endif
#if defined(AL4_MFMA)
  typedef float f4 __attribute__((ext_vector_type(4)));  // clang vector type: MFMA builds only
  f4 acc_m[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) acc_m[i][j] = f4{0.f, 0.f, 0.f, 0.f};
#endif
  float acc_p[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) acc_p[i][j] = 0.f;

  // Each thread stages 8 consecutive elements of A (4 threads per row) and of B (8 per row).
  const int am = tid / (BK / 8), ak = (tid % (BK / 8)) * 8;
  const int bk = tid / (BN / 8), bn = (tid % (BN / 8)) * 8;
  const int32_t slot = g.sorted[row0 + am];
  const bool a_valid = slot < g.num_valid;
  const int64_t a_row = GATHER ? slot / g.top_k : row0 + am;
  const float a_w = (GATHER && a_valid) ? g.topk_w[slot] : 1.0f;
  const TA* Arow = static_cast<const TA*>(g.A) + a_row * g.K;

  for (int64_t k0 = 0; k0 < g.K; k0 += BK) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t k = k0 + ak + i;
      TA v = 0;
      if (a_valid && k < g.K) {
        v = Arow[k];
        if constexpr (GATHER && !FP8) v = f32_to_bf16(bf16_to_f32(v) * a_w);  // weight on the input, rounded
      }
      As[am][ak + i] = v;
      const int64_t kb = k0 + bk, n = col0 + bn + i;
      Bs[bk][bn + i] = (kb < g.K && n < g.N) ? W[kb * g.N + n] : TA(0);
    }
    __syncthreads();
    if constexpr (kMfma) {
#if defined(AL4_MFMA)
      const int wave = tid / 64, lane = tid % 64, wr = wave / 2, wc = wave % 2;
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 2; ++ni) {
          const int r = wr * 32 + mi * 16 + lane % 16, c = wc * 32 + ni * 16 + lane % 16;
          if constexpr (FP8) {
            // 16x16x32: lane holds 8 k-values of one A row and of one B column.
            const int kq = (lane / 16) * 8;
            long a = *reinterpret_cast<const long*>(&As[r][kq]);
            long b = 0;
#pragma unroll
            for (int i = 0; i < 8; ++i) b |= long(Bs[kq + i][c]) << (8 * i);
            acc_m[mi][ni] = __builtin_amdgcn_mfma_f32_16x16x32_fp8_fp8(a, b, acc_m[mi][ni], 0, 0, 0);
          } else {
            typedef short s4 __attribute__((ext_vector_type(4)));
#pragma unroll
            for (int ks = 0; ks < BK; ks += 16) {
              const int kq = ks + (lane / 16) * 4;
              s4 a = *reinterpret_cast<const s4*>(&As[r][kq]);
              s4 b = s4{short(Bs[kq][c]), short(Bs[kq + 1][c]), short(Bs[kq + 2][c]), short(Bs[kq + 3][c])};
              acc_m[mi][ni] = __builtin_amdgcn_mfma_f32_16x16x16bf16_1k(a, b, acc_m[mi][ni], 0, 0, 0);
            }
          }
        }
#endif
    } else {
      const int tr = tid / 16, tc = tid % 16;
#pragma unroll 4
      for (int k = 0; k < BK; ++k) {
        float a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          a[i] = decode_elem<FP8, FNUZ>(As[tr * 4 + i][k]);
          b[i] = decode_elem<FP8, FNUZ>(Bs[k][tc * 4 + i]);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc_p[i][j] += a[i] * b[j];
      }
    }
    __syncthreads();
  }

  auto store = [&](int r, int c, float v) {
    const int64_t p = row0 + r, n = col0 + c;
    if (n >= g.N || g.sorted[p] >= g.num_valid) return;
    if constexpr (FP8) v *= g.a_scale[p] * g.w_scale[int64_t(e) * g.N + n];
    g.C[p * g.N + n] = v;
  };
  if constexpr (kMfma) {
#if defined(AL4_MFMA)
    // 16x16 MFMA output: lane holds column lane % 16, rows (lane / 16) * 4 + i.
    const int wave = tid / 64, lane = tid % 64, wr = wave / 2, wc = wave % 2;
    for (int mi = 0; mi < 2; ++mi)
      for (int ni = 0; ni < 2; ++ni)
        for (int i = 0; i < 4; ++i)
          store(wr * 32 + mi * 16 + (lane / 16) * 4 + i, wc * 32 + ni * 16 + lane % 16, acc_m[mi][ni][i]);
#endif
  } else {
    const int tr = tid / 16, tc = tid % 16;
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) store(tr * 4 + i, tc * 4 + j, acc_p[i][j]);
  }
}

// One block per padded row: h = silu(gate) * up with the reference's roundings (bf16), or in fp32
// then quantised per row (FP8). gu: [Pmax, 2I] fp32 -> h: [Pmax, I] bf16 bits | fp8 bits, hs: [Pmax].
template <bool FP8, bool FNUZ>
__global__ void moe_act_kernel(const float* __restrict__ gu, const int32_t* __restrict__ sorted, int num_valid,
                               int64_t I, void* __restrict__ h, float* __restrict__ hs) {
  const int64_t p = blockIdx.x;
  if (sorted[p] >= num_valid) return;
  const float* row = gu + p * 2 * I;
  auto act = [&](int64_t i) {
    if constexpr (FP8) return silu_f32(row[i]) * row[I + i];
    const float gv = round_to<bf16_t>(row[i]), uv = round_to<bf16_t>(row[I + i]);
    return round_to<bf16_t>(round_to<bf16_t>(silu_f32(gv)) * uv);
  };
  if constexpr (FP8) {
    float amax = 0.f;
    for (int64_t i = threadIdx.x; i < I; i += blockDim.x) amax = fmaxf(amax, fabsf(act(i)));
    const float s = fmaxf(block_reduce<true>(amax), 1e-12f) / Fp8Fmt<FNUZ>::kMax;
    if (threadIdx.x == 0) hs[p] = s;
    for (int64_t i = threadIdx.x; i < I; i += blockDim.x)
      static_cast<uint8_t*>(h)[p * I + i] = fp8_encode<FNUZ>(act(i) / s);
  } else {
    for (int64_t i = threadIdx.x; i < I; i += blockDim.x) static_cast<uint16_t*>(h)[p * I + i] = f32_to_bf16(act(i));
  }
}

// FP8 path: routed inputs quantised per padded row. x: [T, H] -> xq: [Pmax, H] fp8, xs: [Pmax].
template <typename T, bool FNUZ>
__global__ void moe_quant_input_kernel(const T* __restrict__ x, const float* __restrict__ tw,
                                       const int32_t* __restrict__ sorted, int num_valid, int top_k, int64_t H,
                                       uint8_t* __restrict__ xq, float* __restrict__ xs) {
  const int64_t p = blockIdx.x;
  const int32_t slot = sorted[p];
  if (slot >= num_valid) return;
  const T* row = x + int64_t(slot / top_k) * H;
  const float w = tw[slot];
  float amax = 0.f;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) amax = fmaxf(amax, fabsf(load_f32(row, i) * w));
  const float s = fmaxf(block_reduce<true>(amax), 1e-12f) / Fp8Fmt<FNUZ>::kMax;
  if (threadIdx.x == 0) xs[p] = s;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) xq[p * H + i] = fp8_encode<FNUZ>(load_f32(row, i) * w / s);
}

// out[t] = sum_j y[inv[t*k + j]] in fp32, one rounding. y: [Pmax, H] -> out: [T, H].
template <typename T>
__global__ void moe_combine_kernel(const float* __restrict__ y, const int32_t* __restrict__ inv, int top_k, int64_t H,
                                   T* __restrict__ out) {
  const int64_t t = blockIdx.x;
  for (int64_t c = threadIdx.x; c < H; c += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < top_k; ++j) acc += y[int64_t(inv[t * top_k + j]) * H + c];
    store_f32(out, t * H + c, acc);
  }
}

template <bool FNUZ>
void run_fp8(const TensorRef& x, const TensorRef& w1, const TensorRef& w2, const float* tw, const int32_t* sorted,
             const int32_t* eids, const int32_t* total, const int32_t* inv, char*& cur, int64_t Pmax, int64_t H,
             int64_t I, int N, int k, const TensorRef& s1, const TensorRef& s2, float* gu, float* y,
             al4_stream_t st) {
  uint8_t* xq = reinterpret_cast<uint8_t*>(cur);
  cur += (Pmax * H + 255) / 256 * 256;
  uint8_t* hq = reinterpret_cast<uint8_t*>(cur);
  cur += (Pmax * I + 255) / 256 * 256;
  float* xs = reinterpret_cast<float*>(cur);
  float* hsc = xs + Pmax;
  if (x.dtype == kBF16)
    moe_quant_input_kernel<bf16_t, FNUZ><<<unsigned(Pmax), 256, 0, st>>>(x.data<bf16_t>(), tw, sorted, N, k, H, xq, xs);
  else
    moe_quant_input_kernel<float, FNUZ><<<unsigned(Pmax), 256, 0, st>>>(x.data<float>(), tw, sorted, N, k, H, xq, xs);
  GemmArgs g1{xq, xs, nullptr, sorted, eids, total, reinterpret_cast<const void*>(w1.ptr), s1.data<float>(), gu,
              H, 2 * I, N, k};
  moe_gemm_kernel<uint8_t, true, FNUZ, false><<<dim3(unsigned(Pmax / BM), unsigned(ceil_div(2 * I, BN))), THREADS, 0, st>>>(g1);
  moe_act_kernel<true, FNUZ><<<unsigned(Pmax), 256, 0, st>>>(gu, sorted, N, I, hq, hsc);
  GemmArgs g2{hq, hsc, nullptr, sorted, eids, total, reinterpret_cast<const void*>(w2.ptr), s2.data<float>(), y,
              I, H, N, k};
  moe_gemm_kernel<uint8_t, true, FNUZ, false><<<dim3(unsigned(Pmax / BM), unsigned(ceil_div(H, BN))), THREADS, 0, st>>>(g2);
}

}  // namespace

void moe_align_block_size(const TensorRef& topk_ids, int num_experts, int block_size, const TensorRef& sorted_ids,
                          const TensorRef& expert_ids, const TensorRef& total) {
  const int64_t N = topk_ids.numel();
  check(sorted_ids.numel() == align_capacity(N, num_experts, block_size) &&
            expert_ids.numel() == sorted_ids.numel() / block_size,
        "moe_align_block_size: sorted_ids / expert_ids must have align_capacity(T*k, E, block) rows");
  if (N == 0) return;  // outputs arrive filled (sentinel / -1 / 0)
  al4_stream_t st = stream_of(topk_ids.stream);
  const size_t sh = size_t(2 * num_experts + 1) * 4;
  const int P = int(sorted_ids.numel());
  if (topk_ids.dtype == kI64)
    align_kernel<int64_t><<<1, 1024, sh, st>>>(topk_ids.data<int64_t>(), int(N), num_experts, block_size,
                                               sorted_ids.data<int32_t>(), expert_ids.data<int32_t>(),
                                               total.data<int32_t>(), nullptr, P);
  else
    align_kernel<int32_t><<<1, 1024, sh, st>>>(topk_ids.data<int32_t>(), int(N), num_experts, block_size,
                                               sorted_ids.data<int32_t>(), expert_ids.data<int32_t>(),
                                               total.data<int32_t>(), nullptr, P);
  check_launch("moe_align_block_size");
}

size_t fused_moe_workspace_bytes(int64_t T, int64_t k, int64_t H, int64_t I, int64_t E) {
  const int64_t N = T * k, Pmax = align_capacity(N, E, BM);
  // sorted, expert_ids, total, inv, gate_up fp32, y fp32, then h bf16 | (xq, hq fp8, xs, hs fp32)
  return al(Pmax * 4) + al(Pmax / BM * 4) + al(4) + al(N * 4) + al(Pmax * 2 * I * 4) + al(Pmax * H * 4) +
         al(Pmax * I * 2) + al(Pmax * H) + al(Pmax * 8);
}

// x: [T, H] bf16 (or fp32/bf16 with fp8 weights); w_gate_up: [E, H, 2I]; w_down: [E, I, H];
// topk_weights: [T, k] fp32; topk_ids: [T, k] int32 -> out: [T, H]. workspace: uint8 from torch's
// caching allocator (fused_moe_workspace_bytes), so nothing here allocates or waits for the device.
void fused_moe(const TensorRef& x, const TensorRef& w1, const TensorRef& w2, const TensorRef& topk_weights,
               const TensorRef& topk_ids, const TensorRef* s1, const TensorRef* s2, const TensorRef& out,
               const TensorRef& workspace) {
  const bool fp8 = s1 != nullptr;
  check(fp8 || x.dtype == kBF16, "fused_moe: the GPU path takes bfloat16 activations/weights (or fp8 weights)");
  const int64_t T = x.size(0), H = x.size(1), E = w1.size(0), I = w2.size(1), k = topk_ids.size(1);
  const int N = int(T * k);
  if (T == 0) return;
  const int64_t Pmax = align_capacity(N, E, BM);
  al4_stream_t st = stream_of(x.stream);
  const size_t bytes = fused_moe_workspace_bytes(T, k, H, I, E);
  check(size_t(workspace.numel()) >= bytes, "fused_moe: workspace holds " + std::to_string(workspace.numel()) +
                                                " bytes, needs " + std::to_string(bytes));
  char* cur = reinterpret_cast<char*>(workspace.ptr);
  auto take = [&](int64_t b) {
    char* p = cur;
    cur += al(b);
    return p;
  };
  int32_t* sorted = reinterpret_cast<int32_t*>(take(Pmax * 4));
  int32_t* eids = reinterpret_cast<int32_t*>(take(Pmax / BM * 4));
  int32_t* total = reinterpret_cast<int32_t*>(take(4));
  int32_t* inv = reinterpret_cast<int32_t*>(take(N * 4));
  float* gu = reinterpret_cast<float*>(take(Pmax * 2 * I * 4));
  float* y = reinterpret_cast<float*>(take(Pmax * H * 4));
  const float* tw = topk_weights.data<float>();

  align_kernel<int32_t><<<1, 1024, size_t(2 * E + 1) * 4, st>>>(topk_ids.data<int32_t>(), N, int(E), BM, sorted, eids,
                                                               total, inv, int(Pmax));
  if (fp8) {
    (w1.dtype == kF8E4M3FNUZ ? run_fp8<true> : run_fp8<false>)(x, w1, w2, tw, sorted, eids, total, inv, cur, Pmax, H,
                                                                 I, N, int(k), *s1, *s2, gu, y, st);
  } else {
    uint16_t* h = reinterpret_cast<uint16_t*>(take(Pmax * I * 2));
    GemmArgs g1{reinterpret_cast<const void*>(x.ptr), nullptr, tw, sorted, eids, total,
                reinterpret_cast<const void*>(w1.ptr), nullptr, gu, H, 2 * I, N, int(k)};
    moe_gemm_kernel<uint16_t, false, false, true>
        <<<dim3(unsigned(Pmax / BM), unsigned(ceil_div(2 * I, BN))), THREADS, 0, st>>>(g1);
    moe_act_kernel<false, false><<<unsigned(Pmax), 256, 0, st>>>(gu, sorted, N, I, h, nullptr);
    GemmArgs g2{h, nullptr, nullptr, sorted, eids, total, reinterpret_cast<const void*>(w2.ptr), nullptr, y,
                I, H, N, int(k)};
    moe_gemm_kernel<uint16_t, false, false, false>
        <<<dim3(unsigned(Pmax / BM), unsigned(ceil_div(H, BN))), THREADS, 0, st>>>(g2);
  }
  if (out.dtype == kBF16)
    moe_combine_kernel<bf16_t><<<unsigned(T), 256, 0, st>>>(y, inv, int(k), H, out.data<bf16_t>());
  else
    moe_combine_kernel<float><<<unsigned(T), 256, 0, st>>>(y, inv, int(k), H, out.data<float>());
  check_launch("fused_moe");
}

}  // namespace al4::gpu
