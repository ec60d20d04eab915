"""FP8 scaled matmul reference: the contract for attention / dense projections in FP8 (w8a8).

c[M, N] = dequant(a_q, a_scale) @ dequant(b_q, b_scale)^T, computed in fp32, cast to out_dtype.
  a_q: [M, K] fp8 activations; b_q: [N, K] fp8 weights (nn.Linear [out, in] layout).
  block=None: a_scale [M, 1] per token or [1, 1] per tensor; b_scale [N, 1] per channel or [1, 1].
  block=(bn, bk): a_scale [M, ceil(K/bk)] (1 x bk groups), b_scale [ceil(N/bn), ceil(K/bk)] (bn x bk tiles).
Scales follow amd_llama4.ops.fp8 ("row" / "tensor" / "block" granularity on these layouts).
"""
from __future__ import annotations

import torch

from amd_llama4.ops.dispatch import dispatched
from amd_llama4.ops.fp8 import dequantize_fp8


def check_fp8_gemm_inputs(a_q, a_scale, b_q, b_scale, block) -> None:
    if a_q.dim() != 2 or b_q.dim() != 2 or a_q.shape[1] != b_q.shape[1]:
        raise ValueError(f"fp8_gemm: a_q must be [M, K] and b_q [N, K], got {tuple(a_q.shape)} and {tuple(b_q.shape)}")
    (M, K), N = a_q.shape, b_q.shape[0]
    if block is None:
        if tuple(a_scale.shape) not in ((M, 1), (1, 1)):
            raise ValueError(f"fp8_gemm: a_scale must be [M={M}, 1] or [1, 1], got {tuple(a_scale.shape)}")
        if tuple(b_scale.shape) not in ((N, 1), (1, 1)):
            raise ValueError(f"fp8_gemm: b_scale must be [N={N}, 1] or [1, 1], got {tuple(b_scale.shape)}")
    else:
        bn, bk = block
        kb, nb = -(-K // bk), -(-N // bn)
        if tuple(a_scale.shape) != (M, kb):
            raise ValueError(f"fp8_gemm: a_scale must be [M={M}, ceil(K/{bk})={kb}], got {tuple(a_scale.shape)}")
        if tuple(b_scale.shape) != (nb, kb):
            raise ValueError(f"fp8_gemm: b_scale must be [{nb}, {kb}], got {tuple(b_scale.shape)}")


@dispatched("fp8_gemm")
def fp8_gemm(a_q: torch.Tensor, a_scale: torch.Tensor, b_q: torch.Tensor, b_scale: torch.Tensor,
             block: tuple[int, int] | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """a_q: [M, K] fp8, b_q: [N, K] fp8 -> [M, N] out_dtype (see the module docstring for scales)."""
    check_fp8_gemm_inputs(a_q, a_scale, b_q, b_scale, block)
    a = dequantize_fp8(a_q, a_scale, block=None if block is None else (1, block[1]))
    b = dequantize_fp8(b_q, b_scale, block=block)
    return (a @ b.t()).to(out_dtype)
