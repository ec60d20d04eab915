"""Native CPU linear (the decode step's few-row products) vs torch's F.linear (BLAS), one process.

  python perf/bench_linear.py [--rows 1,4,16,32 --shapes 512x512,512x768,512x8192,5120x896]

Weights are cycled through a pool larger than the last-level cache, as in a decode step where
every layer's weights come from DRAM. Prints the median time of each and the ratio torch / native
(> 1: native wins) per (rows, K x N); `ops/native.py:LINEAR_MAX_ROWS` is set from these figures.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from amd_llama4.ops import native


def cold_timer(fn, x: torch.Tensor, weights: list[torch.Tensor], iters: int) -> float:
    """Median seconds per call over `iters` calls, each on the next weight of the pool."""
    for w in weights[:3]:
        fn(x, w)
    ts = []
    for i in range(iters):
        w = weights[i % len(weights)]
        t0 = time.perf_counter()
        fn(x, w)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,4,16,32")
    ap.add_argument("--shapes", default="512x512,512x768,512x8192,5120x896", help="K x N list")
    ap.add_argument("--pool-mb", type=int, default=96, help="total weight bytes cycled through")
    ap.add_argument("--iters", type=int, default=200)
    a = ap.parse_args(argv)
    if not native.available():
        raise SystemExit("amd_llama4._C is not built: pip install -e . (see docs/native.md)")
    info = native.build_info()
    print(f"cpu_isa={info['cpu_isa']} threads={info['openmp_threads']} torch_threads={torch.get_num_threads()}")
    g = torch.Generator().manual_seed(0)
    results = []
    for shape in a.shapes.split(","):
        K, N = (int(v) for v in shape.split("x"))
        pool = [torch.randn(N, K, generator=g) for _ in range(max(2, a.pool_mb * 2**20 // (4 * N * K)))]
        for M in (int(r) for r in a.rows.split(",")):
            x = torch.randn(M, K, generator=g)
            torch.testing.assert_close(native.linear(x, pool[0]), F.linear(x, pool[0]), rtol=1e-4, atol=1e-4)
            t_nat = cold_timer(native.linear, x, pool, a.iters)
            t_torch = cold_timer(F.linear, x, pool, a.iters)
            r = {"rows": M, "K": K, "N": N, "native_ms": t_nat * 1e3, "torch_ms": t_torch * 1e3,
                 "ratio": t_torch / t_nat, "native_GBps": 4 * N * K / t_nat / 1e9}
            results.append(r)
            print(f"rows {M:3d}  K {K:5d}  N {N:5d}: native {r['native_ms']:7.3f} ms ({r['native_GBps']:5.1f} GB/s)"
                  f" | torch {r['torch_ms']:7.3f} ms | torch/native {r['ratio']:.2f}")
    return results


if __name__ == "__main__":
    main()
