"""Native CPU linear (the decode step's few-row products) vs torch's F.linear (BLAS), one process.

  python perf/bench_linear.py [--rows 1,4,16,32 --shapes 512x512,512x768,512x8192,5120x896]
  python perf/bench_linear.py --decode [--rows 1,2,4,8 --dtypes float32,bfloat16 --pool-mb 256]

Weights are cycled through a pool larger than the last-level cache, as in a decode step where
every layer's weights come from DRAM. Prints the median time of each and the ratio torch / native
(> 1: native wins) per (rows, K x N); `ops/native.py:LINEAR_MAX_ROWS` is set from these figures.

--decode: the weight-streaming rate of the local Scout-shaped model's decode projections
(perf/local_model.py: q|k|v, o, shared-expert gate|up and down, several weights per call as the
decode step makes them), in GB/s of weight bytes and as a share of a plain streaming read of the
same bytes (torch sum, same threads) timed in the same process, alternating with the kernel so both
see the same machine load; best of --iters passes over the pool (a shared machine is noisy).
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


# The decode step's projections at the local model's shape: (name, [(N, K) per weight of one call]).
DECODE_CALLS = (("q|k|v", ((1024, 1024), (256, 1024), (256, 1024))), ("o", ((1024, 1024),)),
                ("k alone", ((256, 1024),)), ("gate|up", ((2048, 1024), (2048, 1024))), ("down", ((1024, 2048),)))


def stream_pass(fns) -> float:
    """Seconds of one pass calling every fn once."""
    t0 = time.perf_counter()
    for f in fns:
        f()
    return time.perf_counter() - t0


def decode_bandwidth(a) -> list[dict]:
    """GB/s of the native linear at decode shapes vs a streaming read of the same bytes."""
    from amd_llama4.ops.native import _C, _ref

    g = torch.Generator().manual_seed(0)
    results = []
    print(f"decode projections, weights cycled through >= {a.pool_mb} MB; best of {a.iters} passes; "
          "stream = torch sum over the same bytes, same process")
    for dt in (getattr(torch, d) for d in a.dtypes.split(",")):
        for name, shapes in DECODE_CALLS:
            per_call = sum(n * k for n, k in shapes) * dt.itemsize
            count = max(16, a.pool_mb * 2**20 // per_call)
            pool = [[(torch.randn(n, k, generator=g) / k**0.5).to(dt) for n, k in shapes] for _ in range(count)]
            nbytes = per_call * count
            # the baseline reads the same bytes as fp32 words (one sum per weight, as the calls)
            words = [w.view(torch.float32) if dt == torch.bfloat16 else w for ws in pool for w in ws]
            sums = [lambda w=w: w.sum() for w in words]
            K, ntot = shapes[0][1], sum(n for n, _ in shapes)
            calls, checks = {}, []
            for M in (int(r) for r in a.rows.split(",")):
                x = torch.randn(M, K, generator=g).to(dt)
                out = torch.empty(M, ntot, dtype=dt)
                xr, orf = _ref(x, "x"), _ref(out, "out")
                refs = [([_ref(w, f"weights[{i}]") for i, w in enumerate(ws)], [None] * len(ws)) for ws in pool]
                calls[M] = [lambda r=r, xr=xr, orf=orf, keep=(x, out): _C.linear(xr, r[0], r[1], orf) for r in refs]
                checks.append((x, out))
            best = {"stream": float("inf"), **{M: float("inf") for M in calls}}
            for _ in range(a.iters):
                best["stream"] = min(best["stream"], stream_pass(sums))
                for M, fns in calls.items():
                    best[M] = min(best[M], stream_pass(fns))
            for x, out in checks:  # the last call's weights: the product is right
                want = torch.cat([torch.nn.functional.linear(x.float(), w.float()) for w in pool[-1]], -1)
                torch.testing.assert_close(out.float(), want, **({"rtol": 1e-4, "atol": 1e-4} if dt == torch.float32
                                                                 else {"rtol": 2e-2, "atol": 2e-2}))
            stream_gbps = nbytes / best["stream"] / 1e9
            line = f"{str(dt)[6:]:8s} {name:8s} ({per_call / 2**20:5.2f} MB/call): stream {stream_gbps:5.1f} GB/s |"
            for M in calls:
                gbps = nbytes / best[M] / 1e9
                results.append({"dtype": str(dt)[6:], "call": name, "rows": M, "GBps": gbps,
                                "stream_GBps": stream_gbps, "of_stream": gbps / stream_gbps,
                                "us_per_call": best[M] / count * 1e6})
                line += f" M{M} {gbps:5.1f} ({100 * gbps / stream_gbps:3.0f}%)"
            print(line, flush=True)
    return results


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=None, help="default 1,4,16,32 (1,2,4,8 with --decode)")
    ap.add_argument("--shapes", default="512x512,512x768,512x8192,5120x896", help="K x N list")
    ap.add_argument("--pool-mb", type=int, default=None, help="total weight bytes cycled through (96; 256 --decode)")
    ap.add_argument("--iters", type=int, default=None, help="timed calls (200), or passes with --decode (15)")
    ap.add_argument("--decode", action="store_true", help="GB/s at the decode shapes vs a streaming read")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="with --decode")
    a = ap.parse_args(argv)
    if not native.available():
        raise SystemExit("amd_llama4._C is not built: pip install -e . (see docs/native.md)")
    a.rows = a.rows or ("1,2,4,8" if a.decode else "1,4,16,32")
    a.pool_mb = a.pool_mb or (256 if a.decode else 96)
    a.iters = a.iters or (15 if a.decode else 200)
    if a.decode:
        return decode_bandwidth(a)
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
