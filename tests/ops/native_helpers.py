"""Shared bits of the native-extension tests: skip (or, under CI=true, fail) when _C is not built."""
from __future__ import annotations

import os

import pytest
import torch

from amd_llama4 import ops
from amd_llama4.ops import native

# Tolerances per dtype for ops that accumulate (GEMMs, norms): summation order differs from torch.
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def require_native():
    if native.available():
        return
    if os.environ.get("CI") == "true" and os.environ.get("AMD_LLAMA4_NO_NATIVE") != "1":
        pytest.fail("amd_llama4._C is not built but CI=true (pip install -e . should build it)")
    pytest.skip("amd_llama4._C not built (or AMD_LLAMA4_NO_NATIVE=1)")


def moe_inputs(T, H, E, inter, k, dtype, seed=0):
    """x, w_gate_up, w_down (input-major), topk weights and ids for a fused MoE call; half the experts empty."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g).to(dtype)
    w1 = (torch.randn(E, H, 2 * inter, generator=g) / H**0.5).to(dtype)
    w2 = (torch.randn(E, inter, H, generator=g) / inter**0.5).to(dtype)
    logits = torch.randn(T, E, generator=g)
    logits[:, E // 2 :] -= 100  # half the experts receive no tokens
    tw, ids = ops.moe_topk_sigmoid(logits, k, backend="torch")
    return x, w1, w2, tw, ids
