// MoE routing on CPU: sigmoid top-k and the block alignment of expert-sorted tokens.
#include <algorithm>

#include "cpu_ops.h"

namespace al4::cpu {

// logits: [T, E] -> weights: [T, k] fp32 = sigmoid(top-k logits), ids: [T, k] int32, descending;
// ties go to the lower expert id.
void moe_topk_sigmoid(const TensorRef& logits, int top_k, const TensorRef& weights, const TensorRef& ids) {
  const int64_t T = logits.size(0), E = logits.size(1);
  float* wp = weights.data<float>();
  int32_t* ip = ids.data<int32_t>();
  dispatch_act(logits, "moe_topk_sigmoid", [&](auto tag) {
    using D = decltype(tag);
    const D* lp = logits.data<D>();
#pragma omp parallel for schedule(static) if (T * E > kParallelMin)
    for (int64_t t = 0; t < T; ++t) {
      // Insertion into a sorted list of k: k is 1 or 2 for Llama 4, E up to a few hundred.
      float best_v[64];
      int32_t best_i[64];
      int n = 0;
      for (int64_t e = 0; e < E; ++e) {
        const float v = load_f32(lp, t * E + e);
        if (n == top_k && !(v > best_v[n - 1])) continue;
        int pos = (n < top_k) ? n++ : n - 1;
        while (pos > 0 && v > best_v[pos - 1]) {
          best_v[pos] = best_v[pos - 1];
          best_i[pos] = best_i[pos - 1];
          --pos;
        }
        best_v[pos] = v;
        best_i[pos] = int32_t(e);
      }
      for (int j = 0; j < top_k; ++j) {
        wp[t * top_k + j] = sigmoid_f32(best_v[j]);
        ip[t * top_k + j] = best_i[j];
      }
    }
  });
}

// topk_ids: [N] (flattened [T, k], int32 or int64) -> sorted_ids: [>= P] int32, expert_ids: [>= P/block]
// int32; returns P. Same layout as the torch reference (stable within an expert, sentinel N).
int64_t moe_align_block_size(const TensorRef& topk_ids, int num_experts, int block_size, const TensorRef& sorted_ids,
                             const TensorRef& expert_ids) {
  const int64_t N = topk_ids.numel();
  std::vector<int64_t> flat(N);
  if (topk_ids.dtype == kI32) {
    for (int64_t i = 0; i < N; ++i) flat[i] = topk_ids.data<int32_t>()[i];
  } else {
    for (int64_t i = 0; i < N; ++i) flat[i] = topk_ids.data<int64_t>()[i];
  }
  std::vector<int64_t> counts(num_experts, 0);
  for (int64_t i = 0; i < N; ++i) {
    check(flat[i] >= 0 && flat[i] < num_experts,
          "moe_align_block_size: topk_ids holds " + std::to_string(flat[i]) + ", outside [0, num_experts=" +
              std::to_string(num_experts) + ")");
    ++counts[flat[i]];
  }
  std::vector<int64_t> start(num_experts + 1, 0);
  for (int e = 0; e < num_experts; ++e) start[e + 1] = start[e] + ceil_div(counts[e], block_size) * block_size;
  const int64_t P = start[num_experts];
  check(sorted_ids.numel() >= P && expert_ids.numel() >= P / block_size,
        "moe_align_block_size: output buffers too small");
  int32_t* sp = sorted_ids.data<int32_t>();
  int32_t* ep = expert_ids.data<int32_t>();
  std::fill(sp, sp + P, int32_t(N));
  std::vector<int64_t> cursor(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < N; ++i) sp[cursor[flat[i]]++] = int32_t(i);
  for (int e = 0; e < num_experts; ++e)
    for (int64_t b = start[e] / block_size; b < start[e + 1] / block_size; ++b) ep[b] = e;
  return P;
}

}  // namespace al4::cpu
