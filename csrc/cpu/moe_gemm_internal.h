// Shared by the two halves of the CPU fused MoE: moe_gemm.cpp (routing, the panel GEMMs, the k-slot
// sum) and moe_stream.cpp (the decode paths that stream each active expert's weights once).
#pragma once

#include <memory>

#include "cpu_ops.h"
#include "moe_gemm_kernel.h"

namespace al4::cpu::moe {

struct MoeArgs {
  int64_t H = 0, I = 0, E = 0;
  const float* xin = nullptr;  // [N, H] expert-sorted, routed inputs (fp8 path: decoded values)
  const float* xs = nullptr;   // [N] per-row activation scale (fp8 path) or null
  const void* w1 = nullptr;    // [E, H, 2I] (out_major: stored as [E, 2I, H])
  const void* w2 = nullptr;    // [E, I, H] (out_major: stored as [E, H, I])
  const float* s1 = nullptr;   // [E, 2I] per-channel weight scale (fp8 path) or null
  const float* s2 = nullptr;   // [E, H]
  const int64_t* off = nullptr;  // [E + 1] row offsets per expert
  float* h = nullptr;            // [N, I] silu(gate) * up
  float* hs = nullptr;           // [N] per-row scale of h (fp8 path)
  float* y = nullptr;            // [N, H] expert outputs in sorted order
  bool bf16_act = false;         // emulate the reference's bfloat16 roundings (bf16 GEMMs)
  bool bf16_out = false;         // fp8 path with bf16 x: h and y are rounded to bf16 (ops/moe_fp8.py)
  bool fnuz = false;
  bool out_major = false;        // weights stored output-major: each output's weights contiguous
};

AL4_INLINE float act_round(float v, bool bf16) { return bf16 ? round_to<bf16_t>(v) : v; }

// A row buffer of n floats kept per calling thread between calls while small (slot: what it holds);
// larger ones are allocated into `fresh` and freed by the caller.
float* row_buffer(int slot, size_t n, std::unique_ptr<float[]>& fresh);

// fp32|bf16 weights (bf16_w) with at most a few rows per expert (decode): g.h and g.y from g.xin,
// reading each active expert's weights once as long sequential streams.
void streamed_moe(const MoeArgs& g, int64_t N, int64_t active, bool bf16_w);

}  // namespace al4::cpu::moe
