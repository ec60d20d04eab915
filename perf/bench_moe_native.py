"""Native CPU fused MoE vs the torch sparse path (ops.moe reference) vs transformers' dense MoE
(Llama4TextExperts: every expert on every token), in one process, at the Scout-like scaled shape.

  python perf/bench_moe_native.py [--tokens 512 --hidden 1024 --experts 16 --inter 1024 --top-k 1
                                   --dtype float32 --repeats 5]

Prints the median time of each and the ratios (baseline time / native time: > 1 means native wins).

  python perf/bench_moe_native.py --decode [--experts 16 --hidden 1024 --inter 2048 --rows 1,2,4,8]

--decode: the decode step's routed experts (top-1; T tokens on T different experts, cycling over all
of them so every call reads its experts from DRAM): GB/s of expert weight bytes read and the share
of a plain streaming read of the same bytes (torch sum, same threads) timed in the same process,
alternating with the kernel; best of --repeats passes of 32 calls (a shared machine is noisy).
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


def decode_bandwidth(a) -> list[dict]:
    """GB/s of native fused_moe at decode (T = 1..8 rows, top-1) vs a streaming read of the same bytes."""
    import time

    from amd_llama4.ops.native import _C, _ref

    g = torch.Generator().manual_seed(0)
    E, H, inter, calls = a.experts, a.hidden, a.inter, 32
    results = []
    for dt in (getattr(torch, d) for d in a.dtypes.split(",")):
        w1 = (torch.randn(E, H, 2 * inter, generator=g) / H**0.5).to(dt)
        w2 = (torch.randn(E, inter, H, generator=g) / inter**0.5).to(dt)
        words = [(w1[e].view(torch.float32) if dt == torch.bfloat16 else w1[e],
                  w2[e].view(torch.float32) if dt == torch.bfloat16 else w2[e]) for e in range(E)]
        line = f"{str(dt)[6:]:8s} E={E} H={H} I={inter} top-1 |"
        for T in (int(r) for r in a.rows.split(",")):
            x = torch.randn(T, H, generator=g).to(dt)
            out = torch.empty(T, H, dtype=dt)
            tw = torch.rand(T, 1, generator=g)
            id_sets = [torch.tensor([(c * T + t) % E for t in range(T)], dtype=torch.int32).view(T, 1)
                       for c in range(calls)]
            refs = [(_ref(x, "x"), _ref(w1, "w_gate_up"), _ref(w2, "w_down"), _ref(tw, "topk_weights"),
                     _ref(ids, "topk_ids"), None, None, _ref(out, "out")) for ids in id_sets]
            experts = [sorted(set(ids.view(-1).tolist())) for ids in id_sets]
            nbytes = sum(len(es) for es in experts) * (w1[0].nbytes + w2[0].nbytes)
            best_k = best_s = float("inf")
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                for es in experts:
                    for e in es:
                        words[e][0].sum(), words[e][1].sum()
                best_s = min(best_s, time.perf_counter() - t0)
                t0 = time.perf_counter()
                for r in refs:
                    _C.fused_moe(*r)
                best_k = min(best_k, time.perf_counter() - t0)
            torch.testing.assert_close(out, ops.fused_moe(x, w1, w2, tw, id_sets[-1], backend="torch"),
                                       **({"rtol": 1e-4, "atol": 1e-4} if dt == torch.float32 else
                                          {"rtol": 2e-2, "atol": 2e-2}))
            gbps, sgbps = nbytes / best_k / 1e9, nbytes / best_s / 1e9
            results.append({"dtype": str(dt)[6:], "tokens": T, "GBps": gbps, "stream_GBps": sgbps,
                            "of_stream": gbps / sgbps, "us_per_call": best_k / calls * 1e6})
            line += f" T{T} {gbps:5.1f} GB/s ({100 * gbps / sgbps:3.0f}% of stream {sgbps:4.1f})"
        print(line, flush=True)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--inter", type=int, default=1024)
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=None, help="5 (15 with --decode)")
    ap.add_argument("--decode", action="store_true", help="GB/s at decode (few tokens) vs a streaming read")
    ap.add_argument("--rows", default="1,2,4,8", help="with --decode: tokens per call")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="with --decode")
    a = ap.parse_args(argv)
    if not native.available():
        raise SystemExit("amd_llama4._C is not built: pip install -e . (see docs/native.md)")
    if a.decode:
        a.repeats = a.repeats or 15
        a.inter = a.inter if "--inter" in (argv or __import__("sys").argv) else 2048
        decode_bandwidth(a)
        return 0
    a.repeats = a.repeats or 5
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
