"""Launcher: FP8 scaled matmul (contract: amd_llama4.ops.fp8_gemm.fp8_gemm)."""
from __future__ import annotations

from dataclasses import replace

import torch
import triton

from amd_llama4.ops.fp8_gemm import check_fp8_gemm_inputs
from amd_llama4.ops.triton import device
from amd_llama4.ops.triton.common import FP8_DTYPES, check, dot_in_f32, launch_options
from amd_llama4.ops.triton.configs import TileConfig, get_config
from amd_llama4.ops.triton.kernels import gemm as kg


def gemm_shape(N: int, K: int, block) -> dict:
    return {"N": N, "K": K, "dtype": "fp8_block" if block else "fp8_channel"}


def fp8_gemm(a_q, a_scale, b_q, b_scale, block=None, out_dtype=torch.bfloat16, *, config: TileConfig | None = None):
    """a_q: [M, K] fp8, b_q: [N, K] fp8 -> [M, N] out_dtype."""
    check_fp8_gemm_inputs(a_q, a_scale, b_q, b_scale, block)
    check(a_q.dtype in FP8_DTYPES and b_q.dtype == a_q.dtype, "fp8_gemm",
          f"a_q and b_q must share one fp8 dtype, got {a_q.dtype} and {b_q.dtype}")
    (M, K), N = a_q.shape, b_q.shape[0]
    cfg = config or get_config("fp8_gemm", device.device_key(), gemm_shape(N, K, block), M, device.arch())[0]
    a_scale, b_scale = a_scale.float(), b_scale.float()
    c = torch.empty(M, N, dtype=out_dtype, device=a_q.device)
    if M == 0 or N == 0:
        return c
    if block is not None:
        bn, bk = block
        tile_k = cfg.BLOCK_K
        while bk % tile_k and tile_k > 16:  # a K tile must not straddle two scale groups
            tile_k //= 2
        cfg = replace(cfg, BLOCK_K=tile_k)
        check(bk % cfg.BLOCK_K == 0, "fp8_gemm", f"block k={bk} must be a multiple of BLOCK_K={cfg.BLOCK_K}")
        s = (a_scale.stride(0), a_scale.stride(1), b_scale.stride(0), b_scale.stride(1))
    else:
        bn, bk = 1, 1
        s = (0 if a_scale.shape[0] == 1 else a_scale.stride(0), 0, 0 if b_scale.shape[0] == 1 else b_scale.stride(0), 0)
    grid = (triton.cdiv(M, cfg.BLOCK_M) * triton.cdiv(N, cfg.BLOCK_N),)
    kg.fp8_gemm_kernel[grid](a_q, b_q, c, a_scale, b_scale, M, N, K, a_q.stride(0), a_q.stride(1), b_q.stride(0),
                          b_q.stride(1), c.stride(0), c.stride(1), *s, BLOCK_SCALE=block is not None,
                          SCALE_BN=bn, SCALE_BK=bk, DOT_F32=dot_in_f32(), **cfg.meta(), **launch_options(cfg))
    return c
