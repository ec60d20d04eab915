"""int4 w4a16 kernels on CPU: the native int4 linear against the bf16 F.linear (and the native bf16
linear) at decode row counts, and the native int4 fused MoE against the bf16 native fused MoE.

  python perf/bench_int4.py [--rows 1,4,8,32 --shapes 4096x4096,5120x1024 --group-size 128 --stat min]
  python perf/bench_int4.py --stream-only [--stream-shapes 1024x1024,1024x256,1024x4096,2048x1024]
  OMP_NUM_THREADS=1 python perf/bench_int4.py --hot

`--hot`: the kernel's own speed, with the weights left in the L2 cache (one weight under 1 MB, called
over and over through amd_llama4._C): GB/s over the packed bytes, less the fixed cost of a call
(measured on a 16 x 128 weight in the same process). Run it on one thread: at one row the decode
step is bound by this rate whenever it is below the DRAM share of a core.

`--stream-only` (also run by default, after the others): the decode shapes of perf/local_model.py at
1, 2, 4, 8 rows, group 32 and 128, symmetric and zero-point, bf16 and fp32 activations; GB/s over the
bytes the kernel reads (nibbles + bf16 scales (+ zeros)) and its ratio to a plain streaming read of
the same number of bytes (one torch sum over a buffer of that size per weight), measured in the same
process, same pool, same threads. The kernel is called through amd_llama4._C directly (the refs
built once), so that the Python launcher's checks do not count.

Weights are cycled through a pool larger than the last-level cache (a decode step streams every
layer's weights from DRAM). Prints the median time per call and `bf16/int4` (> 1: int4 faster);
the goal at 1 row on 4096 x 4096-class shapes is >= 2x (int4 moves a quarter of bf16's bytes).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from amd_llama4.ops import int4 as I
from amd_llama4.ops import native


STAT = statistics.median  # --stat min: the best call, for a machine shared with other work


def cold_timer(fn, args_pool: list[tuple], iters: int) -> float:
    """Seconds per call (median or min) over `iters` calls, each on the next argument tuple of the pool."""
    for a in args_pool[:2]:
        fn(*a)
    ts = []
    for i in range(iters):
        a = args_pool[i % len(args_pool)]
        t0 = time.perf_counter()
        fn(*a)
        ts.append(time.perf_counter() - t0)
    return STAT(ts)


def bench_linear(a, g) -> list[dict]:
    out = []
    for shape in a.shapes.split(","):
        K, N = (int(v) for v in shape.split("x"))
        n_pool = max(2, a.pool_mb * 2**20 // (2 * N * K))  # sized by the bf16 weights
        dense = [(torch.randn(N, K, generator=g) * K ** -0.5).bfloat16() for _ in range(n_pool)]
        quant = [I.quantize_int4(w, a.group_size, not a.zero_point) for w in dense]
        for M in (int(r) for r in a.rows.split(",")):
            x = torch.randn(M, K, generator=g).bfloat16()
            torch.testing.assert_close(I.int4_linear(x, *quant[0], a.group_size, backend="native").float(),
                                       I.int4_linear(x, *quant[0], a.group_size, backend="torch").float(),
                                       rtol=2e-2, atol=2e-2)
            t4 = cold_timer(lambda q: I.int4_linear(x, *q, a.group_size, backend="native"), [(q,) for q in quant],
                            a.iters)
            tb = cold_timer(lambda w: F.linear(x, w), [(w,) for w in dense], a.iters)
            tn = cold_timer(lambda w: native.linear(x, w), [(w,) for w in dense], a.iters)
            r = {"rows": M, "K": K, "N": N, "int4_ms": t4 * 1e3, "bf16_torch_ms": tb * 1e3,
                 "bf16_native_ms": tn * 1e3, "ratio": tb / t4, "ratio_native": tn / t4,
                 "int4_GBps": (N * K / 2 + N * K // a.group_size * 2) / t4 / 1e9}
            out.append(r)
            print(f"linear rows {M:3d} K {K:5d} N {N:5d}: int4 {r['int4_ms']:7.3f} ms ({r['int4_GBps']:5.1f} GB/s) | "
                  f"bf16 F.linear {r['bf16_torch_ms']:7.3f} ms | bf16 native {r['bf16_native_ms']:7.3f} ms | "
                  f"bf16/int4 {r['ratio']:.2f} (native bf16/int4 {r['ratio_native']:.2f})")
    return out


def bench_moe(a, g) -> list[dict]:
    E, H, inter = (int(v) for v in a.moe.split("x"))
    w13 = (torch.randn(E, 2 * inter, H, generator=g) * H ** -0.5).bfloat16()
    w2 = (torch.randn(E, H, inter, generator=g) * inter ** -0.5).bfloat16()
    q13 = I.quantize_int4(w13, a.group_size, not a.zero_point)
    q2 = I.quantize_int4(w2, a.group_size, not a.zero_point)
    gate_up, down = w13.transpose(1, 2).contiguous(), w2.transpose(1, 2).contiguous()  # the bf16 op's layout
    out = []
    for T in (int(r) for r in a.moe_tokens.split(",")):
        x = torch.randn(T, H, generator=g).bfloat16()
        pools = [(torch.rand(T, 1, generator=g), torch.randint(0, E, (T, 1), generator=g).int()) for _ in range(8)]
        t4 = cold_timer(lambda tw, ids: I.fused_moe_int4(x, *q13, *q2, tw, ids, a.group_size, backend="native"),
                        pools, a.iters)
        tb = cold_timer(lambda tw, ids: native.fused_moe(x, gate_up, down, tw, ids), pools, a.iters)
        r = {"tokens": T, "E": E, "H": H, "I": inter, "int4_ms": t4 * 1e3, "bf16_ms": tb * 1e3, "ratio": tb / t4}
        out.append(r)
        print(f"moe tokens {T:3d} E {E} H {H} I {inter} top-1: int4 {r['int4_ms']:7.3f} ms | "
              f"bf16 native {r['bf16_ms']:7.3f} ms | bf16/int4 {r['ratio']:.2f}")
    return out


def bench_stream(a, g) -> list[dict]:
    """int4_linear GB/s against a streaming read of the same bytes (see the module docstring)."""
    C, r = native._C, native._ref
    out = []
    for shape in a.stream_shapes.split(","):
        K, N = (int(v) for v in shape.split("x"))
        for G in (int(v) for v in a.stream_groups.split(",")):
            for zp in (False, True):
                q0, s0, z0 = I.quantize_int4((torch.randn(N, K, generator=g) * K ** -0.5).bfloat16(), G, not zp)
                nbytes = sum(t.numel() * t.element_size() for t in (q0, s0, z0) if t is not None)
                # distinct copies (random nibbles) cycled, their bytes well over the last-level cache
                pool = [(torch.randint(0, 256, q0.shape, dtype=torch.uint8, generator=g), s0.clone(),
                         None if z0 is None else z0.clone()) for _ in range(max(2, a.pool_mb * 2**20 // nbytes))]
                flat = [torch.empty(nbytes // 4, dtype=torch.float32).uniform_(generator=g) for _ in pool]
                for dt in (torch.bfloat16, torch.float32):
                    for M in (int(v) for v in a.stream_rows.split(",")):
                        x = torch.randn(M, K, generator=g).to(dt)
                        o = torch.empty(M, N, dtype=dt)
                        xr, orf = r(x, "x"), r(o, "out")
                        refs = [(r(q, "qweight"), r(s, "scales"), None if z is None else r(z, "zeros")) for q, s, z in pool]
                        t4 = cold_timer(lambda q, s, z: C.int4_linear(xr, q, s, z, G, orf), refs, a.iters)
                        ts = cold_timer(lambda f: f.sum(), [(f,) for f in flat], a.iters)
                        res = {"K": K, "N": N, "group_size": G, "zero_point": zp, "dtype": str(dt).split(".")[1],
                               "rows": M, "int4_us": t4 * 1e6, "int4_GBps": nbytes / t4 / 1e9,
                               "stream_GBps": nbytes / ts / 1e9, "of_stream": ts / t4}
                        out.append(res)
                        print(f"stream K {K:5d} N {N:5d} G {G:3d} {'zp ' if zp else 'sym'} {res['dtype']:8s} rows {M}: "
                              f"int4 {res['int4_us']:7.1f} us {res['int4_GBps']:5.1f} GB/s | read {res['stream_GBps']:5.1f} "
                              f"GB/s | {100 * res['of_stream']:4.0f}% of the read", flush=True)
    return out


def bench_hot(a, g) -> list[dict]:
    """int4_linear on one cache-resident weight (see the module docstring)."""
    C, r = native._C, native._ref

    def per_call(K, N, G, zp, dt, M):
        q, s, z = I.quantize_int4((torch.randn(N, K, generator=g) * K ** -0.5).bfloat16(), G, not zp)
        x, o = torch.randn(M, K, generator=g).to(dt), torch.empty(M, N, dtype=dt)
        refs = (r(x, "x"), r(q, "qweight"), r(s, "scales"), None if z is None else r(z, "zeros"))
        for _ in range(200):
            C.int4_linear(*refs, G, r(o, "out"))
        orf, best = r(o, "out"), float("inf")
        for _ in range(9):
            t0 = time.perf_counter()
            for _ in range(500):
                C.int4_linear(*refs, G, orf)
            best = min(best, (time.perf_counter() - t0) / 500)
        return best, sum(t.numel() * t.element_size() for t in (q, s, z) if t is not None)

    out = []
    for shape in a.hot_shapes.split(","):
        K, N = (int(v) for v in shape.split("x"))
        for G in (int(v) for v in a.stream_groups.split(",")):
            for zp in (False, True):
                for dt in (torch.bfloat16, torch.float32):
                    fixed, _ = per_call(128, 16, G, zp, dt, 1)
                    t, nbytes = per_call(K, N, G, zp, dt, 1)
                    res = {"K": K, "N": N, "group_size": G, "zero_point": zp, "dtype": str(dt).split(".")[1],
                           "call_us": t * 1e6, "fixed_us": fixed * 1e6, "hot_GBps": nbytes / max(t - fixed, 1e-9) / 1e9}
                    out.append(res)
                    print(f"hot K {K:5d} N {N:5d} G {G:3d} {'zp ' if zp else 'sym'} {res['dtype']:8s} rows 1: "
                          f"{res['call_us']:6.1f} us/call (fixed {res['fixed_us']:4.1f}) -> {res['hot_GBps']:5.1f} GB/s",
                          flush=True)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,4,8,32")
    ap.add_argument("--shapes", default="4096x4096,5120x1024", help="K x N list")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--zero-point", action="store_true")
    ap.add_argument("--moe", default="16x1024x512", help="E x H x I of the MoE benchmark")
    ap.add_argument("--moe-tokens", default="1,8,32")
    ap.add_argument("--pool-mb", type=int, default=128, help="bf16 weight bytes cycled through")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--stat", choices=("median", "min"), default="median")
    ap.add_argument("--stream-only", action="store_true", help="only the streaming-read comparison")
    ap.add_argument("--stream-shapes", default="1024x1024,1024x256,1024x4096,2048x1024", help="K x N list")
    ap.add_argument("--stream-rows", default="1,2,4,8")
    ap.add_argument("--stream-groups", default="32,128")
    ap.add_argument("--hot", action="store_true", help="only the cache-resident kernel speed")
    ap.add_argument("--hot-shapes", default="1024x1024,2048x384", help="K x N list (weights under 1 MB)")
    a = ap.parse_args(argv)
    global STAT
    STAT = min if a.stat == "min" else statistics.median
    if not native.available() or not hasattr(native._C, "int4_linear"):
        raise SystemExit("amd_llama4._C is not built with the int4 kernels: pip install -e . (see docs/native.md)")
    info = native.build_info()
    print(f"cpu_isa={info['cpu_isa']} int4_isa={native._C.int4_isa()} threads={info['openmp_threads']} "
          f"torch_threads={torch.get_num_threads()} group_size={a.group_size} zero_point={a.zero_point} stat={a.stat}")
    g = torch.Generator().manual_seed(0)
    if a.hot:
        return {"hot": bench_hot(a, g)}
    if a.stream_only:
        return {"stream": bench_stream(a, g)}
    return {"linear": bench_linear(a, g), "moe": bench_moe(a, g), "stream": bench_stream(a, g)}


if __name__ == "__main__":
    main()
