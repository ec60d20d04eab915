"""Launchers: prefill attention (contract: amd_llama4.ops.attention.attention), paged decode and varlen
paged attention (contracts: amd_llama4.ops.paged_attention.paged_attention_decode / paged_attention)."""
from __future__ import annotations

import torch
import triton

from amd_llama4.ops.paged_attention import check_paged_attention_inputs, check_paged_inputs, kv_scale_kind
from amd_llama4.ops.triton import device
from amd_llama4.ops.triton.common import FLOAT_DTYPES, FP8_DTYPES, check, dot_in_f32, launch_options, next_pow2
from amd_llama4.ops.triton.configs import TileConfig, default_config
from amd_llama4.ops.triton.kernels import attention as ka, paged as kp, paged_prefill as kpp


def _last_contig(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def attention(q, k, v, q_pos, k_pos, scale: float, chunk_size: int | None = None, *,
              temperature: tuple[float, float] | None = None, config: TileConfig | None = None):
    """q: [B, S, Hq, D]; k, v: [B, L, Hkv, D]; q_pos: [B, S]; k_pos: [B, L] -> [B, S, Hq, D].
    temperature=(floor_scale, attn_scale) applies Llama 4 NoPE query scaling inside the kernel
    (same as scaling q by amd_llama4.ops.attention.temperature_scale first)."""
    op = "attention"
    check(q.dim() == 4 and k.dim() == 4 and k.shape == v.shape, op,
          f"q must be [B, S, Hq, D] and k, v [B, L, Hkv, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, S, Hq, D = q.shape
    L, Hkv = k.shape[1], k.shape[2]
    check(k.shape[0] == B and k.shape[3] == D and Hq % Hkv == 0, op,
          f"k {tuple(k.shape)} does not match q {tuple(q.shape)}")
    check(D >= 16 and D & (D - 1) == 0, op, f"head dim {D} must be a power of two >= 16")
    check(q.dtype in FLOAT_DTYPES and k.dtype == q.dtype and v.dtype == q.dtype, op,
          f"q, k, v must share a float dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check(tuple(q_pos.shape) == (B, S) and tuple(k_pos.shape) == (B, L), op,
          f"q_pos must be [B, S] and k_pos [B, L], got {tuple(q_pos.shape)} and {tuple(k_pos.shape)}")
    cfg = config or default_config("attention", device.arch())
    q, k, v = _last_contig(q), _last_contig(k), _last_contig(v)
    if k.stride() != v.stride():
        k, v = k.contiguous(), v.contiguous()
    qp, kp = q_pos.to(torch.int32).contiguous(), k_pos.to(torch.int32).contiguous()
    o = torch.empty(B, S, Hq, D, dtype=q.dtype, device=q.device)
    if B * S == 0:
        return o
    floor_scale, attn_scale = temperature if temperature is not None else (1.0, 0.0)
    grid = (triton.cdiv(S, cfg.BLOCK_M), B * Hq)
    ka.attn_prefill_kernel[grid](
        q, k, v, o, qp, kp, float(scale), S, L, Hq, Hq // Hkv, chunk_size or 1, float(floor_scale), float(attn_scale),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        CHUNKED=chunk_size is not None, HAS_TEMP=temperature is not None, DOT_F32=dot_in_f32(),
        BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, HEAD_D=D, **launch_options(cfg))
    return o


def _scale_arg(s, cache: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """A KV scale as (fp32 tensor, its (block, slot, head) strides): 0 strides broadcast a per-tensor or
    per-head scale, a per-token [num_blocks, block_size, Hkv] view keeps its own strides."""
    kind = kv_scale_kind(s, cache)
    t = torch.as_tensor(s, dtype=torch.float32, device=cache.device)
    if kind == "token":
        return t, tuple(t.stride())
    t = t.reshape(-1).contiguous()  # [1] or [Hkv]
    return t, (0, 0, 0 if kind == "tensor" else 1)


def _scale_args(fp8: bool, k_scale, v_scale, k_cache, q) -> tuple:
    """(ks, vs, 3 k strides, 3 v strides) kernel arguments; without fp8 no scale is read and no
    host-to-device copy is made (a graph capture forbids it)."""
    if not fp8:
        return (q, q, 0, 0, 0, 0, 0, 0)
    (ks, kst), (vs, vst) = _scale_arg(k_scale, k_cache), _scale_arg(v_scale, k_cache)
    return (ks, vs, *kst, *vst)


def paged_attention_decode(q, k_cache, v_cache, block_tables, seq_lens, first_pos, q_pos, scale: float,
                           chunk_size: int | None = None, k_scale=None, v_scale=None, *,
                           num_splits: int | None = None, config: TileConfig | None = None):
    """q: [B, Hq, D] -> [B, Hq, D] (see amd_llama4.ops.paged_attention)."""
    op = "paged_attention_decode"
    check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens, first_pos, q_pos, k_scale, v_scale)
    B, Hq, D = q.shape
    page, Hkv = k_cache.shape[1], k_cache.shape[2]
    check(D >= 16 and D & (D - 1) == 0, op, f"head dim {D} must be a power of two >= 16")
    check(k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1, op, "the caches' head dim must be contiguous")
    fp8 = k_cache.dtype in FP8_DTYPES
    check(fp8 or k_cache.dtype == q.dtype, op, f"cache dtype {k_cache.dtype} must be q's ({q.dtype}) or fp8")
    cfg = config or default_config("paged_decode", device.arch())
    q = _last_contig(q)
    bt = block_tables.to(torch.int32)
    bt = bt if bt.stride(-1) == 1 else bt.contiguous()  # the kernel walks a table row with stride 1
    lens, first, qp = (t.to(torch.int32).contiguous() for t in (seq_lens, first_pos, q_pos))
    max_keys = bt.shape[1] * page if chunk_size is None else min(bt.shape[1] * page, chunk_size)
    if num_splits is None:  # enough programs to fill the GPU, each split at least two key tiles
        want = triton.cdiv(2 * device.num_sms(), max(1, B * Hkv))
        num_splits = max(1, min(want, triton.cdiv(max_keys, 2 * cfg.BLOCK_N), 64))
    gqa = Hq // Hkv
    po = torch.empty(B, Hq, num_splits, D, dtype=torch.float32, device=q.device)
    pm = torch.empty(B, Hq, num_splits, dtype=torch.float32, device=q.device)
    pl = torch.empty_like(pm)
    o = torch.empty(B, Hq, D, dtype=q.dtype, device=q.device)
    if B == 0:
        return o
    ks, vs, *scale_strides = _scale_args(fp8, k_scale, v_scale, k_cache, q)
    kp.paged_decode_kernel[(B, Hkv, num_splits)](
        q, k_cache, v_cache, bt, lens, first, qp, ks, vs, po, pm, pl, float(scale), chunk_size or 1, gqa, page,
        num_splits, q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), bt.stride(0), *scale_strides,
        po.stride(0), po.stride(1), po.stride(2), pm.stride(0), pm.stride(1),
        CHUNKED=chunk_size is not None, KV_FP8=fp8, DOT_F32=dot_in_f32(), BLOCK_N=cfg.BLOCK_N, HEAD_D=D,
        QH=max(16, next_pow2(gqa)), **launch_options(cfg))
    kp.paged_reduce_kernel[(B, Hq)](po, pm, pl, o, num_splits, po.stride(0), po.stride(1), po.stride(2),
                                 pm.stride(0), pm.stride(1), o.stride(0), o.stride(1),
                                 SPLITS=next_pow2(num_splits), HEAD_D=D)
    return o


def paged_attention(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, first_pos, q_pos, scale: float,
                    chunk_size: int | None = None, k_scale=None, v_scale=None, *, config: TileConfig | None = None,
                    num_splits: int | None = None):
    """q: [T, Hq, D] -> [T, Hq, D] (see amd_llama4.ops.paged_attention). No host reads of the index
    tensors: a step of decodes only (T == B; every sequence has a new token) runs the split-K decode
    kernel, any other the varlen prefill kernel over T // BLOCK_M + B programs per head."""
    op = "paged_attention"
    check_paged_attention_inputs(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, first_pos, q_pos,
                                 k_scale, v_scale)
    T, Hq, D = q.shape
    B = block_tables.shape[0]
    if T == B:
        return paged_attention_decode(q, k_cache, v_cache, block_tables, seq_lens, first_pos, q_pos, scale,
                                      chunk_size, k_scale, v_scale, num_splits=num_splits)
    page, Hkv = k_cache.shape[1], k_cache.shape[2]
    check(D >= 16 and D & (D - 1) == 0, op, f"q's head dim {D} must be a power of two >= 16")
    check(k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1, op,
          "k_cache's and v_cache's head dim must be contiguous")
    check(q.dtype in FLOAT_DTYPES, op, f"q's dtype {q.dtype} must be one of {FLOAT_DTYPES}")
    fp8 = k_cache.dtype in FP8_DTYPES
    cfg = config or default_config("paged_prefill", device.arch())
    q = _last_contig(q)
    if k_cache.stride() != v_cache.stride():  # the kernel takes k's strides for both
        k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()
    bt = block_tables.to(torch.int32)
    bt = bt if bt.stride(-1) == 1 else bt.contiguous()
    cu, lens, first, qp = (t.to(torch.int32).contiguous() for t in (cu_seqlens_q, seq_lens, first_pos, q_pos))
    o = torch.empty(T, Hq, D, dtype=q.dtype, device=q.device)
    if T == 0:
        return o
    ks, vs, *scale_strides = _scale_args(fp8, k_scale, v_scale, k_cache, q)
    kpp.paged_prefill_kernel[(T // cfg.BLOCK_M + B, Hq)](
        q, k_cache, v_cache, o, bt, cu, lens, first, qp, ks, vs, float(scale), B, Hq, Hq // Hkv, page,
        chunk_size or 1, q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        bt.stride(0), *scale_strides, CHUNKED=chunk_size is not None, KV_FP8=fp8, DOT_F32=dot_in_f32(),
        BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, HEAD_D=D, **launch_options(cfg))
    return o
