"""SiLU-and-mul (SwiGLU gate)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from amd_llama4.ops.dispatch import dispatched


@dispatched("silu_and_mul")
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2I] laid out [gate | up] -> [..., I] = silu(gate) * up."""
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]
