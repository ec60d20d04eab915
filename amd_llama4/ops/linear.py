"""Linear layer: y = x W^T (+ b), W in nn.Linear's [out, in] layout."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from amd_llama4.ops.dispatch import dispatched


@dispatched("linear")
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x: [..., K]; weight: [N, K]; bias: [N] | None -> [..., N]."""
    return F.linear(x, weight, bias)
