"""Interleaved RoPE (pairs x[2i], x[2i+1] rotated as complex numbers) with llama3 frequency scaling."""
from __future__ import annotations

import math

import torch

from amd_llama4.config import RopeScaling
from amd_llama4.ops.dispatch import dispatched, same_inputs_memo


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """[head_dim // 2] fp32 inverse frequencies; llama3 scaling as in Meta's reference / HF."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device="cpu") / head_dim))
    if scaling is None:
        return inv
    orig = scaling.original_max_position_embeddings
    low_wl = orig / scaling.low_freq_factor
    high_wl = orig / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wl, inv / scaling.factor, inv)
    band = scaling.high_freq_factor - scaling.low_freq_factor
    if band != 0:  # low == high leaves no blend band; guard the division
        smooth = (orig / wavelen - scaling.low_freq_factor) / band
        blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = (wavelen >= high_wl) & (wavelen <= low_wl)
        scaled = torch.where(medium, blended, scaled)
    return scaled


@dispatched("apply_rope")
def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """x: [B, S, Hn, D]; positions: [B, S] (int); inv_freq: [D/2] fp32 -> rotated x, same dtype.
    Angles in fp32: out[2i] = a cos - b sin, out[2i+1] = a sin + b cos, as one complex product
    (a + ib)(cos + i sin) like the reference: one kernel instead of ten on the decode step."""
    rot = same_inputs_memo(_rope_rotation, positions, inv_freq)
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(xc * rot).flatten(-2).to(x.dtype)


def _rope_rotation(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """-> cos + i sin [B, S, 1, D/2] complex64 (q and k of every RoPE layer of a step share it)."""
    ang = positions.float()[..., None] * inv_freq  # [B, S, D/2]
    return torch.polar(torch.ones_like(ang), ang)[:, :, None, :]
