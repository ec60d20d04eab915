"""Launchers: w4a16 GEMM and fused MoE (contracts: amd_llama4.ops.int4.int4_linear / fused_moe_int4).

Tiles are fixed per M class (no tuned files yet): decode-sized inputs take 16-row tiles (the smallest
MFMA / mma tile), larger ones 64. BLOCK_K never exceeds the group size (one scale per column per K
tile) and divides it. The same tiles are compiled ahead of time by ops/triton/catalog.py."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from amd_llama4.ops.int4 import check_int4_linear_inputs, check_moe_int4_inputs
from amd_llama4.ops.triton.common import FLOAT_DTYPES, check, dot_in_f32, interpreting
from amd_llama4.ops.triton.kernels import int4_gemm as kg, int4_moe as km


@dataclass(frozen=True)
class Int4Tiles:
    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    GROUP_M: int = 8
    num_warps: int = 4  # what catalog.py's fixed AOT compile uses

    def meta(self) -> dict:
        return {"BLOCK_M": self.BLOCK_M, "BLOCK_N": self.BLOCK_N, "BLOCK_K": self.BLOCK_K, "GROUP_M": self.GROUP_M}


SMALL_M = Int4Tiles(16, 64, 64)  # decode: few rows, the weight stream dominates
LARGE_M = Int4Tiles(64, 64, 64)
SMALL_M_MAX = 16  # rows (GEMM) or routed slots per expert on average (MoE) that take SMALL_M


def tiles_for(rows: int, group_size: int) -> Int4Tiles:
    t = SMALL_M if rows <= SMALL_M_MAX else LARGE_M
    bk = min(t.BLOCK_K, group_size)  # group sizes are 32 / 64 / 128: bk divides them
    return t if bk == t.BLOCK_K else Int4Tiles(t.BLOCK_M, t.BLOCK_N, bk, t.GROUP_M, t.num_warps)


def _opts(t: Int4Tiles) -> dict:
    return {} if interpreting() else {"num_warps": t.num_warps}


def int4_linear(x, qweight, scales, zeros, group_size, *, tiles: Int4Tiles | None = None):
    """x: [..., K] bf16|fp16 (fp32 under the interpreter) -> [..., N] x.dtype."""
    N, K = check_int4_linear_inputs(x, qweight, scales, zeros, group_size)
    check(x.dtype in FLOAT_DTYPES, "int4_linear", f"x dtype {x.dtype} not in {FLOAT_DTYPES}")
    x2 = x.reshape(-1, K)  # a view when it can be: the kernel takes any strides
    M = x2.shape[0]
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out.reshape(*x.shape[:-1], N)
    t = tiles or tiles_for(M, group_size)
    check(group_size % t.BLOCK_K == 0, "int4_linear", f"BLOCK_K {t.BLOCK_K} must divide group_size {group_size}")
    q, s = qweight.contiguous(), scales.contiguous()
    z = zeros.contiguous() if zeros is not None else s  # unread without HAS_ZERO
    grid = (triton.cdiv(M, t.BLOCK_M) * triton.cdiv(N, t.BLOCK_N),)
    kg.int4_gemm_kernel[grid](x2, q, s, z, out, M, N, K, group_size, x2.stride(0), x2.stride(1), q.stride(0),
                              q.stride(1), s.stride(0), s.stride(1), out.stride(0), out.stride(1),
                              HAS_ZERO=zeros is not None, DOT_F32=dot_in_f32(), **t.meta(), **_opts(t))
    return out.reshape(*x.shape[:-1], N)


def fused_moe_int4(x, w13_q, w13_s, w13_z, w2_q, w2_s, w2_z, topk_weights, topk_ids, group_size, *,
                   tiles: Int4Tiles | None = None):
    """x: [T, H] bf16|fp16 (fp32 under the interpreter) -> [T, H] x.dtype; see ops/int4.py."""
    from amd_llama4.ops.triton.moe import moe_align_block_size

    E, H, inter = check_moe_int4_inputs(x, w13_q, w13_s, w13_z, w2_q, w2_s, w2_z, topk_weights, topk_ids, group_size)
    check(x.dtype in FLOAT_DTYPES, "fused_moe_int4", f"x dtype {x.dtype} not in {FLOAT_DTYPES}")
    T, k = x.shape[0], topk_ids.shape[1]
    if T == 0:
        return torch.zeros(0, H, dtype=x.dtype, device=x.device)
    t = tiles or tiles_for(-(-T * k // max(1, min(E, T * k))), group_size)
    check(group_size % t.BLOCK_K == 0, "fused_moe_int4", f"BLOCK_K {t.BLOCK_K} must divide group_size {group_size}")
    sorted_ids, expert_ids, used = moe_align_block_size(topk_ids, E, t.BLOCK_M)
    cap = sorted_ids.shape[0]
    tw = topk_weights.reshape(-1).float().contiguous()
    common = dict(DOT_F32=dot_in_f32(), HAS_ZERO=w13_z is not None, **t.meta(), **_opts(t))

    def run(a, a_div, q, s, z, c, n, kdim, gated):
        q, s = q.contiguous(), s.contiguous()
        z = z.contiguous() if z is not None else s
        grid = (cap // t.BLOCK_M * triton.cdiv(n, t.BLOCK_N),)
        km.int4_moe_kernel[grid](a, q, s, z, c, tw, sorted_ids, expert_ids, T * k, n, kdim, group_size, a_div, cap,
                                 used, a.stride(0), a.stride(1), q.stride(0), q.stride(1), q.stride(2), s.stride(0),
                                 s.stride(1), s.stride(2), c.stride(0), c.stride(1), GATED=gated, MUL_WEIGHT=gated,
                                 **common)

    h = torch.empty(T * k, inter, dtype=x.dtype, device=x.device)  # silu(gate) * up, x.dtype as the reference
    run(x, k, w13_q, w13_s, w13_z, h, inter, H, True)
    y = torch.empty(T * k, H, dtype=torch.float32, device=x.device)  # slots summed in fp32, rounded once
    run(h, 1, w2_q, w2_s, w2_z, y, H, inter, False)
    return y.view(T, k, H).sum(1).to(x.dtype)
