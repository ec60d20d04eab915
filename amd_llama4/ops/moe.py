"""Mixture of experts: sigmoid top-k routing, block alignment of expert-sorted tokens, and the
sparse grouped expert computation (only the selected experts run; routing weight on the INPUT)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from amd_llama4.ops.dispatch import dispatched


@dispatched("moe_topk_sigmoid")
def moe_topk_sigmoid(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits: [T, E] -> (weights fp32 [T, k] = sigmoid(top-k logits), ids int32 [T, k]).
    No softmax, no renormalisation (Llama 4)."""
    vals, ids = torch.topk(router_logits, top_k, dim=-1)
    return torch.sigmoid(vals.float()), ids.to(torch.int32)


def align_capacity(num_slots: int, num_experts: int, block_size: int) -> int:
    """Rows of moe_align_block_size's outputs for num_slots = T*k routed slots: every non-empty
    expert pads by < block_size, rounded up to whole blocks. Depends on shapes only, never on the
    routing, so GPU launchers size their grids without reading anything back from the device."""
    bound = num_slots + min(num_experts, num_slots) * (block_size - 1)
    return -(-bound // block_size) * block_size


@dispatched("moe_align_block_size")
def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_size: int
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """topk_ids: [T, k] int -> (sorted_ids int32 [P], expert_ids int32 [P / block_size],
    num_tokens_post_padded int32 [1]) with P = align_capacity(T*k, E, block_size).

    sorted_ids lists flat (token * k + slot) indices grouped by expert in ascending expert order,
    stable within an expert, each group padded with the sentinel T*k up to a multiple of
    block_size; expert_ids[b] is the expert of block b. Experts with no tokens get no block.
    Only the first num_tokens_post_padded rows are used: past them sorted_ids holds the sentinel
    and expert_ids -1. The count stays on the device (as in vLLM): no host sync."""
    flat = topk_ids.reshape(-1).long()  # [n]
    n, dev = flat.numel(), flat.device
    cap = align_capacity(n, num_experts, block_size)
    # scatter_add, not bincount: bincount reads max(ids) back to size its output
    counts = torch.zeros(num_experts, dtype=torch.long, device=dev).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_size - 1) // block_size * block_size
    ends = torch.cumsum(padded, 0)  # [E] where each expert's padded group ends
    first = torch.cumsum(counts, 0) - counts  # where each expert begins in `order`
    order = torch.argsort(flat, stable=True)
    e_sorted = flat[order]
    dest = ends[e_sorted] - padded[e_sorted] + (torch.arange(n, device=dev) - first[e_sorted])
    sorted_ids = torch.full((cap,), n, dtype=torch.int32, device=dev).scatter_(0, dest, order.to(torch.int32))
    block_start = torch.arange(0, cap, block_size, device=dev)  # [P / block]
    owner = torch.searchsorted(ends, block_start, right=True)  # experts ending at or before the block
    expert_ids = torch.where(owner < num_experts, owner, -1).to(torch.int32)
    return sorted_ids, expert_ids, ends[-1:].to(torch.int32)


def _check_moe_inputs(x, w_gate_up, w_down, topk_weights, topk_ids) -> None:
    if x.dim() != 2:
        raise ValueError(f"fused_moe: x must be [T, H], got {tuple(x.shape)}")
    T, H = x.shape
    if w_gate_up.dim() != 3 or w_gate_up.shape[1] != H or w_gate_up.shape[2] % 2:
        raise ValueError(f"fused_moe: w_gate_up must be [E, H={H}, 2I], got {tuple(w_gate_up.shape)}")
    E, I2 = w_gate_up.shape[0], w_gate_up.shape[2]
    if tuple(w_down.shape) != (E, I2 // 2, H):
        raise ValueError(f"fused_moe: w_down must be [E={E}, I={I2 // 2}, H={H}], got {tuple(w_down.shape)}")
    if topk_ids.shape != topk_weights.shape or topk_ids.dim() != 2 or topk_ids.shape[0] != T:
        raise ValueError(f"fused_moe: topk_ids {tuple(topk_ids.shape)} and topk_weights "
                         f"{tuple(topk_weights.shape)} must both be [T={T}, k]")


@dispatched("fused_moe")
def fused_moe(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
              topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """x: [T, H]; w_gate_up: [E, H, 2I] ([gate | up], input-major as in HF); w_down: [E, I, H];
    topk_weights: [T, k] fp32; topk_ids: [T, k] -> [T, H] = sum_k expert_{id}(weight * x).

    Tokens are grouped by expert and each expert runs once on its rows: k/E of the dense work."""
    _check_moe_inputs(x, w_gate_up, w_down, topk_weights, topk_ids)
    T, H = x.shape
    E, k = w_gate_up.shape[0], topk_ids.shape[1]
    flat = topk_ids.reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=E).tolist()
    token = order // k
    # Routing weight applied to the expert input, in fp32, as Llama 4 does.
    xin = (x.index_select(0, token).float() * topk_weights.reshape(-1)[order, None].float()).to(x.dtype)
    out_sorted = torch.empty_like(xin)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        rows = slice(start, start + n)
        gate_up = xin[rows] @ w_gate_up[e]  # [n, 2I]
        inter = gate_up.shape[1] // 2
        h = F.silu(gate_up[:, :inter]).mul_(gate_up[:, inter:])
        out_sorted[rows] = h @ w_down[e]  # not mm(out=): that refuses weights that require grad
        start += n
    if k == 1:  # each token appears once: a scatter, no accumulation
        return torch.empty_like(x).index_copy_(0, token, out_sorted)
    return torch.zeros_like(x).index_add_(0, token, out_sorted)


def moe_dense_reference(x, w_gate_up, w_down, topk_weights, topk_ids) -> torch.Tensor:
    """Every expert on every token (the transformers formulation), for tests only."""
    T, E = x.shape[0], w_gate_up.shape[0]
    scores = torch.zeros(T, E, dtype=torch.float32, device=x.device)
    scores.scatter_(1, topk_ids.long(), topk_weights.float())
    xin = (x.float()[None] * scores.t()[:, :, None]).to(x.dtype)  # [E, T, H]
    gate_up = torch.bmm(xin, w_gate_up)
    inter = gate_up.shape[-1] // 2
    return torch.bmm(F.silu(gate_up[..., :inter]) * gate_up[..., inter:], w_down).sum(0)
