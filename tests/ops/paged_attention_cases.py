"""Inputs of `ops.paged_attention` for the native, torch and Triton tests: ragged batches over a paged
cache whose blocks are scattered, spare table columns pointing at real blocks (the kernels must stop at
seq_lens, not at the table), chunked layers whose first chunks were freed (first_pos > 0), fp8 KV
quantised per tensor, per KV head or per token."""
from __future__ import annotations

import torch

from amd_llama4.platform import FP8_FORMATS

FP8_MAX = {name: f.max for name, f in FP8_FORMATS.items()}
# Per dtype, for attention against the reference (summation order and exp differ).
TOL = {torch.float32: dict(atol=2e-4, rtol=2e-4), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


def make_case(lens, nq, first=None, Hq=8, Hkv=2, D=64, page=16, dtype=torch.float32, spare=2, seed=0,
              device="cpu"):
    """lens[b] keys of sequence b (its nq[b] new tokens are the last ones), first[b] = position of slot 0.
    -> dict of paged_attention's tensor arguments."""
    B = len(lens)
    first = first or [0] * B
    g = torch.Generator().manual_seed(seed)
    need = [-(-n // page) for n in lens]
    nb = sum(need) + 3
    kc = torch.randn(nb, page, Hkv, D, generator=g).to(dtype)
    vc = torch.randn(nb, page, Hkv, D, generator=g).to(dtype)
    perm = torch.randperm(nb, generator=g)
    bt = torch.full((B, max(need) + spare), int(perm[-1]), dtype=torch.int32)
    i = 0
    for b, n in enumerate(need):
        bt[b, :n] = perm[i:i + n]
        i += n
    T = sum(nq)
    q = torch.randn(T, Hq, D, generator=g).to(dtype)
    q_pos = torch.cat([torch.arange(f + n - k, f + n) for f, n, k in zip(first, lens, nq)]).to(torch.int32)
    cu = torch.tensor([0, *torch.tensor(nq).cumsum(0).tolist()], dtype=torch.int32)
    case = dict(q=q, k_cache=kc, v_cache=vc, block_tables=bt, cu_seqlens_q=cu,
                seq_lens=torch.tensor(lens, dtype=torch.int32), first_pos=torch.tensor(first, dtype=torch.int32),
                q_pos=q_pos)
    return {k: v.to(device) for k, v in case.items()}


def args(case: dict, scale: float, chunk=None, k_scale=None, v_scale=None) -> tuple:
    c = case
    return (c["q"], c["k_cache"], c["v_cache"], c["block_tables"], c["cu_seqlens_q"], c["seq_lens"],
            c["first_pos"], c["q_pos"], scale, chunk, k_scale, v_scale)


def quantize_kv(cache: torch.Tensor, fmt: str, kind: str):
    """cache [NB, bs, Hkv, D] -> (fp8 cache, scale) with one scale per tensor / KV head / token; the per-token
    scale is a strided view (the engine passes a view of its per-slot scales)."""
    c = cache.float()
    if kind == "tensor":
        s = c.abs().amax().clamp(min=1e-12) / FP8_MAX[fmt]
        qs = s
    elif kind == "head":
        s = c.abs().amax(dim=(0, 1, 3)).clamp(min=1e-12) / FP8_MAX[fmt]  # [Hkv]
        qs = s[:, None]
    else:
        amax = c.abs().amax(dim=3).clamp(min=1e-12) / FP8_MAX[fmt]  # [NB, bs, Hkv]
        store = torch.zeros(*amax.shape, 2)
        store[..., 1] = amax
        s = store[..., 1]  # non-contiguous view
        qs = s[..., None]
    q8 = (c / qs).clamp(-FP8_MAX[fmt], FP8_MAX[fmt]).to(FP8_FORMATS[fmt].dtype)
    return q8, s
