"""RMSNorm (weighted, or weightless for Llama 4's QK norm), optionally fused with a residual add."""
from __future__ import annotations

import torch

from amd_llama4.ops.dispatch import dispatched


@dispatched("rms_norm")
def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float,
             residual: torch.Tensor | None = None):
    """x: [..., H]; weight: [H] or None. Computes in fp32, casts to x's dtype, then scales by weight
    (HF order). With `residual`: returns (rms_norm(x + residual), x + residual)."""
    if residual is not None:
        x = x + residual
    xf = x.float()
    out = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    if weight is not None:
        out = out * weight
    return (out, x) if residual is not None else out
