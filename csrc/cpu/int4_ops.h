// The int4 (w4a16) CPU ops; shapes in the comments of each definition (int4_linear.cpp, int4_moe.cpp).
// The launchers that check their inputs are in int4_bindings.cpp.
#pragma once

#include <stdint.h>

#include <vector>

#include "al4_tensor.h"
#include "int4_kernel.h"

namespace al4::cpu {

// q: [..., N, K/2] (expert e of a batched weight, or e < 0 for a 2-d one) -> the kernels' view.
Int4W int4_weight(const TensorRef& q, const TensorRef& s, const TensorRef* z, int64_t G, int64_t e);
void int4_linear(const TensorRef& x, const TensorRef& q, const TensorRef& s, const TensorRef* z, int64_t G,
                 const TensorRef& out);
// One weight of int4_linear_multi: q [N_p, K/2], s, z (null: symmetric).
struct Int4Part {
  const TensorRef *q, *s, *z;
};
void int4_linear_multi(const TensorRef& x, const std::vector<Int4Part>& parts, int64_t G, const TensorRef& out);
void int4_dequantize(const TensorRef& q, const TensorRef& s, const TensorRef* z, int64_t G, const TensorRef& out);
void fused_moe_int4(const TensorRef& x, const TensorRef& w13_q, const TensorRef& w13_s, const TensorRef* w13_z,
                    const TensorRef& w2_q, const TensorRef& w2_s, const TensorRef* w2_z, const TensorRef& topk_weights,
                    const TensorRef& topk_ids, int64_t G, const TensorRef& out);

}  // namespace al4::cpu
