// Fused MoE on Composable Kernel: launchers over borrowed tensors (csrc/include/al4_tensor.h).
// Declared without CK or HIP headers so the C++ binding code can call them.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "al4_tensor.h"

namespace al4::ck_backend {

// Whether the CK grouped GEMM instance takes hidden size H and intermediate size I on this device.
bool fused_moe_supported(int64_t H, int64_t I);

// Bytes of device scratch fused_moe needs for T tokens, top-k k, H, I and E experts.
size_t fused_moe_workspace_bytes(int64_t T, int64_t k, int64_t H, int64_t I, int64_t E);

// x: [T, H] bf16; w_gate_up: [E, H, 2I] bf16; w_down: [E, I, H] bf16; topk_weights: [T, k] fp32;
// topk_ids: [T, k] int32 in [0, E) (others are dropped); workspace: uint8 >= fused_moe_workspace_bytes
// -> out: [T, H] bf16. All on the same GPU and stream; inputs checked by the caller (ck_bindings.cpp).
void fused_moe(const TensorRef& x, const TensorRef& w_gate_up, const TensorRef& w_down, const TensorRef& topk_weights,
               const TensorRef& topk_ids, const TensorRef& workspace, const TensorRef& out);

}  // namespace al4::ck_backend
