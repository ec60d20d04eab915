"""Attention over explicit positions: one reference for full causal (NoPE layers), chunked-local
causal (RoPE layers), prefill, decode and cached contexts; plus NoPE temperature tuning."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from amd_llama4.ops.dispatch import dispatched, same_inputs_memo


def temperature_scale(positions: torch.Tensor, floor_scale: int, attn_scale: float) -> torch.Tensor:
    """positions: [B, S] absolute -> [B, S] fp32 query scale log1p(floor((p+1)/floor_scale))*attn_scale + 1."""
    return torch.log1p(torch.floor((positions.float() + 1.0) / floor_scale)) * attn_scale + 1.0


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    """Memoised on the position tensors themselves: every layer of one step passes the same ones."""
    return same_inputs_memo(_attention_mask, q_pos, k_pos, chunk_size)


def _attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    """q_pos: [B, S], k_pos: [B, L] (-1 marks an empty key slot) -> bool [B, S, L], True = visible.
    Key k is visible to query q iff 0 <= k <= q (and, chunked, k // chunk == q // chunk)."""
    qp, kp = q_pos[:, :, None], k_pos[:, None, :]
    mask = (kp <= qp) & (kp >= 0)
    if chunk_size is not None:
        mask &= torch.div(kp, chunk_size, rounding_mode="floor") == torch.div(qp, chunk_size, rounding_mode="floor")
    # Padding queries (q_pos < 0) see every slot so their softmax stays finite; their outputs are dropped.
    return mask | (q_pos < 0)[:, :, None]


@dispatched("attention")
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
              scale: float, chunk_size: int | None = None) -> torch.Tensor:
    """q: [B, S, Hq, D]; k, v: [B, L, Hkv, D]; q_pos: [B, S]; k_pos: [B, L] -> [B, S, Hq, D].
    GQA: query head j reads kv head j // (Hq // Hkv)."""
    B, S, hq, D = q.shape
    hkv = k.shape[2]
    g = hq // hkv
    # The g query heads of a KV head become g * S rows against that head's keys: no K/V copies.
    qg = q.reshape(B, S, hkv, g, D).permute(0, 2, 3, 1, 4).reshape(B, hkv, g * S, D)
    mask = attention_mask(q_pos, k_pos, chunk_size)[:, None]  # [B, 1, S, L]
    if S > 1:  # rows are (query head in group, position); one position (decode) broadcasts as is
        mask = mask.repeat(1, 1, g, 1)  # [B, 1, g*S, L]
    out = F.scaled_dot_product_attention(qg, k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale)
    return out.view(B, hkv, g, S, D).permute(0, 3, 1, 2, 4).reshape(B, S, hq, D)
