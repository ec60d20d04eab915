"""Wrappers over the compiled extension `amd_llama4._C`; registers native ops with the dispatch.
Absent or disabled extension (AMD_LLAMA4_NO_NATIVE=1): nothing registers, torch paths run."""
from __future__ import annotations

import os

try:
    if os.environ.get("AMD_LLAMA4_NO_NATIVE") == "1":
        raise ImportError("disabled by AMD_LLAMA4_NO_NATIVE=1")
    from amd_llama4 import _C  # type: ignore[attr-defined]
except ImportError:
    _C = None


def available() -> bool:
    return _C is not None


def build_info() -> dict:
    if _C is None:
        raise RuntimeError("amd_llama4._C is not built (see README: building the native extension)")
    return dict(_C.build_info())
