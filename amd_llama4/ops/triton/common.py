"""Shared helpers for the Triton backend: interpreter detection, dtype/format facts, launch options."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from amd_llama4.ops.fp8 import FP8_MAX
from amd_llama4.platform import FP8_DTYPES, FP8_FORMATS

# Used by the in-kernel round-to-fp8-grid (kernels/quant.py).
FP8_EMIN_BIASED = {name: f.emin_biased for name, f in FP8_FORMATS.items()}
FP8_FORMAT_OF_DTYPE = {f.dtype: name for name, f in FP8_FORMATS.items()}
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """True when kernels run in the Triton CPU interpreter (tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def on_usable_device(*tensors) -> bool:
    """Triton runs on GPU tensors, and on CPU tensors only under the interpreter."""
    ts = [t for t in tensors if isinstance(t, torch.Tensor)]
    if not ts:
        return False
    dev = ts[0].device.type
    if any(t.device.type != dev for t in ts):
        return False
    return dev == "cuda" or (dev == "cpu" and interpreting())


def dot_in_f32() -> bool:
    """The interpreter holds bf16 as raw uint16 and mis-multiplies bf16/fp8 dot operands: upcast
    operands to fp32 before tl.dot there. Compiled kernels keep the native dtypes (matrix cores)."""
    return interpreting()


def is_amd() -> bool:
    return bool(torch.version.hip) and torch.cuda.is_available()


def launch_options(cfg, amd: bool | None = None) -> dict:
    """Keyword arguments for kernel[grid](...) from a TileConfig: AMD-only knobs only on AMD."""
    amd = is_amd() if amd is None else amd
    opts = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    if amd and not interpreting():
        opts.update(waves_per_eu=cfg.waves_per_eu, matrix_instr_nonkdim=cfg.matrix_instr_nonkdim, kpack=cfg.kpack)
    return opts


def check(cond: bool, op: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{op}: {msg}")


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


__all__ = ["tl", "FP8_MAX", "FP8_EMIN_BIASED", "FP8_FORMAT_OF_DTYPE", "FP8_DTYPES", "FLOAT_DTYPES",
           "interpreting", "on_usable_device", "dot_in_f32", "is_amd", "launch_options", "check", "next_pow2"]
