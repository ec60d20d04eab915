"""GPU check of every Triton kernel: correctness against the torch reference, then time against the
torch reference (and torch._scaled_mm for FP8 GEMMs) at Scout / Maverick tensor-parallel shapes.

  python perf/bench_triton.py --out results/bench_triton.json [--quick] [--tp 8]

Writes one JSON document: run metadata + one record per case {op, shape, max_err, tol, ok, times_ms
{triton, torch[, scaled_mm]}, speedup}. Exit 1 if any correctness check fails; on a machine without a
GPU it prints that it needs one and exits 0.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

import torch

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_D = 5120, 8192, 40, 8, 128
SCOUT_E, MAVERICK_E, CHUNK = 16, 128, 8192


def _err(out, ref) -> float:
    """max |out - ref| relative to max |ref| (a scale-free error for every op)."""
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp(min=1e-6))


class Bench:
    def __init__(self, quick: bool):
        from amd_llama4.tools.bench import summarize_times, time_fn

        self.quick, self.records, self._time, self._sum = quick, [], time_fn, summarize_times

    def time(self, fn) -> float:
        return self._sum(self._time(fn, "cuda", warmup=3, iters=10 if self.quick else 30))["median_ms"]

    def case(self, op: str, shape: dict, triton_fn, torch_fn, tol: float, extra: dict | None = None):
        rec = {"op": op, "shape": shape, "tol": tol}
        try:
            out, ref = triton_fn(), torch_fn()
            rec["max_err"] = _err(out, ref)
            rec["ok"] = rec["max_err"] <= tol
            times = {"triton": self.time(triton_fn), "torch": self.time(torch_fn)}
            for name, fn in (extra or {}).items():
                try:
                    times[name] = self.time(fn)
                except Exception as e:  # noqa: BLE001 - a baseline this torch lacks is reported, not fatal
                    times[name] = None
                    rec[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
            rec["times_ms"] = times
            rec["speedup"] = {k: (v / times["triton"] if v else None) for k, v in times.items() if k != "triton"}
        except Exception as e:  # noqa: BLE001 - one broken case must not hide the others
            rec.update(ok=False, error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-2000:])
        print(json.dumps({k: rec.get(k) for k in ("op", "shape", "ok", "max_err", "times_ms", "error")}), flush=True)
        self.records.append(rec)


def bench_moe(b: Bench, tp: int, fmt: str):
    from amd_llama4.ops.moe import fused_moe, moe_topk_sigmoid
    from amd_llama4.ops.moe_fp8 import fused_moe_fp8, quantize_moe_weights
    from amd_llama4.ops.triton import moe as tm

    dev, inter = "cuda", INTER // tp
    for E in (SCOUT_E, MAVERICK_E):
        logits = torch.randn(2048, E, device=dev, dtype=torch.bfloat16)
        b.case("moe_topk_sigmoid", {"T": 2048, "E": E}, lambda: tm.moe_topk_sigmoid(logits, 1)[0],
               lambda: moe_topk_sigmoid.reference(logits, 1)[0], 1e-6)
    for E, fp8 in ((SCOUT_E, False), (MAVERICK_E, True)):
        w1 = torch.randn(E, HIDDEN, 2 * inter, device=dev, dtype=torch.bfloat16) * HIDDEN ** -0.5
        w2 = torch.randn(E, inter, HIDDEN, device=dev, dtype=torch.bfloat16) * inter ** -0.5
        if fp8:
            w1q, w1s = quantize_moe_weights(w1, fmt)
            w2q, w2s = quantize_moe_weights(w2, fmt)
            del w1, w2
        for T in ((1, 64, 1024) if b.quick else (1, 16, 64, 256, 1024, 4096)):
            x = torch.randn(T, HIDDEN, device=dev, dtype=torch.bfloat16)
            ids = torch.randint(0, E, (T, 1), device=dev, dtype=torch.int32)
            w = torch.rand(T, 1, device=dev)
            shape = {"T": T, "E": E, "H": HIDDEN, "I": inter, "tp": tp, "dtype": "fp8_w8a8" if fp8 else "bf16"}
            if fp8:
                b.case("fused_moe_fp8", shape, lambda: tm.fused_moe_fp8(x, w1q, w1s, w2q, w2s, w, ids, fmt),
                       lambda: fused_moe_fp8.reference(x, w1q, w1s, w2q, w2s, w, ids, fmt), 0.05)
            else:
                b.case("fused_moe", shape, lambda: tm.fused_moe(x, w1, w2, w, ids),
                       lambda: fused_moe.reference(x, w1, w2, w, ids), 0.03)


def bench_gemm(b: Bench, tp: int, fmt: str):
    from amd_llama4.ops.fp8 import quantize_fp8
    from amd_llama4.ops.fp8_gemm import fp8_gemm
    from amd_llama4.ops.triton.gemm import fp8_gemm as tg

    qkv_n = (HEADS + 2 * KV_HEADS) * HEAD_D // tp
    for name, N, K in (("qkv", qkv_n, HIDDEN), ("o_proj", HIDDEN, HEADS * HEAD_D // tp),
                       ("shared_gate_up", 2 * INTER // tp, HIDDEN)):
        wt = torch.randn(N, K, device="cuda") * K ** -0.5
        for M in ((1, 256, 4096) if b.quick else (1, 16, 64, 256, 1024, 4096)):
            a = torch.randn(M, K, device="cuda")
            aq, a_s = quantize_fp8(a, fmt, "row")
            bq, b_s = quantize_fp8(wt, fmt, "row")
            shape = {"proj": name, "M": M, "N": N, "K": K, "tp": tp, "scales": "token x channel"}
            b.case("fp8_gemm", shape, lambda: tg(aq, a_s, bq, b_s), lambda: fp8_gemm.reference(aq, a_s, bq, b_s), 0.02,
                   extra={"scaled_mm": lambda: torch._scaled_mm(aq, bq.t(), scale_a=a_s, scale_b=b_s.t(),
                                                                out_dtype=torch.bfloat16)})
            aq, a_s = quantize_fp8(a, fmt, "block", (1, 128))
            bq, b_s = quantize_fp8(wt, fmt, "block", (128, 128))
            shape = dict(shape, scales="block 128x128")
            b.case("fp8_gemm", shape, lambda: tg(aq, a_s, bq, b_s, block=(128, 128)),
                   lambda: fp8_gemm.reference(aq, a_s, bq, b_s, block=(128, 128)), 0.02)


def bench_attention(b: Bench, tp: int, fmt: str):
    from amd_llama4.ops.attention import attention
    from amd_llama4.ops.fp8 import quantize_fp8
    from amd_llama4.ops.paged_attention import paged_attention_decode
    from amd_llama4.ops.triton import attention as ta

    hq, hkv = HEADS // tp, max(1, KV_HEADS // tp)
    for S in ((2048,) if b.quick else (512, 2048, 8192)):
        q = torch.randn(1, S, hq, HEAD_D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, S, hkv, HEAD_D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        pos = torch.arange(S, device="cuda")[None] + (CHUNK - S // 2)  # crosses a chunk boundary
        for chunk in (CHUNK, None):
            b.case("attention", {"S": S, "Hq": hq, "Hkv": hkv, "D": HEAD_D, "chunk": chunk, "tp": tp},
                   lambda: ta.attention(q, k, v, pos, pos, HEAD_D ** -0.5, chunk),
                   lambda: attention.reference(q, k, v, pos, pos, HEAD_D ** -0.5, chunk), 0.02)
    page = 16
    for B, L in ((1, 8192), (32, 4096)) if b.quick else ((1, 8192), (1, 32768), (32, 4096), (64, 2048)):
        nblk = B * (L // page)
        kc = torch.randn(nblk, page, hkv, HEAD_D, device="cuda", dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        bt = torch.randperm(nblk, device="cuda", dtype=torch.int32).reshape(B, L // page)
        lens = torch.full((B,), L, device="cuda", dtype=torch.int32)
        first = torch.zeros(B, device="cuda", dtype=torch.int32)
        qpos = lens - 1
        qd = torch.randn(B, hq, HEAD_D, device="cuda", dtype=torch.bfloat16)
        for kv in ("bf16", "fp8"):
            if kv == "fp8":
                kq, ks = quantize_fp8(kc.reshape(-1, HEAD_D), fmt, "tensor")
                vq, vs = quantize_fp8(vc.reshape(-1, HEAD_D), fmt, "tensor")
                kk, vv, ks, vs = kq.reshape(kc.shape), vq.reshape(vc.shape), ks.reshape(()), vs.reshape(())
            else:
                kk, vv, ks, vs = kc, vc, None, None
            for chunk in (CHUNK, None):
                b.case("paged_attention_decode", {"B": B, "L": L, "Hq": hq, "Hkv": hkv, "kv": kv, "chunk": chunk},
                       lambda: ta.paged_attention_decode(qd, kk, vv, bt, lens, first, qpos, HEAD_D ** -0.5, chunk,
                                                         ks, vs),
                       lambda: paged_attention_decode.reference(qd, kk, vv, bt, lens, first, qpos, HEAD_D ** -0.5,
                                                                chunk, ks, vs), 0.02)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON output path")
    ap.add_argument("--tp", type=int, default=8, help="tensor-parallel degree of the shapes")
    ap.add_argument("--quick", action="store_true", help="fewer shapes and iterations")
    ap.add_argument("--only", choices=("moe", "gemm", "attention"), action="append")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_triton: needs a GPU (ROCm or CUDA); nothing to do on this machine")
        return 0
    try:
        import triton  # noqa: F401
    except ImportError:
        print("bench_triton: triton is not installed", file=sys.stderr)
        return 1
    from amd_llama4 import platform
    from amd_llama4.tools.bench import run_metadata

    fmt = platform.fp8_format()
    torch.manual_seed(0)
    b = Bench(args.quick)
    for name, fn in (("moe", bench_moe), ("gemm", bench_gemm), ("attention", bench_attention)):
        if not args.only or name in args.only:
            with torch.no_grad():
                fn(b, args.tp, fmt)
    failed = [r for r in b.records if not r.get("ok")]
    doc = {"meta": run_metadata(), "device": platform.device_key(), "arch": platform.gpu_arch(), "fp8_format": fmt,
           "tp": args.tp, "cases": b.records, "failed": len(failed)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1, default=str))
    print(f"bench_triton: {len(b.records)} cases, {len(failed)} failed -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
