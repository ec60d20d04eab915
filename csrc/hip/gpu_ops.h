// GPU (HIP or CUDA) launchers of the native ops; same signatures as the CPU ones (cpu/cpu_ops.h).
#pragma once

#include "al4_tensor.h"

namespace al4::gpu {

void silu_and_mul(const TensorRef& x, const TensorRef& out);
void rms_norm(const TensorRef& x, const TensorRef* weight, double eps, const TensorRef* residual,
              const TensorRef& out, const TensorRef* residual_out);
void moe_topk_sigmoid(const TensorRef& logits, int top_k, const TensorRef& weights, const TensorRef& ids);
void quantize_fp8(const TensorRef& x, const TensorRef& q, const TensorRef& scale, int64_t block_r, int64_t block_c,
                  bool compute_scale);
void moe_align_block_size(const TensorRef& topk_ids, int num_experts, int block_size, const TensorRef& sorted_ids,
                          const TensorRef& expert_ids, const TensorRef& total);
size_t fused_moe_workspace_bytes(int64_t T, int64_t k, int64_t H, int64_t I, int64_t E);
void fused_moe(const TensorRef& x, const TensorRef& w_gate_up, const TensorRef& w_down, const TensorRef& topk_weights,
               const TensorRef& topk_ids, const TensorRef* w1_scale, const TensorRef* w2_scale, const TensorRef& out,
               const TensorRef& workspace);

}  // namespace al4::gpu
