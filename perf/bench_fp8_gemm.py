"""FP8 w8a8 GEMM on CPU at decode row counts: the native kernel (fp8 weight decoded in registers)
against a plain streaming read of the same weight bytes in the same process, and the torch reference.

  python perf/bench_fp8_gemm.py [--rows 1,2,4,8,16 --shapes 1024x4096,1024x1024 --fmt e4m3fn
                                 --block none|128x128 --pool-mb 96 --iters 60 --stat median|min]

Shapes are K x N (the weight is [N, K], nn.Linear's layout). Weights are cycled through a pool larger
than the last-level cache (a decode step streams every layer's weights from DRAM). Per row count it
prints ms per call, GB/s over the fp8 weight bytes and `% stream`: that rate as a share of the
streaming read (torch's int64 sum over the same bytes), timed alternately with the kernel so both see
the same load on a shared machine. The decode goal at 1 row: >= 22 GB/s on this project's 2-thread box.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from amd_llama4.ops import native
from amd_llama4.ops.fp8 import quantize_fp8

STAT = statistics.median  # --stat min: the best call, for a machine shared with other work


def paired_timer(fn, base, pool: list, iters: int) -> tuple[float, float]:
    """Seconds per call of fn and of the baseline, timed alternately (the same machine load for both)
    over `iters` calls each, every call on the next pool entry (fn) or the one half a pool away (base)."""
    for p in pool[:2]:
        fn(*p), base(*p)
    tf, tb = [], []
    for i in range(iters):
        p, q = pool[i % len(pool)], pool[(i + len(pool) // 2) % len(pool)]
        t0 = time.perf_counter()
        fn(*p)
        t1 = time.perf_counter()
        base(*q)
        t2 = time.perf_counter()
        tf.append(t1 - t0), tb.append(t2 - t1)
    return STAT(tf), STAT(tb)


def stream_read(q: torch.Tensor, s: torch.Tensor) -> None:
    """The baseline: a plain read of the weight bytes (torch's int64 sum over them: as fast as its float
    sums here, 2x its int32 sum, and no NaN / subnormal bit patterns to worry about)."""
    b = q.view(torch.uint8).reshape(-1)
    (b.view(torch.int64) if b.numel() % 8 == 0 else b.view(torch.int32)).sum()


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,2,4,8,16")
    ap.add_argument("--shapes", default="1024x4096,1024x1024,2048x1024", help="K x N list")
    ap.add_argument("--fmt", default="e4m3fn", choices=("e4m3fn", "e4m3fnuz"))
    ap.add_argument("--block", default="none", help="none (per-channel / per-token scales) or BNxBK, e.g. 128x128")
    ap.add_argument("--pool-mb", type=int, default=96, help="fp8 weight bytes cycled through (> L3)")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--stat", choices=("median", "min"), default="median")
    ap.add_argument("--no-torch", action="store_true", help="skip the (slow) torch reference timing")
    a = ap.parse_args(argv)
    global STAT
    STAT = min if a.stat == "min" else statistics.median
    if not native.available() or not hasattr(native._C, "fp8_gemm"):
        raise SystemExit("amd_llama4._C is not built with fp8_gemm: pip install -e . (see docs/native.md)")
    import sys

    ref = sys.modules["amd_llama4.ops.fp8_gemm"].fp8_gemm  # the module (ops/__init__ re-exports the function)
    block = None if a.block == "none" else tuple(int(v) for v in a.block.split("x"))
    info = native.build_info()
    print(f"fp8_gemm_isa={native._C.fp8_gemm_isa()} threads={info['openmp_threads']} "
          f"torch_threads={torch.get_num_threads()} fmt={a.fmt} block={block} stat={a.stat}")
    g = torch.Generator().manual_seed(0)
    out = []
    for shape in a.shapes.split(","):
        K, N = (int(v) for v in shape.split("x"))
        n_pool = max(2, a.pool_mb * 2**20 // (N * K))
        pool = []
        for _ in range(n_pool):
            w = torch.randn(N, K, generator=g) * K ** -0.5
            pool.append(quantize_fp8(w, a.fmt, "block" if block else "row", block))
        for M in (int(r) for r in a.rows.split(",")):
            x = torch.randn(M, K, generator=g)
            aq, as_ = quantize_fp8(x, a.fmt, "block", (1, block[1])) if block else quantize_fp8(x, a.fmt, "row")
            got = native.fp8_gemm(aq, as_, *pool[0], block, torch.float32)
            want = ref(aq, as_, *pool[0], block, torch.float32, backend="torch")
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
            t, ts = paired_timer(lambda q, s: native.fp8_gemm(aq, as_, q, s, block, torch.bfloat16), stream_read, pool,
                                 a.iters)
            stream = N * K / ts / 1e9
            tr = (float("nan") if a.no_torch else
                  paired_timer(lambda q, s: ref(aq, as_, q, s, block, torch.bfloat16, backend="torch"), stream_read,
                               pool, max(4, a.iters // 10))[0])
            gbps = N * K / t / 1e9
            r = {"rows": M, "K": K, "N": N, "native_ms": t * 1e3, "GBps": gbps, "stream_GBps": stream,
                 "pct_stream": 100 * gbps / stream, "torch_ms": tr * 1e3, "speedup_vs_torch": tr / t}
            out.append(r)
            print(f"rows {M:3d} K {K:5d} N {N:5d}: native {r['native_ms']:7.3f} ms {gbps:5.1f} GB/s "
                  f"({r['pct_stream']:5.1f}% of stream {stream:5.1f} GB/s) | torch ref {r['torch_ms']:8.3f} ms "
                  f"(x{r['speedup_vs_torch']:.0f})")
    return out


if __name__ == "__main__":
    main()
