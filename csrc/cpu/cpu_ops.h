// CPU implementations of the native ops (C++17 + OpenMP). Each takes borrowed tensors already
// checked by the launcher in bindings.cpp; shapes are in the comments of each definition.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_max_threads() { return 1; }  // built without OpenMP: serial
inline int omp_get_thread_num() { return 0; }
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "al4_tensor.h"

namespace al4::cpu {

// Calls f(T{}) with T = float or bf16_t for the activation dtype; other dtypes are an error.
template <typename F>
void dispatch_act(const TensorRef& t, const char* op, F&& f) {
  if (t.dtype == kF32) {
    f(float{});
  } else if (t.dtype == kBF16) {
    f(bf16_t{});
  } else {
    fail(std::string(op) + ": " + t.name + " has unsupported dtype " + dtype_name(t.dtype) +
         " (CPU path: float32, bfloat16)");
  }
}

// Below this many elements an OpenMP region costs more than it saves.
constexpr int64_t kParallelMin = 1 << 14;
// The same for elements that each take an exp (silu): ~8 ns each, a region ~1 us.
constexpr int64_t kParallelMinExp = 1 << 10;

// fn(r, c0, c1) over rows [0, R) x columns [0, C): rows over the threads, and with fewer rows than
// threads (a decode step's one row) each row's columns in per-thread ranges as well, so that
// per-element work on a [1, I] row is not serial. Results do not depend on the split.
template <typename F>
void parallel_rows_cols(int64_t R, int64_t C, int64_t min_work, F&& fn) {
  const int64_t threads = int64_t(omp_get_max_threads());
  const bool par = threads > 1 && R * C >= min_work;
  const int64_t splits = par && R < threads ? std::max<int64_t>(1, std::min((threads + R - 1) / R, C / 64)) : 1;
  const int64_t tasks = R * splits;
#pragma omp parallel for schedule(static) if (par && tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t r = t / splits, j = t % splits;
    fn(r, C * j / splits, C * (j + 1) / splits);
  }
}

// fn(b0, b1) over consecutive pieces of [0, n) (n < 2^32) on `threads` threads: each owns a
// contiguous share and takes it front to back in pieces of `step` (one sequential weight stream per
// thread, as a static split); a thread done with its own share takes the last pieces of the others'
// (work stealing). At a decode step the two halves of a static split finished 11-22% of a linear's
// time apart (the DRAM rate each thread gets varies), the tail streamed by one thread alone.
// Every index is run exactly once, whatever the team size OpenMP grants.
template <typename F>
void parallel_ranges(int64_t n, int64_t threads, int64_t step, F&& fn) {
  threads = std::max<int64_t>(1, std::min(threads, n));
  if (threads == 1) {
    if (n > 0) fn(int64_t(0), n);
    return;
  }
  struct alignas(64) Share {
    std::atomic<uint64_t> v;  // (next << 32) | end: [next, end) not yet taken
  };
  constexpr int64_t kInline = 16;
  Share inline_shares[kInline];
  std::vector<Share> heap(threads > kInline ? threads : 0);
  Share* share = threads > kInline ? heap.data() : inline_shares;
  for (int64_t t = 0; t < threads; ++t)
    share[t].v.store((uint64_t(n * t / threads) << 32) | uint64_t(n * (t + 1) / threads), std::memory_order_relaxed);
  auto take = [&](Share& s, bool front, int64_t& b0, int64_t& b1) {
    uint64_t cur = s.v.load(std::memory_order_relaxed), next;
    do {
      const int64_t lo = int64_t(cur >> 32), hi = int64_t(cur & 0xffffffffu);
      if (lo >= hi) return false;
      b0 = front ? lo : std::max(lo, hi - step);
      b1 = front ? std::min(hi, lo + step) : hi;
      next = front ? (uint64_t(b1) << 32) | uint64_t(hi) : (uint64_t(lo) << 32) | uint64_t(b0);
    } while (!s.v.compare_exchange_weak(cur, next, std::memory_order_relaxed));
    return true;
  };
#pragma omp parallel num_threads(int(threads))
  {
    const int64_t t = omp_get_thread_num();
    int64_t b0, b1;
    while (take(share[t], true, b0, b1)) fn(b0, b1);
    for (int64_t k = 1; k < threads; ++k)
      while (take(share[(t + k) % threads], false, b0, b1)) fn(b0, b1);
  }
}

void silu_and_mul(const TensorRef& x, const TensorRef& out);
void rms_norm(const TensorRef& x, const TensorRef* weight, double eps, const TensorRef* residual,
              const TensorRef& out, const TensorRef* residual_out);
void moe_topk_sigmoid(const TensorRef& logits, int top_k, const TensorRef& weights, const TensorRef& ids);
int64_t moe_align_block_size(const TensorRef& topk_ids, int num_experts, int block_size, const TensorRef& sorted_ids,
                             const TensorRef& expert_ids);
void quantize_fp8(const TensorRef& x, const TensorRef& q, const TensorRef& scale, int64_t block_r, int64_t block_c,
                  bool compute_scale);
void dequantize_fp8(const TensorRef& q, const TensorRef& scale, int64_t block_r, int64_t block_c,
                    const TensorRef& out);
void fn_to_fnuz(const TensorRef& q, const TensorRef& out);
void fused_moe(const TensorRef& x, const TensorRef& w_gate_up, const TensorRef& w_down, const TensorRef& topk_weights,
               const TensorRef& topk_ids, const TensorRef* w1_scale, const TensorRef* w2_scale, const TensorRef& out);
void linear(const TensorRef& x, const std::vector<TensorRef>& ws, const std::vector<const TensorRef*>& biases,
            const TensorRef& out);
void paged_attention(const TensorRef& q, const TensorRef& k_cache, const TensorRef& v_cache,
                     const TensorRef& block_tables, const TensorRef& cu_seqlens_q, const TensorRef& seq_lens,
                     const TensorRef& first_pos, const TensorRef& q_pos, double scale, int64_t chunk_size,
                     const TensorRef* k_scale, const TensorRef* v_scale, const TensorRef& out);
const char* gemm_isa();
int cpu_isa_level();  // 4: AVX-512 (x86-64-v4), 3: AVX2 (v3), 0: portable; AMD_LLAMA4_CPU_ISA forces lower

}  // namespace al4::cpu
