// int4 fused MoE on CPU (contract: amd_llama4/ops/int4.py `fused_moe_int4`). Tokens are grouped by
// expert (a stable counting sort of the T*k routed slots); each expert with tokens runs its rows
// through the int4 kernel body (int4_kernel(): int4_avx512.cpp or int4_linear.cpp) twice (gate_up,
// then down), the packed weights dequantised in registers; the activations are laid out for the
// body once per GEMM (prep), for all experts. Work is split over (expert, tile of weight rows)
// pairs in one job list, so a decode step's single expert still keeps every thread busy. As the
// reference: the routing weight scales the expert input in fp32, rounded to x's dtype; silu(gate) *
// up is rounded to x's dtype; the k slots of a token are summed in fp32 and rounded once.
#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu_ops.h"
#include "int4_kernel.h"
#include "int4_ops.h"

namespace al4::cpu {

namespace {

struct ExpertRows {
  int64_t e, first, count;  // rows [first, first + count) of the expert-sorted slots
};

// y[rows of expert e] = x[rows] @ W_e^T for every expert in `groups`; W_e [N, K] from (q, s, z);
// `a`: all rows, prepared by the kernel body, expert-sorted.
void run_experts(const Int4Kernel& kern, const std::vector<ExpertRows>& groups, const TensorRef& q,
                 const TensorRef& s, const TensorRef* z, int64_t G, const Int4Act& a, int64_t K, float* y, int64_t N) {
  const int64_t per = ceil_div(N, kInt4NB);  // tiles per expert
  const int64_t tiles = per * int64_t(groups.size());
  int64_t work = 0;
  for (const auto& g : groups) work += g.count;
  const int64_t threads = int64_t(omp_get_max_threads());
  const int64_t chunks = N * K * std::max<int64_t>(work, 4) > (1 << 16) ? std::min(tiles, threads) : 1;
  // contiguous shares, the ends stolen by a thread done early; pieces of ~64 KB of packed weights
  const int64_t step = std::max<int64_t>(1, (int64_t(64) << 10) / (kInt4NB * K / 2));
  parallel_ranges(tiles, chunks, step, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1;) {
      const ExpertRows& g = groups[size_t(t / per)];
      const int64_t lo = t % per, hi = std::min(per, lo + (t1 - t));  // this expert's tiles in the chunk
      const Int4W w = int4_weight(q, s, z, G, g.e);
      kern.rows(w, int4_act_rows(a, g.first, g.count), y + g.first * N, N, lo * kInt4NB, std::min(N, hi * kInt4NB));
      t += hi - lo;
    }
  });
}

template <typename A>
void moe_typed(const TensorRef& x, const TensorRef& w13_q, const TensorRef& w13_s, const TensorRef* w13_z,
               const TensorRef& w2_q, const TensorRef& w2_s, const TensorRef* w2_z, const TensorRef& topk_weights,
               const TensorRef& topk_ids, int64_t G, const TensorRef& out) {
  const int64_t T = x.size(0), H = x.size(1), E = w13_q.size(0), I = w2_q.size(2) * 2, k = topk_ids.size(1);
  const int64_t n = T * k;
  const int32_t* ids = topk_ids.data<int32_t>();
  const float* tw = topk_weights.data<float>();
  std::vector<int64_t> start(size_t(E) + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    check(ids[i] >= 0 && ids[i] < E, "fused_moe_int4: topk_ids holds expert " + std::to_string(ids[i]) +
                                         ", outside [0, " + std::to_string(E) + ")");
    ++start[size_t(ids[i]) + 1];
  }
  std::vector<ExpertRows> groups;
  for (int64_t e = 0; e < E; ++e) {
    // start[e] is already the prefix (first row of e), start[e + 1] still e's count
    if (start[size_t(e) + 1]) groups.push_back({e, start[size_t(e)], start[size_t(e) + 1]});
    start[size_t(e) + 1] += start[size_t(e)];
  }
  std::vector<int64_t> order(static_cast<size_t>(n)), fill(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < n; ++i) order[size_t(fill[size_t(ids[i])]++)] = i;  // stable by slot

  const bool par = n * (H + I) > (1 << 15);
  const auto sz = [](int64_t v) { return static_cast<size_t>(v); };
  std::vector<float> xin(sz(n * H)), gu(sz(n * 2 * I)), h(sz(n * I)), y(sz(n * H));
  const A* xd = x.data<A>();
#pragma omp parallel for schedule(static) if (par)
  for (int64_t r = 0; r < n; ++r) {  // routing weight on the input, rounded to x's dtype
    const int64_t slot = order[size_t(r)], tok = slot / k;
    for (int64_t c = 0; c < H; ++c) xin[sz(r * H + c)] = round_to<A>(load_f32(xd, tok * H + c) * tw[slot]);
  }
  const Int4Kernel& kern = int4_kernel();
  const bool bf16 = std::is_same_v<A, bf16_t>;
  std::vector<char> scratch;
  Int4In in;
  in.x = xin.data(), in.dtype = kF32, in.M = n, in.K = H, in.ld = H, in.bf16_values = bf16;
  Int4Act act = kern.prep(in, G, w13_z != nullptr, scratch);
  run_experts(kern, groups, w13_q, w13_s, w13_z, G, act, H, gu.data(), 2 * I);
  parallel_rows_cols(n, I, kParallelMinExp, [&](int64_t r, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)  // silu(gate) * up, rounded to x's dtype
      h[sz(r * I + c)] = round_to<A>(silu_f32(gu[sz(r * 2 * I + c)]) * gu[sz(r * 2 * I + I + c)]);
  });
  in.x = h.data(), in.K = I, in.ld = I;
  act = kern.prep(in, G, w2_z != nullptr, scratch);
  run_experts(kern, groups, w2_q, w2_s, w2_z, G, act, I, y.data(), H);
  // Sum each token's k slots in fp32 (slot order, as the reference's index_add over experts would
  // give up to fp32 rounding), round once.
  std::vector<int64_t> where(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) where[size_t(order[size_t(r)])] = r;
  A* o = out.data<A>();
#pragma omp parallel for schedule(static) if (par)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < H; ++c) {
      float acc = 0.0f;
      for (int64_t j = 0; j < k; ++j) acc += y[size_t(where[size_t(t * k + j)] * H + c)];
      store_f32(o, t * H + c, acc);
    }
}

}  // namespace

// x: [T, H] fp32|bf16; w13_q: [E, 2I, H/2] uint8, w13_s/w13_z: [E, 2I, H/G]; w2_q: [E, H, I/2] uint8,
// w2_s/w2_z: [E, H, I/G]; topk_weights: [T, k] fp32; topk_ids: [T, k] int32 -> out: [T, H] x's dtype.
void fused_moe_int4(const TensorRef& x, const TensorRef& w13_q, const TensorRef& w13_s, const TensorRef* w13_z,
                    const TensorRef& w2_q, const TensorRef& w2_s, const TensorRef* w2_z, const TensorRef& topk_weights,
                    const TensorRef& topk_ids, int64_t G, const TensorRef& out) {
  if (x.size(0) == 0) return;
  dispatch_act(x, "fused_moe_int4", [&](auto tag) {
    moe_typed<decltype(tag)>(x, w13_q, w13_s, w13_z, w2_q, w2_s, w2_z, topk_weights, topk_ids, G, out);
  });
}

}  // namespace al4::cpu
