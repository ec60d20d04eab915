#!/usr/bin/env python
"""Paged attention when one long sequence joins short ones (issue 14's decode step, one layer's op).

    python perf/bench_paged_attention.py                      # CPU: native vs torch backends
    python perf/bench_paged_attention.py --hq 8,40 --long 4000 --repeat 20

Prints, per backend and head count, the decode step's op time for B short sequences (~100 keys each)
and for the same plus one long sequence, and their ratio, measured in the same process. The cost of a
kernel that reads keys in place follows the real keys (ratio ~ keys ratio); one that pads to the
longest sequence pays B x longest (the old dense `[B, max_L, Hkv, D]` read). Also a mixed step: the
decodes plus a 512-token prefill piece of the long sequence.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from amd_llama4.ops import available
from amd_llama4.ops.paged_attention import paged_attention


def build(lens, nq, Hq, Hkv, D, page, dtype, gen):
    need = [-(-n // page) for n in lens]
    nb = sum(need)
    kc = torch.randn(nb, page, Hkv, D, generator=gen).to(dtype)
    vc = torch.randn(nb, page, Hkv, D, generator=gen).to(dtype)
    perm = torch.randperm(nb, generator=gen).to(torch.int32)
    bt = torch.zeros(len(lens), max(need), dtype=torch.int32)
    i = 0
    for b, n in enumerate(need):
        bt[b, :n] = perm[i:i + n]
        i += n
    q = torch.randn(sum(nq), Hq, D, generator=gen).to(dtype)
    qpos = torch.cat([torch.arange(n - k, n) for n, k in zip(lens, nq)]).to(torch.int32)
    cu = torch.tensor([0, *torch.tensor(nq).cumsum(0).tolist()], dtype=torch.int32)
    return (q, kc, vc, bt, cu, torch.tensor(lens, dtype=torch.int32), torch.zeros(len(lens), dtype=torch.int32),
            qpos, D ** -0.5)


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hq", default="8,40", help="query heads, comma separated")
    ap.add_argument("--hkv", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16, help="short sequences")
    ap.add_argument("--short", type=int, default=100, help="keys per short sequence")
    ap.add_argument("--long", type=int, default=4000, help="keys of the long sequence")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--backends", default="", help="default: every backend available here")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    backends = a.backends.split(",") if a.backends else available("paged_attention")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for hq in (int(h) for h in a.hq.split(",")):
        short = [a.short + 3 * i for i in range(a.batch)]  # ~short keys, not all equal
        base = build(short, [1] * a.batch, hq, a.hkv, a.head_dim, a.block_size, dtype, gen)
        mixed = build(short + [a.long], [1] * (a.batch + 1), hq, a.hkv, a.head_dim, a.block_size, dtype, gen)
        piece = build(short + [a.long], [1] * a.batch + [512], hq, a.hkv, a.head_dim, a.block_size, dtype, gen)
        for be in backends:
            t_short = timed(lambda: paged_attention(*base, backend=be), a.repeat)
            t_long = timed(lambda: paged_attention(*mixed, backend=be), a.repeat)
            t_piece = timed(lambda: paged_attention(*piece, backend=be), max(1, a.repeat // 4))
            rows.append(dict(backend=be, Hq=hq, Hkv=a.hkv, D=a.head_dim, B=a.batch, short=a.short, long=a.long,
                             ms_short=round(t_short, 3), ms_with_long=round(t_long, 3),
                             ratio=round(t_long / t_short, 2), keys_ratio=round(sum(short + [a.long]) / sum(short), 2),
                             ms_with_prefill_512=round(t_piece, 3)))
            print(f"{be:7s} Hq={hq:3d} Hkv={a.hkv} D={a.head_dim}: {a.batch} x ~{a.short} keys {t_short:8.3f} ms | "
                  f"+1 x {a.long} {t_long:8.3f} ms (x{t_long / t_short:.2f}; keys x{rows[-1]['keys_ratio']}) | "
                  f"+512-token prefill piece {t_piece:8.3f} ms", flush=True)
    out = {"threads": torch.get_num_threads(), "dtype": a.dtype, "rows": rows}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
