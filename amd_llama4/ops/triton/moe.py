"""Launchers: Llama 4 top-1 sigmoid routing, MoE block alignment and the fused MoE (bf16/fp16 and FP8
w8a8). No launcher reads device data back: grids are sized from shapes (see align_capacity)."""
from __future__ import annotations

import torch
import triton

from amd_llama4.ops.moe import _check_moe_inputs, align_capacity
from amd_llama4.ops.moe_fp8 import check_moe_fp8_inputs
from amd_llama4.ops.triton import device
from amd_llama4.ops.triton.common import FLOAT_DTYPES, check, dot_in_f32, launch_options, next_pow2
from amd_llama4.ops.triton.configs import TileConfig, get_config
from amd_llama4.ops.triton.kernels import align as ka, moe as km, routing as kr
from amd_llama4.ops.triton.quant import quantize_fp8_rows


def moe_topk_sigmoid(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits: [T, E] -> (weights fp32 [T, 1], ids int32 [T, 1]); top_k must be 1 (Llama 4)."""
    check(top_k == 1, "moe_topk_sigmoid", f"the Triton kernel is top-1 only, got top_k={top_k}")
    check(router_logits.dim() == 2, "moe_topk_sigmoid",
          f"router_logits must be [T, E], got {tuple(router_logits.shape)}")
    x = router_logits if router_logits.stride(-1) == 1 else router_logits.contiguous()
    T, E = x.shape
    w = torch.empty(T, 1, dtype=torch.float32, device=x.device)
    ids = torch.empty(T, 1, dtype=torch.int32, device=x.device)
    if T:
        block_t = 16
        kr.top1_sigmoid_kernel[(triton.cdiv(T, block_t),)](x, w, ids, T, E, x.stride(0), BLOCK_T=block_t,
                                                        BLOCK_E=next_pow2(E))
    return w, ids


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_size: int
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as amd_llama4.ops.moe.moe_align_block_size, on the device without a host sync:
    (sorted_ids int32 [P], expert_ids int32 [P / block_size], used rows int32 [1])."""
    ids = topk_ids.reshape(-1)
    if ids.stride(0) != 1:
        ids = ids.contiguous()
    n = ids.numel()
    cap = align_capacity(n, num_experts, block_size)
    sorted_ids = torch.full((cap,), n, dtype=torch.int32, device=ids.device)
    expert_ids = torch.full((cap // block_size,), -1, dtype=torch.int32, device=ids.device)
    total = torch.zeros(1, dtype=torch.int32, device=ids.device)
    if n:
        block_e = next_pow2(num_experts)
        ka.moe_align_kernel[(num_experts,)](ids, sorted_ids, expert_ids, total, n, num_experts, BLOCK=block_size,
                                            BLOCK_N=max(16, min(256, 8192 // block_e)), BLOCK_E=block_e)
    return sorted_ids, expert_ids, total


def moe_shape(E: int, inter: int, fp8: bool, dtype: torch.dtype) -> dict:
    """Key of the tuned-config files: experts, intermediate size per shard, dtype."""
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    return {"E": E, "N": inter, "dtype": "fp8_w8a8" if fp8 else names[dtype]}


def _run(x, w1, w1_s, w2, w2_s, topk_weights, topk_ids, fmt, config):
    # x: [T, H]; w1: [E, H, 2I]; w2: [E, I, H]; w*_s: [E, 1, N] (fp8) or None
    T, H = x.shape
    E, inter, k = w1.shape[0], w1.shape[2] // 2, topk_ids.shape[1]
    fp8 = fmt is not None
    cfg = config or get_config("fused_moe", device.device_key(), moe_shape(E, inter, fp8, x.dtype), T,
                               device.arch())[0]
    if T == 0:
        return torch.zeros(T, H, dtype=x.dtype, device=x.device)
    sorted_ids, expert_ids, used = moe_align_block_size(topk_ids, E, cfg.BLOCK_M)
    cap = sorted_ids.shape[0]  # worst case from shapes; blocks past `used` exit at once
    tw = topk_weights.reshape(-1).float().contiguous()  # [T*k]
    common = dict(DOT_F32=dot_in_f32(), USE_FP8=fp8, **cfg.meta(), **launch_options(cfg))
    if fp8:
        a, a_s = quantize_fp8_rows(x, fmt)  # per token, before the routing weight (see the kernel)
    else:
        a, a_s, w1_s, w2_s = x, tw, tw, tw  # scale pointers unused when USE_FP8 is False
    h = torch.empty(T * k, inter, dtype=x.dtype, device=x.device)  # [T*k, I]
    grid = (cap // cfg.BLOCK_M * triton.cdiv(inter, cfg.BLOCK_N),)
    km.moe_gemm_kernel[grid](
        a, w1, h, a_s, w1_s, tw, sorted_ids, expert_ids, T * k, inter, H, k, cap, used,
        a.stride(0), a.stride(1), w1.stride(0), w1.stride(1), w1.stride(2), h.stride(0), h.stride(1),
        w1_s.stride(0) if fp8 else 0, w1_s.stride(-1) if fp8 else 0, GATED=True, MUL_WEIGHT=True, **common)
    if fp8:
        h, h_s = quantize_fp8_rows(h, fmt)
    else:
        h_s = tw
    y = torch.empty(T * k, H, dtype=x.dtype, device=x.device)  # [T*k, H]
    grid = (cap // cfg.BLOCK_M * triton.cdiv(H, cfg.BLOCK_N),)
    km.moe_gemm_kernel[grid](
        h, w2, y, h_s, w2_s, tw, sorted_ids, expert_ids, T * k, H, inter, 1, cap, used,
        h.stride(0), h.stride(1), w2.stride(0), w2.stride(1), w2.stride(2), y.stride(0), y.stride(1),
        w2_s.stride(0) if fp8 else 0, w2_s.stride(-1) if fp8 else 0, GATED=False, MUL_WEIGHT=False, **common)
    if k == 1:
        return y
    return y.view(T, k, H).float().sum(1).to(x.dtype)


def fused_moe(x, w_gate_up, w_down, topk_weights, topk_ids, *, config: TileConfig | None = None):
    """Same contract as amd_llama4.ops.moe.fused_moe."""
    _check_moe_inputs(x, w_gate_up, w_down, topk_weights, topk_ids)
    check(x.dtype in FLOAT_DTYPES, "fused_moe", f"x dtype {x.dtype} not in {FLOAT_DTYPES}")
    for name, w in (("w_gate_up", w_gate_up), ("w_down", w_down)):
        check(w.dtype == x.dtype, "fused_moe", f"{name} dtype {w.dtype} != x dtype {x.dtype}")
    return _run(x, w_gate_up, None, w_down, None, topk_weights, topk_ids, None, config)


def fused_moe_fp8(x, w_gate_up_q, w_gate_up_scale, w_down_q, w_down_scale, topk_weights, topk_ids, fmt,
                  *, config: TileConfig | None = None):
    """Same contract as amd_llama4.ops.moe_fp8.fused_moe_fp8."""
    check_moe_fp8_inputs(x, w_gate_up_q, w_gate_up_scale, w_down_q, w_down_scale, topk_weights, topk_ids, fmt)
    check(x.dtype in FLOAT_DTYPES, "fused_moe_fp8", f"x dtype {x.dtype} not in {FLOAT_DTYPES}")
    return _run(x, w_gate_up_q, w_gate_up_scale.float(), w_down_q, w_down_scale.float(), topk_weights, topk_ids,
                fmt, config)
