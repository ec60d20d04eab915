"""Launcher: per-token dynamic FP8 quantisation (matches amd_llama4.ops.fp8.quantize_fp8(x, fmt, 'row'))."""
from __future__ import annotations

import torch

from amd_llama4.ops.triton.common import FP8_EMIN_BIASED, FP8_MAX, check, next_pow2
from amd_llama4.ops.triton.kernels import quant as kq
from amd_llama4.platform import torch_fp8_dtype


def quantize_fp8_rows(x: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [M, N] float -> (q [M, N] fp8, scale [M, 1] fp32)."""
    check(x.dim() == 2, "quantize_fp8_rows", f"x must be [M, N], got {tuple(x.shape)}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    M, N = x.shape
    q = torch.empty(M, N, dtype=torch_fp8_dtype(fmt), device=x.device)
    s = torch.empty(M, 1, dtype=torch.float32, device=x.device)
    if M:
        kq.quant_fp8_rows_kernel[(M,)](x, q, s, N, x.stride(0), q.stride(0), FMAX=FP8_MAX[fmt],
                                    EMIN=FP8_EMIN_BIASED[fmt], BLOCK=min(1024, next_pow2(N)))
    return q, s
