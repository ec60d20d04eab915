"""FP8 quantisation references (e4m3fn and e4m3fnuz), the contract every FP8 kernel matches bit for bit.

Granularity over the last two dims of x ([..., R, C]); leading dims (e.g. experts) are batched:
  "tensor": one scale per [R, C] matrix  -> scale [..., 1, 1]
  "row":    one per row   -> [..., R, 1]  (per-token activations [T, K]; per-channel [out, in] weights)
  "col":    one per column -> [..., 1, C] (per-channel of input-major weights [K, N], e.g. HF experts)
  "block":  one per (br x bc) tile, block=(br, bc), ragged edges allowed -> [..., ceil(R/br), ceil(C/bc)]
            ((1, 128) for activations, (128, 128) for weights)
q = clamp(x / scale, -max, max) cast to fp8 (round to nearest even; saturating, never NaN/inf);
scale = max(amax, 1e-12) / max in fp32; dequantised value = q.float() * scale.
"""
from __future__ import annotations

import torch

from amd_llama4.ops.dispatch import dispatched
from amd_llama4.platform import FP8_FORMATS, torch_fp8_dtype

FP8_MAX = {name: f.max for name, f in FP8_FORMATS.items()}
MIN_AMAX = 1e-12


def _expand(scale: torch.Tensor, shape: torch.Size, block: tuple[int, int] | None) -> torch.Tensor:
    if block is None:
        return scale
    br, bc = block
    s = scale.repeat_interleave(br, dim=-2).repeat_interleave(bc, dim=-1)
    return s[..., : shape[-2], : shape[-1]]


def _amax(x: torch.Tensor, granularity: str, block: tuple[int, int] | None) -> torch.Tensor:
    a = x.float().abs()
    if granularity == "tensor":
        return a.amax(dim=(-2, -1), keepdim=True)
    if granularity == "row":
        return a.amax(dim=-1, keepdim=True)
    if granularity == "col":
        return a.amax(dim=-2, keepdim=True)
    if granularity == "block":
        br, bc = block
        R, C = a.shape[-2:]
        pr, pc = (-R) % br, (-C) % bc
        a = torch.nn.functional.pad(a, (0, pc, 0, pr))
        a = a.unflatten(-1, (-1, bc)).unflatten(-3, (-1, br))  # [..., R/br, br, C/bc, bc]
        return a.amax(dim=(-3, -1))
    raise ValueError(f"quantize_fp8: granularity {granularity!r} not in tensor|row|col|block")


@dispatched("quantize_fp8")
def quantize_fp8(x: torch.Tensor, fmt: str, granularity: str = "row", block: tuple[int, int] | None = None,
                 scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [..., R, C] -> (q fp8 same shape, scale fp32). A given `scale` is used as is (static)."""
    if x.dim() < 2:
        raise ValueError(f"quantize_fp8: x must have at least 2 dims, got shape {tuple(x.shape)}")
    if (granularity == "block") != (block is not None):
        raise ValueError("quantize_fp8: block=(br, bc) is required for granularity 'block' and only then")
    torch_fp8_dtype(fmt)  # validates the name
    fmax = FP8_MAX[fmt]
    if scale is None:
        scale = torch.clamp(_amax(x, granularity, block), min=MIN_AMAX) / fmax
    q = (x.float() / _expand(scale.float(), x.shape, block)).clamp(-fmax, fmax).to(torch_fp8_dtype(fmt))
    return q, scale.float()


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * _expand(scale.float(), q.shape, block)).to(dtype)


def fn_to_fnuz(q: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3fn bits reinterpreted as e4m3fnuz mean half the value, so the scale doubles; 0x80 (-0 in fn)
    is NaN in fnuz and becomes 0. Dequantised values are identical."""
    if q.dtype != torch.float8_e4m3fn:
        raise ValueError(f"fn_to_fnuz: expected float8_e4m3fn, got {q.dtype}")
    bits = q.view(torch.uint8)
    bits = torch.where(bits == 0x80, torch.zeros_like(bits), bits)
    return bits.view(torch.float8_e4m3fnuz), scale.float() * 2.0
