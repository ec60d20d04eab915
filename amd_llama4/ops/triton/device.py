"""Where the launchers are running: device key (tuned-file name), arch, CU count. Cached."""
from __future__ import annotations

import functools

import torch

from amd_llama4 import platform


@functools.lru_cache(maxsize=None)
def device_key() -> str:
    return platform.device_key() if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=None)
def arch() -> str | None:
    return platform.gpu_arch() if torch.cuda.is_available() else None


@functools.lru_cache(maxsize=None)
def num_sms() -> int:
    return torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 4


def fp8_ok(fmt: str, t: torch.Tensor) -> bool:
    """The FP8 format a GPU's matrix units take (any format in the CPU interpreter)."""
    return t.device.type == "cpu" or platform.fp8_format() == fmt
