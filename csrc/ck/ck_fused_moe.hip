// Fused MoE (bf16) on CK's grouped GEMM: route the k*T slots into expert-sorted groups (counts,
// offsets and CK's per-expert GEMM arguments written on the GPU: no host sync), gather the routed
// inputs scaled by their routing weight (fp32 multiply, one bf16 rounding: the reference's order),
// gate_up grouped GEMM -> silu_and_mul (our HIP elementwise kernel) -> down grouped GEMM, then the
// per-token sum over the k slots in fp32 with one rounding (as the HIP fused_moe does).
// Rows are not padded: CK pads M per group itself, and each row's result does not depend on where
// the row sits in its group, so the atomic slot order leaves the output deterministic.
#include "gpu_compat.h"  // first: the runtime header defines the qualifiers
#include "al4_common.h"
#include "ck/ck_grouped_gemm.h"
#include "ck/ck_moe.h"
#include "hip/gpu_ops.h"

namespace al4::ck_backend {

namespace {

using al4::gpu::stream_of;

constexpr int64_t kAlign = 256;
int64_t align_up(int64_t b) { return (b + kAlign - 1) / kAlign * kAlign; }

// Scratch carved from one buffer; xs (gathered inputs) is dead after the first GEMM and holds y.
struct Scratch {
  int32_t* counts;  // [E] slots per expert
  int32_t* cursor;  // [E] next free row of each expert's group (starts at its offset)
  int32_t* inv;     // [N] row of each slot, -1 for a dropped id
  GroupArgs* gate_up_args;  // [E]
  GroupArgs* down_args;     // [E]
  uint16_t* xs;     // [N, H] bf16 routed inputs, later y [N, H]
  uint16_t* gu;     // [N, 2I] bf16
  uint16_t* h;      // [N, I] bf16
};

int64_t scratch_layout(int64_t N, int64_t H, int64_t I, int64_t E, char* base, Scratch* s) {
  int64_t off = 0;
  auto take = [&](int64_t bytes) {
    char* p = base ? base + off : nullptr;
    off += align_up(bytes);
    return p;
  };
  char* counts = take(E * 4);
  char* cursor = take(E * 4);
  char* inv = take(N * 4);
  char* a1 = take(E * int64_t(sizeof(GroupArgs)));
  char* a2 = take(E * int64_t(sizeof(GroupArgs)));
  char* xs = take(N * H * 2);
  char* gu = take(N * 2 * I * 2);
  char* h = take(N * I * 2);
  if (s)
    *s = Scratch{reinterpret_cast<int32_t*>(counts), reinterpret_cast<int32_t*>(cursor), reinterpret_cast<int32_t*>(inv),
                 reinterpret_cast<GroupArgs*>(a1), reinterpret_cast<GroupArgs*>(a2), reinterpret_cast<uint16_t*>(xs),
                 reinterpret_cast<uint16_t*>(gu), reinterpret_cast<uint16_t*>(h)};
  return off;
}

// ids: [N] -> counts[e] += 1 for ids in [0, E).
__global__ void count_kernel(const int32_t* __restrict__ ids, int N, int E, int32_t* __restrict__ counts) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N) return;
  const int e = ids[i];
  if (e >= 0 && e < E) atomicAdd(&counts[e], 1);
}

// One block: exclusive scan of counts -> group offsets, then both GEMMs' per-expert arguments.
// Experts without slots get M = 0, which CK's tile loop skips.
__global__ void args_kernel(const int32_t* __restrict__ counts, int E, int32_t* __restrict__ cursor,
                            GroupArgs* __restrict__ gate_up_args, GroupArgs* __restrict__ down_args,
                            const uint16_t* __restrict__ xs, const uint16_t* __restrict__ w1, uint16_t* __restrict__ gu,
                            const uint16_t* __restrict__ h, const uint16_t* __restrict__ w2, uint16_t* __restrict__ y,
                            int H, int I) {
  extern __shared__ int32_t offsets[];  // [E]
  if (threadIdx.x == 0) {
    int32_t run = 0;
    for (int e = 0; e < E; ++e) {
      offsets[e] = run;
      run += counts[e];
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    const int64_t off = offsets[e];
    const int M = counts[e];
    cursor[e] = int32_t(off);
    gate_up_args[e] = GroupArgs(xs + off * H, w1 + int64_t(e) * H * 2 * I, {}, gu + off * 2 * I, M, 2 * I, H, H,
                                2 * I, {}, 2 * I);
    down_args[e] = GroupArgs(h + off * I, w2 + int64_t(e) * I * H, {}, y + off * H, M, H, I, I, H, {}, H);
  }
}

// One block per slot: claim a row in the slot's expert group, write row = bf16(x[token] * weight).
template <typename T>
__global__ void gather_kernel(const T* __restrict__ x, const float* __restrict__ tw, const int32_t* __restrict__ ids,
                              int k, int E, int64_t H, int32_t* __restrict__ cursor, int32_t* __restrict__ inv,
                              uint16_t* __restrict__ xs) {
  __shared__ int32_t row;
  const int64_t i = blockIdx.x;
  if (threadIdx.x == 0) {
    const int e = ids[i];
    row = (e >= 0 && e < E) ? atomicAdd(&cursor[e], 1) : -1;
    inv[i] = row;
  }
  __syncthreads();
  if (row < 0) return;
  const float w = tw[i];
  const T* src = x + (i / k) * H;
  uint16_t* dst = xs + int64_t(row) * H;
  for (int64_t c = threadIdx.x; c < H; c += blockDim.x) dst[c] = f32_to_bf16(load_f32(src, c) * w);
}

// out[t] = sum_j y[inv[t*k + j]] in fp32, one rounding. y: [N, H] bf16 -> out: [T, H] bf16.
__global__ void combine_kernel(const uint16_t* __restrict__ y, const int32_t* __restrict__ inv, int k, int64_t H,
                               bf16_t* __restrict__ out) {
  const int64_t t = blockIdx.x;
  for (int64_t c = threadIdx.x; c < H; c += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < k; ++j) {
      const int32_t r = inv[t * k + j];
      if (r >= 0) acc += bf16_to_f32(y[int64_t(r) * H + c]);
    }
    store_f32(out, t * H + c, acc);
  }
}

TensorRef gpu_ref(void* p, int dtype, std::vector<int64_t> shape, uintptr_t stream, const char* name) {
  TensorRef t;
  t.ptr = reinterpret_cast<uintptr_t>(p), t.dtype = dtype, t.shape = shape;
  t.strides = {shape[1], 1};
  t.device = 1, t.stream = stream, t.name = name;
  return t;
}

}  // namespace

bool fused_moe_supported(int64_t H, int64_t I) {
  return grouped_gemm_bf16_supported(2 * I, H) && grouped_gemm_bf16_supported(H, I);
}

size_t fused_moe_workspace_bytes(int64_t T, int64_t k, int64_t H, int64_t I, int64_t E) {
  return size_t(scratch_layout(T * k, H, I, E, nullptr, nullptr));
}

void fused_moe(const TensorRef& x, const TensorRef& w_gate_up, const TensorRef& w_down, const TensorRef& topk_weights,
               const TensorRef& topk_ids, const TensorRef& workspace, const TensorRef& out) {
  const int64_t T = x.size(0), H = x.size(1), E = w_gate_up.size(0), I = w_down.size(1), k = topk_ids.size(1);
  const int64_t N = T * k;
  if (T == 0) return;
  // CK indexes each group with 32-bit offsets: a group of up to N rows must fit.
  check(N * 2 * I < INT32_MAX && N * H < INT32_MAX && H * 2 * I < INT32_MAX,
        "ck fused_moe: T*k*max(H, 2I) and H*2I must stay below 2^31 (CK's 32-bit offsets)");
  check(E <= 12 * 1024, "ck fused_moe: E > 12288 experts does not fit the args kernel's shared memory");
  Scratch s;
  const int64_t need = scratch_layout(N, H, I, E, reinterpret_cast<char*>(workspace.ptr), &s);
  check(workspace.numel() >= need, "ck fused_moe: workspace has " + std::to_string(workspace.numel()) +
                                       " bytes, needs " + std::to_string(need));
  const hipStream_t st = stream_of(x.stream);
  const int32_t* ids = topk_ids.data<int32_t>();
  const auto* w1 = reinterpret_cast<const uint16_t*>(w_gate_up.ptr);
  const auto* w2 = reinterpret_cast<const uint16_t*>(w_down.ptr);
  uint16_t* y = s.xs;  // xs is consumed by the gate_up GEMM before the down GEMM writes y

  check(hipMemsetAsync(s.counts, 0, size_t(E) * 4, st) == hipSuccess, "ck fused_moe: hipMemsetAsync failed");
  count_kernel<<<unsigned((N + 255) / 256), 256, 0, st>>>(ids, int(N), int(E), s.counts);
  args_kernel<<<1, 256, size_t(E) * 4, st>>>(s.counts, int(E), s.cursor, s.gate_up_args, s.down_args, s.xs, w1, s.gu,
                                            s.h, w2, y, int(H), int(I));
  gather_kernel<bf16_t><<<unsigned(N), 256, 0, st>>>(x.data<bf16_t>(), topk_weights.data<float>(), ids, int(k), int(E),
                                                     H, s.cursor, s.inv, s.xs);
  gpu::check_launch("ck fused_moe (route/gather)");

  grouped_gemm_bf16(s.gate_up_args, int(E), 2 * I, H, st);
  gpu::silu_and_mul(gpu_ref(s.gu, kBF16, {N, 2 * I}, x.stream, "gate_up"),
                    gpu_ref(s.h, kBF16, {N, I}, x.stream, "h"));
  grouped_gemm_bf16(s.down_args, int(E), H, I, st);

  combine_kernel<<<unsigned(T), 256, 0, st>>>(y, s.inv, int(k), H, out.data<bf16_t>());
  gpu::check_launch("ck fused_moe (combine)");
}

}  // namespace al4::ck_backend
