// The CPU decode step as one native call: every layer of Llama 4 for R rows of one new token each,
// calling the same kernels the eager path calls (linear, int4_linear, rms_norm, paged_attention,
// moe_topk_sigmoid, fused_moe, fused_moe_int4, silu_and_mul) with the same roundings, but with no
// Python between them. At batch 1 on two cores the eager step spends ~4 ms in Python glue around
// ~114 kernel calls, more than an int4 model's whole weight stream. The model is described once
// (weights, per-layer flags) by amd_llama4/engine/cpu_decode.py; each step passes its inputs.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cpu_ops.h"

namespace al4::cpu {

// One projection: dense W [N, K] in the activation dtype; int4 (q [N, K/2], scales, zeros, G); or
// fp8 w8a8 (q [N, K] fp8, s [N, 1] | [1, 1] | [N/bn, K/bk] fp32; the input quantised per row, or per
// 1 x bk block, to q's format, as quant/fp8.py's FP8Linear does).
struct StepWeight {
  bool int4 = false, fp8 = false;
  TensorRef w, q, s, z;  // w: dense; q, s, z (z.ptr == 0: symmetric): int4; q, s: fp8
  int64_t G = 0;
  int64_t block_n = 0, block_k = 0;  // fp8 block scales (0: per channel / tensor)
  int64_t N = 0, K = 0;
};

// Routed experts: dense gate_up [E, H, 2I] / down [E, I, H] (fp8: with per-channel scales
// gate_up_scale [E, 2I], down_scale [E, H]), or int4 w13 [E, 2I, ...] / w2 [E, H, ...].
struct StepExperts {
  bool int4 = false;
  TensorRef gate_up, down, gate_up_scale, down_scale;  // *_scale.ptr != 0: fp8 experts
  TensorRef w13_q, w13_s, w13_z, w2_q, w2_s, w2_z;  // *_z.ptr == 0: symmetric
  int64_t G = 0;
};

struct StepLayer {
  TensorRef in_norm, post_norm;      // [H], activation dtype
  std::vector<StepWeight> qkv;       // q, k, v projections (no bias)
  StepWeight o;
  bool rope = false;                 // interleaved RoPE on q and k
  double qk_norm_eps = 0;            // > 0: weightless RMS norm of q and k per head (after RoPE)
  double floor_scale = 0, attn_scale = 0;  // floor_scale > 0: NoPE query temperature
  int64_t chunk = 0;                 // chunked-local attention span (0: full causal)
  double scale = 1.0;                // softmax scale
  int kind = 0;                      // which of the step's per-kind tables this layer reads
  TensorRef k_cache, v_cache;        // [num_blocks, block_size, Hkv, D], activation dtype
  bool moe = false;
  StepWeight router;                 // [E, H] (moe)
  int top_k = 1;
  std::vector<StepWeight> gate_up;   // shared expert (moe) or dense FFN: gate, up
  StepWeight down;
  StepExperts experts;               // moe
};

// One step's inputs (engine/step_inputs.StepInputs): R rows, row r = sequence r's one new token.
struct StepTensors {
  TensorRef ids, q_pos, cu_seqlens;  // [R] int64, [R] int32, [R+1] int32
  std::vector<TensorRef> tables, seq_lens, first_pos, slots;  // per kind: [R, W] i32, [R] i32, [R] i32, [R] i64
};

class DecodeStep {
 public:
  DecodeStep(TensorRef embed, TensorRef final_norm, TensorRef inv_freq, double eps, int64_t n_heads,
             int64_t n_kv_heads, int64_t head_dim, int64_t max_rows, std::vector<StepLayer> layers);
  // out: [R, H] activation dtype = the final-norm hidden states of the R new tokens; with `logits`
  // ([R, V] fp32), also lm_head(out) rounded to the activation dtype and widened (compute_logits).
  void run(const StepTensors& in, const TensorRef& out, const TensorRef* logits);
  void set_lm_head(StepWeight lm_head);
  // Wall time per phase of the steps run since the last call (profiling on), then reset; names in
  // kPhaseNames (decode_step.cpp). For perf/bench_decode_step.py: where a token's time goes.
  void set_profile(bool on) { profile_ = on; }
  std::vector<std::pair<std::string, double>> take_profile();
  int64_t max_rows() const { return max_rows_; }

 private:
  template <typename T>
  void run_typed(const StepTensors& in, const TensorRef& out);
  template <typename T>
  void attention(const StepLayer& L, const StepTensors& in, int64_t R);
  void project(const StepWeight& w, const TensorRef& x, const TensorRef& out);
  static bool int4_group(const StepWeight* ws, int n);
  void int4_multi(const StepWeight* ws, int n, const TensorRef& x, const TensorRef& out);
  TensorRef buf(int slot, std::vector<int64_t> shape, int dtype, const char* name);

  TensorRef embed_, final_norm_, inv_freq_;
  double eps_;
  int64_t Hq_, Hkv_, D_, H_, max_rows_;
  int dtype_;
  std::vector<StepLayer> layers_;
  StepWeight lm_head_;
  bool has_lm_head_ = false;
  std::vector<std::vector<uint8_t>> scratch_;
  void tick(int phase);
  bool profile_ = false;
  std::vector<double> prof_;
  int64_t prof_steps_ = 0;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace al4::cpu
