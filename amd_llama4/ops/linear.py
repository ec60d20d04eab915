"""Linear layer: y = x W^T (+ b), W in nn.Linear's [out, in] layout."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from amd_llama4.ops.dispatch import dispatched


@dispatched("linear")
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x: [..., K]; weight: [N, K]; bias: [N] | None -> [..., N]."""
    return F.linear(x, weight, bias)


@dispatched("linear_concat")
def linear_concat(x: torch.Tensor, weights, biases=None) -> torch.Tensor:
    """x: [..., K]; weights: a sequence of [N_p, K]; biases: None or a sequence of [N_p] | None ->
    [..., sum N_p], weight p's outputs at columns [sum N_<p, + N_p): several projections of one input
    (q/k/v; gate/up) in one op, without concatenating the weights themselves."""
    biases = biases or (None,) * len(weights)
    if len(biases) != len(weights):
        raise ValueError(f"linear_concat: {len(weights)} weights but {len(biases)} biases")
    return torch.cat([F.linear(x, w, b) for w, b in zip(weights, biases)], dim=-1)
