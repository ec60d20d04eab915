"""Our sparse MoE layer against transformers' dense `Llama4TextMoe`, same weights, same process.

Default shape is Scout-like, scaled: hidden 1024, 16 experts, intermediate 1024, 512 tokens, top-1,
fp32 on CPU. Prints the median times and the speed-up; --json writes them.
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch


def median_time(fn, warmup: int, iters: int) -> float:
    """Seconds, median of `iters` wall-clock runs (the shared timer of perf/bench_kernels.py)."""
    from amd_llama4.tools.bench import time_fn

    return statistics.median(time_fn(fn, "cpu", warmup=warmup, iters=iters, max_seconds=600)) / 1e3


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--inter", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--backend", default=None, help="force one backend for our layer (torch|native|triton)")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args(argv)

    import transformers

    from amd_llama4.config import Llama4Config
    from amd_llama4.model.llama4 import MoE

    cfg = Llama4Config(hidden_size=args.hidden, intermediate_size=args.inter, num_local_experts=args.experts,
                       num_experts_per_tok=args.top_k, num_hidden_layers=1, num_attention_heads=8,
                       num_key_value_heads=8, head_dim=args.hidden // 8)
    hf_cfg = transformers.Llama4TextConfig(hidden_size=args.hidden, intermediate_size=args.inter,
                                           num_local_experts=args.experts, num_experts_per_tok=args.top_k,
                                           num_hidden_layers=1)
    torch.manual_seed(0)
    hf = transformers.models.llama4.modeling_llama4.Llama4TextMoe(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.02)
    ours = MoE(cfg).eval()
    ours.load_state_dict(hf.state_dict())
    x = torch.randn(1, args.tokens, args.hidden)

    import os

    if args.backend:
        os.environ["AMD_LLAMA4_BACKEND"] = args.backend
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x)[0].view_as(x), atol=1e-4, rtol=1e-4)
        t_hf = median_time(lambda: hf(x), 2, args.iters)
        t_ours = median_time(lambda: ours(x), 2, args.iters)
    from amd_llama4 import ops

    x2 = x.view(-1, args.hidden)
    w, ids = ops.moe_topk_sigmoid(ours.router(x2), args.top_k)
    exp = ours.experts
    res = {"shape": vars(args), "threads": torch.get_num_threads(),
           "backend": ops.resolve("fused_moe", (x2, exp.gate_up_proj, exp.down_proj, w, ids), {}).__module__,
           "transformers_dense_ms": t_hf * 1e3, "ours_sparse_ms": t_ours * 1e3, "speedup": t_hf / t_ours}
    print(f"transformers Llama4TextMoe (dense): {t_hf * 1e3:8.2f} ms")
    print(f"amd_llama4 MoE ({res['backend']}): {t_ours * 1e3:8.2f} ms")
    print(f"speed-up: {t_hf / t_ours:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
