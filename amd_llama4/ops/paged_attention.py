"""Decode attention over a paged KV cache (reference). Masking rules are those of `attention`.

q: [B, Hq, D]; k_cache, v_cache: [num_blocks, block_size, Hkv, D]; block_tables: [B, max_blocks] int32;
seq_lens: [B] int32 (number of keys); first_pos: [B] int32, absolute position of slot 0 of
block_tables[b, 0] (> 0 for chunked layers whose earlier chunks were freed); q_pos: [B] int32.
Keys of sequence b occupy logical slots 0..seq_lens[b]-1 with absolute positions first_pos[b] + slot.
FP8 KV: k_scale / v_scale are fp32 per-tensor scalars or per-head [Hkv]; dequantised = q.float() * scale,
cast to q.dtype. -> [B, Hq, D] in q.dtype.
"""
from __future__ import annotations

import torch

from amd_llama4.ops.attention import attention
from amd_llama4.ops.dispatch import dispatched, register
from amd_llama4.platform import FP8_DTYPES

_FP8_KV = FP8_DTYPES


def check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens, first_pos, q_pos, k_scale, v_scale) -> None:
    op = "paged_attention_decode"
    if q.dim() != 3:
        raise ValueError(f"{op}: q must be [B, Hq, D], got {tuple(q.shape)}")
    B, Hq, D = q.shape
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.shape[3] != D:
        raise ValueError(f"{op}: k_cache and v_cache must both be [num_blocks, block_size, Hkv, D={D}], "
                         f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if Hq % k_cache.shape[2]:
        raise ValueError(f"{op}: Hq={Hq} is not a multiple of Hkv={k_cache.shape[2]}")
    if block_tables.dim() != 2 or block_tables.shape[0] != B:
        raise ValueError(f"{op}: block_tables must be [B={B}, max_blocks], got {tuple(block_tables.shape)}")
    for name, t in (("seq_lens", seq_lens), ("first_pos", first_pos), ("q_pos", q_pos)):
        if tuple(t.shape) != (B,):
            raise ValueError(f"{op}: {name} must be [B={B}], got {tuple(t.shape)}")
    fp8 = k_cache.dtype in _FP8_KV
    if fp8 and (k_scale is None or v_scale is None):
        raise ValueError(f"{op}: an fp8 KV cache ({k_cache.dtype}) needs k_scale and v_scale")


def _dequant(c: torch.Tensor, scale, dtype) -> torch.Tensor:
    # c: [..., Hkv, D]
    if scale is None:
        return c.to(dtype)
    s = torch.as_tensor(scale, dtype=torch.float32, device=c.device).reshape(-1)  # [1] or [Hkv]
    return (c.float() * s[:, None]).to(dtype)


@dispatched("paged_attention_decode")
def paged_attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, first_pos: torch.Tensor,
                           q_pos: torch.Tensor, scale: float, chunk_size: int | None = None,
                           k_scale=None, v_scale=None) -> torch.Tensor:
    """q: [B, Hq, D] -> [B, Hq, D]; one query per sequence over its paged keys."""
    check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens, first_pos, q_pos, k_scale, v_scale)
    bs = k_cache.shape[1]
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        n = int(seq_lens[b])
        slots = torch.arange(n, device=q.device)
        phys = block_tables[b].long()[slots // bs]
        k = _dequant(k_cache[phys, slots % bs], k_scale, q.dtype)  # [n, Hkv, D]
        v = _dequant(v_cache[phys, slots % bs], v_scale, q.dtype)
        k_pos = (int(first_pos[b]) + slots)[None]
        out[b] = attention.reference(q[b][None, None], k[None], v[None], q_pos[b].reshape(1, 1).long(),
                                     k_pos, scale, chunk_size)[0, 0]
    return out


def _gather_slots(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """cache [num_blocks, block_size, Hkv, D] rows at flat slots [B, L] -> [B, L, Hkv, D]. fp8 moves
    bytes: CPU has no float8 indexing kernels."""
    flat = cache.reshape(-1, *cache.shape[2:])
    if flat.dtype in _FP8_KV:
        return flat.view(torch.uint8).index_select(0, slots.reshape(-1)).view(flat.dtype).view(
            *slots.shape, *flat.shape[1:])
    return flat.index_select(0, slots.reshape(-1)).view(*slots.shape, *flat.shape[1:])


def paged_attention_decode_static(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                  block_tables: torch.Tensor, seq_lens: torch.Tensor, first_pos: torch.Tensor,
                                  q_pos: torch.Tensor, scale: float, chunk_size: int | None = None,
                                  k_scale=None, v_scale=None) -> torch.Tensor:
    """Same contract as the reference, with shapes fixed by block_tables' width and no host reads:
    gathers every slot of all max_blocks and masks those at or past seq_lens, so it can be captured in
    a HIP/CUDA graph (GPUs without the Triton kernel) and runs the CPU engine's static decode path.
    Costs max_blocks * block_size keys per sequence, whatever the sequence's length."""
    check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens, first_pos, q_pos, k_scale, v_scale)
    bs = k_cache.shape[1]
    slot = torch.arange(block_tables.shape[1] * bs, device=q.device)  # [L] logical slot
    phys = block_tables.long()[:, slot // bs] * bs + slot % bs  # [B, L] flat physical slot
    k = _dequant(_gather_slots(k_cache, phys), k_scale, q.dtype)  # [B, L, Hkv, D]
    v = _dequant(_gather_slots(v_cache, phys), v_scale, q.dtype)
    k_pos = torch.where(slot < seq_lens[:, None].long(), first_pos[:, None].long() + slot, -1)  # [B, L]
    return attention.reference(q[:, None], k, v, q_pos[:, None].long(), k_pos, scale, chunk_size)[:, 0]


# The torch backend runs the static form (sync-free, capturable); `paged_attention_decode.reference`
# stays the per-sequence loop above, the definition every backend is tested against.
register("paged_attention_decode", "torch")(paged_attention_decode_static)
