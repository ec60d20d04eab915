"""Triton backend: registers Triton launchers with amd_llama4.ops.dispatch.

Imported lazily by the dispatcher; raises ImportError when triton is not installed (the dispatcher
then falls back). On CPU tensors every `supports` guard is False unless TRITON_INTERPRET=1 (tests).
"""
from __future__ import annotations

import torch
import triton  # noqa: F401  (ImportError here = backend unavailable)

from amd_llama4.ops import fp8_gemm as _fp8_gemm_ref  # noqa: F401  (registers the torch references)
from amd_llama4.ops import moe_fp8 as _moe_fp8_ref  # noqa: F401
from amd_llama4.ops import paged_attention as _paged_ref  # noqa: F401
from amd_llama4.ops.dispatch import register
from amd_llama4.ops.triton import device
from amd_llama4.ops.triton.attention import attention, paged_attention, paged_attention_decode
from amd_llama4.ops.triton.common import FLOAT_DTYPES, FP8_FORMAT_OF_DTYPE, on_usable_device
from amd_llama4.ops.triton.gemm import fp8_gemm
from amd_llama4.ops.triton.moe import fused_moe, fused_moe_fp8, moe_align_block_size, moe_topk_sigmoid
from amd_llama4.ops.triton.quant import quantize_fp8_rows


def _pow2_head(d: int) -> bool:
    return d >= 16 and d & (d - 1) == 0


def _moe_ok(x, w_gate_up, w_down, topk_weights, topk_ids, **_):
    return on_usable_device(x, w_gate_up, w_down, topk_ids) and x.dtype in FLOAT_DTYPES and w_gate_up.dtype == x.dtype


def _moe_fp8_ok(x, w_gate_up_q, w_gate_up_scale, w_down_q, w_down_scale, topk_weights, topk_ids, fmt, **_):
    return on_usable_device(x, w_gate_up_q, w_down_q) and x.dtype in FLOAT_DTYPES and device.fp8_ok(fmt, x)


def _topk_ok(router_logits, top_k, **_):
    return on_usable_device(router_logits) and top_k == 1


def _align_ok(topk_ids, num_experts, block_size, **_):
    return on_usable_device(topk_ids) and topk_ids.dtype in (torch.int32, torch.int64) and block_size >= 1


def _gemm_ok(a_q, a_scale, b_q, b_scale, block=None, out_dtype=None, **_):
    fmt = FP8_FORMAT_OF_DTYPE.get(a_q.dtype)
    return on_usable_device(a_q, b_q, a_scale, b_scale) and fmt is not None and device.fp8_ok(fmt, a_q)


def _attn_ok(q, k, v, q_pos, k_pos, scale, chunk_size=None, **_):
    return on_usable_device(q, k, v) and q.dtype in FLOAT_DTYPES and k.dtype == q.dtype and _pow2_head(q.shape[-1])


def _paged_ok(q, k_cache, v_cache, *args, **kwargs):
    return on_usable_device(q, k_cache, v_cache) and q.dtype in FLOAT_DTYPES and _pow2_head(q.shape[-1])


register("fused_moe", "triton", supports=_moe_ok)(fused_moe)
register("fused_moe_fp8", "triton", supports=_moe_fp8_ok)(fused_moe_fp8)
register("moe_topk_sigmoid", "triton", supports=_topk_ok)(moe_topk_sigmoid)
register("moe_align_block_size", "triton", supports=_align_ok)(moe_align_block_size)
register("fp8_gemm", "triton", supports=_gemm_ok)(fp8_gemm)
register("attention", "triton", supports=_attn_ok)(attention)
register("paged_attention_decode", "triton", supports=_paged_ok)(paged_attention_decode)
register("paged_attention", "triton", supports=_paged_ok)(paged_attention)


def _int4_ok(x, *args, **_):  # bf16/fp16 activations on the GPU (any float under the interpreter)
    from amd_llama4.ops.triton.common import interpreting

    ts = [x, *(a for a in args if isinstance(a, torch.Tensor))]
    ok = FLOAT_DTYPES if interpreting() else (torch.bfloat16, torch.float16)
    return on_usable_device(*ts) and x.dtype in ok


from amd_llama4.ops import int4 as _int4_ref  # noqa: E402,F401  (registers the torch references)
from amd_llama4.ops.triton import int4 as _int4  # noqa: E402

register("int4_linear", "triton", supports=_int4_ok)(_int4.int4_linear)
register("fused_moe_int4", "triton", supports=_int4_ok)(_int4.fused_moe_int4)

__all__ = ["attention", "paged_attention", "paged_attention_decode", "fp8_gemm", "fused_moe", "fused_moe_fp8", "moe_align_block_size",
           "moe_topk_sigmoid", "quantize_fp8_rows"]
