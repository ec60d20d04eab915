"""Ops of the vision tower: LayerNorm, exact GELU, the 2D (axial) rotary embedding and non-causal
attention over the tokens of one tile. Torch references only for now; faster backends register
under the same names (dispatch.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from amd_llama4.ops.dispatch import dispatched


@dispatched("layer_norm")
def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """x: [..., H]; weight, bias: [H] | None -> [..., H] = (x - mean) / sqrt(var + eps) * weight + bias."""
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


@dispatched("gelu")
def gelu(x: torch.Tensor) -> torch.Tensor:
    """The exact (erf) GELU of nn.GELU(), not the tanh approximation."""
    return F.gelu(x)


def vision_rope_freqs(patches_per_side: int, head_dim: int, theta: float) -> torch.Tensor:
    """-> [P + 1, head_dim // 2] complex64 rotations cos + i sin for the P = patches_per_side**2 patches
    of a tile in row-major order, then the class token (angle 0: not rotated). Rotated pair j of a
    head uses the patch's column x for j < head_dim / 4 and its row y otherwise, at angle
    (coordinate + 1) * theta**(-4j' / head_dim), j' = j mod head_dim / 4 (HF / Meta's layout)."""
    n = patches_per_side
    quarter = head_dim // 4
    freq = 1.0 / theta ** (torch.arange(0, 2 * quarter, 2, device="cpu")[:quarter].float() / (head_dim // 2))
    idx = torch.arange(n * n, device="cpu")
    x, y = (idx % n + 1).float(), (idx // n + 1).float()  # [P]
    ang = torch.cat([x[:, None] * freq, y[:, None] * freq], dim=1)  # [P, D/2]
    ang = torch.cat([ang, ang.new_zeros(1, ang.shape[1])])  # the class token, last
    return torch.polar(torch.ones_like(ang), ang)


@dispatched("vision_rope")
def vision_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x: [N, P, Hn, D]; freqs: [P, D/2] complex (vision_rope_freqs) -> x with interleaved pairs
    (x[2i], x[2i+1]) rotated by freqs[:, i], computed in fp32, returned in x's dtype."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())  # [N, P, Hn, D/2]
    return torch.view_as_real(xc * freqs[None, :, None, :]).flatten(-2).to(x.dtype)


@dispatched("vision_attention")
def vision_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q, k, v: [N, P, Hn, D] (N tiles, P tokens each) -> [N, P, Hn, D]: every token of a tile attends
    to every token of the same tile (non-causal, no mask), softmax(q k^T * scale) v."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2)
