"""Llama 4 router: top-1 of the logits, weight = sigmoid(logit) (no softmax, no renormalisation)."""
import triton
import triton.language as tl


@triton.jit
def top1_sigmoid_kernel(logits_ptr, w_ptr, ids_ptr, T, E, stride_t,
                        BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    # logits: [T, E] -> w: [T] fp32, ids: [T] int32
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    ok = (rows[:, None] < T) & (cols[None, :] < E)
    x = tl.load(logits_ptr + rows[:, None].to(tl.int64) * stride_t + cols[None, :], mask=ok,
                other=float("-inf")).to(tl.float32)
    best = tl.max(x, axis=1)
    idx = tl.argmax(x, axis=1)
    w = 1.0 / (1.0 + tl.exp(-best))
    tl.store(w_ptr + rows, w, mask=rows < T)
    tl.store(ids_ptr + rows, idx.to(tl.int32), mask=rows < T)
