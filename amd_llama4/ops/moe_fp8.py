"""FP8 w8a8 fused MoE reference: per-channel weight scales x per-token dynamic activation scales.

Weights are input-major like the bf16 op: w_gate_up_q [E, H, 2I] fp8 with w_gate_up_scale [E, 1, 2I]
("col" granularity of amd_llama4.ops.fp8), w_down_q [E, I, H] with w_down_scale [E, 1, H].
Per expert e and its rows (routing weight on the input, as in `fused_moe`):
  xin = x * w (fp32)         -> per-token quantise -> gate_up = deq(xin_q) @ deq(w_gate_up_q[e])  (fp32)
  h = silu(gate) * up, rounded to x.dtype -> per-token quantise -> out = deq(h_q) @ deq(w_down_q[e])
output [T, H] in x.dtype = sum over the k selected experts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from amd_llama4.ops.dispatch import dispatched
from amd_llama4.ops.fp8 import dequantize_fp8, quantize_fp8
from amd_llama4.ops.moe import _check_moe_inputs
from amd_llama4.platform import torch_fp8_dtype


def check_moe_fp8_inputs(x, w_gate_up_q, w_gate_up_scale, w_down_q, w_down_scale, topk_weights, topk_ids,
                         fmt) -> None:
    _check_moe_inputs(x, w_gate_up_q, w_down_q, topk_weights, topk_ids)
    dt = torch_fp8_dtype(fmt)
    for name, w in (("w_gate_up_q", w_gate_up_q), ("w_down_q", w_down_q)):
        if w.dtype != dt:
            raise ValueError(f"fused_moe_fp8: {name} must be {dt} for fmt={fmt!r}, got {w.dtype}")
    E, _, N1 = w_gate_up_q.shape
    N2 = w_down_q.shape[2]
    if tuple(w_gate_up_scale.shape) != (E, 1, N1):
        raise ValueError(f"fused_moe_fp8: w_gate_up_scale must be [E={E}, 1, {N1}], got {tuple(w_gate_up_scale.shape)}")
    if tuple(w_down_scale.shape) != (E, 1, N2):
        raise ValueError(f"fused_moe_fp8: w_down_scale must be [E={E}, 1, {N2}], got {tuple(w_down_scale.shape)}")


def quantize_moe_weights(w: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[E, K, N] input-major expert weights -> (q, scale [E, 1, N]) per output channel."""
    return quantize_fp8(w, fmt, "col")


@dispatched("fused_moe_fp8")
def fused_moe_fp8(x: torch.Tensor, w_gate_up_q: torch.Tensor, w_gate_up_scale: torch.Tensor,
                  w_down_q: torch.Tensor, w_down_scale: torch.Tensor, topk_weights: torch.Tensor,
                  topk_ids: torch.Tensor, fmt: str) -> torch.Tensor:
    """x: [T, H]; w_gate_up_q: [E, H, 2I] fp8; w_down_q: [E, I, H] fp8; topk_*: [T, k] -> [T, H] x.dtype."""
    check_moe_fp8_inputs(x, w_gate_up_q, w_gate_up_scale, w_down_q, w_down_scale, topk_weights, topk_ids, fmt)
    T, H = x.shape
    k = topk_ids.shape[1]
    flat = topk_ids.reshape(-1).long()
    out = torch.zeros(T, H, dtype=torch.float32, device=x.device)
    for e in torch.unique(flat).tolist():
        rows = (flat == e).nonzero().squeeze(1)
        token = rows // k
        xin = x.index_select(0, token).float() * topk_weights.reshape(-1)[rows, None].float()
        xq, xs = quantize_fp8(xin, fmt, "row")
        gate_up = dequantize_fp8(xq, xs) @ dequantize_fp8(w_gate_up_q[e], w_gate_up_scale[e])
        inter = gate_up.shape[1] // 2
        h = (F.silu(gate_up[:, :inter]) * gate_up[:, inter:]).to(x.dtype)
        hq, hs = quantize_fp8(h, fmt, "row")
        y = dequantize_fp8(hq, hs) @ dequantize_fp8(w_down_q[e], w_down_scale[e])
        out.index_add_(0, token, y.to(x.dtype).float())
    return out.to(x.dtype)
