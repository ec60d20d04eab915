"""Expert parallel MoE: the sync-free masked path (decode-sized steps) equals the exact local-pairs
path (nonzero), and the two ranks' partial sums add up to the single-rank experts."""
import torch

from amd_llama4.config import preset
from amd_llama4.model.loader import build_model
from amd_llama4.parallel.tp import Parallel


def _moe(cfg, par, seed=0):
    m = build_model(cfg, torch.float32, "cpu", parallel=par).init_random(seed)
    return m.model.layers[cfg.moe_layers[0]].feed_forward


@torch.no_grad()
def test_masked_local_experts_equal_exact_pairs_and_sum_to_full():
    cfg = preset("tiny-scout", num_experts_per_tok=2)
    full = _moe(cfg, Parallel())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, cfg.hidden_size, generator=g)
    weights, ids = torch.rand(7, 2, generator=g), torch.randint(0, cfg.num_local_experts, (7, 2), generator=g)
    ids = ids.to(torch.int32)
    want = full.experts(x, weights, ids)
    total = torch.zeros_like(want)
    for rank in range(2):
        moe = _moe(cfg, Parallel(rank, 2, expert_parallel=True))
        lo, hi = moe.expert_range
        moe.experts.gate_up_proj.copy_(full.experts.gate_up_proj[lo:hi])  # this rank's slice
        moe.experts.down_proj.copy_(full.experts.down_proj[lo:hi])
        masked = moe._masked_local_experts(x, weights, ids)
        exact = torch.zeros_like(want).index_add_(0, *moe._local_experts(x, weights, ids))
        torch.testing.assert_close(masked, exact, rtol=1e-5, atol=1e-6)
        total += masked
    torch.testing.assert_close(total, want, rtol=1e-5, atol=1e-6)
