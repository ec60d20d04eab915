// The CPU FP8 scaled matmul (w8a8), contract amd_llama4/ops/fp8_gemm.py; definitions in fp8_gemm.cpp,
// the checking launcher in fp8_gemm_bindings.cpp. Callable from C++ (the native decode step).
#pragma once

#include <stdint.h>

#include "al4_tensor.h"

namespace al4::cpu {

// a_q: [M, K] fp8 (e4m3fn | e4m3fnuz); b_q: [N, K] fp8 (either format, independently of a_q).
// block_n = block_k = 0: a_scale [M, 1] or [1, 1], b_scale [N, 1] or [1, 1] (fp32).
// block (block_n, block_k) >= 1: a_scale [M, ceil(K/bk)], b_scale [ceil(N/bn), ceil(K/bk)] (fp32).
// -> out: [M, N] float32 | bfloat16 (fp32 accumulation, rounded once). Inputs contiguous, on the CPU,
// already checked (fp8_gemm_bindings.cpp). Any M works; it is built for M <= 16 (a weight stream).
void fp8_gemm(const TensorRef& a_q, const TensorRef& a_scale, const TensorRef& b_q, const TensorRef& b_scale,
              int64_t block_n, int64_t block_k, const TensorRef& out);

// The kernel body this process runs: "avx512_bf16", "avx2" or "portable" (AMD_LLAMA4_CPU_ISA forces lower).
const char* fp8_gemm_isa();

}  // namespace al4::cpu
