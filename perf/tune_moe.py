"""Tune the Triton fused-MoE and FP8 GEMM tile configs on GPUs and write amd_llama4/tuned/*.json.

  python perf/tune_moe.py --E 16 --N 1024 --dtype bf16            # sweep on this machine's GPU 0
  python perf/tune_moe.py --E 128 --N 1024 --dtype fp8_w8a8 --ray  # one Ray actor per GPU, M split
  python perf/tune_moe.py --seed                                  # (no GPU) write untuned seed files

Each (M) is timed for every config of the search space; the fastest per M is written with
"source": "measured" and the device key of amd_llama4.platform.device_key(). --seed writes the
hand-picked starting configs below for every known device, marked "source": "untuned-seed".
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch

from amd_llama4.ops.triton.configs import TileConfig, write_table

M_LIST = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
HIDDEN = 5120  # Scout and Maverick

# Hand-picked starting points (not measured): small M uses narrow tiles so more programs run.
SEED_AMD = {1: TileConfig(16, 64, 128, 1, 4, 2, 2), 64: TileConfig(32, 64, 128, 4, 4, 2, 2),
            1024: TileConfig(64, 128, 64, 8, 8, 2, 2)}
SEED_NVIDIA = {1: TileConfig(16, 64, 128, 1, 4, 3, 0), 64: TileConfig(32, 64, 128, 4, 4, 3, 0),
               1024: TileConfig(64, 128, 64, 8, 4, 3, 0)}
SEED_GEMM_AMD = {1: TileConfig(16, 64, 128, 1, 4, 2, 2), 256: TileConfig(64, 128, 128, 8, 4, 2, 2)}
SEED_GEMM_NVIDIA = {1: TileConfig(16, 64, 128, 1, 4, 3, 0), 256: TileConfig(64, 128, 128, 8, 4, 3, 0)}
DEVICES = ("AMD_Instinct_MI300X", "AMD_Instinct_MI325X", "AMD_Instinct_MI355X", "NVIDIA_H100", "NVIDIA_H200")
# Scout TP4 / TP8 (16 experts, I = 8192 / tp) and Maverick FP8 TP8 (128 experts).
SEED_MOE_SHAPES = ({"E": 16, "N": 2048, "dtype": "bf16"}, {"E": 16, "N": 1024, "dtype": "bf16"},
                   {"E": 128, "N": 1024, "dtype": "fp8_w8a8"})
# Maverick FP8 TP8 attention projections: qkv (40 + 2*8 heads of 128)/8 x 5120 and o_proj 5120 x 640.
SEED_GEMM_SHAPES = ({"N": 896, "K": 5120, "dtype": "fp8_channel"}, {"N": 5120, "K": 640, "dtype": "fp8_channel"})


def write_seeds() -> list[str]:
    paths = []
    for dev in DEVICES:
        amd = dev.startswith("AMD")
        for shape in SEED_MOE_SHAPES:
            paths.append(write_table("fused_moe", dev, shape, SEED_AMD if amd else SEED_NVIDIA, "untuned-seed"))
        for shape in SEED_GEMM_SHAPES:
            paths.append(write_table("fp8_gemm", dev, shape, SEED_GEMM_AMD if amd else SEED_GEMM_NVIDIA,
                                     "untuned-seed"))
    return [str(p) for p in paths]


def search_space(amd: bool) -> list[TileConfig]:
    out = []
    for bm, bn, bk, gm, nw, ns in itertools.product((16, 32, 64, 128), (32, 64, 128, 256), (64, 128), (1, 8),
                                                     (4, 8), (2,) if amd else (3, 4)):
        if bm * bn > 128 * 128 or (bm >= 128 and nw == 4):
            continue
        for wpe in ((0, 2) if amd else (0,)):
            out.append(TileConfig(bm, bn, bk, gm, nw, ns, wpe))
    return out


def _problem(E: int, N: int, dtype: str, M: int, dev: str):
    from amd_llama4 import platform
    from amd_llama4.ops.moe_fp8 import quantize_moe_weights

    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(M, HIDDEN, device=dev, dtype=torch.bfloat16, generator=g)
    w1 = torch.randn(E, HIDDEN, 2 * N, device=dev, dtype=torch.bfloat16, generator=g) * 0.02
    w2 = torch.randn(E, N, HIDDEN, device=dev, dtype=torch.bfloat16, generator=g) * 0.02
    ids = torch.randint(0, E, (M, 1), device=dev, dtype=torch.int32, generator=g)
    w = torch.rand(M, 1, device=dev, generator=g)
    if dtype == "fp8_w8a8":
        fmt = platform.fp8_format()
        return (x, *quantize_moe_weights(w1, fmt), *quantize_moe_weights(w2, fmt), w, ids, fmt)
    return x, w1, w2, w, ids


def tune_one(E: int, N: int, dtype: str, ms: list[int], dev: str = "cuda") -> dict[int, dict]:
    """-> {M: {"config": TileConfig dict, "ms": best time}} on this process's GPU."""
    from amd_llama4.ops.triton import moe as tmoe
    from amd_llama4.ops.triton.common import is_amd
    from amd_llama4.tools.bench import time_fn

    fn = tmoe.fused_moe_fp8 if dtype == "fp8_w8a8" else tmoe.fused_moe
    best = {}
    for m in ms:
        args = _problem(E, N, dtype, m, dev)
        for cfg in search_space(is_amd()):
            try:
                t = min(time_fn(lambda: fn(*args, config=cfg), dev, warmup=2, iters=10))
            except Exception as e:  # noqa: BLE001 - out-of-resources configs are skipped
                print(f"M={m} {cfg.label()}: skipped ({type(e).__name__})", file=sys.stderr)
                continue
            if m not in best or t < best[m]["ms"]:
                best[m] = {"config": cfg.to_dict(), "ms": t}
        print(f"M={m}: {best.get(m)}", file=sys.stderr)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", action="store_true", help="write the untuned seed files (no GPU needed)")
    ap.add_argument("--E", type=int, default=16)
    ap.add_argument("--N", type=int, default=1024, help="intermediate size per tensor-parallel shard")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp8_w8a8"))
    ap.add_argument("--m", type=int, nargs="*", default=list(M_LIST))
    ap.add_argument("--ray", action="store_true", help="split the M list over one Ray actor per GPU")
    args = ap.parse_args(argv)
    if args.seed:
        print("\n".join(write_seeds()))
        return 0
    if not torch.cuda.is_available():
        print("tune_moe: needs a GPU (use --seed to write the untuned seed files)")
        return 0
    from amd_llama4 import platform

    if args.ray:
        import ray

        ray.init()

        @ray.remote(num_gpus=1)
        def work(ms):
            return tune_one(args.E, args.N, args.dtype, ms)

        n = max(1, int(ray.cluster_resources().get("GPU", 1)))
        parts = [args.m[i::n] for i in range(n)]
        results = {}
        for r in ray.get([work.remote(p) for p in parts if p]):
            results.update(r)
    else:
        results = tune_one(args.E, args.N, args.dtype, args.m)
    shape = {"E": args.E, "N": args.N, "dtype": args.dtype}
    path = write_table("fused_moe", platform.device_key(), shape,
                       {m: TileConfig.from_dict(r["config"]) for m, r in results.items()}, "measured",
                       extra={"times_ms": {str(m): r["ms"] for m, r in sorted(results.items())}})
    print(json.dumps({"written": str(path), "results": {str(k): v for k, v in results.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
