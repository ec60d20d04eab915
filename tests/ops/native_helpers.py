"""Shared bits of the native-extension tests: skip (or, under CI=true, fail) when _C is not built."""
from __future__ import annotations

import os

import pytest
import torch

from amd_llama4.ops import native

# Tolerances per dtype for ops that accumulate (GEMMs, norms): summation order differs from torch.
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def require_native():
    if native.available():
        return
    if os.environ.get("CI") == "true" and os.environ.get("AMD_LLAMA4_NO_NATIVE") != "1":
        pytest.fail("amd_llama4._C is not built but CI=true (pip install -e . should build it)")
    pytest.skip("amd_llama4._C not built (or AMD_LLAMA4_NO_NATIVE=1)")
