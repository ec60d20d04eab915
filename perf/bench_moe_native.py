"""Native CPU fused MoE vs the torch sparse path (ops.moe reference) vs transformers' dense MoE
(Llama4TextExperts: every expert on every token), in one process, at the Scout-like scaled shape.

  python perf/bench_moe_native.py [--tokens 512 --hidden 1024 --experts 16 --inter 1024 --top-k 1
                                   --dtype float32 --repeats 5]

Prints the median time of each and the ratios (baseline time / native time: > 1 means native wins).
"""
from __future__ import annotations

import argparse
import statistics

import torch

from amd_llama4 import ops
from amd_llama4.ops import native
from amd_llama4.tools.bench import time_fn


def timeit(fn, repeats: int) -> float:
    """Seconds, median wall clock after one warm-up (allocations, page faults, OpenMP threads)."""
    return statistics.median(time_fn(fn, "cpu", warmup=1, iters=repeats, max_seconds=600)) / 1e3


def dense_transformers(x, w1, w2, tw, ids):
    """transformers' Llama4TextMoe routed part: repeat tokens per expert, scale, bmm over all experts."""
    from transformers import Llama4TextConfig
    from transformers.models.llama4.modeling_llama4 import Llama4TextExperts

    E, H, I2 = w1.shape
    cfg = Llama4TextConfig(hidden_size=H, intermediate_size=I2 // 2, num_local_experts=E, hidden_act="silu")
    experts = Llama4TextExperts(cfg).to(x.dtype)
    experts.gate_up_proj.data, experts.down_proj.data = w1, w2
    scores = torch.zeros(x.shape[0], E, dtype=x.dtype).scatter_(1, ids.long(), tw.to(x.dtype))

    @torch.no_grad()
    def run():
        routed = x.repeat(E, 1) * scores.t().reshape(-1, 1)
        return experts(routed).reshape(E, -1, H).sum(0)

    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--inter", type=int, default=1024)
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    if not native.available():
        raise SystemExit("amd_llama4._C is not built: pip install -e . (see docs/native.md)")
    dt = getattr(torch, a.dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.tokens, a.hidden, generator=g).to(dt)
    w1 = (torch.randn(a.experts, a.hidden, 2 * a.inter, generator=g) / a.hidden**0.5).to(dt)
    w2 = (torch.randn(a.experts, a.inter, a.hidden, generator=g) / a.inter**0.5).to(dt)
    tw, ids = ops.moe_topk_sigmoid(torch.randn(a.tokens, a.experts, generator=g), a.top_k, backend="torch")

    t_native = timeit(lambda: native.fused_moe(x, w1, w2, tw, ids), a.repeats)
    t_sparse = timeit(lambda: ops.fused_moe(x, w1, w2, tw, ids, backend="torch"), a.repeats)
    try:
        t_dense = timeit(dense_transformers(x, w1, w2, tw, ids), a.repeats)
    except ImportError:
        t_dense = float("nan")
    info = native.build_info()
    print(f"shape: T={a.tokens} H={a.hidden} E={a.experts} I={a.inter} top_k={a.top_k} {a.dtype}; "
          f"cpu_isa={info['cpu_isa']} threads={info['openmp_threads']} torch_threads={torch.get_num_threads()}")
    print(f"native fused_moe          {t_native * 1e3:9.2f} ms")
    print(f"torch sparse (reference)  {t_sparse * 1e3:9.2f} ms   ratio sparse/native = {t_sparse / t_native:.2f}")
    print(f"transformers dense        {t_dense * 1e3:9.2f} ms   ratio dense/native  = {t_dense / t_native:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
