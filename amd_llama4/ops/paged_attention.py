"""Attention over a paged KV cache (references). Masking rules are those of `attention`.

`paged_attention`: the step's flat new tokens of B sequences (ragged prefill pieces and decodes).
q: [T, Hq, D]; sequence b's queries are rows cu_seqlens_q[b]:cu_seqlens_q[b+1] (int32 [B+1]) at
absolute positions q_pos [T]. k_cache, v_cache: [num_blocks, block_size, Hkv, D]; block_tables:
[B, W] int32; seq_lens: [B] int32 = keys visible to sequence b (logical slots 0..seq_lens[b]-1, the
new tokens' K/V already written); first_pos: [B] int32, absolute position of logical slot 0 (> 0 for
chunked layers whose earlier chunks were freed). Key at slot s has position first_pos[b] + s.
FP8 KV: k_scale / v_scale are None, a per-tensor scalar, per KV head [Hkv], or per token
[num_blocks, block_size, Hkv] (any strides); dequantised = float(x) * scale, cast to q.dtype.
-> [T, Hq, D] in q.dtype.

`paged_attention_decode`: one query per sequence, q: [B, Hq, D], q_pos: [B] (no cu_seqlens_q).
"""
from __future__ import annotations

import torch

from amd_llama4.ops.attention import attention
from amd_llama4.ops.dispatch import dispatched, register
from amd_llama4.platform import FP8_DTYPES

_FP8_KV = FP8_DTYPES


def _check_caches(q, k_cache, v_cache, op: str) -> None:
    """k_cache and v_cache are [num_blocks, block_size, Hkv, D] with q's D and Hkv dividing q's Hq."""
    Hq, D = q.shape[1:]
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.shape[3] != D:
        raise ValueError(f"{op}: k_cache and v_cache must both be [num_blocks, block_size, Hkv, D={D}], "
                         f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if Hq % k_cache.shape[2]:
        raise ValueError(f"{op}: q's Hq={Hq} is not a multiple of the caches' Hkv={k_cache.shape[2]}")


def check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens, first_pos, q_pos, k_scale, v_scale) -> None:
    op = "paged_attention_decode"
    if q.dim() != 3:
        raise ValueError(f"{op}: q must be [B, Hq, D], got {tuple(q.shape)}")
    B = q.shape[0]
    _check_caches(q, k_cache, v_cache, op)
    if block_tables.dim() != 2 or block_tables.shape[0] != B:
        raise ValueError(f"{op}: block_tables must be [B={B}, max_blocks], got {tuple(block_tables.shape)}")
    for name, t in (("seq_lens", seq_lens), ("first_pos", first_pos), ("q_pos", q_pos)):
        if tuple(t.shape) != (B,):
            raise ValueError(f"{op}: {name} must be [B={B}], got {tuple(t.shape)}")
    fp8 = k_cache.dtype in _FP8_KV
    if fp8 and (k_scale is None or v_scale is None):
        raise ValueError(f"{op}: an fp8 KV cache ({k_cache.dtype}) needs k_scale and v_scale")
    kv_scale_kind(k_scale, k_cache, "k_scale", op), kv_scale_kind(v_scale, k_cache, "v_scale", op)


def kv_scale_kind(scale, k_cache: torch.Tensor, name: str = "k_scale", op: str = "paged_attention") -> str:
    """-> "none" | "tensor" | "head" | "token" for a KV scale of a [num_blocks, block_size, Hkv, D] cache."""
    if scale is None:
        return "none"
    if not isinstance(scale, torch.Tensor) or scale.numel() == 1 and scale.dim() < 3:
        return "tensor"
    hkv = k_cache.shape[2]
    if tuple(scale.shape) == (hkv,):
        return "head"
    if tuple(scale.shape) == tuple(k_cache.shape[:3]):
        return "token"
    raise ValueError(f"{op}: {name} must be a scalar, [Hkv={hkv}] or per token [num_blocks, block_size, Hkv]="
                     f"{list(k_cache.shape[:3])}, got {tuple(scale.shape)}")


def _dequant(c: torch.Tensor, scale, dtype) -> torch.Tensor:
    # c: [..., Hkv, D]; scale: None, scalar or [Hkv] (per-token scales are gathered by the caller:
    # then scale is [..., Hkv] matching c's leading dims)
    if scale is None:
        return c.to(dtype)
    s = torch.as_tensor(scale, dtype=torch.float32, device=c.device)
    s = s.reshape(-1) if s.dim() <= 1 else s  # [1], [Hkv] or [..., Hkv]
    return (c.float() * s[..., None]).to(dtype)


def _rows(cache: torch.Tensor, phys: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
    """cache[phys, off] (any leading shape of phys/off); fp8 moves bytes: CPU lacks float8 indexing."""
    if cache.dtype in _FP8_KV:
        return cache.view(torch.uint8)[phys, off].view(cache.dtype)
    return cache[phys, off]


def _scale_rows(scale, phys: torch.Tensor, off: torch.Tensor):
    """A per-token scale [num_blocks, block_size, Hkv] read at the gathered slots; others as given."""
    if isinstance(scale, torch.Tensor) and scale.dim() == 3:
        return scale[phys, off].float()
    return scale


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
        off = slots % bs
        k = _dequant(_rows(k_cache, phys, off), _scale_rows(k_scale, phys, off), q.dtype)  # [n, Hkv, D]
        v = _dequant(_rows(v_cache, phys, off), _scale_rows(v_scale, phys, off), q.dtype)
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


def _gather_scale(scale, slots: torch.Tensor):
    """A per-token scale [num_blocks, block_size, Hkv] at flat slots [B, L] -> [B, L, Hkv]; others as given."""
    if isinstance(scale, torch.Tensor) and scale.dim() == 3:
        return scale.reshape(-1, scale.shape[2]).index_select(0, slots.reshape(-1)).view(*slots.shape, -1).float()
    return scale


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
    k = _dequant(_gather_slots(k_cache, phys), _gather_scale(k_scale, phys), q.dtype)  # [B, L, Hkv, D]
    v = _dequant(_gather_slots(v_cache, phys), _gather_scale(v_scale, phys), q.dtype)
    k_pos = torch.where(slot < seq_lens[:, None].long(), first_pos[:, None].long() + slot, -1)  # [B, L]
    return attention.reference(q[:, None], k, v, q_pos[:, None].long(), k_pos, scale, chunk_size)[:, 0]


# The torch backend runs the static form (sync-free, capturable); `paged_attention_decode.reference`
# stays the per-sequence loop above, the definition every backend is tested against.
register("paged_attention_decode", "torch")(paged_attention_decode_static)


# ---------------------------------------------------------------- ragged: prefill pieces + decodes

_INDEX_DTYPES = (torch.int32, torch.int64)


def check_paged_attention_inputs(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, first_pos, q_pos,
                                 k_scale, v_scale, op: str = "paged_attention") -> None:
    """Shapes, dtypes and devices of `paged_attention`'s inputs; the error names the tensor at fault."""
    if q.dim() != 3:
        raise ValueError(f"{op}: q must be [T, Hq, D], got {tuple(q.shape)}")
    T = q.shape[0]
    _check_caches(q, k_cache, v_cache, op)
    if k_cache.dtype != v_cache.dtype or not (k_cache.dtype == q.dtype or k_cache.dtype in _FP8_KV):
        raise ValueError(f"{op}: k_cache/v_cache dtypes ({k_cache.dtype}, {v_cache.dtype}) must both be q's "
                         f"({q.dtype}) or both one fp8 dtype")
    if block_tables.dim() != 2:
        raise ValueError(f"{op}: block_tables must be [B, max_blocks], got {tuple(block_tables.shape)}")
    B = block_tables.shape[0]
    for name, t, shape in (("block_tables", block_tables, None), ("cu_seqlens_q", cu_seqlens_q, (B + 1,)),
                           ("seq_lens", seq_lens, (B,)), ("first_pos", first_pos, (B,)), ("q_pos", q_pos, (T,))):
        if shape is not None and tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} must be {list(shape)} (B={B} from block_tables, T={T} from q), "
                             f"got {tuple(t.shape)}")
        if t.dtype not in _INDEX_DTYPES:
            raise ValueError(f"{op}: {name} must be int32 (or int64), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device}, q on {q.device}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device}, q on {q.device}")
    if k_cache.dtype in _FP8_KV and (k_scale is None or v_scale is None):
        raise ValueError(f"{op}: an fp8 KV cache ({k_cache.dtype}) needs k_scale and v_scale")
    kv_scale_kind(k_scale, k_cache, "k_scale", op), kv_scale_kind(v_scale, k_cache, "v_scale", op)


@dispatched("paged_attention")
def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, first_pos: torch.Tensor,
                    q_pos: torch.Tensor, scale: float, chunk_size: int | None = None,
                    k_scale=None, v_scale=None) -> torch.Tensor:
    """q: [T, Hq, D] -> [T, Hq, D]: each sequence's new tokens over its paged keys (the definition:
    gather the sequence's slots through its table, dequantise, `attention.reference`)."""
    check_paged_attention_inputs(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, first_pos, q_pos,
                                 k_scale, v_scale)
    bs = k_cache.shape[1]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    cu, lens, firsts = cu_seqlens_q.tolist(), seq_lens.tolist(), first_pos.tolist()
    for b in range(block_tables.shape[0]):
        t0, t1, n = cu[b], cu[b + 1], lens[b]
        if t1 == t0:
            continue
        slots = torch.arange(n, device=q.device)
        phys, off = block_tables[b].long()[slots // bs], slots % bs
        k = _dequant(_rows(k_cache, phys, off), _scale_rows(k_scale, phys, off), q.dtype)  # [n, Hkv, D]
        v = _dequant(_rows(v_cache, phys, off), _scale_rows(v_scale, phys, off), q.dtype)
        k_pos = (firsts[b] + slots)[None]  # [1, n]
        out[t0:t1] = attention.reference(q[t0:t1][None], k[None], v[None], q_pos[t0:t1][None].long(), k_pos,
                                         scale, chunk_size)[0]
    return out


def paged_attention_torch(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, first_pos, q_pos, scale,
                          chunk_size=None, k_scale=None, v_scale=None) -> torch.Tensor:
    """The torch backend: a step of decodes only (T == B: every sequence has at least one new token)
    runs the static, sync-free form (HIP/CUDA graph capturable); a step with prefill pieces runs the
    per-sequence loop of the reference (host reads of cu_seqlens_q / seq_lens)."""
    if q.shape[0] == block_tables.shape[0]:
        check_paged_attention_inputs(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, first_pos, q_pos,
                                     k_scale, v_scale)
        return paged_attention_decode_static(q, k_cache, v_cache, block_tables, seq_lens, first_pos, q_pos, scale,
                                             chunk_size, k_scale, v_scale)
    return paged_attention.reference(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, first_pos, q_pos,
                                     scale, chunk_size, k_scale, v_scale)


register("paged_attention", "torch")(paged_attention_torch)
